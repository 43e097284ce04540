"""A small, explicit reference of PyramidSparseAttention.forward (SPEC sec. 1), written without the package's helpers.

Loops over batch and head; full softmax; mean scores; top-k with threshold; 2x2 mapping clipped to the finer map;
masked fine softmax (zero when no region survives); CPE on the coarse grid, nearest-upsampled and cropped; proj.
Works in float64 for a ground truth independent of kernel rounding. The lead may unify it with tests/reference.py.
"""

import torch
import torch.nn.functional as F


def _conv_bn(m, t):
    """Ultralytics Conv (conv + BN, no act) evaluated explicitly with BN running statistics (eval semantics)."""
    t = F.conv2d(t, m.conv.weight.double(), None, m.conv.stride, m.conv.padding, m.conv.dilation, m.conv.groups)
    bn = m.bn
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return t * scale[:, None, None] + (bn.bias.double() - bn.running_mean.double() * scale)[:, None, None]


def psa_reference(attn, x, u, fine: bool):
    """PSA(x, u) in float64; ``fine`` adds the sparse fine branch (eval mode with topk > 0)."""
    x, u = x.double(), u.double()
    b, c, h, w = x.shape
    hu, wu = u.shape[-2:]
    d, heads = attn.head_dim, attn.heads
    q, k, v = _conv_bn(attn.q, x), _conv_bn(attn.k, u), _conv_bn(attn.v, u)
    kf, vf = _conv_bn(attn.k, x), _conv_bn(attn.v, x)
    out = torch.zeros(b, c, h * w, dtype=torch.float64)
    for bi in range(b):
        for hi in range(heads):
            ch = slice(hi * d, (hi + 1) * d)
            qh = q[bi, ch].reshape(d, -1).T  # (N, d)
            kh, vh = k[bi, ch].reshape(d, -1).T, v[bi, ch].reshape(d, -1).T  # (M, d)
            p = torch.softmax(qh @ kh.T / d**0.5, dim=-1)  # (N, M)
            o = p @ vh
            if fine and attn.topk > 0:
                scores = p.mean(dim=0)
                kk = min(attn.topk, scores.numel())
                top = torch.topk(scores, kk).indices
                pos = []
                for j in top.tolist():
                    if scores[j] <= attn.threshold:
                        continue
                    r, cc = divmod(j, wu)
                    for dr in (0, 1):
                        for dc in (0, 1):
                            if 2 * r + dr < h and 2 * cc + dc < w:
                                pos.append((2 * r + dr) * w + 2 * cc + dc)
                if pos:
                    kfh = kf[bi, ch].reshape(d, -1).T[pos]
                    vfh = vf[bi, ch].reshape(d, -1).T[pos]
                    o = o + torch.softmax(qh @ kfh.T / d**0.5, dim=-1) @ vfh
            out[bi, ch] = o.T
    out = out.reshape(b, c, h, w)
    pe = _conv_bn(attn.pe, v)  # depthwise 7x7 on the coarse grid (v as a map)
    pe = pe.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
    return _conv_bn(attn.proj, out + pe)
