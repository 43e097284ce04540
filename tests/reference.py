"""An independent, deliberately plain implementation of PSA/PST from SPEC section 1, used as ground truth.

It shares no code with pst_yolo's forward path: convolutions are applied from the modules' raw weights and BatchNorm
statistics, attention is an explicit softmax, and the 2x2 region mapping is written as loops over chosen keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def randomize(module, seed=0):
    """Random weights and BatchNorm statistics, so BN folding and every projection matter in a comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.dtype == torch.long:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.3)
    return module


def randomize_bn(model, seed=0):
    """Trained-looking BatchNorm statistics and affine weights (only the BatchNorms), so every projection matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def conv_bn(conv_module, x, act=False):
    """Apply an Ultralytics ``Conv`` (conv + eval-mode BN [+ SiLU]) from its parameters, fused or not, in float64."""
    conv = conv_module.conv
    bias = None if conv.bias is None else conv.bias.double()
    y = F.conv2d(x.double(), conv.weight.double(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    bn = getattr(conv_module, "bn", None)
    if bn is not None:
        mean, var = bn.running_mean.double()[None, :, None, None], bn.running_var.double()[None, :, None, None]
        y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.double()[None, :, None, None] + bn.bias.double()[None, :, None, None]
    return F.silu(y) if act else y


def psa_reference(attn, x, u, fine: bool):
    """PyramidSparseAttention forward (eval-mode BN) per SPEC eqs. 1-6 in float64, loops for selection and gathering;
    the ``joint`` fusion as one softmax over the unrefined coarse keys and the refined regions' tokens (-log 4)."""
    x, u = x.double(), u.double()
    b, c, h, w = x.shape
    hu, wu = u.shape[-2:]
    heads, d = attn.heads, attn.head_dim
    scale = 1.0 / math.sqrt(d)
    q_map, k_map, v_map = conv_bn(attn.q, x), conv_bn(attn.k, u), conv_bn(attn.v, u)
    kf_map, vf_map = conv_bn(attn.k, x), conv_bn(attn.v, x)  # shared projections on the finer map
    out = torch.zeros(b, c, h * w, dtype=torch.float64)
    for bi in range(b):
        for hi in range(heads):
            ch = slice(hi * d, (hi + 1) * d)
            q = q_map[bi, ch].reshape(d, -1).T  # (N, d)
            k = k_map[bi, ch].reshape(d, -1).T  # (M, d)
            v = v_map[bi, ch].reshape(d, -1).T
            p = torch.softmax(q @ k.T * scale, dim=-1)  # (N, M)
            o = p @ v
            if fine and attn.topk > 0:
                s = p.mean(dim=0)
                kk = min(attn.topk, s.numel())
                top = sorted(range(s.numel()), key=lambda j: (-float(s[j].detach()), j))[:kk]  # ties: lower index first
                positions, refined = [], []
                for j in top:
                    if s[j] <= attn.threshold:
                        continue
                    refined.append(j)
                    r, cc = divmod(j, wu)
                    for dr in (0, 1):
                        for dc in (0, 1):
                            fr, fc = 2 * r + dr, 2 * cc + dc
                            if fr < h and fc < w:
                                positions.append(fr * w + fc)
                if positions:
                    kf = kf_map[bi, ch].reshape(d, -1).T[positions]
                    vf = vf_map[bi, ch].reshape(d, -1).T[positions]
                    if getattr(attn, "fusion", "add") == "joint":  # the refined keys' places taken by their tokens
                        keep = [j for j in range(k.shape[0]) if j not in refined]
                        logits = torch.cat([q @ k[keep].T * scale, q @ kf.T * scale - math.log(4)], dim=-1)
                        o = torch.softmax(logits, dim=-1) @ torch.cat([v[keep], vf])
                    else:
                        o = o + torch.softmax(q @ kf.T * scale, dim=-1) @ vf
            out[bi, ch] = o.T
    out = out.reshape(b, c, h, w)
    pe = conv_bn(attn.pe, v_map)
    if attn.cpe == "nearest":  # each coarse cell covers its 2x2 block of the finer grid
        pe = pe[:, :, torch.arange(h) // 2][:, :, :, torch.arange(w) // 2]
    else:  # bilinear, half-pixel centres (align_corners=False), as separable interpolation matrices
        pe = torch.einsum("yi,bcij,xj->bcyx", bilinear_matrix(h, hu), pe, bilinear_matrix(w, wu))
    return conv_bn(attn.proj, out + pe)


def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of 1-D linear interpolation with half-pixel centres, edges clamped."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[o, i0] += 1 - frac
        m[o, i1] += frac
    return m


def pst_reference(pst, x, u, fine: bool):
    """PST forward: cv1/cvup, stacked blocks (queries chain, K/V from the same u), concat, cv2."""
    x, u = conv_bn(pst.cv1, x, act=True), conv_bn(pst.cvup, u, act=True)
    ys = [x]
    for block in pst.m:
        z = ys[-1]
        z = z + psa_reference(block.attn, z, u, fine)
        mlp1, mlp2 = block.mlp
        z = z + conv_bn(mlp2, conv_bn(mlp1, z, act=True))
        ys.append(z)
    return conv_bn(pst.cv2, torch.cat(ys, 1), act=True)


def spec_param_count(c1, c_up, c2, n=1, mlp_ratio=2.0, e=0.5) -> int:
    """Learnable parameters of PST derived from SPEC section 1 (conv weights, no conv bias, BN weight + bias)."""
    c_ = int(c2 * e)
    hid = int(c_ * mlp_ratio)
    pair = lambda cin, cout: cin * cout + 2 * cout  # 1x1 conv + BN
    block = 4 * pair(c_, c_) + (49 * c_ + 2 * c_) + pair(c_, hid) + pair(hid, c_)  # q,k,v,proj, DW7x7+BN, MLP
    return pair(c1, c_) + pair(c_up, c_) + n * block + pair((1 + n) * c_, c2)


def paper_param_formula(c, c_up, c_prime) -> int:
    """The paper's closed form 10C'^2 + (C_up + 3C + 61)C' (approximate; reported, not asserted)."""
    return 10 * c_prime**2 + (c_up + 3 * c + 61) * c_prime
