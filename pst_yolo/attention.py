"""Attention kernels behind one entry point.

PSA calls :func:`attention` for both its coarse and its fine branch. The backend is chosen per call from the module's
own setting, else the ``PST_ATTN`` environment variable, else ``"sdpa"``. Every backend computes exactly
``softmax(q @ k^T * scale + mask) @ v``; ``"reference"`` spells it out with an explicit softmax and is the ground truth
of the test suite. New kernels (FlashAttention, SageAttention, ...) register themselves in ``KERNELS`` with a
``supports`` predicate; an unsupported call falls back to SDPA with a one-time log line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LOGGER = logging.getLogger("pst_yolo")
ENV_BACKEND = "PST_ATTN"
DEFAULT_BACKEND = "sdpa"


def reference_attention(q, k, v, mask=None, scale=None):
    """Plain attention with an explicit softmax (no fused kernel); the tests' ground truth."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        logits = logits + mask
    return logits.softmax(dim=-1) @ v


def sdpa_attention(q, k, v, mask=None, scale=None):
    """PyTorch ``scaled_dot_product_attention`` (picks flash / memory-efficient / math kernels itself)."""
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@dataclass(frozen=True)
class Kernel:
    """One attention implementation and the calls it can serve."""

    fn: Callable
    supports: Callable[..., str | None] = lambda q, k, v, mask: None  # returns why not, or None if supported


KERNELS: dict[str, Kernel] = {
    "reference": Kernel(reference_attention),
    "sdpa": Kernel(sdpa_attention),
}
_LOGGED: set = set()


def log_once(key, msg, level=logging.INFO):
    """Log ``msg`` once per process for ``key`` (so a fallback is visible but not spammy)."""
    if key not in _LOGGED:
        _LOGGED.add(key)
        LOGGER.log(level, msg)


def resolve_backend(name: str | None = None) -> str:
    """Return the backend name to use: ``name``, else ``$PST_ATTN``, else ``"sdpa"``; unknown names are an error."""
    name = name or os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND
    if name not in KERNELS:
        src = "argument" if name != os.environ.get(ENV_BACKEND) else f"environment variable {ENV_BACKEND}"
        raise ValueError(f"pst-yolo: unknown attention kernel {name!r} (from {src}); choose one of {sorted(KERNELS)}")
    return name


def attention(q, k, v, mask=None, scale=None, backend: str | None = None):
    """Multi-head attention ``softmax(q k^T * scale + mask) v``.

    Args:
        q (torch.Tensor): Queries (B, heads, N, d).
        k (torch.Tensor): Keys (B, heads, M, d).
        v (torch.Tensor): Values (B, heads, M, d).
        mask (torch.Tensor | None): Additive float mask broadcastable to (B, heads, N, M).
        scale (float | None): Logit scale, default ``d ** -0.5``.
        backend (str | None): Kernel name (see ``KERNELS``); default from ``$PST_ATTN`` or ``"sdpa"``.

    Returns:
        (torch.Tensor): Output (B, heads, N, d).
    """
    name = resolve_backend(backend)
    kernel = KERNELS[name]
    why = kernel.supports(q, k, v, mask)
    if why is not None:
        log_once(("fallback", name, why), f"pst-yolo: attention kernel {name!r} cannot serve this call ({why}); using sdpa")
        kernel = KERNELS["sdpa"]
    return kernel.fn(q, k, v, mask, scale)
