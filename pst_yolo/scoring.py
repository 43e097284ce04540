"""How PSA computes its coarse output and the selection scores: the one place that decides, per call.

The score of coarse key j is the mean over all N queries of the coarse softmax probabilities (paper eq. 3),
``s_j = (1/N) sum_i P_ij``. Fused attention kernels never return ``P``, so the scores come from one of four
strategies, all exact:

- ``chunked``: one explicit-softmax pass over chunks of queries yields the output and ``sum_i P_ij`` together; the
  transient per chunk is bounded by ``SCORE_BUDGET`` elements (512 KiB in fp32), so memory stays flat whatever the
  image size. The fastest exact path on a CPU (QK^T computed once, the chunk stays in cache), but its op count grows
  with the image size: one matmul/softmax/matmul/sum per chunk.
- ``lse``: a fused kernel returns the output and each query's log-sum-exp ``lse_i``; since
  ``P_ij = exp(tau q_i.k_j - lse_i)``, ``log(N s_j) = logsumexp_i(tau k_j.q_i - lse_i)`` is the log-sum-exp of a second
  fused pass with the roles swapped (coarse keys as queries, queries as keys, ``-lse_i`` folded in as extra key
  dimensions). Never forms the N x M matrix (memory O(N d)), a fixed number of ops at any size, no host sync: the
  strategy for GPUs (CUDA graphs, ``torch.compile(fullgraph=True)``).
- ``reference``: the whole N x M matrix at once, accumulated in float64 for float64 input; the tests' ground truth.
- ``auto`` (default): ``lse`` on CUDA, ``chunked`` elsewhere; the choice is logged once per device.

``$PST_SCORES`` (or the ``strategy`` argument) picks one on any device, so the GPU strategy also runs on a CPU.
While tracing for export the graph is explicit: MatMul(q * scale, k^T) -> Softmax -> MatMul(v), the pattern TensorRT's
attention fusion matches, with ``ones(1, N) @ P`` for the scores' sum over the queries; unrolled in query chunks for
static-shape exports (bounded memory in onnxruntime, see :func:`static_export`), in one piece for dynamic ones (a traced
chunk bound would freeze the input size).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F

from pst_yolo.attention import attention, choose_kernel, flash_attention_lse, no_autocast
from pst_yolo.log import log_once
# _STATIC_EXPORT: the tests read the flag here, where static exports are traced
from pst_yolo.tracing import _STATIC_EXPORT, in_export, set_static_export, static_export_enabled  # noqa: F401

ENV_SCORES = "PST_SCORES"
STRATEGIES = ("auto", "chunked", "lse", "reference")
# Upper bound on the elements of one chunk's (B, heads, rows, M) logits: 2**17 floats = 512 KiB in float32. Memory then
# stays flat as the image grows, and on CPU the chunk stays in L2 cache: measured on 1 thread at the P3 level of a
# 640 px image, 2**17 ran the fused pass in 47 ms vs 85 ms for 2**20 (SDPA's output alone: 41 ms).
SCORE_BUDGET = 1 << 17
# The same bound in an unrolled static-shape export: every chunk is a handful of graph nodes, so chunks are larger
# there (16 MiB of fp32 logits; at 1280 px the P3 level is 40 chunks, at 640 px 3) to keep the graph small.
EXPORT_BUDGET = 1 << 22
_GLOBAL_STRATEGY: list = [None]


def _check(name, src: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"pst-yolo: unknown score strategy {name!r} (from {src}); choose one of {list(STRATEGIES)}")
    return name


def set_strategy(name: str | None) -> None:
    """Choose the score strategy for the whole process (``None`` restores ``$PST_SCORES`` / ``"auto"``).

    Example: ``pst_yolo.scoring.set_strategy("lse")`` runs the GPU strategy on a CPU.
    """
    _GLOBAL_STRATEGY[0] = None if name is None else _check(name, "set_strategy()")


def get_strategy(strategy: str | None = None) -> str:
    """The requested strategy (may be ``"auto"``): ``strategy``, else :func:`set_strategy`'s, else ``$PST_SCORES``,
    else ``"auto"``; validated, naming where a bad value came from."""
    if strategy is not None:
        return _check(strategy, "argument")
    if _GLOBAL_STRATEGY[0] is not None:
        return _GLOBAL_STRATEGY[0]
    env = os.environ.get(ENV_SCORES)
    return _check(env, f"environment variable {ENV_SCORES}") if env else "auto"


def resolve_strategy(q: torch.Tensor, strategy: str | None = None) -> str:
    """The strategy that serves this call: ``"export"`` while tracing, else the requested one with ``auto`` resolved."""
    if in_export():
        return "export"
    requested = get_strategy(strategy)
    if requested != "auto":
        return requested
    chosen = "lse" if q.is_cuda else "chunked"
    log_once(("scores", q.device.type), f"pst-yolo: selection scores on {q.device.type}: {chosen!r} ({ENV_SCORES}=auto)")
    return chosen


@contextlib.contextmanager
def static_export(enabled: bool = True):
    """Trace PSA for a static-shape export: explicit attention unrolled in query chunks (bounded memory at run time).

    Ultralytics' exporter does this by itself for ``dynamic=False`` (pst_yolo.integration); use it around your own
    ``torch.onnx.export`` of a fixed input size. Without it a traced PSA is one unchunked piece, valid for any size.
    """
    old = static_export_enabled()
    set_static_export(enabled)
    try:
        yield
    finally:
        set_static_export(old)


def chunk_rows(q: torch.Tensor, m: int, chunk="auto", budget: int | None = None) -> int | None:
    """Queries per chunk for (B, heads, N, d) queries against M keys (``"auto"``: at most ``budget`` logits, default
    ``SCORE_BUDGET``, per chunk); None = all at once."""
    n = q.shape[-2]
    if chunk is None:
        return None
    if chunk == "auto":
        chunk = max(1, (budget or SCORE_BUDGET) // max(1, q.shape[0] * q.shape[1] * m))
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"pst-yolo: score chunk must be >= 1 query, got {chunk}")
    return None if chunk >= n else chunk


def coarse_attention(q, k, v, scale: float, backend: str | None = None, strategy: str | None = None, scores=True,
                     output=True):
    """Coarse attention output and (``scores=True``) the selection scores.

    Args:
        q (torch.Tensor): Queries (B, heads, N, d).
        k (torch.Tensor): Coarse keys (B, heads, M, d).
        v (torch.Tensor): Coarse values (B, heads, M, d).
        scale (float): Logit scale (``d ** -0.5``).
        backend (str | None): Attention kernel for the output (``pst_yolo.attention``); the ``lse`` strategy uses it
            when that kernel returns the log-sum-exp (FlashAttention), else PyTorch's fused op.
        strategy (str | None): One of ``STRATEGIES``; None follows ``$PST_SCORES``.
        scores (bool): False: the output alone (training, k = 0), from the attention kernel (explicit when exporting).
        output (bool): False: the scores alone (an export of the ``joint`` fusion, whose output comes from its own pass,
            ``pst_yolo.fine``); the output is None then.

    Returns:
        out (torch.Tensor): ``softmax(q k^T * scale) v``, (B, heads, N, d), dtype of ``q``.
        scores (torch.Tensor | None): ``mean_i softmax(q k^T * scale)_ij``, (B, heads, M), float32 (float64 for
            float64 input).
    """
    if not scores and not in_export():
        return attention(q, k, v, scale=scale, backend=backend), None
    how = resolve_strategy(q, strategy)
    if how == "lse":
        # Autocast off: q/k/v keep the dtype they have (half under AMP already); autocast would also round fp32
        # inputs to half before the lse, and the selection must not depend on that rounding.
        with no_autocast(q.device.type):
            out, lse = attention_lse(q, k, v, scale, backend)
            return out, scores_from_lse(q, k, lse, scale)
    if how == "export":
        rows = export_rows(q, k.shape[-2])
    else:
        rows = chunk_rows(q, k.shape[-2], "auto" if how == "chunked" else None)
    return explicit_attention(q, k, v if output else None, scale, rows, scores)


def export_rows(q, m: int) -> int | None:
    """Queries per chunk of an explicit attention over ``m`` keys traced for export: chunks of ``EXPORT_BUDGET`` logits
    in a static-shape export, one piece in a dynamic one (a traced chunk bound would freeze the input size)."""
    return chunk_rows(q, m, "auto", EXPORT_BUDGET) if static_export_enabled() else None


def coarse_attention_training(q, k, v, scale: float, backend: str | None = None, scores=True):
    """:func:`coarse_attention` for a training forward: the output from the attention kernel (and its backward), the
    scores (``scores=True``: fine attention trained, ``PST_TRAIN_TOPK``) without autograd, since the selection is not
    differentiable (the fine attention over it is)."""
    out = attention(q, k, v, scale=scale, backend=backend)
    if not scores:
        return out, None
    with torch.no_grad():
        return out, coarse_scores(q, k, scale)


def coarse_scores(q, k, scale: float, strategy: str | None = None) -> torch.Tensor:
    """The selection scores alone (B, heads, M); for visualisation and tests."""
    return coarse_attention(q, k, k, scale, strategy=strategy)[1]


def _acc_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _as(t: torch.Tensor, dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the op when it is one already (an eval forward's op count stays flat and small)."""
    return t if t.dtype == dtype else t.to(dtype)


