"""Pyramid Sparse Transformer (PST) and Pyramid Sparse Attention as Ultralytics model layers.

All projections are Ultralytics ``Conv`` (1x1 conv + BatchNorm [+ SiLU]) so ``model.fuse()`` folds the BatchNorms.
The name ``PSA`` is taken in Ultralytics (YOLOv10's position-sensitive attention); this file never shadows it.

How a PSA forward flows (one pass, one direction; each step names the module that decides it):

1. form: ``pst_yolo.fine.fine_form()`` picks the form of this forward once, from the export state
   (``pst_yolo.tracing``): eager (also exports in the ``graph`` form), ``portable`` or ``coarse``-only.
2. project: the 1x1 Q (finer map), K and V (coarser map) convs, split into heads of 32 by the form.
3. coarse output and scores: ``pst_yolo.scoring`` computes ``softmax(q k^T / sqrt(d)) v`` and, when regions are
   refined, the selection scores ``s_j = mean_i P_ij``, per device, kernel (``pst_yolo.attention``) and export.
4. fine: the form selects the top-k regions (``pst_yolo.selection``, or ``pst_yolo.portable``'s ops), gathers the
   2x2 fine tokens under them, projects them with the same K/V convs and attends to them: ``O_fine`` over the tokens
   alone (fusion ``add``), or the whole output over the unrefined coarse keys and the tokens (``joint``, the default).
5. fuse: ``proj(O + CPE)`` with ``O = O_coarse + O_fine`` (``add``, eq. 6) or the joint output, the CPE a 7x7
   depthwise conv of the coarse values upsampled to the finer grid.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from pst_yolo.attention import resolve_backend
from pst_yolo.fine import fine_form
from pst_yolo.linear_attention import linear_attention
from pst_yolo.log import log_once
from pst_yolo.scoring import coarse_attention, coarse_attention_training
from pst_yolo.tracing import in_export
from pst_yolo.switches import (
    CPE_MODES,
    ENV_TRAIN_TOPK,
    FUSIONS,
    INIT_KINDS,
    check_choice,
    check_flag,
    check_branch_scale,
    check_switches,
    check_topk,
    env_fusion,
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


class CheckpointedAttention(nn.Module):
    """How a PyramidSparseAttention is pickled and copied: the environment's fine settings apply when a checkpoint is
    loaded, a copy keeps what the live module was given, and derived caches never travel."""

    def __setstate__(self, state):
        """Unpickling a checkpoint re-applies ``PST_TOPK`` and ``PST_FUSION``, so ``PST_TOPK=0 yolo val model=best.pt``
        works (and ``PST_TRAIN_TOPK``, if set, so fine-tuning from a checkpoint can train the fine branch)."""
        super().__setstate__(state)
        env = env_topk()
        if env is not None:
            self.topk = env
        self.fusion = "add" if self.gating else env_fusion() or self.fusion
        if os.environ.get(ENV_TRAIN_TOPK, "").strip():
            self.train_topk = env_train_topk()

    def __deepcopy__(self, memo):
        """A copy keeps the k it was given (``set_topk``): the environment applies when a checkpoint is loaded, not on
        the copies Ultralytics makes (the validator's, the EMA)."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        nn.Module.__setstate__(new, copy.deepcopy(self.__getstate__(), memo))
        return new

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fine_cache", None)  # derived from the weights (pst_yolo.fine): never in checkpoints or EMA copies
        return state


class PyramidSparseAttention(CheckpointedAttention):
    """Pyramid Sparse Attention: coarse cross-attention to the coarser map plus top-k sparse fine attention.

    Queries come from the finer map ``x`` (B, C, H, W); keys/values from the coarser map ``u`` (B, C, ceil(H/2),
    ceil(W/2)). Fine attention runs only in eval mode with ``topk > 0`` and reuses the same K/V projections on ``x``
    at the 2x2 blocks under the top-k coarse keys (paper eqs. 1-6). An eval forward has no host synchronisation and a
    fixed number of ops with the ``lse`` score strategy, so it can be captured in a CUDA graph. The steps of a forward
    and the module behind each are listed in this module's docstring.

    Args:
        c (int): Channels of both inputs and of the output; a multiple of 32 (head dim).
        topk (int): Coarse regions refined per head at inference; 0 = coarse only.
        threshold (float): Minimum mean attention probability for a region to be refined.
        backend (str | None): Attention kernel (see ``pst_yolo.attention``); None follows ``$PST_ATTN``.
        gating, shared_kv, attn: The Table 4c-e ablations (``pst_yolo.switches``): gated fusion of coarse and fine
            (eqs. 7-8, ``gated_mix``), separate fine K/V convs (``k_fine``, ``v_fine``), linear coarse attention
            ``"relu"`` / ``"elu"`` (no probabilities, so no fine branch).
        cpe (str): CPE upsampling to the finer grid: ``"bilinear"`` (default, the authors' release), ``"nearest"``
            (pst-yolo 0.1) or ``"none"`` (no CPE: an accuracy-study variant).
        fusion (str): How fine attention joins the coarse output: ``"joint"`` (default: one softmax over the unrefined
            coarse keys and the refined regions' fine tokens, the output a convex combination of values) or ``"add"``
            (the paper's eq. 6, ``O_coarse + O_fine``); ``PST_FUSION`` overrides. docs/accuracy.md says why.

    Examples:
        >>> attn = PyramidSparseAttention(64).eval()
        >>> attn(torch.randn(2, 64, 20, 20), torch.randn(2, 64, 10, 10)).shape
        torch.Size([2, 64, 20, 20])
    """

    # Class-level defaults of the switches: checkpoints pickled before a switch existed load with the behaviour they
    # were trained with (pst-yolo 0.1 upsampled the CPE with "nearest"; before 0.4 fine attention was added, eq. 6).
    gating, shared_kv, attn, cpe, fusion = False, True, "softmax", "nearest", "add"
    train_topk = 0  # fine attention in training forwards (PST_TRAIN_TOPK; 0: coarse-only training, the paper's)
    fine_k = None  # the k this layer was built with, while training validates at train_topk (pst_yolo.training)

    def __init__(self, c: int, topk: int = 8, threshold: float = THRESHOLD, backend: str | None = None,
                 gating: bool = False, shared_kv: bool = True, attn: str = "softmax", cpe: str = "bilinear",
                 fusion: str = "joint"):
        super().__init__()
        hidden_width(c, 1.0, "PyramidSparseAttention")
        self.heads, self.head_dim, self.scale = c // HEAD_DIM, HEAD_DIM, HEAD_DIM**-0.5
        self.threshold = float(threshold)
        self.backend = None if backend is None else resolve_backend(backend)
        env = env_topk()
        self.topk = self.fine_k = check_topk(topk) if env is None else env
        self.train_topk = env_train_topk()
        self.q, self.k, self.v = (Conv(c, c, 1, act=False) for _ in range(3))
        self.cpe = check_choice(cpe, "cpe", CPE_MODES, "PyramidSparseAttention")
        if self.cpe != "none":
            self.pe = Conv(c, c, 7, g=c, act=False)  # CPE on the coarse grid
        self.proj = Conv(c, c, 1, act=False)  # created after pe, as always: the same seed gives the same weights
        self.gating, self.shared_kv, self.attn = check_switches(gating, shared_kv, attn, "PyramidSparseAttention")
        fusion = env_fusion() or check_choice(fusion, "fusion", FUSIONS, "PyramidSparseAttention")
        self.fusion = "add" if self.gating else fusion  # the gate (eqs. 7-8) mixes O_coarse and O_fine itself
        if self.gating:
            self.gate = nn.Conv1d(2 * c, c, 1)  # eq. 7's Conv1d: one linear map per token of concat(O_c, O_f)
        if not self.shared_kv:
            self.k_fine, self.v_fine = Conv(c, c, 1, act=False), Conv(c, c, 1, act=False)
        if self.attn != "softmax" and self.topk > 0:
            self._log_linear_topk()

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Attend from ``x`` (B, C, H, W) to ``u`` (B, C, ceil(H/2), ceil(W/2)); returns (B, C, H, W)."""
        b, c, h, w = x.shape
        form = fine_form()  # eager, or the form this export carries (pst_yolo.fine)
        v_map = self.v(u)
        q, k, v = (form.heads(t, self.heads, self.head_dim) for t in (self.q(x), self.k(u), v_map))
        topk = form.topk(self.train_topk if self.training else self.topk)
        out, scores = self.coarse(q, k, v, topk, output=form.coarse_output(self.fusion, topk))
        fine = None if scores is None else self.fine_branch(form, x, q, k, v, scores, tuple(u.shape[-2:]), topk)
        out = self.mix(out, fine)
        # b, h, w from the input's shape: traced symbolically, so a dynamic export keeps a dynamic batch and size
        out = out.transpose(-2, -1).reshape(b, self.heads * self.head_dim, h, w)
        return self.proj(out if self.cpe == "none" else out + self._cpe(v_map, h, w))

    def coarse(self, q, k, v, topk: int, output: bool = True):
        """Coarse output (B, heads, N, d) and, when ``topk`` regions are refined, the selection scores (B, heads, M);
        ``output=False`` (an eval forward with scores): the scores alone, the output None."""
        if self.attn != "softmax":
            if topk > 0:
                self._log_linear_topk()
            return linear_attention(q, k, v, self.attn), None
        if self.training:
            return coarse_attention_training(q, k, v, self.scale, self.backend, scores=topk > 0)  # pst_yolo.scoring
        return coarse_attention(q, k, v, self.scale, self.backend, scores=topk > 0, output=output or topk == 0)

    def fine_branch(self, form, x, q, k, v, scores, coarse_hw, topk: int) -> torch.Tensor:
        """The fine branch in ``form`` (``pst_yolo.fine``): ``O_fine`` for the paper's additive fusion, the whole output
        for the ``joint`` one (one softmax over the unrefined coarse keys and the refined regions' fine tokens)."""
        if self.fusion == "joint":
            return form.joint(self, x, q, k, v, scores, coarse_hw, topk)
        return form.fine(self, x, q, scores, coarse_hw, topk)

    def mix(self, coarse: torch.Tensor, fine: torch.Tensor | None) -> torch.Tensor:
        """``O_coarse + O_fine`` (eq. 6; ``fine=None``: fine attention off), the joint output as it is, or the gated mix
        of eqs. 7-8."""
        if self.gating:
            return gated_mix(self.gate, coarse, fine)
        return coarse if fine is None else fine if self.fusion == "joint" else coarse + fine

    def fine(self, x, q, scores, coarse_hw, topk: int | None = None) -> torch.Tensor:
        """The fine branch alone (``pst_yolo.fine``), (B, heads, N, d); ``topk`` defaults to ``self.topk``."""
        return fine_form().fine(self, x, q, scores, coarse_hw, self.topk if topk is None else topk)

    def fine_kv(self):
        """The convs that project the fine keys and values: the coarse ones (shared, Table 4e) or their own."""
        return (self.k, self.v) if self.shared_kv else (self.k_fine, self.v_fine)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, H*W, head_dim) in the current form's layout."""
        return fine_form().heads(t, self.heads, self.head_dim)

    def _cpe(self, v_map, h: int, w: int) -> torch.Tensor:
        """Convolutional positional encoding of the coarse values, on the finer (h, w) grid."""
        return upsample(self.pe(v_map), h, w, self.cpe)

    def _log_linear_topk(self):
        log_once("linear-attn-topk", f"pst-yolo: linear attention ({self.attn!r}) has no attention probabilities to "
                 f"select from; fine attention is off for it (requested k={self.topk} is ignored)", level=30)


def upsample(pe: torch.Tensor, h: int, w: int, mode: str) -> torch.Tensor:
    """The coarse-grid CPE on the finer (h, w) grid: bilinear (half-pixel centres), or each cell over its 2x2 block."""
    if mode == "bilinear":
        return F.interpolate(pe, size=(h, w), mode="bilinear", align_corners=False)
    return F.interpolate(pe, scale_factor=2.0, mode="nearest")[..., :h, :w]


def gated_mix(gate: nn.Conv1d, coarse: torch.Tensor, fine: torch.Tensor | None) -> torch.Tensor:
    """Self-gating fusion of eqs. 7-8 on (B, heads, N, d) outputs: ``g * O_fine + (1 - g) * O_coarse`` with ``g =
    sigmoid(gate(concat(O_coarse, O_fine)))`` per token; ``fine=None`` (fine off) means zeros, so the gate still scales
    ``O_coarse`` and the fine half of its weights gets no gradient in coarse-only training."""
    fine = torch.zeros_like(coarse) if fine is None else fine
    b, nh, n, d = coarse.shape
    # channels in the (head, d) order the output map uses: [0, c) coarse, [c, 2c) fine
    cat = torch.cat([coarse, fine], dim=1).transpose(-2, -1).reshape(b, 2 * nh * d, n)
    g = gate(cat).sigmoid().reshape(b, nh, d, n).transpose(-2, -1)
    return g * fine + (1 - g) * coarse


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
        fusion (str): How fine attention joins the coarse output (see ``PyramidSparseAttention``).
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
        fusion="joint",
    ):
        super().__init__()
        ch = int(c * mlp_ratio)
        self.attn = PyramidSparseAttention(c, topk, threshold, backend, gating, shared_kv, attn, cpe, fusion)
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
        fusion (str): How fine attention joins the coarse output, ``"add"`` or ``"joint"`` (``PyramidSparseAttention``).
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
        fusion="joint",
    ):
        super().__init__()
        c_ = hidden_width(c2, e)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"PST: n (stacked PSA blocks) must be a positive integer, got {n!r}")
        gating, shared_kv, attn = check_switches(gating, shared_kv, attn, "PST")
        self.cv1 = Conv(c1, c_, 1)
        self.cvup = Conv(c_up, c_, 1)
        self.m = nn.ModuleList(
            PSTBlock(c_, mlp_ratio, k, threshold, backend, gating, shared_kv, attn, init, cpe, layer_scale, fusion)
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


@contextlib.contextmanager
def own_random_stream():
    """Build a new branch on a random stream of its own: torch's global generator is left exactly where it was.

    Ultralytics draws every layer's initial weights from one global stream in model order, so a branch that drew from
    it would re-draw every layer built after it (a detection head's new class convs on the fine-tuning path
    included). Seeded by a hash of the global state, the branch's own stream is deterministic under a seeded
    ``yolo train`` and differs from layer to layer. A residual model then starts bit for bit as the stock model at the
    same seed, from scratch and on ``pretrained=`` alike (tests/test_zoo.py), and PST against stock is paired by
    construction: the seed no longer re-draws the rest of the network."""
    state = torch.get_rng_state()
    seed = int.from_bytes(hashlib.blake2b(state.numpy().tobytes(), digest_size=8).digest(), "little")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class C3k2PST(nn.Module):
    """The stock C3k2 fusion block plus a PST on its output as a residual branch that starts at zero.

    ``y = C3k2(x)``, ``out = y + PST([y, u])``, with the PST's output BatchNorm weight initialised to 0, so a new
    C3k2PST computes exactly the C3k2 it replaces (the residual is ``SiLU(0) = 0``) and training only adds what the
    attention earns. The branch draws its initial weights from a random stream of its own (``own_random_stream``),
    so at a given seed every other tensor of the model is the stock model's. Its C3k2 parameters keep the stock names (``cv1``, ``cv2``, ``m``): ``pretrained=yolo11n.pt`` loads
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
        branch (bool): A study probe: False builds the PST but never adds it: the stock C3k2 with the residual model's
            initialisation (which, since the branch draws from its own stream, is the stock model's at that seed).

    Examples:
        >>> m = C3k2PST(192, 256, 128).eval()
        >>> m([torch.randn(1, 192, 40, 40), torch.randn(1, 256, 20, 20)]).shape
        torch.Size([1, 128, 40, 40])
    """

    branch = True  # the residual PST is added (checkpoints from before the switch)

    def __init__(self, c1, c_up, c2, n=1, c3k=False, e=0.5, pst=None, residual_init=0.0, branch=True):
        super().__init__()
        from ultralytics.nn.modules.block import C3k2

        # a YAML row was checked already, by the channel rule, with the layer index in its errors
        residual_init = check_branch_scale(residual_init, "residual_init", "C3k2PST")
        stock = C3k2(c1, c2, n, c3k, e)
        self.c, self.cv1, self.cv2, self.m = stock.c, stock.cv1, stock.cv2, stock.m  # the stock parameter names
        with own_random_stream():  # every later layer then starts as the stock model's does at the same seed
            self.pst = PST(c2, c_up, c2, **(pst or {}))
        nn.init.constant_(self.pst.cv2.bn.weight, residual_init)  # 0: the residual branch starts at exactly 0
        self.branch = check_flag(branch, "branch", "C3k2PST")

    def forward(self, xs) -> torch.Tensor:
        """``[x, u]`` with x (B, c1, H, W), u (B, c_up, ceil(H/2), ceil(W/2)) -> (B, c2, H, W)."""
        if not isinstance(xs, (list, tuple)) or len(xs) != 2:
            where = f"C3k2PST layer {self.i}" if hasattr(self, "i") else "C3k2PST"
            raise ValueError(f"{where}: expects [finer, coarser] feature maps, got {type(xs).__name__}")
        x, u = xs
        y = list(self.cv1(x).chunk(2, 1))  # C2f.forward, the stock C3k2's
        y.extend(m(y[-1]) for m in self.m)
        y = self.cv2(torch.cat(y, 1))
        return y + self.pst([y, u]) if self.branch else y
