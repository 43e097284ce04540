"""Linear attention (Katharopoulos et al., 2020), the paper's Table 4d ablation of PSA's coarse branch.

``O_i = phi(q_i) @ (sum_j phi(k_j)^T v_j) / (phi(q_i) @ sum_j phi(k_j) + eps)`` with the feature map ``phi`` = ReLU or
ELU + 1. It costs O(N + M) instead of O(N M), but never forms the attention probabilities the top-k selection needs,
so a linear-attention PSA runs coarse-only. ``eps`` keeps an all-zero ReLU row finite (output 0, never NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def feature_map(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``phi(t)``: ``"relu"`` -> ReLU(t), ``"elu"`` -> ELU(t) + 1 (both non-negative)."""
    if kind == "relu":
        return F.relu(t)
    if kind == "elu":
        return F.elu(t) + 1.0
    raise ValueError(f"pst-yolo: linear attention feature map must be 'relu' or 'elu', got {kind!r}")


def linear_attention(q, k, v, kind: str, eps: float = EPS) -> torch.Tensor:
    """Non-causal linear attention; q (B, h, N, d), k/v (B, h, M, d) -> (B, h, N, d)."""
    fq, fk = feature_map(q, kind), feature_map(k, kind)
    kv = fk.transpose(-2, -1) @ v  # (B, h, d, d): the N x M matrix is never formed
    norm = fq @ fk.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, N, 1)
    return (fq @ kv) / (norm + eps)


def linear_probabilities(q, k, kind: str, eps: float = EPS) -> torch.Tensor:
    """The row-normalised weights linear attention implicitly applies, (B, h, N, M); for visualisation only."""
    w = feature_map(q, kind) @ feature_map(k, kind).transpose(-2, -1)
    return w / (w.sum(dim=-1, keepdim=True) + eps)
