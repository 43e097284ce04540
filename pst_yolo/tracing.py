"""What the current trace is for: whether a PSA forward is being recorded for export, which form of the fine branch
that export carries (``pst_yolo.formats`` picks it per Ultralytics format), and whether its input size is static.

Process-wide state, set around a trace (the Ultralytics export callbacks, :func:`pst_yolo.formats.export_form`,
:func:`pst_yolo.scoring.static_export`) and read by the modules that build the traced graph. Eager forwards read only
:func:`in_export`, which is False for them.
"""

from __future__ import annotations

import torch

FORMS = ("graph", "portable", "coarse")
_FORM: list = ["graph", None, False]  # form, why an export is coarse-only, whether the portable form may compare
# Set by the Ultralytics exporter callback (pst_yolo.integration) while a static-shape (dynamic=False) export traces.
_STATIC_EXPORT = [False]
# The ONNX opset an export asked for (``opset=``), set by the same callback; None: the exporter's default (>= 13).
_ONNX_OPSET = [None]


def in_export() -> bool:
    """Whether a tracer is recording this forward for export, which freezes data-dependent Python control flow: jit
    trace/script (TorchScript, the legacy ONNX exporter, pnnx/NCNN, coremltools, x2paddle), the ONNX exporter, and
    ``torch.export`` (the dynamo ONNX exporter, ExecuTorch, litert-torch). Not ``torch.compile``, which runs the eager
    code path with guards."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_exporting())


def is_fake(t: torch.Tensor) -> bool:
    """Whether ``t`` carries no data (a FakeTensor: pst_yolo.fakecuda's device checks, torch.compile's tracing); such
    tensors must not be cached across calls, where another fake mode would meet them."""
    from torch._subclasses.fake_tensor import is_fake as _is_fake

    return _is_fake(t)


def set_trace_form(form: str, reason: str | None = None, compare: bool = False) -> None:
    """The fine-branch form every PSA traced from now on uses (one of ``FORMS``); ``reason`` explains ``coarse``;
    ``compare``: the portable form may use comparisons instead of floor arithmetic (see :func:`compare_ops`)."""
    if form not in FORMS:
        raise ValueError(f"pst-yolo: unknown export form {form!r}; choose one of {list(FORMS)}")
    _FORM[:] = [form, reason or "fine attention switched off for this export", bool(compare)]


def current_form() -> str:
    """The form a PSA traced now uses (meaningful only while exporting: eager forwards ignore it)."""
    return _FORM[0]


def coarse_reason() -> str:
    """Why the current export is coarse-only (for the one-time warning)."""
    return _FORM[1]


def compare_ops() -> bool:
    """Whether the portable form may use comparisons (and must not use floor): a converter that maps floor wrongly
    but has comparisons (``pst_yolo.formats.COMPARE_FORMATS``)."""
    return _FORM[2]


def set_static_export(enabled: bool) -> None:
    """Whether tracing for export unrolls the attention in query chunks (a static-shape export; see
    :func:`pst_yolo.scoring.static_export`). Ultralytics' exporter sets it from ``dynamic`` (pst_yolo.integration)."""
    _STATIC_EXPORT[0] = bool(enabled)


def static_export_enabled() -> bool:
    return _STATIC_EXPORT[0]


def set_onnx_opset(opset: int | None) -> None:
    """The ONNX opset the export being traced asked for (Ultralytics' ``opset=``; None: its default)."""
    _ONNX_OPSET[0] = None if opset in (None, 0) else int(opset)


def onnx_opset_below(version: int) -> bool:
    """Whether this trace is an ONNX export to an opset below ``version`` (ops it lacks must be spelled otherwise)."""
    return torch.onnx.is_in_onnx_export() and _ONNX_OPSET[0] is not None and _ONNX_OPSET[0] < version
