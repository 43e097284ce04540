"""What an exported PST graph may contain so that TensorRT can build it, and a checker for ONNX files.

Export itself is the stock ``yolo export format=onnx|engine``; PST needs no exporter patch. The fine-attention path is
traced as ``TopK`` (constant K = the layer's k) + ``GatherElements``; k = 0 exports the coarse-only graph.

Usage:
    python -m pst_yolo.export model.onnx     # lists the PST ops and anything TensorRT's ONNX parser would reject
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# ONNX operators TensorRT's ONNX parser supports that a YOLO/PST graph can use. Source: onnx-tensorrt
# docs/operators.md, "Operator Support Matrix" (https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md),
# identical for these ops from TensorRT 8.5 (opset <= 17) through 10.x (opset 9-20); 8.4 and older lacked Mod.
# Restrictions from that table that bear on PST graphs, checked by ``tensorrt_problems``:
#   TopK: "`K` input must be an initializer" (we also accept a Constant node, which the parser folds the same way).
#   Slice / Squeeze: `axes` must be an initializer; Unsqueeze: `axes` must be a constant tensor.
#   Resize: nearest mode with asymmetric/half_pixel coordinates (what F.interpolate(scale_factor=2) exports).
# Not listed on purpose: NonZero/Loop/If/Scan (data-dependent shapes or control flow PST must never need).
TENSORRT_ONNX_OPS = frozenset(
    """
    Add And Cast Clip Concat Constant ConstantOfShape Conv Div Equal Expand Flatten Gather GatherElements GatherND
    Gemm GlobalAveragePool Greater GreaterOrEqual Identity Less LessOrEqual MatMul Max MaxPool Min Mod Mul Neg Not Or
    Pad Range ReduceMax ReduceMean ReduceSum Relu Reshape Resize Shape Sigmoid Slice Softmax Split Sqrt Squeeze Sub
    Tile TopK Transpose Unsqueeze Where
    """.split()
)
# Opset range TensorRT 10.x's parser documents (inclusive); Ultralytics picks 18 for torch >= 2.4.
TENSORRT_OPSETS = (9, 20)
# Inputs that must be graph constants: op -> input positions.
_CONST_INPUTS = {"TopK": (1,), "Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,)}


def _constants(graph) -> dict:
    """name -> numpy value of every initializer and Constant-node output of ``graph``."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def topk_values(model) -> list[int]:
    """The constant K of every TopK node (raises ValueError if a K is computed at run time)."""
    graph = model.graph
    consts = _constants(graph)
    ks = []
    for node in graph.node:
        if node.op_type == "TopK":
            if len(node.input) < 2 or node.input[1] not in consts:
                raise ValueError(f"TopK node {node.name!r}: K is not a graph constant (TensorRT needs an initializer)")
            ks.append(int(consts[node.input[1]].reshape(-1)[0]))
    return ks


def tensorrt_problems(model) -> list[str]:
    """Reasons TensorRT's ONNX parser would reject ``model`` (an ``onnx.ModelProto`` or path); empty if none known."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not TENSORRT_OPSETS[0] <= opset <= TENSORRT_OPSETS[1]:
        problems.append(f"opset {opset} outside TensorRT's supported range {TENSORRT_OPSETS}")
    consts = _constants(model.graph)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name}: custom-domain op {node.domain}::{node.op_type}")
        elif node.op_type not in TENSORRT_ONNX_OPS:
            problems.append(f"{node.name}: op {node.op_type} is not in the TensorRT-supported list")
        for pos in _CONST_INPUTS.get(node.op_type, ()):
            if len(node.input) > pos and node.input[pos] and node.input[pos] not in consts:
                problems.append(f"{node.name}: input {pos} of {node.op_type} must be an initializer/Constant")
        if node.op_type == "Resize":
            attrs = {a.name: a for a in node.attribute}
            mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
            if mode not in ("nearest", "linear"):
                problems.append(f"{node.name}: Resize mode {mode!r} unsupported by TensorRT")
    return problems


def summary(path) -> str:
    """One readable paragraph about an exported file: opset, op counts, TopK K values, TensorRT problems."""
    import onnx

    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    ks = topk_values(model)
    problems = tensorrt_problems(model)
    lines = [
        f"{path}: opset {[o.version for o in model.opset_import]}, {sum(ops.values())} nodes",
        f"  fine attention: {len(ks)} TopK node(s), K = {ks}" if ks else "  fine attention: none (coarse-only graph)",
        "  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())),
        "  TensorRT parser: no known problem" if not problems else "  TensorRT problems:\n    " + "\n    ".join(problems),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Inspect an exported PST ONNX file for TensorRT compatibility.")
    ap.add_argument("onnx", nargs="+", type=Path)
    args = ap.parse_args(argv)
    bad = 0
    for p in args.onnx:
        print(summary(p))
        bad += bool(tensorrt_problems(p))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
