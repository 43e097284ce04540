"""What an exported PST graph may contain so that TensorRT can build it, checks for ONNX files, and the FP16 repair.

Export itself is the stock ``yolo export format=onnx|engine``. The fine-attention path is traced as ``TopK``
(constant K = the layer's k) + ``GatherElements``; k = 0 exports the coarse-only graph. Every attention is
MatMul(Q * scale, K^T) -> [Add mask] -> Softmax -> MatMul(V), the pattern TensorRT's attention fusion matches
(:func:`attention_problems` checks it). Two Ultralytics export callbacks (``pst_yolo.integration``) make static-shape
exports chunk the attention and repair FP16 files (:func:`fix_fp16_onnx`).

Usage:
    python -m pst_yolo.export model.onnx     # PST ops, TensorRT parser and attention-pattern problems
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

from pst_yolo.extras import require

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
    Add And Cast Clip Concat Constant ConstantOfShape Conv CumSum Div Equal Expand Flatten Gather GatherElements GatherND
    Gemm GlobalAveragePool Greater GreaterOrEqual Identity Less LessOrEqual MatMul Max MaxPool Min Mod Mul Neg Not Or
    Pad Range ReduceMax ReduceMean ReduceSum Relu Reshape Resize Shape Sigmoid Slice Softmax Split Sqrt Squeeze Sub
    Tile TopK Transpose Unsqueeze Where
    """.split()
)
# Opset range TensorRT 10.x's parser documents (inclusive); Ultralytics picks 18 for torch >= 2.4.
TENSORRT_OPSETS = (9, 20)
# Inputs that must be graph constants: op -> input positions.
_CONST_INPUTS = {"TopK": (1,), "Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "CumSum": (1,)}


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
    onnx = require("onnx", "checking an ONNX export")

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


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph) -> dict:
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _skip_casts(name, producers):
    """The node behind ``name``, looking through Cast nodes (an FP16 file casts around some ops)."""
    node = producers.get(name)
    while node is not None and node.op_type == "Cast":
        node = producers.get(node.input[0])
    return node


def pst_layers(onnx_model) -> list[int]:
    """Indices of the model layers whose exported nodes hold a PST attention (``/model.<i>/m.<j>/attn/``), from the
    node names torch.onnx writes after the module path."""
    found = {int(m.group(1)) for n in onnx_model.graph.node if (m := re.match(r"/model\.(\d+)/m\.\d+/attn/", n.name))}
    return sorted(found)


def attention_problems(model, layers=None) -> list[str]:
    """Attention Softmaxes that do not form TensorRT's fusable pattern MatMul(Q * scale, K^T) -> [Add] -> Softmax ->
    MatMul(V). A Softmax counts as attention when a MatMul (optionally + a mask Add) produces its input (the Detect
    head's DFL Softmax does not). ``layers``: the model layers to check (default: the PST layers, :func:`pst_layers`;
    stock Ultralytics attention such as C2PSA's is not pst-yolo's to shape). Returns one line per problem."""
    onnx = require("onnx", "checking an ONNX export")

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    graph = model.graph
    prefixes = tuple(f"/model.{i}/" for i in (pst_layers(model) if layers is None else layers))
    producers, users, consts = _producers(graph), _consumers(graph), _constants(graph)
    problems = []
    for node in graph.node:
        if node.op_type != "Softmax" or not node.name.startswith(prefixes):
            continue
        src = _skip_casts(node.input[0], producers)
        if src is not None and src.op_type == "Add":  # the fine branch's additive mask
            src = next((p for p in (_skip_casts(i, producers) for i in src.input) if p and p.op_type == "MatMul"), None)
        if src is None or src.op_type != "MatMul":
            continue
        scaled = [_skip_casts(i, producers) for i in src.input]
        if not any(p is not None and p.op_type == "Mul" and any(i in consts and consts[i].size == 1 for i in p.input)
                   for p in scaled):
            problems.append(f"{node.name}: the QK^T MatMul {src.name} has no scalar Mul (scale) on Q or K before it")
        pv = [u for out in node.output for u in users.get(out, [])]
        while any(u.op_type == "Cast" for u in pv):
            pv = [v for u in pv for v in (users.get(u.output[0], []) if u.op_type == "Cast" else [u])]
        if not any(u.op_type == "MatMul" for u in pv):
            problems.append(f"{node.name}: the attention probabilities feed no MatMul with V")
    return problems


def topological_sort(graph) -> bool:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (in place); True if it moved any.

    onnxruntime's FP16 converter (which Ultralytics' CPU ``half=True`` export runs) appends its input Casts after the
    nodes that read them, which ``onnx.checker`` rejects although onnxruntime runs the file.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes, ordered = list(graph.node), []
    waiting = {id(n): {i for i in n.input if i} for n in nodes}
    users = _consumers(graph)
    ready = [n for n in nodes if waiting[id(n)] <= available]
    done = set()
    while ready:
        node = ready.pop(0)
        if id(node) in done:
            continue
        done.add(id(node))
        ordered.append(node)
        for out in node.output:
            available.add(out)
            for user in users.get(out, []):
                if id(user) not in done and waiting[id(user)] <= available:
                    ready.append(user)
    if len(ordered) != len(nodes):
        missing = [n.name for n in nodes if id(n) not in done][:5]
        raise ValueError(f"pst-yolo: ONNX graph has a cycle or dangling inputs (e.g. {missing})")
    moved = [n.name for n in ordered] != [n.name for n in nodes]
    if moved:
        del graph.node[:]
        graph.node.extend(ordered)
    return moved


