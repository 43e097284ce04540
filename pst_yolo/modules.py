"""Pyramid Sparse Transformer (PST) and Pyramid Sparse Attention as Ultralytics model layers.

All projections are Ultralytics ``Conv`` (1x1 conv + BatchNorm [+ SiLU]) so ``model.fuse()`` folds the BatchNorms.
The name ``PSA`` is taken in Ultralytics (YOLOv10's position-sensitive attention); this file never shadows it.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from pst_yolo.attention import EXPORTABLE, attention, choose_kernel, in_export, log_once, resolve_backend
from pst_yolo.linear_attention import linear_attention
from pst_yolo.runtime import check_topk, env_topk
from pst_yolo.selection import coarse_attention_and_scores, coarse_scores, select_fine_tokens
from pst_yolo.switches import check_switches

HEAD_DIM = 32
THRESHOLD = 1e-6
# "1": every PST layer raises on NaN/Inf inputs. Off by default: the check syncs with the GPU, and in training Ultralytics
# recovers from a NaN loss itself (last.pt), which an exception raised during validation would prevent.
ENV_CHECK_FINITE = "PST_CHECK_FINITE"


def Conv(*args, **kwargs):
    """Ultralytics ``Conv``, imported on first use: importing Ultralytics runs pst-yolo's registration hook, which
    imports this module, so a module-level import would be circular."""
    from ultralytics.nn.modules.conv import Conv as _Conv

    return _Conv(*args, **kwargs)


def hidden_width(c2: int, e: float, where: str = "PST") -> int:
    """``c_ = int(c2 * e)``, which must split into heads of 32 channels."""
    c_ = int(c2 * e)
    if c_ < HEAD_DIM or c_ % HEAD_DIM:
        raise ValueError(
            f"{where}: hidden width c_ = int(c2 * e) = int({c2} * {e}) = {c_} must be a positive multiple of the "
            f"head dim {HEAD_DIM}; change c2 (after width scaling) or e"
        )
    return c_


class PyramidSparseAttention(nn.Module):
    """Pyramid Sparse Attention: coarse cross-attention to the coarser map plus top-k sparse fine attention.

    Queries come from the finer map ``x`` (B, C, H, W); keys/values from the coarser map ``u`` (B, C, ceil(H/2),
    ceil(W/2)). Fine attention runs only in eval mode with ``topk > 0`` and reuses the same K/V projections on ``x``
    at the 2x2 blocks under the top-k coarse keys (paper eqs. 1-6).

    Args:
        c (int): Channels of both inputs and of the output; a multiple of 32 (head dim).
        topk (int): Coarse regions refined per head at inference; 0 = coarse only.
        threshold (float): Minimum mean attention probability for a region to be refined.
        backend (str | None): Attention kernel (see ``pst_yolo.attention``); None follows ``$PST_ATTN``.
        gating (bool): Ablation (Table 4c, eqs. 7-8): ``g = sigmoid(Conv1d_1x1(concat(O_coarse, O_fine)))`` over the
            2c concatenated channels per token, ``O = proj(g * O_fine + (1 - g) * O_coarse + CPE)``. With fine
            attention off (training, k = 0) ``O_fine = 0``, so the gate still scales ``O_coarse``; the fine half of
            its weights then gets no gradient.
        shared_kv (bool): Ablation (Table 4e): False gives fine attention its own K/V convs (``k_fine``, ``v_fine``),
            which coarse-only training never updates (they keep their initial weights).
        attn (str): Ablation (Table 4d): ``"softmax"`` (paper), or linear attention ``"relu"`` / ``"elu"`` (ELU+1)
            for the coarse branch, which has no fine branch (topk is ignored, with a one-time log line).

    Examples:
        >>> attn = PyramidSparseAttention(64).eval()
        >>> attn(torch.randn(2, 64, 20, 20), torch.randn(2, 64, 10, 10)).shape
        torch.Size([2, 64, 20, 20])
    """

    # Class-level defaults of the ablation switches: checkpoints pickled before the switches existed still load.
    gating, shared_kv, attn = False, True, "softmax"

    def __init__(
        self,
        c: int,
        topk: int = 8,
        threshold: float = THRESHOLD,
        backend: str | None = None,
        gating: bool = False,
        shared_kv: bool = True,
        attn: str = "softmax",
    ):
        super().__init__()
        hidden_width(c, 1.0, "PyramidSparseAttention")
        self.heads, self.head_dim = c // HEAD_DIM, HEAD_DIM
        self.scale = HEAD_DIM**-0.5
        self.threshold = float(threshold)
        self.backend = None if backend is None else resolve_backend(backend)
        env = env_topk()
        self.topk = check_topk(topk) if env is None else env
        self.q = Conv(c, c, 1, act=False)
        self.k = Conv(c, c, 1, act=False)
        self.v = Conv(c, c, 1, act=False)
        self.pe = Conv(c, c, 7, g=c, act=False)  # CPE on the coarse grid
        self.proj = Conv(c, c, 1, act=False)
        # ---- ablation switches (paper Table 4c-e); defaults add no modules and leave the forward path as is ----
        self.gating, self.shared_kv, self.attn = check_switches(gating, shared_kv, attn, "PyramidSparseAttention")
        if self.gating:
            self.gate = nn.Conv1d(2 * c, c, 1)  # eq. 7's Conv1d: one linear map per token of concat(O_c, O_f)
        if not self.shared_kv:
            self.k_fine = Conv(c, c, 1, act=False)
            self.v_fine = Conv(c, c, 1, act=False)
        if self.attn != "softmax" and self.topk > 0:
            self._log_linear_topk()

    def _log_linear_topk(self):
        log_once(
            "linear-attn-topk",
            f"pst-yolo: linear attention ({self.attn!r}) has no attention probabilities to select from; fine attention "
            f"is off for it (requested k={self.topk} is ignored)",
            level=30,
        )

    def __setstate__(self, state):
        """Unpickling a checkpoint re-applies ``PST_TOPK`` so ``PST_TOPK=0 yolo val model=best.pt`` works."""
        super().__setstate__(state)
        env = env_topk()
        if env is not None:
            self.topk = env

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, H*W, head_dim)."""
        return t.flatten(2).unflatten(1, (self.heads, self.head_dim)).transpose(-2, -1)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Attend from ``x`` (B, C, H, W) to ``u`` (B, C, ceil(H/2), ceil(W/2)); returns (B, C, H, W)."""
        b, c, h, w = x.shape
        v_map = self.v(u)
        q, k, v = self._heads(self.q(x)), self._heads(self.k(u)), self._heads(v_map)
        fine = None
        if self.attn != "softmax":
            out = linear_attention(q, k, v, self.attn)
            if self.topk > 0 and not self.training:
                self._log_linear_topk()
        elif self.topk > 0 and not self.training:
            out, scores = self.coarse(q, k, v)
            fine = self.fine(x, q, k, u.shape[-1], scores)
        else:
            out = attention(q, k, v, scale=self.scale, backend=self.backend)
        if self.gating:
            out = self._gated(out, fine)
        elif fine is not None:
            out = out + fine
        out = out.transpose(-2, -1).reshape(b, c, h, w)
        pe = F.interpolate(self.pe(v_map), scale_factor=2.0, mode="nearest")[..., :h, :w]
        return self.proj(out + pe)

    def coarse(self, q, k, v):
        """Coarse output and selection scores. When the attention kernel would be the plain SDPA/reference path (CPU,
        export) one chunked explicit-softmax pass yields both, so QK^T is computed once; a dedicated GPU kernel
        (FlashAttention, SageAttention) runs the output and a chunked pass recomputes the scores."""
        if choose_kernel(q, k, v, None, self.backend) in EXPORTABLE and (q.device.type == "cpu" or in_export()):
            return coarse_attention_and_scores(q, k, v, self.scale)
        return attention(q, k, v, scale=self.scale, backend=self.backend), coarse_scores(q, k, self.scale)

    def fine(self, x, q, k, coarse_w: int, scores=None) -> torch.Tensor:
        """Sparse fine attention over the 2x2 blocks of the top-k coarse keys; (B, heads, N, head_dim)."""
        h, w = x.shape[-2:]
        if scores is None:
            scores = coarse_scores(q, k, self.scale)
        index, valid = select_fine_tokens(scores, self.topk, self.threshold, coarse_w, h, w)
        kf, vf = self._fine_kv(x, index)
        # (not while tracing/compiling: the branch depends on data, which export and fullgraph compile cannot follow)
        if not in_export() and not torch.compiler.is_compiling() and bool(valid.all()):
            # Common case (threshold met, even map): no mask, so mask-free kernels (FlashAttention, Sage) can serve it.
            return attention(q, kf, vf, scale=self.scale, backend=self.backend)
        # A (batch, head) with no valid token attends to all of them and is zeroed below: an all-masked row would be
        # NaN in fp16 (finfo.min + a negative logit overflows to -inf), and NaN * 0 is still NaN.
        keep = valid | ~valid.any(dim=-1, keepdim=True)
        mask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, torch.finfo(q.dtype).min)
        out = attention(q, kf, vf, mask=mask.unsqueeze(-2), scale=self.scale, backend=self.backend)
        # A (batch, head) whose regions all failed the threshold contributes nothing (not a uniform average).
        return out * valid.any(dim=-1)[..., None, None].to(out.dtype)

    def _gated(self, coarse: torch.Tensor, fine: torch.Tensor | None) -> torch.Tensor:
        """Self-gating fusion of eqs. 7-8 on (B, heads, N, d) outputs; ``fine=None`` (fine off) means zeros."""
        fine = torch.zeros_like(coarse) if fine is None else fine
        b, nh, n, d = coarse.shape
        # channels in the (head, d) order the output map uses: [0, c) coarse, [c, 2c) fine
        cat = torch.cat([coarse, fine], dim=1).transpose(-2, -1).reshape(b, 2 * nh * d, n)
        g = self.gate(cat).sigmoid().reshape(b, nh, d, n).transpose(-2, -1)
        return g * fine + (1 - g) * coarse

    def _fine_kv(self, x, index):
        """Fine keys/values at ``index`` (B, heads, T): the K/V projections applied only to the T gathered pixels, each
        head using its own slice of the weights. The projections are pointwise affine maps in eval (1x1 conv + BN
        folded), so gathering first is exact and costs T/(H*W) of projecting the map."""
        b, c = x.shape[:2]
        t = index.shape[-1]
        # (B, C, heads*T) -> (B, heads, T, C); the index, not the map, is expanded (no per-head copy of x).
        xg = x.flatten(2).gather(2, index.flatten(1).unsqueeze(1).expand(b, c, -1))
        xg = xg.unflatten(2, (self.heads, t)).permute(0, 2, 3, 1)
        # Shared projections (paper Table 4e) unless the separate-K/V ablation is on.
        wk, bk = pointwise_affine(self.k if self.shared_kv else self.k_fine)
        wv, bv = pointwise_affine(self.v if self.shared_kv else self.v_fine)
        weight = torch.cat([wk.view(self.heads, self.head_dim, c), wv.view(self.heads, self.head_dim, c)], 1)
        bias = torch.cat([bk.view(self.heads, 1, self.head_dim), bv.view(self.heads, 1, self.head_dim)], -1)
        kv = xg @ weight.transpose(1, 2).to(xg.dtype) + bias.to(xg.dtype)  # (B, heads, T, 2d)
        return kv[..., : self.head_dim], kv[..., self.head_dim :]


def pointwise_affine(m):
    """(weight (C_out, C_in), bias (C_out)) of an Ultralytics 1x1 ``Conv`` without activation, BatchNorm folded (eval
    statistics); works before and after ``model.fuse()`` (which removes ``bn`` and gives the conv a bias)."""
    conv = m.conv
    if conv.kernel_size != (1, 1) or conv.groups != 1 or not isinstance(m.act, nn.Identity):
        raise ValueError(f"pst-yolo: fine K/V projection must be a 1x1 dense Conv without activation, got {m}")
    weight = conv.weight.flatten(1)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(weight.shape[0])
    bn = getattr(m, "bn", None)
    if bn is not None:
        inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = weight * inv[:, None]
        bias = (bias - bn.running_mean) * inv + bn.bias
    return weight, bias


class PSTBlock(nn.Module):
    """One stacked stage of PST: ``z + PSA(z, u)`` then ``z + MLP(z)`` (1x1 conv + BN, EfficientFormer style).

    Args:
        c (int): Channels (multiple of 32).
        mlp_ratio (float): MLP hidden expansion.
        topk (int): Fine-attention regions per head at inference.
        threshold (float): Minimum score of a refined region.
        backend (str | None): Attention kernel name.
        gating, shared_kv, attn: Ablation switches, see ``PyramidSparseAttention``.
    """

    def __init__(
        self,
        c: int,
        mlp_ratio: float = 2.0,
        topk: int = 8,
        threshold: float = THRESHOLD,
        backend=None,
        gating=False,
        shared_kv=True,
        attn="softmax",
    ):
        super().__init__()
        ch = int(c * mlp_ratio)
        self.attn = PyramidSparseAttention(c, topk, threshold, backend, gating, shared_kv, attn)
        self.mlp = nn.Sequential(Conv(c, ch, 1), Conv(ch, c, 1, act=False))

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """(B, c, H, W), (B, c, ceil(H/2), ceil(W/2)) -> (B, c, H, W)."""
        z = z + self.attn(z, u)
        return z + self.mlp(z)


class PST(nn.Module):
    """Pyramid Sparse Transformer: fuses a finer map with the next coarser one, CSP/ELAN-style output.

    YAML row: ``[[finer, coarser], n, PST, [c2, mlp_ratio, e, k]]``; ``n`` stacked PSA blocks all read K/V from the
    same coarser map (paper Table 4b).

    Args:
        c1 (int): Channels of the finer input x (B, c1, H, W).
        c_up (int): Channels of the coarser input u (B, c_up, ceil(H/2), ceil(W/2)).
        c2 (int): Output channels.
        n (int): Number of stacked PSA blocks.
        mlp_ratio (float): MLP expansion.
        e (float): Hidden width ratio, ``c_ = int(c2 * e)`` (multiple of 32).
        k (int): Fine-attention regions per head at inference (0 = coarse only).
        threshold (float): Minimum score of a refined region.
        backend (str | None): Attention kernel name, None = ``$PST_ATTN`` or SDPA.
        gating (bool): Self-gating of coarse and fine outputs (Table 4c ablation; paper default False).
        shared_kv (bool): Fine attention reuses the coarse K/V convs (Table 4e; paper default True).
        attn (str): ``"softmax"`` (paper), or linear attention ``"relu"`` / ``"elu"`` (Table 4d ablation, coarse only).
        YAML rows pass these positionally after c2 in this order, or as a trailing dict (see ``pst_yolo.switches``).

    Examples:
        >>> m = PST(128, 256, 128).eval()
        >>> m([torch.randn(1, 128, 40, 40), torch.randn(1, 256, 20, 20)]).shape
        torch.Size([1, 128, 40, 40])
    """

    def __init__(
        self,
        c1,
        c_up,
        c2,
        n=1,
        mlp_ratio=2.0,
        e=0.5,
        k=8,
        threshold=THRESHOLD,
        backend=None,
        gating=False,
        shared_kv=True,
        attn="softmax",
    ):
        super().__init__()
        c_ = hidden_width(c2, e)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"PST: n (stacked PSA blocks) must be a positive integer, got {n!r}")
        gating, shared_kv, attn = check_switches(gating, shared_kv, attn, "PST")
        self.cv1 = Conv(c1, c_, 1)
        self.cvup = Conv(c_up, c_, 1)
        self.m = nn.ModuleList(
            PSTBlock(c_, mlp_ratio, k, threshold, backend, gating, shared_kv, attn) for _ in range(n)
        )
        self.cv2 = Conv((1 + n) * c_, c2, 1)

    def forward(self, xs) -> torch.Tensor:
        """``[x, u]`` with x (B, c1, H, W), u (B, c_up, ceil(H/2), ceil(W/2)) -> (B, c2, H, W)."""
        x, u = self._check(xs)
        x, u = self.cv1(x), self.cvup(u)
        y = [x]
        for block in self.m:
            y.append(block(y[-1], u))
        return self.cv2(torch.cat(y, 1))

    def _check(self, xs):
        """Validate the two inputs; errors name this layer (its index in the model when built from YAML)."""
        name = f"PST layer {self.i}" if hasattr(self, "i") else "PST"
        if not isinstance(xs, (list, tuple)) or len(xs) != 2:
            raise ValueError(f"{name}: expects [finer, coarser] feature maps, got {type(xs).__name__}")
        x, u = xs
        if in_export():
            return x, u  # shapes are symbolic while exporting; they were checked on the eager pass
        if x.dim() != 4 or u.dim() != 4:
            raise ValueError(f"{name}: inputs must be 4-D (B, C, H, W), got {tuple(x.shape)} and {tuple(u.shape)}")
        if x.shape[0] != u.shape[0]:
            raise ValueError(f"{name}: batch sizes differ: finer {x.shape[0]} vs coarser {u.shape[0]}")
        c1, c_up = self.cv1.conv.in_channels, self.cvup.conv.in_channels
        if x.shape[1] != c1 or u.shape[1] != c_up:
            raise ValueError(f"{name}: expected channels ({c1}, {c_up}), got ({x.shape[1]}, {u.shape[1]})")
        if os.environ.get(ENV_CHECK_FINITE) == "1":  # opt-in: a host sync per layer (docs/reliability.md)
            for which, t in (("finer", x), ("coarser", u)):
                if not torch.isfinite(t).all():
                    bad = int((~torch.isfinite(t)).sum())
                    raise ValueError(f"{name}: {bad} non-finite values (NaN/Inf) in the {which} input {tuple(t.shape)}")
        h, w = x.shape[-2:]
        want = ((h + 1) // 2, (w + 1) // 2)
        if tuple(u.shape[-2:]) != want:
            raise ValueError(
                f"{name}: coarser map must be ceil(H/2) x ceil(W/2) = {want[0]}x{want[1]} of the finer {h}x{w} map, "
                f"got {u.shape[-2]}x{u.shape[-1]} (check the `from` indices of this row)"
            )
        return x, u
