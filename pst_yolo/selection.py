"""Top-k region selection of Pyramid Sparse Attention (paper eqs. 3-4): which 2x2 fine blocks are refined.

The scores themselves (``s_j``, the mean coarse attention probability of key j) come from ``pst_yolo.scoring``.
Selection keeps the top-k coarse keys per (batch, head) above the threshold and maps each to its 2x2 block on the finer
grid. Equal scores (flat inputs: padding, blank images) are broken towards the lower index everywhere, as ONNX TopK
does, so PyTorch, onnxruntime and TensorRT refine the same regions.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from pst_yolo.tracing import in_export, is_fake


def block_positions(idx: torch.Tensor, coarse_w: int, fine_h: int, fine_w: int):
    """The 2x2 fine block under each coarse index.

    Args:
        idx (torch.Tensor): Flat coarse indices (any shape), row-major over a grid ``coarse_w`` wide.
        coarse_w (int): Width of the coarse grid.
        fine_h (int): Height of the finer grid.
        fine_w (int): Width of the finer grid.

    Returns:
        positions (torch.Tensor): ``idx.shape + (4,)`` flat fine positions, clipped into the map.
        inside (torch.Tensor): Bool, same shape: False where an odd H or W clips the block (or idx is past the grid).
    """
    r, c = idx // coarse_w, idx % coarse_w
    off = torch.arange(4, device=idx.device)
    rows = (2 * r).unsqueeze(-1) + off // 2
    cols = (2 * c).unsqueeze(-1) + off % 2
    below, left = rows < fine_h, cols < fine_w
    # where, not clamp: ONNX's Clip takes integers only from opset 12, and exports go down to opset 11
    return torch.where(below, rows, fine_h - 1) * fine_w + torch.where(left, cols, fine_w - 1), below & left


@functools.lru_cache(maxsize=64)
def _block_table(m: int, coarse_w: int, fine_h: int, fine_w: int, device: torch.device):
    """:func:`block_positions` of every coarse index 0..m-1, computed once per map size and device: a selection is
    then two lookups (no per-forward index arithmetic, and nothing allocated while a CUDA graph replays)."""
    with torch.inference_mode(False), torch.no_grad():
        return block_positions(torch.arange(m, device=device), coarse_w, fine_h, fine_w)


def select_fine_tokens(scores, topk: int, threshold: float, coarse_w: int, fine_h: int, fine_w: int,
                       regions: bool = False):
    """Choose the top-k coarse tokens and map each to its 2x2 block on the finer grid.

    Args:
        scores (torch.Tensor): Coarse scores (B, heads, M), ``M = ceil(H/2) * ceil(W/2)``.
        topk (int): Number of coarse tokens to keep (clamped to M).
        threshold (float): Tokens with a score not above this are dropped (paper: 1e-6).
        coarse_w (int): Width of the coarse grid, ``ceil(W/2)``.
        fine_h (int): Height H of the finer grid.
        fine_w (int): Width W of the finer grid.
        regions (bool): Also return the chosen coarse indices and which of them are refined (the ``joint`` fusion
            replaces those coarse keys by their fine tokens).

    Returns:
        index (torch.Tensor): Flat fine positions (B, heads, 4k), region-major (4 per region), row-major over (H, W);
            always in range.
        valid (torch.Tensor): Bool (B, heads, 4k): chosen, above threshold and inside the map (odd H/W clip).
        coarse (torch.Tensor): With ``regions``: the chosen coarse indices (B, heads, k).
        refined (torch.Tensor): With ``regions``: bool (B, heads, k), a chosen region above the threshold (it has a
            valid fine token: its first, (2r, 2c), lies inside even an odd map).
    """
    k = int(topk)
    if in_export():
        # TopK's K must be a graph constant (TensorRT requires an initializer) that stays valid for every input size a
        # dynamic model accepts, also M < k (a 64 px input has a 2x2 P5 map). Pad the scores with k entries of -1:
        # they rank below every real score, and their indices (>= M) fall below the last coarse row, so the block
        # mapping marks them outside. The result equals topk(min(k, M)) plus masked tokens. ONNX TopK puts the lower
        # index first among equal values.
        value, idx = F.pad(scores, (0, k), value=-1.0).topk(k, dim=-1)
        positions, inside = block_positions(idx, coarse_w, fine_h, fine_w)
    else:
        k = min(k, scores.shape[-1])
        # torch.topk orders ties arbitrarily; a stable descending sort keeps the lower index first, like ONNX TopK.
        value, idx = scores.sort(dim=-1, descending=True, stable=True)
        value, idx = value[..., :k], idx[..., :k]
        if torch.compiler.is_compiling() or is_fake(scores):  # no Python-side cache of traced or fake tensors
            positions, inside = block_positions(idx, coarse_w, fine_h, fine_w)
        else:
            table, inside_table = _block_table(scores.shape[-1], coarse_w, fine_h, fine_w, scores.device)
            positions, inside = table[idx], inside_table[idx]
    above = value > threshold
    valid = inside & above.unsqueeze(-1)
    if regions:
        return positions.flatten(-2), valid.flatten(-2), idx, above
    return positions.flatten(-2), valid.flatten(-2)
