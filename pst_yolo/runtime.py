"""Run-time control of fine attention: ``set_topk`` on a live model and the ``PST_TOPK`` environment variable."""

from __future__ import annotations

from pst_yolo.modules import PyramidSparseAttention
from pst_yolo.switches import ENV_TOPK, check_topk, env_topk  # noqa: F401  (re-exported: the public home of PST_TOPK)


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
