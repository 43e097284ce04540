"""The fine branch of Pyramid Sparse Attention (paper eqs. 3-5), one implementation per form of the forward.

Every query attends to the 2x2 fine tokens under the top-k coarse regions of its (batch, head), whose keys and values
are the coarse K/V projections applied to the finer map (Table 4e's parameter sharing). A form computes this for the
layer's fusion (B, heads, N, d):

- :meth:`FineForm.fine` (fusion ``add``, the paper's eq. 6): the fine attention output, added to the coarse one by the
  layer. Tokens that are not refined (below the threshold, clipped at an odd border) are masked and their values
  zeroed, so a (batch, head) with no refined token contributes exactly 0, with no branch on the data.
- :meth:`FineForm.joint` (fusion ``joint``): the whole output, one softmax over the coarse keys whose regions are not
  refined and the refined regions' fine tokens, their logits lowered by log 4 (a convex combination of values, equal
  to the coarse output where a region's tokens repeat its key and value).

:func:`fine_form` picks the form once per forward from the export state (``pst_yolo.tracing``):

- ``EAGER``: every eager forward, and exports in the ``graph`` form: sort/TopK selection (``pst_yolo.selection``), one
  gather of the blocks' pixels, the K/V projections applied to those pixels only (BatchNorm folded, cached), masked
  attention through the kernel switch (``pst_yolo.attention``).
- ``PORTABLE``: exports in the ``portable`` form: the same computation in ops every converter has
  (``pst_yolo.portable``: max-and-mask top-k, one-hot matrix-product gathers, the mask as a key column).
- ``COARSE``: exports in the ``coarse`` form: no fine branch (k = 0), with a one-time warning naming the reason.

Each form also splits a map into heads the way its converters need it (:meth:`FineForm.heads`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from pst_yolo import portable
from pst_yolo.attention import attention
from pst_yolo.log import log_once
from pst_yolo.scoring import explicit_attention, export_rows
from pst_yolo.selection import select_fine_tokens
from pst_yolo.tracing import coarse_reason, current_form, in_export, is_fake, onnx_opset_below, static_export_enabled


class FineForm:
    """How one PSA forward splits heads and computes its fine attention; the eager/graph form."""

    name = "eager"

    def topk(self, k: int) -> int:
        """The regions this form refines when the layer asks for ``k``."""
        return k

    def coarse_output(self, fusion: str, topk: int) -> bool:
        """Whether the coarse pass must return its output, or the selection scores alone: the ``joint`` fusion takes
        the whole output from its own pass over the unrefined coarse keys and the fine tokens, so with regions to
        refine the coarse output would be computed only to be dropped (the same in every form)."""
        return not (topk > 0 and fusion == "joint")

    def heads(self, t: torch.Tensor, heads: int, d: int) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, H*W, d), contiguous: every kernel and the fine branch read it so."""
        if in_export() and onnx_opset_below(13):  # ONNX has no unflatten before opset 13; sizes from the shape
            b, _, h, w = t.shape
            return t.reshape(b, heads, d, h * w).transpose(-2, -1).contiguous()
        return t.flatten(2).unflatten(1, (heads, d)).transpose(-2, -1).contiguous()

    def fine(self, attn, x, q, scores, coarse_hw, topk: int) -> torch.Tensor:
        """Fine attention of the queries ``q`` (B, heads, N, d) over the blocks of the top-``topk`` coarse keys by
        ``scores`` (B, heads, M) on the coarse grid ``coarse_hw``; ``x`` is the finer map (B, C, H, W) of ``attn``."""
        h, w = x.shape[-2:]
        index, valid = select_fine_tokens(scores, topk, attn.threshold, coarse_hw[1], h, w)
        kf, vf = project_fine(attn, gather(x, index, attn.heads))
        vf = torch.where(valid.unsqueeze(-1), vf, 0.0)
        return attention(q, kf, vf, mask=_mask(valid, q.dtype), scale=attn.scale, backend=attn.backend)

    def joint(self, attn, x, q, k, v, scores, coarse_hw, topk: int) -> torch.Tensor:
        """One softmax over the coarse keys ``k`` / values ``v`` (B, heads, M, d) whose regions are not refined and the
        fine tokens of those that are, each fine logit lowered by log 4 (the ``joint`` fusion: a region whose four
        tokens equal its coarse key keeps its weight, and the output stays a convex combination of values)."""
        h, w = x.shape[-2:]
        index, valid, coarse, refined = select_fine_tokens(scores, topk, attn.threshold, coarse_hw[1], h, w, True)
        kf, vf = project_fine(attn, gather(x, index, attn.heads))
        # A token is valid only in a refined region (and a refined region has a valid token): ``valid`` is all it takes.
        # No row is fully masked (the unrefined coarse keys, or the refined ones' tokens, remain), so the masked tokens'
        # values (finite: gathered in range) get a weight of exactly 0 and need no zeroing.
        keys, values = torch.cat([k, kf], dim=-2), torch.cat([v, vf], dim=-2)
        replaced = _replaced(coarse, refined, scores)
        if in_export():  # no constants of the traced sizes: a dynamic export runs at every image size
            mask = torch.cat([_mask(~replaced, q.dtype), _mask(valid, q.dtype) - LOG4], dim=-1)
            # explicit, in query chunks in a static export: the (N, M + 4k) map is never whole (onnxruntime at
            # 1280 px held 1.5 GB for it in one piece)
            rows = export_rows(q, keys.shape[-2])
            return explicit_attention(q, keys, values, attn.scale, rows, scores=False, bias=mask)[0]
        else:  # where(replaced coarse key | valid fine token, [-big.. | -log 4..], [0.. | -big..]): one select
            on, off = _joint_logits(k.shape[-2], valid.shape[-1], q.dtype, q.device)
            mask = torch.where(torch.cat([replaced, valid], dim=-1), on, off).unsqueeze(-2)
        return attention(q, keys, values, mask=mask, scale=attn.scale, backend=attn.backend)


