"""Which form of the fine branch an exported PST model carries, per Ultralytics export format.

- ``graph``: top-k by TopK, the 2x2 fine tokens by Gather, the mask by a broadcast Add (``pst_yolo.selection``). The
  fastest form, for the formats whose converters and runtimes have those ops: ONNX (and TensorRT and MNN, which
  convert the ONNX file), OpenVINO and TorchScript.
- ``portable``: the same computation with ops every converter has (``pst_yolo.portable``): top-k as k rounds of
  max-and-mask in float arithmetic, the gathers as one-hot matrix products, the mask as an extra key column, static
  shapes, no integer tensors. For NCNN (pnnx), CoreML, LiteRT and ExecuTorch (``torch.export``), TF SavedModel / GraphDef
  / Edge TPU / TF.js (onnx2tf), PaddlePaddle (x2paddle) and every format not listed.
- ``coarse``: fine attention left out, with a one-time warning naming the format and the reason; for a format whose
  toolchain cannot carry the portable form either (none today).

Ultralytics' exporter sets the form from ``format`` (``pst_yolo.integration``); a trace outside the exporter (your
own ``torch.onnx.export``, ``torch.jit.trace`` or ``torch.export``) gets ``graph``, or what :func:`export_form` sets.
"""

from __future__ import annotations

import contextlib

from pst_yolo.tracing import FORMS, _FORM, coarse_reason, compare_ops, current_form, set_trace_form

__all__ = ["FORMS", "GRAPH_FORMATS", "COMPARE_FORMATS", "COARSE_ONLY", "form_for", "set_form", "export_form",
           "current_form", "coarse_reason", "compare_ops"]
GRAPH_FORMATS = ("torchscript", "onnx", "openvino", "engine", "mnn")
# Formats whose converter maps floor/ceil wrongly but has comparisons (x2paddle turns aten::floor into math.floor);
# the portable form then tests x > 0 with a comparison instead of floor arithmetic (pnnx/NCNN has no comparisons).
COMPARE_FORMATS = ("paddle",)
# format -> why it exports coarse-only (none: every format measured carries the portable form; docs/deployment.md)
COARSE_ONLY: dict[str, str] = {}


def form_for(fmt: str | None) -> tuple[str, str | None]:
    """``(form, reason)`` for an Ultralytics ``format=`` value; the reason, set for ``coarse``, names the format."""
    fmt = (fmt or "").lower()
    if fmt in COARSE_ONLY:
        return "coarse", f"format={fmt} cannot carry fine attention: {COARSE_ONLY[fmt]}"
    return ("graph" if fmt in GRAPH_FORMATS else "portable"), None


def set_form(form: str, reason: str | None = None, fmt: str | None = None) -> None:
    """The fine-branch form every PSA traced from now on uses (one of ``FORMS``); ``reason`` explains ``coarse``,
    ``fmt`` is the Ultralytics format being exported (it picks details of the portable form)."""
    set_trace_form(form, reason, (fmt or "").lower() in COMPARE_FORMATS)


@contextlib.contextmanager
def export_form(form: str, reason: str | None = None, fmt: str | None = None):
    """Trace PSA in ``form`` inside the block, e.g. ``with export_form("portable"): torch.export.export(model, ...)``."""
    old = list(_FORM)
    set_form(form, reason, fmt)
    try:
        yield
    finally:
        _FORM[:] = old
