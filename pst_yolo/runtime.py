"""Run-time control of fine attention: ``set_topk`` / ``set_fusion`` on a live model and the ``PST_TOPK`` /
``PST_FUSION`` environment variables (applied when a checkpoint is loaded)."""

from __future__ import annotations

from pst_yolo.modules import PyramidSparseAttention
from pst_yolo.switches import (  # noqa: F401  (re-exported: the public home of PST_TOPK / PST_FUSION)
    ENV_FUSION,
    ENV_TOPK,
    FUSIONS,
    check_choice,
    check_topk,
    env_fusion,
    env_topk,
)


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
    return _set(model, "topk", k, "set_topk")


def set_fusion(model, fusion: str) -> int:
    """Set how fine attention joins the coarse output in every PST layer of ``model``: ``"add"`` (the paper's eq. 6)
    or ``"joint"`` (one softmax over the unrefined coarse keys and the refined regions' fine tokens).

    Returns:
        (int): Number of attention modules changed.
    """
    return _set(model, "fusion", check_choice(fusion, "fusion", FUSIONS, "set_fusion"), "set_fusion")


def _set(model, attr: str, value, name: str) -> int:
    root = getattr(model, "model", model)  # YOLO object -> its nn.Module
    if not hasattr(root, "modules"):
        raise TypeError(f"pst-yolo: {name} needs a YOLO object or an nn.Module, got {type(model).__name__}")
    changed = 0
    for m in root.modules():
        if isinstance(m, PyramidSparseAttention):
            setattr(m, attr, value)
            changed += 1
    if not changed:
        raise ValueError(f"pst-yolo: {name} found no PST layer in {type(model).__name__}")
    return changed