def score_sums(graph) -> list:
    """The nodes that sum attention probabilities over the queries (eq. 3's numerator): MatMuls with a Softmax output
    as their right operand (``ones(1, N) @ P``, how ``pst_yolo.scoring`` exports the sum; PV MatMuls take P on the
    left)."""
    producers = _producers(graph)

    def softmax(name):
        return getattr(_skip_casts(name, producers), "op_type", None) == "Softmax"

    return [n for n in graph.node if n.op_type == "MatMul" and softmax(n.input[1]) and not softmax(n.input[0])]


# Ops the float32 score chain passes through; for the rest only input 0 is data (the others are int64 indices/shapes,
# or Pad's constant value, which gets a float32 copy like any float constant).
_SAME_TYPE_OPS = {"Add", "Sub", "Mul", "Div", "Concat", "Greater", "Less"}
_CHAIN_OPS = _SAME_TYPE_OPS | {"Pad", "Slice", "Squeeze", "Unsqueeze"}


def scores_to_float32(graph) -> int:
    """Run the selection-score chain of an FP16 graph in float32; returns the number of score sums changed.

    The chain starts at every sum of attention probabilities over the queries (:func:`score_sums`), whose inputs are
    cast to float32, and follows the ops that consume it: the per-chunk Concat/Slice that pairs a chunk's output with
    its scores (scoring's ``_one_consumer_per_chunk``), the chunk Adds, the Div by N, the Pad of the dynamic-size
    guard, up to TopK, which onnxruntime's converter already keeps in float32, and the threshold comparison on TopK's
    values. Float constants on the chain get float32 copies and FP16 tensors joining it are cast up; where the chain
    hands data back to the FP16 model (a chunk's output after the Slice) a Cast to FP16 is inserted. The probabilities
    and the attention output stay FP16 (the model's precision); only the score sums and everything deciding the top-k
    are float32.
    """
    from onnx import TensorProto, helper, numpy_helper

    users, consts = _consumers(graph), _constants(graph)
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    retyped, new_nodes, copies, casts = set(), [], {}, {}

    def const32(name):
        if name not in copies:
            copies[name] = f"{name}_pst_fp32"
            graph.initializer.append(numpy_helper.from_array(consts[name].astype("float32"), copies[name]))
        return copies[name]

    def cast(name, to, tag):
        if (name, to) not in casts:
            casts[name, to] = f"{name}_pst_{tag}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[name, to]], to=to, name=f"{name}_pst_cast_{tag}"))
        return casts[name, to]

    def to_float32(node, data_inputs):
        for j in data_inputs:
            inp = node.input[j]
            if not inp or inp in retyped:
                continue
            if inp in consts:
                if consts[inp].dtype.kind == "f":
                    node.input[j] = const32(inp)
            else:
                node.input[j] = cast(inp, f32, "fp32")

    starts = score_sums(graph)
    for node in starts:
        to_float32(node, range(len(node.input)))
    frontier = [n.output[0] for n in starts]
    retyped.update(frontier)
    while frontier:
        name = frontier.pop()
        for user in list(users.get(name, [])):
            if user.op_type == "TopK":
                continue  # float32 already (the converter's block list); its values output is handled below
            if user.op_type == "Cast":
                cast_to = next(a.i for a in user.attribute if a.name == "to")
                if cast_to == f32 and user.output[0] not in retyped:
                    retyped.add(user.output[0])
                    frontier.append(user.output[0])
                continue
            if user.op_type not in _CHAIN_OPS:  # back into the FP16 model
                user.input[list(user.input).index(name)] = cast(name, f16, "fp16")
                continue
            to_float32(user, range(len(user.input)) if user.op_type in _SAME_TYPE_OPS else
                       [j for j in range(1, len(user.input)) if user.input[j] in consts])
            if user.op_type not in ("Greater", "Less") and user.output[0] not in retyped:
                retyped.add(user.output[0])
                frontier.append(user.output[0])
    # The threshold test reads TopK's float32 values directly, not the converter's FP16 copy of them.
    for topk in (n for n in graph.node if n.op_type == "TopK" and n.input[0] in retyped):
        retyped.add(topk.output[0])
        for c in [u for u in users.get(topk.output[0], []) if u.op_type == "Cast"]:
            for user in users.get(c.output[0], []):
                if user.op_type in ("Greater", "Less"):
                    user.input[list(user.input).index(c.output[0])] = topk.output[0]
                    to_float32(user, range(len(user.input)))
    graph.node.extend(new_nodes)
    keep = [vi for vi in graph.value_info if vi.name not in retyped]  # shape inference re-derives their types
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return len(starts)


