"""The fine branch in ops every export converter has: the ``portable`` form of ``pst_yolo.formats``.

The same computation as the eager path (``pst_yolo.selection`` + ``PyramidSparseAttention.fine``), written for
converters and runtimes that lack TopK, Gather/GatherElements, sort, comparisons, boolean logic, integer tensors or
broadcast masks (pnnx/NCNN, coremltools, litert-torch, ExecuTorch's core ATen set, onnx2tf, x2paddle):

- top-k: k rounds of "take the maximum, mark the lowest index that holds it, push it below every score", with the
  equality tests done in float arithmetic (``step(x) = -floor(-clamp(x, 0, 1))`` is 1 for x > 0 and 0 otherwise,
  exactly);
  ties go to the lower index, as everywhere else in pst-yolo.
- 2x2 blocks: each round's one-hot over the coarse grid is moved to fine position (2r + dr, 2c + dc) by two matrix
  products with constant 0/1 matrices (no Resize, Slice or Gather, which onnx2tf's layout conversion gets wrong on
  tensors that are not images); the result, a one-hot over fine positions per token, gathers the fine keys and
  values (the K/V convolutions over the finer map) by a matrix product. Positions an odd H or W clips have no 1: the
  row is empty and the token is masked.
- the mask: an extra key column ``(valid - 1) * MASK`` against an extra query column of ones, so the logits need no
  broadcast add (onnx2tf's layout conversion mis-broadcast it).

Shapes are static (the exporter traces a fixed input size); every tensor has at most 4 dimensions (NCNN's limit).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from pst_yolo.tracing import compare_ops

# Added to a masked token's logit: exp() of it is 0 in float32 and float16, and it cannot overflow float16.
MASK = 1.0e4


def static(*sizes) -> list[int]:
    """Traced sizes as Python ints: a portable export has a static input size by design (no TracerWarning for it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return [int(v) for v in sizes]


def constant(array, like: torch.Tensor) -> torch.Tensor:
    """A NumPy array as a tensor of ``like``'s dtype and device: a plain constant in the traced graph (``torch.arange``
    and comparisons would be traced as ops, which some converters do not fold)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=like.device).to(like.dtype)


def step(x: torch.Tensor) -> torch.Tensor:
    """1 where x > 0, else 0, in x's float dtype, exactly: floor arithmetic (pnnx/NCNN has no comparison ops), or a
    comparison where the converter needs one (``pst_yolo.formats.compare_ops``: x2paddle has no aten::ceil and maps
    aten::floor to math.floor)."""
    if compare_ops():
        return (x > 0).to(x.dtype)
    return -(-x.clamp(0.0, 1.0)).floor()  # ceil via floor: exact for the smallest positive x, unlike 1 - floor(1 - x)


def select_onehot(scores: torch.Tensor, topk: int, threshold: float):
    """Top-k coarse tokens as one-hot rows, by k rounds of max-and-mask.

    Args:
        scores (torch.Tensor): (B, heads, M) selection scores (probabilities, in [0, 1]).
        topk (int): Rounds (tokens kept); rounds beyond M pick a pushed-down score and come out invalid.
        threshold (float): A token counts only if its score is above this.

    Returns:
        onehot (torch.Tensor): (B, heads, k, M) float, one 1 per row.
        above (torch.Tensor): (B, heads, k) float, 1 where the chosen score is above the threshold.
    """
    (m,) = static(scores.shape[-1])
    # M - j: the largest for the lowest index. Exact in float32; a runtime that computes in float16 (NCNN's fp16
    # storage, a CoreML/LiteRT fp16 model) holds integers exactly up to 2048 (a 640 px P3 fusion has M = 1600, at
    # 1280 px M = 6400): above that, two maxima tied to the last bit at neighbouring indices could both be taken.
    rank = constant(np.arange(m, 0, -1), scores)
    s, hots, tops = scores, [], []
    for _ in range(int(topk)):
        top = s.amax(dim=-1, keepdim=True)
        key = (1.0 - step(top - s)) * rank  # rank where s holds the maximum, 0 elsewhere
        first = F.relu(1.0 - (key - key.amax(dim=-1, keepdim=True)).abs())  # the lowest such index, one-hot
        hots.append(first.unsqueeze(-2))
        tops.append(top)
        s = s - 2.0 * first  # below every score (and the threshold) for the next rounds
    return torch.cat(hots, dim=-2), step(torch.cat(tops, dim=-1) - threshold)


def block_onehot(onehot: torch.Tensor, coarse_hw: tuple, fine_hw: tuple):
    """One-hot rows over the finer grid for the 2x2 block of every chosen coarse token.

    Args:
        onehot (torch.Tensor): (B, heads, k, M) over the coarse grid ``coarse_hw``.
        coarse_hw (tuple): (ceil(H/2), ceil(W/2)).
        fine_hw (tuple): (H, W).

    Returns:
        hot (torch.Tensor): (B, heads, 4k, H*W), offset-major: tokens [o*k, (o+1)*k) are offset o = 2*dr + dc.
        inside (torch.Tensor): (B, heads, 4k) float, 0 where an odd H or W clips the position.
    """
    b, heads, k, _ = onehot.shape
    hc, wc, h, w = static(*coarse_hw, *fine_hw)
    grid = onehot.reshape(b, heads * k, hc, wc)
    parts = []
    for dr in (0, 1):
        # coarse row r -> fine row 2r + dr (and column c -> 2c + dc) as 0/1 matrices: two MatMuls with constants place
        # each one-hot on its fine position; a row or column past an odd border has no 1 (the token comes out empty).
        rows = constant(np.arange(h)[None, :] == 2 * np.arange(hc)[:, None] + dr, onehot)  # (hc, H)
        t = grid.transpose(-2, -1) @ rows  # (B, hk, wc, H)
        for dc in (0, 1):
            cols = constant(np.arange(w)[None, :] == 2 * np.arange(wc)[:, None] + dc, onehot)  # (wc, W)
            parts.append((t.transpose(-2, -1) @ cols).reshape(b, heads, k, h * w))
    hot = torch.cat(parts, dim=2)
    return hot, hot.sum(dim=-1)


def masked_attention(q, kf, vf, valid, scale: float, bias=None) -> torch.Tensor:
    """``softmax(q kf^T * scale + mask + bias) (vf * valid)`` with the mask as a key column; (B, heads, N, d).

    Args:
        q (torch.Tensor): (B, heads, N, d) queries.
        kf, vf (torch.Tensor): (B, heads, T, d) keys and values.
        valid (torch.Tensor): (B, heads, T) float 1/0.
        scale (float): Logit scale.
        bias (torch.Tensor | None): (B, heads, T) float added to each key's logits (the ``joint`` fusion's -log 4).
    """
    ones = q[..., :1] * 0.0 + 1.0  # computed, not a constant: the tracer would freeze torch.ones' size
    q1 = torch.cat([q * scale, ones], dim=-1)
    column = (valid - 1.0) * MASK if bias is None else (valid - 1.0) * MASK + bias
    k1 = torch.cat([kf, column.unsqueeze(-1)], dim=-1)
    return (q1 @ k1.transpose(-2, -1)).softmax(dim=-1) @ (vf * valid.unsqueeze(-1))
