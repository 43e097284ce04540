"""Top-k region selection of Pyramid Sparse Attention (paper eq. 3-4).

The score of coarse key j is the mean over all queries of the coarse softmax probabilities, ``s_j = mean_i P_ij``.
Fused attention kernels do not return ``P``, so the scores are recomputed here exactly, in chunks of queries, so that
the full N x M matrix never exists at once (at 1280 px the P3 level alone would be 25600 x 6400 per head).
"""

from __future__ import annotations

import torch

# Queries per chunk when accumulating scores; bounds the transient to heads * CHUNK * M floats per image.
SCORE_CHUNK = 4096


def _in_export() -> bool:
    """Whether we are being traced for export, where a Python loop would be frozen to one input size."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def coarse_scores(q: torch.Tensor, k: torch.Tensor, scale: float, chunk: int | None = SCORE_CHUNK) -> torch.Tensor:
    """Mean coarse attention probability per key, ``mean_i softmax(q k^T * scale)_ij``.

    Args:
        q (torch.Tensor): Queries (B, heads, N, d).
        k (torch.Tensor): Coarse keys (B, heads, M, d).
        scale (float): Logit scale (``d ** -0.5``).
        chunk (int | None): Queries per chunk; ``None`` computes the whole matrix at once.

    Returns:
        (torch.Tensor): Scores (B, heads, M) in float32 (or float64 for float64 input); rows sum to 1.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    kt = k.transpose(-2, -1).to(acc)
    n = q.shape[-2]
    if chunk is None or n <= chunk or _in_export():
        return ((q.to(acc) @ kt) * scale).softmax(dim=-1).mean(dim=-2)
    total = None
    for i in range(0, n, chunk):
        part = ((q[..., i : i + chunk, :].to(acc) @ kt) * scale).softmax(dim=-1).sum(dim=-2)
        total = part if total is None else total + part
    return total / n


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
