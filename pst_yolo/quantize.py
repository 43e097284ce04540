"""What post-training INT8 quantization keeps in floating point in a PST model, per toolchain.

A quantizer calibrates a scale per tensor and rounds activations to 8 bits. PSA's attention carries tensors that
rounding breaks: the selection scores (probabilities near 1/M, whose order decides the top-k), the top-k threshold,
the padded score vector of a dynamic-size selection (its -1 cannot be represented in u8: OpenVINO's low-precision
transformations then refuse to load the file), the masks, the logits and the softmax probabilities. The 1x1
Q/K/V/output convolutions and the CPE are ordinary convolutions and are quantized like the rest of the model.

Only the PSA modules of the exported model are named (their paths, :func:`psa_paths`): stock layers, the C2PSA
attention of a YOLO11 included, are quantized exactly as in a stock export.

- OpenVINO (NNCF, ``yolo export format=openvino int8=True``): every functional op of a PSA (friendly names
  ``__module.<path>/aten::...``: the attention products, softmaxes, scores, top-k, gathers, masks) is added to the
  ignored scope Ultralytics passes to ``nncf.quantize``; its convolutions (``<path>.q.conv/...``) are not in it.
- ONNX (onnxruntime static quantization, ``yolo export format=onnx int8=True``): Ultralytics quantizes every Conv,
  Gemm and MatMul; the MatMuls of a PSA (``/<path as a/b/c>/MatMul_3``: logits, probabilities times values, the score
  sums) join the nodes it excludes, its convolutions (``/<path>/q/conv/Conv``) do not.
- LiteRT (ai-edge-quantizer after litert-torch, ``yolo export format=litert int8=True``): its recipe gets a
  no-quantize rule for every op whose scope (its output tensors' names,
  ``...pst_yolo.modules.PyramidSparseAttention_attn;3``) ends in a PSA, after the recipe Ultralytics loads; a child
  conv's scope (``..._attn/...Conv_q/...``) does not match.
- Weight-only INT8 (MNN's ``--weightQuantBits 8``, CoreML's 8-bit palettization) rounds weights, not activations: the
  attention's tensors stay float there without help.

:func:`float_attention` applies this around an export; the export callbacks of ``pst_yolo.integration`` call it for
PST models, the way they choose the fine branch's form.
"""

from __future__ import annotations

import contextlib
import re

from pst_yolo.log import log_once

# ai-edge-quantizer scope of an op traced directly in a PSA's forward: litert-torch names tensors by module class and
# attribute (".../pst_yolo.modules.PyramidSparseAttention_attn;3"); a child conv continues with "/".
LITERT_FLOAT_SCOPE = r"pst_yolo\.modules\.PyramidSparseAttention_[^/;]+;"


def psa_paths(model) -> list[str]:
    """Module paths (``model.13.pst.m.0.attn``) of the PyramidSparseAttention layers of ``model``."""
    from pst_yolo.modules import PyramidSparseAttention

    return [name for name, m in model.named_modules() if isinstance(m, PyramidSparseAttention)]


def openvino_patterns(paths) -> list[str]:
    """NNCF ignored-scope patterns matching the ops traced directly in each PSA's forward (not its child convs)."""
    return [rf"(.*\.)?{re.escape(p)}/aten::.*" for p in paths]


def onnx_attention_nodes(graph, paths) -> list[str]:
    """Names of the ONNX nodes traced directly in each PSA's forward (``/model.13/pst/m.0/attn/MatMul_3``)."""
    # the exporter names a scope by module, a container's index joined with a dot: /model.13/pst/m.0/attn/
    scopes = tuple("/" + re.sub(r"\.(?!\d+(\.|$))", "/", p) + "/" for p in paths)
    return [n.name for n in graph.node
            if any(n.name.startswith(s) and "/" not in n.name[len(s):] for s in scopes)]


@contextlib.contextmanager
def float_attention(fmt: str | None, paths):
    """While exporting to ``fmt``, keep the attention ops of the PSA layers at ``paths`` in floating point in the
    toolchain's INT8 quantizer."""
    patch = _PATCHES.get(fmt)  # the quantizers that round activations; weight-only ones need nothing
    if patch is None or not paths:
        yield
        return
    with patch(list(paths)):
        yield


@contextlib.contextmanager
def _nncf_patch(paths):
    try:
        import nncf
    except ImportError:  # no INT8 export without it: Ultralytics says so itself
        yield
        return
    original = nncf.quantize

    def quantize(*args, **kwargs):
        scope = kwargs.get("ignored_scope") or nncf.IgnoredScope()
        kwargs["ignored_scope"] = nncf.IgnoredScope(
            names=list(scope.names), patterns=[*scope.patterns, *openvino_patterns(paths)], types=list(scope.types),
            subgraphs=list(scope.subgraphs), validate=False)
        _said("OpenVINO", "NNCF")
        return original(*args, **kwargs)

    nncf.quantize = quantize
    try:
        yield
    finally:
        nncf.quantize = original


@contextlib.contextmanager
def _onnxruntime_patch(paths):
    try:
        import onnxruntime.quantization as ortq
    except ImportError:
        yield
        return
    original = ortq.quantize_static

    def quantize_static(model_input, *args, **kwargs):
        import onnx

        graph = (model_input if isinstance(model_input, onnx.ModelProto) else onnx.load(str(model_input))).graph
        found = onnx_attention_nodes(graph, paths)
        if not found:  # a renamed scope would quantize the scores silently
            raise RuntimeError(f"pst-yolo: INT8 ONNX export: no node of the PST layers {paths} found in the graph; "
                               "refusing to quantize their attention")
        kwargs["nodes_to_exclude"] = sorted(set(kwargs.get("nodes_to_exclude") or ()) | set(found))
        _said("ONNX", "onnxruntime")
        return original(model_input, *args, **kwargs)

    ortq.quantize_static = quantize_static
    try:
        yield
    finally:
        ortq.quantize_static = original


@contextlib.contextmanager
def _litert_patch(paths):
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe
    except ImportError:  # Ultralytics would pip-install it during the export, after this callback: nothing to patch
        log_once("int8-litert-missing", "WARNING pst-yolo: INT8 LiteRT export without ai-edge-quantizer installed "
                 "(pip install 'pst-yolo[litert]'): if Ultralytics installs it now, PST attention is quantized too",
                 level=30)
        yield
        return
    original = quantizer.Quantizer.load_quantization_recipe

    def load_quantization_recipe(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        self.update_quantization_recipe(regex=LITERT_FLOAT_SCOPE, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                        algorithm_key=recipe.AlgorithmName.NO_QUANTIZE)
        _said("LiteRT", "ai-edge-quantizer")
        return out

    quantizer.Quantizer.load_quantization_recipe = load_quantization_recipe
    try:
        yield
    finally:
        quantizer.Quantizer.load_quantization_recipe = original


_PATCHES = {"openvino": _nncf_patch, "onnx": _onnxruntime_patch, "litert": _litert_patch, "tflite": _litert_patch}


def _said(fmt: str, tool: str) -> None:
    log_once(f"int8-{fmt}", f"pst-yolo: INT8 {fmt} export ({tool}): PST attention ops stay in floating point (logits, "
             "probabilities, scores, top-k, masks: pst_yolo.quantize); its convolutions are quantized")