def fix_fp16_onnx(path) -> dict:
    """Repair an FP16 ONNX file written by Ultralytics' CPU ``half=True`` export, in place (idempotent).

    Selection scores and the top-k threshold in float32 (:func:`scores_to_float32`; indices are int64 throughout)
    and the nodes in topological order (:func:`topological_sort`), so the file passes ``onnx.checker``.

    Returns:
        (dict): ``{"scores_fp32": n, "reordered": bool}``, what was changed.
    """
    onnx = require("onnx", "checking an ONNX export")

    model = onnx.load(str(path))
    graph = model.graph
    is_fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    already = any(t.name.endswith("_pst_fp32") for t in graph.initializer) or any(
        "_pst_cast" in n.name for n in graph.node)
    changed = {"scores_fp32": scores_to_float32(graph) if is_fp16 and not already else 0}
    changed["reordered"] = topological_sort(graph)
    if changed["scores_fp32"] or changed["reordered"]:
        onnx.save(model, str(path))
    return changed


def exported_op_counts(path, fmt: str) -> dict | None:
    """Op (or layer) counts of a file ``yolo export format=fmt`` wrote (None for a format not readable here:
    ExecuTorch's .pte). Reads the ONNX graph (onnx; mnn: the ONNX file beside it), the NCNN param file (a Reduction
    with ``0=4`` counts as ReduceMax), OpenVINO's XML, the CoreML ML program, a TFLite flat buffer (tflite;
    saved_model: its float32 .tflite), the PaddlePaddle PIR program and TorchScript's graph."""
    path = Path(path)
    if fmt in ("onnx", "mnn"):  # MNN converts the ONNX file written next to it
        import onnx

        return Counter(n.op_type for n in onnx.load(str(path.with_suffix(".onnx"))).graph.node)
    if fmt == "ncnn":  # layer type first on each line; a Reduction's "0=4" is max
        layers = [ln.split() for ln in (path / "model.ncnn.param").read_text().splitlines()[2:] if ln.strip()]
        counts = Counter(parts[0] for parts in layers)
        counts["ReduceMax"] = sum(parts[0] == "Reduction" and "0=4" in parts for parts in layers)
        return counts
    if fmt == "openvino":
        xml = next(path.glob("*.xml")).read_text()
        return Counter(re.findall(r'type="([A-Za-z]+)"', xml))
    if fmt == "coreml":
        import coremltools as ct

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        counts = Counter()

        def walk(block):
            for op in block.operations:
                counts[op.type] += 1
                for b in op.blocks:
                    walk(b)

        for fn in spec.mlProgram.functions.values():
            for block in fn.block_specializations.values():
                walk(block)
        return counts
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        return Counter(op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details())
    if fmt == "saved_model":
        from ai_edge_litert.interpreter import Interpreter

        lite = next(path.glob("*_float32.tflite"))
        return Counter(op["op_name"] for op in Interpreter(model_path=str(lite))._get_ops_details())
    if fmt == "paddle":
        text = next(path.rglob("*.json")).read_text()  # PIR program: ops are named "1.<op>"
        return Counter(re.findall(r'"1\.([a-z_0-9]+)"', text))
    if fmt == "torchscript":
        import torch

        return Counter(n.kind() for n in torch.jit.load(str(path)).inlined_graph.nodes())
    return None


def fine_attention_summary(ops: dict) -> str:
    """Which form of the fine branch (``pst_yolo.formats``) an op count shows: TopK/Gather (graph), max-and-mask
    rounds (portable) or neither (coarse only)."""
    lower = {k.lower(): v for k, v in ops.items()}
    topk = sum(v for k, v in lower.items() if "topk" in k)
    gather = sum(v for k, v in lower.items() if "gather" in k)
    rmax = sum(v for k, v in lower.items() if any(t in k for t in ("reducemax", "reduce_max", "amax", "argmax")))
    if topk:
        return f"graph: TopK x{topk}, Gather x{gather}"
    if rmax:
        return f"portable: max-and-mask x{rmax}"
    return "none (coarse only)"


def summary(path) -> str:
    """One readable paragraph about an exported file: opset, op counts, TopK K values, TensorRT problems."""
    onnx = require("onnx", "checking an ONNX export")

    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    ks = topk_values(model)
    problems = tensorrt_problems(model)
    pattern = attention_problems(model)
    lines = [
        f"{path}: opset {[o.version for o in model.opset_import]}, {sum(ops.values())} nodes",
        f"  fine attention: {len(ks)} TopK node(s), K = {ks}" if ks else "  fine attention: none (coarse-only graph)",
        "  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())),
        "  TensorRT parser: no known problem" if not problems else "  TensorRT problems:\n    " + "\n    ".join(problems),
        "  attention pattern: every Softmax fusable" if not pattern else "  attention pattern:\n    " + "\n    ".join(pattern),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Inspect an exported PST ONNX file for TensorRT compatibility.")
    ap.add_argument("onnx", nargs="+", type=Path)
    args = ap.parse_args(argv)
    bad = 0
    for p in args.onnx:
        print(summary(p))
        bad += bool(tensorrt_problems(p) or attention_problems(p))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