def explicit_attention(q, k, v, scale: float, rows: int | None, scores: bool = True, bias=None):
    """Output and (``scores=True``) scores from an explicit softmax, in query chunks of ``rows`` (None: one piece).
    ``v=None``: no output (None), the scores alone. ``bias``: (B, heads, 1, M) added to every query's logits (a mask).

    The scale multiplies q (N*d values, not N*M logits) before the first MatMul, the form TensorRT's attention fusion
    recognises in an exported graph. Runs in float32 (float64 for float64) with autocast off: under AMP the top-k must
    not depend on half-precision rounding.
    """
    acc, exporting = _acc_dtype(q), in_export()
    outs, parts = [], []
    with no_autocast(q.device.type):
        kt, vv = _as(k, acc).transpose(-2, -1), None if v is None else _as(v, acc)
        for i in [0] if rows is None else range(0, q.shape[-2], rows):
            qc = q if rows is None else q[..., i : i + rows, :]
            logits = (_as(qc, acc) * scale) @ kt  # scale right before the MatMul, per chunk
            p = (logits if bias is None else logits + _as(bias, acc)).softmax(dim=-1)
            if vv is not None:
                outs.append(p @ vv)
            if scores:
                parts.append(_sum_over_queries(p, exporting))
    if exporting and outs and len(parts) > 1:
        outs, parts = _one_consumer_per_chunk(outs, parts)
    out = None if not outs else _as(outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2), q.dtype)
    return out, (sum(parts[1:], parts[0]) / q.shape[-2] if scores else None)


