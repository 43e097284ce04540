"""What post-training INT8 quantization keeps in floating point in a PST model, per toolchain.

A quantizer calibrates a scale per tensor and rounds activations to 8 bits. PSA's attention carries tensors that
rounding breaks: the selection scores (probabilities near 1/M, whose order decides the top-k), the top-k threshold,
the padded score vector of a dynamic-size selection (its -1 cannot be represented in u8: OpenVINO's low-precision
transformations then refuse to load the file), the masks and the joint fusion's composition from the coarse
log-sum-exp. The 1x1 Q/K/V/output convolutions and the CPE are ordinary convolutions and are quantized like the rest of
the model.

- OpenVINO (NNCF, ``yolo export format=openvino int8=True``): every functional op of a PSA (friendly names
  ``<module path>.attn/aten::...``: the attention products, softmaxes, scores, top-k, gathers, masks) is added to the
  ignored scope Ultralytics passes to ``nncf.quantize``; its convolutions (``...attn.q.conv/...``) are not in it.

:func:`float_attention` applies this around an export; the export callbacks of ``pst_yolo.integration`` call it for
PST models, the way they choose the fine branch's form.
"""

from __future__ import annotations

import contextlib

from pst_yolo.log import log_once

# OpenVINO friendly names of the ops traced inside PyramidSparseAttention.forward (its child convs are named
# "<path>.attn.q.conv/aten::_convolution/..." and do not match).
OPENVINO_FLOAT_PATTERN = r".*\.attn/aten::.*"


@contextlib.contextmanager
def float_attention(fmt: str | None):
    """While exporting to ``fmt``, keep PSA's attention ops in floating point in the toolchain's INT8 quantizer."""
    if fmt != "openvino":
        yield
        return
    try:
        import nncf
    except ImportError:  # no INT8 export without it: Ultralytics says so itself
        yield
        return
    original = nncf.quantize

    def quantize(*args, **kwargs):
        scope = kwargs.get("ignored_scope") or nncf.IgnoredScope()
        kwargs["ignored_scope"] = nncf.IgnoredScope(
            names=list(scope.names), patterns=[*scope.patterns, OPENVINO_FLOAT_PATTERN], types=list(scope.types),
            subgraphs=list(scope.subgraphs), validate=False)
        log_once("int8-openvino", "pst-yolo: INT8 OpenVINO export: PST attention ops stay in floating point (scores, "
                 "top-k, masks: pst_yolo.quantize); its convolutions are quantized")
        return original(*args, **kwargs)

    nncf.quantize = quantize
    try:
        yield
    finally:
        nncf.quantize = original