class PortableForm(FineForm):
    """The fine branch in ops every export converter has (``pst_yolo.portable``); static shapes."""

    name = "portable"

    def heads(self, t, heads, d):
        # reshape(..., -1), not unflatten (x2paddle has none) nor reshape(b, heads, d, h * w) (x2paddle then feeds the
        # query map into the key projection's reshape); in the graph form it would cost static shape information (an
        # If node in a dynamic ONNX export)
        return t.flatten(2).reshape(t.shape[0], heads, d, -1).transpose(-2, -1).contiguous()

    def fine(self, attn, x, q, scores, coarse_hw, topk):
        kf, vf, valid, _, _ = self._tokens(attn, x, scores, coarse_hw, topk)
        return portable.masked_attention(q, kf, vf, valid.to(q.dtype), attn.scale)

    def joint(self, attn, x, q, k, v, scores, coarse_hw, topk):
        kf, vf, valid, onehot, refined = self._tokens(attn, x, scores, coarse_hw, topk)
        replaced = (onehot * refined.unsqueeze(-1)).sum(dim=-2)  # (B, heads, M) 1 where a coarse key is replaced
        keys, values = torch.cat([k, kf], dim=-2), torch.cat([v, vf], dim=-2)
        keep = torch.cat([1.0 - replaced, valid], dim=-1).to(q.dtype)
        bias = torch.cat([replaced * 0.0, valid * 0.0 - LOG4], dim=-1).to(q.dtype)
        rows = export_rows(q, keys.shape[-2]) or q.shape[-2]  # static shapes: query chunks of bounded size
        return torch.cat([portable.masked_attention(q[..., i : i + rows, :], keys, values, keep, attn.scale, bias)
                          for i in range(0, q.shape[-2], rows)], dim=-2)

    def _tokens(self, attn, x, scores, coarse_hw, topk):
        """Fine keys, values and validity (offset-major), the chosen regions' one-hots (B, heads, k, M) and which of
        them are refined (float)."""
        h, w = x.shape[-2:]
        onehot, above = portable.select_onehot(scores, topk, attn.threshold)
        hot, inside = portable.block_onehot(onehot, coarse_hw, (h, w))
        hot = hot if hot.dtype == x.dtype else hot.to(x.dtype)
        # K/V convs over the whole finer map, then one-hot gathers: per-head weights in a batched MatMul are mistaken
        # for a fully-connected layer by XNNPACK (ExecuTorch) and LiteRT, convolutions are not.
        k, v = attn.fine_kv()
        kf, vf = hot @ self.heads(k(x), attn.heads, attn.head_dim), hot @ self.heads(v(x), attn.heads, attn.head_dim)
        valid = inside * torch.cat([above] * 4, dim=-1)  # tokens are offset-major: [o * k, (o + 1) * k)
        # a region above the threshold always has a valid token: its first, (2r, 2c), lies inside even an odd map
        return kf, vf, valid, onehot, above