def _sum_over_queries(p: torch.Tensor, exporting: bool) -> torch.Tensor:
    """``p.sum(-2)``; in an exported graph as ``ones(1, N) @ p``: onnxruntime's ReduceSum over a non-innermost axis is
    slow (83 ms of a 280 ms yolo11n-pst forward at 1280 px, 2 threads), its MatMul is not."""
    if not exporting:
        return p.sum(dim=-2)
    # (B, heads, 1, N) ones computed from p (probabilities: finite): the tracer freezes torch.ones_like to a constant
    # of the traced size, which a dynamic-size graph cannot use.
    ones = (p[..., :1] * 0 + 1).transpose(-2, -1)
    return (ones @ p).squeeze(-2)


def _one_consumer_per_chunk(outs: list, parts: list) -> tuple[list, list]:
    """Route each chunk's output and score part through one Concat and split them after it.

    With two consumers per probability chunk (the PV MatMul and the score sum), onnxruntime's execution order (a
    depth-first walk back from the graph outputs) runs one consumer for every chunk before the other's first, so all
    chunks' probabilities are alive at once: 711 MiB instead of ~140 at 1280 px. Joining both results per chunk makes
    the walk finish a chunk, and free its probabilities, before the next one starts.
    """
    packs = [torch.cat([o.flatten(-2), s], dim=-1) for o, s in zip(outs, parts)]
    sizes = [o.shape[-2] * o.shape[-1] for o in outs]
    return ([pk[..., :n].reshape(o.shape) for pk, n, o in zip(packs, sizes, outs)],
            [pk[..., n:] for pk, n in zip(packs, sizes)])


