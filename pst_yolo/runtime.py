"""Run-time control of fine attention: ``set_topk`` on a live model and the ``PST_TOPK`` environment variable."""

from __future__ import annotations

import os

ENV_TOPK = "PST_TOPK"


def check_topk(k, source="k") -> int:
    """Return ``k`` as an int >= 0, or raise a ValueError that names where the bad value came from."""
    if isinstance(k, bool) or not isinstance(k, int):
        try:
            if isinstance(k, str) and k.strip().lstrip("+").isdigit():
                return int(k)
        except ValueError:
            pass
        raise ValueError(f"pst-yolo: {source} must be a non-negative integer (0 = coarse only), got {k!r}")
    if k < 0:
        raise ValueError(f"pst-yolo: {source} must be a non-negative integer (0 = coarse only), got {k}")
    return k


def env_topk() -> int | None:
    """The ``PST_TOPK`` override for every PST model built or loaded in this process, or None if unset."""
    raw = os.environ.get(ENV_TOPK)
    if raw is None or raw.strip() == "":
        return None
    return check_topk(raw, source=f"environment variable {ENV_TOPK}")


def set_topk(model, k: int) -> int:
    """Set the number of fine-attention regions of every PST layer in ``model``; weights are untouched.

    Args:
        model: An Ultralytics ``YOLO`` object, a ``DetectionModel``/``ClassificationModel`` or any ``nn.Module``
            that contains PST layers.
        k (int): Regions per head; 0 switches fine attention off (coarse-only, as in training).

    Returns:
        (int): Number of attention modules changed.

    Examples:
        >>> from ultralytics import YOLO
        >>> model = YOLO("yolo11n-pst.yaml")
        >>> set_topk(model, 0)  # coarse-only inference
        1
    """
    from pst_yolo.modules import PyramidSparseAttention

    k = check_topk(k)
    root = getattr(model, "model", model)  # YOLO object -> its nn.Module
    if not hasattr(root, "modules"):
        raise TypeError(f"pst-yolo: set_topk needs a YOLO object or an nn.Module, got {type(model).__name__}")
    changed = 0
    for m in root.modules():
        if isinstance(m, PyramidSparseAttention):
            m.topk = k
            changed += 1
    if not changed:
        raise ValueError(f"pst-yolo: set_topk found no PST layer in {type(model).__name__}")
    return changed