class CoarseOnlyForm(FineForm):
    """An export whose format can carry no fine branch (``pst_yolo.formats.COARSE_ONLY``): k = 0, said once."""

    name = "coarse"

    def topk(self, k):
        if k > 0:
            log_once(("coarse-export", coarse_reason()),
                     f"WARNING pst-yolo: exporting PST coarse-only (k=0): {coarse_reason()}", level=30)
        return 0


LOG4 = math.log(4.0)
EAGER, PORTABLE, COARSE = FineForm(), PortableForm(), CoarseOnlyForm()
_TRACED = {"graph": EAGER, "portable": PORTABLE, "coarse": COARSE}


def fine_form() -> FineForm:
    """The form of this forward: eager unless a tracer records it for export, then the export's form."""
    return _TRACED[current_form()] if in_export() else EAGER


def _mask(keep: torch.Tensor, dtype) -> torch.Tensor:
    """Additive attention mask (B, heads, 1, T): 0 where ``keep``, else a large negative number. Half of finfo.min:
    finite after adding any logit (finfo.min plus a negative fp16 logit overflows to -inf, and a row of -inf would be
    NaN), and still far enough below every real logit that its exp() is exactly 0. (torch.where builds float32 from a
    Python scalar, hence float32's bound for float64.)"""
    mask = torch.where(keep, 0.0, max(torch.finfo(dtype).min, torch.finfo(torch.float32).min) / 2)
    return (mask if mask.dtype == dtype else mask.to(dtype)).unsqueeze(-2)


