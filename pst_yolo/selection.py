"""Top-k region selection of Pyramid Sparse Attention (paper eq. 3-4).

The score of coarse key j is the mean over all queries of the coarse softmax probabilities, ``s_j = mean_i P_ij``.
Fused attention kernels do not return ``P``, so the scores are computed here exactly, in chunks of queries sized so
that the transient logits stay under ``SCORE_BUDGET`` elements whatever the image size (at 1280 px the P3 level alone
would be 25600 x 6400 per head). :func:`coarse_attention_and_scores` produces the coarse output and the scores in the
same chunked pass (one QK^T instead of two), which is what PSA uses on CPU when fine attention is on.
"""

from __future__ import annotations

import torch

from pst_yolo.attention import in_export as _in_export

# Upper bound on the elements of one chunk's (B, heads, chunk, M) logits: 2**17 floats = 512 KiB in float32. Memory
# then stays flat as the image grows, and on CPU the chunk stays in L2 cache: measured on 1 thread at the P3 level of
# a 640 px image, 2**17 ran the fused pass in 47 ms vs 85 ms for 2**20 (SDPA's output alone: 41 ms).
SCORE_BUDGET = 1 << 17


def chunk_rows(q: torch.Tensor, m: int, chunk="auto") -> int | None:
    """Queries per chunk for a (B, heads, N, d) query tensor against M keys; None = all at once."""
    n = q.shape[-2]
    if chunk is None or _in_export():
        return None  # a traced Python loop would be frozen to the traced size
    if chunk == "auto":
        chunk = max(1, SCORE_BUDGET // max(1, q.shape[0] * q.shape[1] * m))
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"pst-yolo: score chunk must be >= 1 query, got {chunk}")
    return None if chunk >= n else chunk


def _acc_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _probability_chunks(q, k, scale, chunk, acc=None):
    """Yield ``(start, P)`` with ``P = softmax(q[start:start+rows] k^T * scale)`` over query chunks."""
    qs = (q if acc is None else q.to(acc)) * scale  # scaling q (N*d) is cheaper than scaling every logit (N*M)
    kt = k.transpose(-2, -1) if acc is None else k.transpose(-2, -1).to(acc)
    rows = chunk_rows(q, k.shape[-2], chunk)
    if rows is None:  # no slicing at all: under export a slice bound would be frozen to the traced size
        yield 0, (qs @ kt).softmax(dim=-1)
        return
    for i in range(0, q.shape[-2], rows):
        yield i, (qs[..., i : i + rows, :] @ kt).softmax(dim=-1)


def coarse_scores(q: torch.Tensor, k: torch.Tensor, scale: float, chunk="auto") -> torch.Tensor:
    """Mean coarse attention probability per key, ``mean_i softmax(q k^T * scale)_ij``.

    Args:
        q (torch.Tensor): Queries (B, heads, N, d).
        k (torch.Tensor): Coarse keys (B, heads, M, d).
        scale (float): Logit scale (``d ** -0.5``).
        chunk (int | str | None): Queries per chunk; ``"auto"`` bounds the transient by ``SCORE_BUDGET``; ``None``
            computes the whole matrix at once (reference).

    Returns:
        (torch.Tensor): Scores (B, heads, M) in float32 (or float64 for float64 input); rows sum to 1.
    """
    total = None
    # Under AMP, autocast would run these matmuls in fp16/bf16 despite the upcast; top-k would then pick by rounding noise.
    with torch.autocast(q.device.type, enabled=False):
        for _, p in _probability_chunks(q, k, scale, chunk, _acc_dtype(q)):
            part = p.sum(dim=-2)
            total = part if total is None else total + part
    return total / q.shape[-2]


def coarse_attention_and_scores(q, k, v, scale: float, chunk="auto"):
    """Coarse attention output and the selection scores from one chunked pass over the queries.

    Exact (explicit softmax); the transient per chunk is bounded like :func:`coarse_scores`. On CPU this costs about
    1.15x SDPA's output alone, where SDPA plus a separate score pass costs about 1.7x (QK^T and softmax twice).

    Returns:
        out (torch.Tensor): ``softmax(q k^T * scale) v``, (B, heads, N, d), dtype of ``q``.
        scores (torch.Tensor): (B, heads, M), as :func:`coarse_scores`.
    """
    acc = _acc_dtype(q)
    outs, total = [], None
    with torch.autocast(q.device.type, enabled=False):  # as in coarse_scores: the selection must not see AMP rounding
        for _, p in _probability_chunks(q, k, scale, chunk):
            outs.append(p @ v)
            part = p.sum(dim=-2, dtype=acc)
            total = part if total is None else total + part
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)
    return out, total / q.shape[-2]


def select_fine_tokens(scores, topk: int, threshold: float, coarse_w: int, fine_h: int, fine_w: int):
    """Choose the top-k coarse tokens and map each to its 2x2 block on the finer grid.

    Args:
        scores (torch.Tensor): Coarse scores (B, heads, M), ``M = ceil(H/2) * ceil(W/2)``.
        topk (int): Number of coarse tokens to keep (clamped to M).
        threshold (float): Tokens with a score not above this are dropped (paper: 1e-6).
        coarse_w (int): Width of the coarse grid, ``ceil(W/2)``.
        fine_h (int): Height H of the finer grid.
        fine_w (int): Width W of the finer grid.

    Returns:
        index (torch.Tensor): Flat fine positions (B, heads, 4k), row-major over (H, W); always in range.
        valid (torch.Tensor): Bool (B, heads, 4k): chosen, above threshold and inside the map (odd H/W clip).
    """
    k = int(topk)
    if _in_export():
        # Export: TopK's K must be a graph constant (TensorRT requires an initializer) that stays valid for every input
        # size a dynamic model accepts, also M < k (a 64 px input has a 2x2 P5 map). Pad the scores with k entries of
        # -1: they rank below every real score, and their indices (>= M) fall below the last coarse row, so the
        # odd-size clip below marks them invalid. The result equals topk(min(k, M)) plus masked tokens.
        scores = torch.nn.functional.pad(scores, (0, k), value=-1.0)
    else:
        k = min(k, scores.shape[-1])
    value, idx = scores.topk(k, dim=-1)  # sorted, deterministic
    r, c = idx // coarse_w, idx % coarse_w
    dr = torch.tensor([0, 0, 1, 1], device=idx.device)
    dc = torch.tensor([0, 1, 0, 1], device=idx.device)
    rows = (2 * r).unsqueeze(-1) + dr  # (B, heads, k, 4)
    cols = (2 * c).unsqueeze(-1) + dc
    valid = (value > threshold).unsqueeze(-1) & (rows < fine_h) & (cols < fine_w)
    index = rows.clamp(max=fine_h - 1) * fine_w + cols.clamp(max=fine_w - 1)
    return index.flatten(-2), valid.flatten(-2)