# ------------------------------------------------------------------------------------------ log-sum-exp kernels
def attention_lse(q, k, v, scale: float, backend: str | None = None):
    """``(softmax(q k^T * scale) v, logsumexp_j(q k^T * scale))`` from one fused kernel; lse is (B, heads, N) float32.

    CPU: ``aten._scaled_dot_product_flash_attention_for_cpu``. CUDA: FlashAttention-2 when it is the chosen kernel
    (``return_attn_probs=True`` returns the lse), else ``aten._scaled_dot_product_flash_attention`` (fp16/bf16) or
    ``aten._scaled_dot_product_efficient_attention`` (fp32). Anything else (float64 on CUDA, other devices) takes the
    explicit path with a one-time log line.
    """
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.contiguous(), k.contiguous(), v.contiguous(), 0.0, False, scale=scale
        )
        return out, lse
    if q.is_cuda and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256:
        if q.dtype in (torch.float16, torch.bfloat16):
            if choose_kernel(q, k, v, None, backend) == "flash":
                return flash_attention_lse(q, k, v, scale=scale)
            res = torch.ops.aten._scaled_dot_product_flash_attention(
                q.contiguous(), k.contiguous(), v.contiguous(), 0.0, False, False, scale=scale
            )
            return res[0], res[1]
        if q.dtype == torch.float32:
            res = torch.ops.aten._scaled_dot_product_efficient_attention(
                q.contiguous(), k.contiguous(), v.contiguous(), None, True, 0.0, False, scale=scale
            )
            return res[0], res[1][..., : q.shape[-2]]  # the kernel pads the lse to a multiple of 32 queries
    log_once(("lse-fallback", q.device.type, q.dtype),
             f"pst-yolo: no fused log-sum-exp kernel for {q.device.type} {q.dtype}; computing it explicitly")
    logits = (q.to(_acc_dtype(q)) * scale) @ k.to(_acc_dtype(q)).transpose(-2, -1)
    return attention(q, k, v, scale=scale, backend=backend), logits.logsumexp(dim=-1)


def scores_from_lse(q, k, lse, scale: float) -> torch.Tensor:
    """``s_j = (1/N) sum_i exp(scale q_i.k_j - lse_i)`` as one fused attention pass with the roles swapped.

    Queries ``[k_j, 1 x 8]``, keys ``[q_i, -lse_i / (8 scale) x 8]``: their scaled dot product is
    ``scale q_i.k_j - lse_i = log P_ij``, so the pass's log-sum-exp is ``log sum_i P_ij = log(N s_j)``. Eight extra
    columns keep the head dim a multiple of 8 for the CUDA kernels and the split exact (a division by 8). Runs in
    float32 whatever the model's dtype (the selection must not depend on fp16 rounding); the pass's output is unused.
    """
    acc = _acc_dtype(q)
    with no_autocast(q.device.type):
        b, h, n, _ = q.shape
        keys = torch.cat([_as(q, acc), (_as(lse, acc) * (-1.0 / (8 * scale))).unsqueeze(-1).expand(b, h, n, 8)], -1)
        queries = F.pad(_as(k, acc), (0, 8), value=1.0)
        _, log_mass = attention_lse(queries, keys, keys, scale)
        return (log_mass - math.log(n)).exp()
