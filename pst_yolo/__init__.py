"""pst-yolo: the Pyramid Sparse Transformer (PST) as an Ultralytics YOLO plugin.

Importing this package is cheap (no torch, no Ultralytics): the names below load on first use.
"""

__version__ = "0.4.0"

_LAZY = {
    "PST": "pst_yolo.modules",
    "PSTBlock": "pst_yolo.modules",
    "PyramidSparseAttention": "pst_yolo.modules",
    "C3k2PST": "pst_yolo.modules",
    "recommended": "pst_yolo.zoo",
    "set_topk": "pst_yolo.runtime",
    "set_fusion": "pst_yolo.runtime",
    "register": "pst_yolo.integration",
    "attention": "pst_yolo.attention",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pst_yolo' has no attribute {name!r}")
