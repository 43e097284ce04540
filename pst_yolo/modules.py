"""Pyramid Sparse Transformer (PST) and Pyramid Sparse Attention as Ultralytics model layers.

All projections are Ultralytics ``Conv`` (1x1 conv + BatchNorm [+ SiLU]) so ``model.fuse()`` folds the BatchNorms.
The name ``PSA`` is taken in Ultralytics (YOLOv10's position-sensitive attention); this file never shadows it.
A PSA forward is one pass in one direction: project, coarse output (+ scores), select, fine, fuse. How the coarse
output and the scores are computed (per device, for export, per kernel) is decided in ``pst_yolo.scoring``, which
regions are refined in ``pst_yolo.selection``, which attention kernel runs in ``pst_yolo.attention``.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from pst_yolo import portable
from pst_yolo.attention import attention, in_export, log_once, resolve_backend
from pst_yolo.formats import coarse_reason, current_form
from pst_yolo.linear_attention import linear_attention
from pst_yolo.scoring import coarse_attention, coarse_scores
from pst_yolo.selection import select_fine_tokens
from pst_yolo.switches import (
    CPE_MODES,
    ENV_TRAIN_TOPK,
    INIT_KINDS,
    check_choice,
    check_branch_scale,
    check_switches,
    check_topk,
    env_topk,
    env_train_topk,
)

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
    at the 2x2 blocks under the top-k coarse keys (paper eqs. 1-6). An eval forward has no host synchronisation and a
    fixed number of ops with the ``lse`` score strategy (``pst_yolo.scoring``), so it can be captured in a CUDA graph.

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
        cpe (str): How the CPE, computed on the coarse grid, reaches the finer grid: ``"bilinear"`` (default, the
            authors' release), ``"nearest"`` (each coarse cell covers its 2x2 block; pst-yolo 0.1) or ``"none"`` (no CPE,
            no ``pe`` conv: an accuracy-study variant).

    Examples:
        >>> attn = PyramidSparseAttention(64).eval()
        >>> attn(torch.randn(2, 64, 20, 20), torch.randn(2, 64, 10, 10)).shape
        torch.Size([2, 64, 20, 20])
    """

    # Class-level defaults of the switches: checkpoints pickled before a switch existed load with the behaviour they
    # were trained with (pst-yolo 0.1 upsampled the CPE with "nearest").
    gating, shared_kv, attn, cpe = False, True, "softmax", "nearest"
    train_topk = 0  # fine attention in training forwards (PST_TRAIN_TOPK; 0: coarse-only training, the paper's)

    def __init__(
        self,
        c: int,
        topk: int = 8,
        threshold: float = THRESHOLD,
        backend: str | None = None,
        gating: bool = False,
        shared_kv: bool = True,
        attn: str = "softmax",
        cpe: str = "bilinear",
    ):
        super().__init__()
        hidden_width(c, 1.0, "PyramidSparseAttention")
        self.heads, self.head_dim = c // HEAD_DIM, HEAD_DIM
        self.scale = HEAD_DIM**-0.5
        self.threshold = float(threshold)
        self.backend = None if backend is None else resolve_backend(backend)
        env = env_topk()
        self.topk = check_topk(topk) if env is None else env
        self.train_topk = env_train_topk()
        self.q = Conv(c, c, 1, act=False)
        self.k = Conv(c, c, 1, act=False)
        self.v = Conv(c, c, 1, act=False)
        self.cpe = check_choice(cpe, "cpe", CPE_MODES, "PyramidSparseAttention")
        if self.cpe != "none":
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
        """Unpickling a checkpoint re-applies ``PST_TOPK`` so ``PST_TOPK=0 yolo val model=best.pt`` works (and
        ``PST_TRAIN_TOPK``, if set, so fine-tuning from a checkpoint can train the fine branch)."""
        super().__setstate__(state)
        env = env_topk()
        if env is not None:
            self.topk = env
        if os.environ.get(ENV_TRAIN_TOPK, "").strip():
            self.train_topk = env_train_topk()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, H*W, head_dim), contiguous: every kernel and the fine branch read it so."""
        if in_export() and current_form() == "portable":
            # reshape(..., -1), not unflatten (x2paddle has none) nor reshape(b, heads, d, h * w) (x2paddle then feeds
            # the query map into the key projection's reshape); in the ONNX graph form it would cost static shape
            # information (an If node in a dynamic export)
            return t.flatten(2).reshape(t.shape[0], self.heads, self.head_dim, -1).transpose(-2, -1).contiguous()
        return t.flatten(2).unflatten(1, (self.heads, self.head_dim)).transpose(-2, -1).contiguous()

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
        elif self.topk > 0 and not self.training and not self._coarse_export():
            out, scores = coarse_attention(q, k, v, self.scale, self.backend)
            fine = self.fine(x, q, scores, tuple(u.shape[-2:]))
        elif self.training and self.train_topk > 0:
            out = coarse_attention(q, k, v, self.scale, self.backend, scores=False)[0]
            with torch.no_grad():  # the selection is not differentiable; the fine attention over it is
                scores = coarse_scores(q, k, self.scale)
            fine = self.fine(x, q, scores, tuple(u.shape[-2:]), self.train_topk)
        else:
            out = coarse_attention(q, k, v, self.scale, self.backend, scores=False)[0]
        return self.fuse_outputs(out, fine, v_map, b, h, w)

    @staticmethod
    def _coarse_export() -> bool:
        """An export whose format cannot carry fine attention (``pst_yolo.formats``): coarse-only, said once."""
        if not (in_export() and current_form() == "coarse"):
            return False
        log_once(("coarse-export", coarse_reason()), f"WARNING pst-yolo: exporting PST coarse-only (k=0): "
                 f"{coarse_reason()}", level=30)
        return True

    def fine(self, x, q, scores, coarse_hw, topk: int | None = None) -> torch.Tensor:
        """Sparse fine attention of every query over the 2x2 blocks of the top-k coarse keys (``topk``, default
        ``self.topk``); (B, heads, N, head_dim).

        ``scores`` (B, heads, M) are the selection scores on the coarse grid ``coarse_hw``. Tokens that are not refined
        (below the threshold, clipped at an odd border) are masked; their values are zeroed too, so a (batch, head)
        with no refined token at all contributes exactly 0, with no branch on the data. Exports for converters
        without TopK/Gather trace the same computation in ``pst_yolo.portable``'s ops.
        """
        h, w = x.shape[-2:]
        topk = self.topk if topk is None else topk
        if in_export() and current_form() == "portable":
            onehot, above = portable.select_onehot(scores, topk, self.threshold)
            hot, inside = portable.block_onehot(onehot, coarse_hw, (h, w))
            hot = hot if hot.dtype == x.dtype else hot.to(x.dtype)
            # K/V convs over the whole finer map, then one-hot gathers: per-head weights in a batched MatMul are
            # mistaken for a fully-connected layer by XNNPACK (ExecuTorch) and LiteRT, convolutions are not.
            k, v = (self.k, self.v) if self.shared_kv else (self.k_fine, self.v_fine)
            kf, vf = hot @ self._heads(k(x)), hot @ self._heads(v(x))
            valid = inside * torch.cat([above] * 4, dim=-1)  # tokens are offset-major: [o * k, (o + 1) * k)
            return portable.masked_attention(q, kf, vf, valid.to(q.dtype), self.scale)
        index, valid = select_fine_tokens(scores, topk, self.threshold, coarse_hw[1], h, w)
        kf, vf = self._project_fine(self._gather(x, index))
        vf = torch.where(valid.unsqueeze(-1), vf, 0.0)
        # Half of finfo.min: finite after adding any logit (finfo.min plus a negative fp16 logit overflows to -inf, and
        # a row of -inf would be NaN), and still far enough below every real logit that its exp() is exactly 0.
        # (torch.where builds float32 from a Python scalar, hence float32's bound for float64.)
        mask = torch.where(valid, 0.0, max(torch.finfo(q.dtype).min, torch.finfo(torch.float32).min) / 2)
        mask = (mask if mask.dtype == q.dtype else mask.to(q.dtype)).unsqueeze(-2)
        return attention(q, kf, vf, mask=mask, scale=self.scale, backend=self.backend)

    def fuse_outputs(self, coarse, fine, v_map, b: int, h: int, w: int) -> torch.Tensor:
        """``proj(O_coarse + O_fine + CPE)`` (eq. 6), or the gated mix of eqs. 7-8; (B, C, H, W)."""
        if self.gating:
            out = self._gated(coarse, fine)
        else:
            out = coarse if fine is None else coarse + fine
        # b, h, w from the input's shape: traced symbolically, so a dynamic export keeps a dynamic batch and size
        out = out.transpose(-2, -1).reshape(b, self.heads * self.head_dim, h, w)
        return self.proj(out if self.cpe == "none" else out + self._cpe(v_map, h, w))

    def _cpe(self, v_map, h: int, w: int) -> torch.Tensor:
        """Convolutional positional encoding of the coarse values, on the finer (h, w) grid."""
        pe = self.pe(v_map)
        if self.cpe == "bilinear":
            return F.interpolate(pe, size=(h, w), mode="bilinear", align_corners=False)
        return F.interpolate(pe, scale_factor=2.0, mode="nearest")[..., :h, :w]

    def _gated(self, coarse: torch.Tensor, fine: torch.Tensor | None) -> torch.Tensor:
        """Self-gating fusion of eqs. 7-8 on (B, heads, N, d) outputs; ``fine=None`` (fine off) means zeros."""
        fine = torch.zeros_like(coarse) if fine is None else fine
        b, nh, n, d = coarse.shape
        # channels in the (head, d) order the output map uses: [0, c) coarse, [c, 2c) fine
        cat = torch.cat([coarse, fine], dim=1).transpose(-2, -1).reshape(b, 2 * nh * d, n)
        g = self.gate(cat).sigmoid().reshape(b, nh, d, n).transpose(-2, -1)
        return g * fine + (1 - g) * coarse

    def _gather(self, x, index):
        """The fine map's pixels at ``index`` (B, heads, T), per head: (B, heads, T, C)."""
        b, c = x.shape[:2]
        t = index.shape[-1]
        # (B, C, heads*T) -> (B, heads, T, C); the index, not the map, is expanded (no per-head copy of x).
        xg = x.flatten(2).gather(2, index.flatten(1).unsqueeze(1).expand(b, c, -1))
        return xg.reshape(b, c, self.heads, t).permute(0, 2, 3, 1)

    def _project_fine(self, xg):
        """Fine keys/values of gathered pixels (B, heads, T, C): the K/V projections applied only to the T pixels,
        each head using its own slice of the weights. The projections are pointwise affine maps in eval (1x1 conv +
        BN folded), so gathering first is exact and costs T/(H*W) of projecting the map."""
        (wk, bk), (wv, bv) = self._fine_projection(xg.dtype)
        return xg @ wk + bk, xg @ wv + bv  # (B, heads, T, d) each, contiguous as the kernels want them

    def _fine_projection(self, dtype):
        """Per-head fine K and V weights (heads, C, d) and biases (heads, 1, d), BatchNorm folded.

        Rebuilt only when a weight, a BN statistic, the dtype or the device changed (tensor version counters): in an
        eval loop the folding costs nothing, and no stale weights survive ``load_state_dict``, ``fuse()`` or a
        training step. Not cached while autograd, export or compilation need the computation in the graph, nor for
        inference tensors (weights made under ``torch.inference_mode``, e.g. fused there), which have no versions.
        """
        k, v = (self.k, self.v) if self.shared_kv else (self.k_fine, self.v_fine)
        tensors = [t for m in (k, v) for t in (*m.parameters(), *m.buffers())]
        cacheable = not (in_export() or torch.compiler.is_compiling() or any(t.is_inference() for t in tensors) or
                         (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))
        key = (dtype, *((t.data_ptr(), t._version) for t in tensors)) if cacheable else None
        cached = self.__dict__.get("_fine_cache")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        result = tuple(
            (w.view(self.heads, self.head_dim, -1).transpose(1, 2).to(dtype),
             b.view(self.heads, 1, self.head_dim).to(dtype))
            for w, b in (pointwise_affine(k), pointwise_affine(v))
        )
        if key is not None:
            self.__dict__["_fine_cache"] = (key, result)  # not a buffer: never saved, never moved by .to()
        return result

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fine_cache", None)  # derived from the weights: never pickled into checkpoints or EMA copies
        return state


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
        gating, shared_kv, attn, cpe: Switches, see ``PyramidSparseAttention``.
        init (str): ``"default"`` (PyTorch's conv init) or ``"trunc_normal"`` (the authors' release: every conv of the
            block trunc-normal with std 0.02, zero bias).
        layer_scale (float | None): Initial weight of the BatchNorm that ends each residual branch (attention ``proj``
            and the MLP's second conv); None keeps BatchNorm's 1. 0 starts the block as the identity (zero-init
            residual); the BN weight stays a learnable per-channel scale and folds away in ``fuse()``.
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
        init="trunc_normal",
        cpe="bilinear",
        layer_scale=None,
    ):
        super().__init__()
        ch = int(c * mlp_ratio)
        self.attn = PyramidSparseAttention(c, topk, threshold, backend, gating, shared_kv, attn, cpe)
        self.mlp = nn.Sequential(Conv(c, ch, 1), Conv(ch, c, 1, act=False))
        if check_choice(init, "init", INIT_KINDS, "PSTBlock") == "trunc_normal":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        layer_scale = check_branch_scale(layer_scale, "layer_scale", "PSTBlock", optional=True)
        if layer_scale is not None:
            for branch_end in (self.attn.proj, self.mlp[-1]):
                nn.init.constant_(branch_end.bn.weight, layer_scale)

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
        init (str): Conv init of the PSA blocks, ``"default"`` or ``"trunc_normal"`` (see ``PSTBlock``).
        cpe (str): CPE upsampling, ``"nearest"``, ``"bilinear"`` or ``"none"`` (no CPE).
        layer_scale (float | None): Initial weight of each residual branch's last BatchNorm (see ``PSTBlock``).
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
        init="trunc_normal",
        cpe="bilinear",
        layer_scale=None,
    ):
        super().__init__()
        c_ = hidden_width(c2, e)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"PST: n (stacked PSA blocks) must be a positive integer, got {n!r}")
        gating, shared_kv, attn = check_switches(gating, shared_kv, attn, "PST")
        self.cv1 = Conv(c1, c_, 1)
        self.cvup = Conv(c_up, c_, 1)
        self.m = nn.ModuleList(
            PSTBlock(c_, mlp_ratio, k, threshold, backend, gating, shared_kv, attn, init, cpe, layer_scale)
            for _ in range(n)
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


class C3k2PST(nn.Module):
    """The stock C3k2 fusion block plus a PST on its output as a residual branch that starts at zero.

    ``y = C3k2(x)``, ``out = y + PST([y, u])``, with the PST's output BatchNorm weight initialised to 0, so a new
    C3k2PST computes exactly the C3k2 it replaces (the residual is ``SiLU(0) = 0``) and training only adds what the
    attention earns. Its C3k2 parameters keep the stock names (``cv1``, ``cv2``, ``m``): ``pretrained=yolo11n.pt`` loads
    the stock block into it, and the model starts from the stock checkpoint's function. pst-yolo's recommended models
    use it at the P4 fusion (docs/accuracy.md).

    YAML row: ``[[finer, coarser], n, C3k2PST, [c2, c3k, e, {PST args}]]``; ``n`` is the C3k2 repeat count (depth
    scaled), c3k is forced on at the m/l/x scales as for a stock C3k2, PST args as for a PST row (``pst_yolo.switches``)
    plus ``residual_init``.

    Args:
        c1 (int): Channels of the finer input x (B, c1, H, W).
        c_up (int): Channels of the coarser input u (B, c_up, ceil(H/2), ceil(W/2)).
        c2 (int): Output channels (of the C3k2 and of the PST).
        n (int): C3k2 repeats.
        c3k (bool): C3k blocks inside the C3k2 (as Ultralytics' ``C3k2``).
        e (float): C3k2 hidden ratio.
        pst (dict | None): Keyword arguments of the residual ``PST(c2, c_up, c2, **pst)``.
        residual_init (float): Initial weight of the PST's output BatchNorm. 0 (default) starts the block as the stock
            C3k2; a positive value starts the branch active (a study probe: at the CPU budgets of docs/accuracy.md a
            zero-started branch stays small, and one started at 0.3 or 1.0 did not score better).

    Examples:
        >>> m = C3k2PST(192, 256, 128).eval()
        >>> m([torch.randn(1, 192, 40, 40), torch.randn(1, 256, 20, 20)]).shape
        torch.Size([1, 128, 40, 40])
    """

    def __init__(self, c1, c_up, c2, n=1, c3k=False, e=0.5, pst=None, residual_init=0.0):
        super().__init__()
        from ultralytics.nn.modules.block import C3k2

        # a YAML row was checked already, by the channel rule, with the layer index in its errors
        residual_init = check_branch_scale(residual_init, "residual_init", "C3k2PST")
        stock = C3k2(c1, c2, n, c3k, e)
        self.c, self.cv1, self.cv2, self.m = stock.c, stock.cv1, stock.cv2, stock.m  # the stock parameter names
        self.pst = PST(c2, c_up, c2, **(pst or {}))
        nn.init.constant_(self.pst.cv2.bn.weight, residual_init)  # 0: the residual branch starts at exactly 0

    def forward(self, xs) -> torch.Tensor:
        """``[x, u]`` with x (B, c1, H, W), u (B, c_up, ceil(H/2), ceil(W/2)) -> (B, c2, H, W)."""
        if not isinstance(xs, (list, tuple)) or len(xs) != 2:
            where = f"C3k2PST layer {self.i}" if hasattr(self, "i") else "C3k2PST"
            raise ValueError(f"{where}: expects [finer, coarser] feature maps, got {type(xs).__name__}")
        x, u = xs
        y = list(self.cv1(x).chunk(2, 1))  # C2f.forward, the stock C3k2's
        y.extend(m(y[-1]) for m in self.m)
        y = self.cv2(torch.cat(y, 1))
        return y + self.pst([y, u])
