"""What fine attention costs in an exported graph, read from the graph itself: ONNX shape inference on the static
exports `yolo export format=onnx` writes (no run, no timing), so the checks give the same answer on every machine.

- No tensor of a PST attention exceeds what the stock model already holds (or one score chunk): the whole N x M
  attention map of the P3 fusion at 1280 px (164.7 M floats in pst-yolo 0.4's joint export) can never come back.
- The elements the attention's nodes write (a proxy for its memory traffic) at k=8 stay within a bound of k=0's, per
  fusion: the additive form adds only the 4k fine tokens' attention; the joint form's one extra pass over the coarse
  keys (it needs every query's scores before its own softmax) is the most it may add.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow

onnx = pytest.importorskip("onnx")


def tensor_sizes(path) -> dict:
    """Elements of every intermediate tensor of the ONNX file (None where shape inference leaves a dimension open)."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    sizes = {}
    for vi in graph.value_info:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        sizes[vi.name] = None if None in dims else int(np.prod(dims, dtype=np.int64))
    return sizes


def export(tmp_path_factory, yaml, imgsz, topk=None, fusion=None):
    from ultralytics import YOLO

    from pst_yolo.runtime import set_fusion, set_topk

    model = YOLO(yaml)
    if topk is not None:
        set_topk(model, topk)
    if fusion is not None:
        set_fusion(model, fusion)
    folder = tmp_path_factory.mktemp(f"{yaml.split('.')[0]}-{topk}-{fusion}-{imgsz}")
    old = os.getcwd()
    os.chdir(folder)  # a model built from YAML exports into the working directory: one folder per export
    try:
        return str(folder / model.export(format="onnx", imgsz=imgsz, simplify=True, device="cpu", verbose=False))
    finally:
        os.chdir(old)


def attention_sizes(sizes: dict) -> dict:
    return {name: n for name, n in sizes.items() if "/attn/" in name}


@pytest.fixture(scope="module")
def stock_1280(tmp_path_factory):
    return tensor_sizes(export(tmp_path_factory, "yolo11n.yaml", 1280))


@pytest.mark.parametrize("fusion", ["joint", "add"])
def test_static_export_at_1280_px_holds_no_attention_map(tmp_path_factory, stock_1280, fusion):
    from pst_yolo.scoring import EXPORT_BUDGET

    sizes = tensor_sizes(export(tmp_path_factory, "yolo11n-pst.yaml", 1280, topk=8, fusion=fusion))
    attn = attention_sizes(sizes)
    assert attn, "no PST attention tensor found by name (/attn/) in the export"
    open_dims = sorted(name for name, n in attn.items() if n is None)
    assert not open_dims, f"a static export has tensors of unknown size (data-dependent shapes): {open_dims[:5]}"
    bound = max(EXPORT_BUDGET, max(n for n in stock_1280.values() if n))
    too_big = {name: n for name, n in attn.items() if n > bound}
    assert not too_big, f"attention tensors above {bound} elements (one score chunk / stock's largest): {too_big}"
    # the whole graph too: nothing of the PST model's exceeds the stock model's largest tensor at this size
    assert max(n for n in sizes.values() if n) <= bound


@pytest.mark.parametrize("fusion,limit", [("joint", 2.4), ("add", 1.15)])
def test_fine_attention_adds_a_bounded_share_to_the_attention_graph(tmp_path_factory, fusion, limit):
    """At 640 px the attention nodes of the k=8 export write at most ``limit`` times the elements of k=0's (measured:
    joint 2.28, add 1.10): a third pass over the coarse keys, or a fine branch over the whole map, fails it."""
    written = {}
    for k in (0, 8):
        attn = attention_sizes(tensor_sizes(export(tmp_path_factory, "yolo11n-pst.yaml", 640, topk=k, fusion=fusion)))
        assert None not in attn.values()
        written[k] = sum(attn.values())
    assert written[8] / written[0] <= limit, written
    assert written[8] > written[0], "fine attention left no trace in the k=8 export"