def _replaced(coarse: torch.Tensor, refined: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Bool (B, heads, M): the coarse keys whose regions are refined (``coarse`` (B, heads, k) indices, ``refined``
    which of them count, ``scores`` (B, heads, M)). Traced for export as comparisons with 0..M-1 (a padded export
    selection holds indices >= M, which a scatter would write out of bounds; the exported graph keeps to
    ``pst_yolo.export.TENSORRT_ONNX_OPS``, which has no scatter)."""
    if in_export():
        if torch.jit.is_tracing() and not static_export_enabled():
            # 0..M-1 as a traced computation: the jit tracer (TorchScript, the ONNX exporter) folds ``scores.shape[-1]``
            # and ``torch.arange`` of it into constants, which would fix a dynamic export to the image size it was
            # traced at. ``x == x | x != x`` is True for every value, NaN and inf included, so the positions follow
            # the shape and never the data (a NaN input gives NaN out, as stock does, not a bad range). A static export
            # keeps the constant: its tensors' sizes stay readable (tests/test_export_cost.py).
            row = scores[:1, :1]
            positions = ((row == row) | (row != row)).to(torch.int64).cumsum(-1).reshape(-1) - 1
        else:
            positions = torch.arange(scores.shape[-1], device=coarse.device)  # torch.export keeps the size symbolic
        return ((coarse.unsqueeze(-1) == positions) & refined.unsqueeze(-1)).any(-2)
    return torch.zeros(scores.shape, dtype=torch.bool, device=coarse.device).scatter(-1, coarse, refined)


def _logit_pair(m: int, t: int, dtype, device) -> tuple:
    big = max(torch.finfo(dtype).min, torch.finfo(torch.float32).min) / 2  # as in _mask

    def vector(coarse, fine):
        return torch.cat([torch.full((m,), coarse, dtype=dtype, device=device),
                          torch.full((t,), fine, dtype=dtype, device=device)])

    return vector(big, -LOG4), vector(0.0, big)


_cached_logit_pair = functools.lru_cache(maxsize=64)(_logit_pair)


def _joint_logits(m: int, t: int, dtype, device) -> tuple:
    """The joint fusion's mask values over M coarse keys and T fine tokens, as (where flagged, where not): a flagged
    coarse key (its region refined) is masked, a flagged fine token (valid) gets -log 4, an unflagged coarse key 0 and
    an unflagged token is masked. Constants per size, cached like the block table (computed while compiling or on fake
    tensors, which must not be cached)."""
    if torch.compiler.is_compiling() or torch._guards.detect_fake_mode() is not None:
        return _logit_pair(m, t, dtype, device)
    with torch.inference_mode(False), torch.no_grad():
        return _cached_logit_pair(m, t, dtype, device)


def gather(x: torch.Tensor, index: torch.Tensor, heads: int) -> torch.Tensor:
    """The fine map's pixels at ``index`` (B, heads, T), per head: (B, heads, T, C)."""
    b, c = x.shape[:2]
    t = index.shape[-1]
    # (B, C, heads*T) -> (B, heads, T, C); the index, not the map, is expanded (no per-head copy of x).
    xg = x.flatten(2).gather(2, index.flatten(1).unsqueeze(1).expand(b, c, -1))
    return xg.reshape(b, c, heads, t).permute(0, 2, 3, 1)


def project_fine(attn, xg):
    """Fine keys/values of gathered pixels (B, heads, T, C): the K/V projections applied only to the T pixels, each
    head using its own slice of the weights. The projections are pointwise affine maps in eval (1x1 conv + BN folded),
    so gathering first is exact and costs T/(H*W) of projecting the map."""
    (wk, bk), (wv, bv) = fine_projection(attn, xg.dtype)
    return xg @ wk + bk, xg @ wv + bv  # (B, heads, T, d) each, contiguous as the kernels want them


def fine_projection(attn, dtype):
    """Per-head fine K and V weights (heads, C, d) and biases (heads, 1, d) of ``attn``, BatchNorm folded.

    Cached in ``attn.__dict__["_fine_cache"]`` and rebuilt only when a weight, a BN statistic, the dtype or the device
    changed (tensor version counters): in an eval loop the folding costs nothing, and no stale weights survive
    ``load_state_dict``, ``fuse()`` or a training step. Not cached while autograd, export or compilation need the
    computation in the graph, nor for inference tensors (weights made under ``torch.inference_mode``, e.g. fused there),
    which have no versions, nor for fake tensors (no data). The layer never pickles the cache
    (``PyramidSparseAttention.__getstate__``).
    """
    k, v = attn.fine_kv()
    tensors = [t for m in (k, v) for t in (*m.parameters(), *m.buffers())]
    cacheable = not (in_export() or torch.compiler.is_compiling()
                     or any(t.is_inference() or is_fake(t) for t in tensors)
                     or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))
    key = (dtype, *((t.data_ptr(), t._version) for t in tensors)) if cacheable else None
    cached = attn.__dict__.get("_fine_cache")
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    heads, d = attn.heads, attn.head_dim
    result = tuple(
        (w.view(heads, d, -1).transpose(1, 2).to(dtype), b.view(heads, 1, d).to(dtype))
        for w, b in (pointwise_affine(k), pointwise_affine(v))
    )
    if key is not None:
        attn.__dict__["_fine_cache"] = (key, result)  # not a buffer: never saved, never moved by .to()
    return result


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
