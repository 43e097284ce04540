"""What each INT8 quantizer is told to keep float (pst_yolo.quantize): a PSA's own ops, never its convolutions, never a
stock layer (the C2PSA attention of a YOLO11 has the same attribute name), on the names each toolchain really gives
(copied from exported files: OpenVINO friendly names, ONNX node names, LiteRT tensor names). The exports themselves:
tests/test_export_formats.py."""

from __future__ import annotations

import re

import onnx
import pytest
from onnx import helper

import ultralytics.nn.tasks  # noqa: F401  (Ultralytics first: start-up hook order)

from ultralytics import YOLO  # noqa: E402

from pst_yolo.quantize import (  # noqa: E402
    LITERT_FLOAT_SCOPE, float_attention, onnx_attention_nodes, openvino_patterns, psa_paths,
)

PSA = "model.13.pst.m.0.attn"


def test_psa_paths_name_every_psa_and_nothing_else():
    assert psa_paths(YOLO("yolo11n-pst-res.yaml").model) == [PSA]
    paper = psa_paths(YOLO("yolo11n-pst.yaml").model)
    assert len(paper) == 2 and all(p.endswith(".attn") for p in paper)
    assert psa_paths(YOLO("yolo11n.yaml").model) == []  # stock C2PSA's Attention is not a PSA


def test_openvino_patterns_match_the_psa_ops_only():
    patterns = openvino_patterns([PSA])
    hit = lambda name: any(re.fullmatch(p, name) for p in patterns)  # noqa: E731  (NNCF matches whole names)
    assert hit(f"__module.{PSA}/aten::pad/Pad")
    assert hit(f"__module.{PSA}/aten::matmul/MatMul_3")
    assert not hit(f"__module.{PSA}.q.conv/aten::_convolution/Convolution")
    assert not hit("__module.model.10.m.0.attn/aten::matmul/MatMul")
    assert not hit("__module.model.113.pst.m.0.attn/aten::pad/Pad")


def test_onnx_nodes_are_the_psa_ops_only():
    names = ["/model.13/pst/m.0/attn/MatMul_3", "/model.13/pst/m.0/attn/Softmax", "/model.13/pst/m.0/attn/TopK",
             "/model.13/pst/m.0/attn/q/conv/Conv", "/model.10/m/m.0/attn/MatMul", "/model.13/pst/m.0/Add"]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], [f"y{i}"], name=n) for i, n in enumerate(names)],
                              "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])], [])
    assert onnx_attention_nodes(graph, [PSA]) == names[:3]


def test_litert_scope_matches_the_psa_ops_only():
    base = ("ultralytics.utils.export.engine._NormalizeCoords/ultralytics.nn.tasks.DetectionModel_model/"
            "pst_yolo.modules.C3k2PST_13/pst_yolo.modules.PST_pst/pst_yolo.modules.PSTBlock_0/"
            "pst_yolo.modules.PyramidSparseAttention_attn")
    assert re.search(LITERT_FLOAT_SCOPE, base + ";12")
    assert re.search(LITERT_FLOAT_SCOPE, base + ";")
    conv = "/ultralytics.nn.modules.conv.Conv_q/torch.nn.modules.conv.Conv2d_conv;"
    assert not re.search(LITERT_FLOAT_SCOPE, base + conv)
    stock = ("ultralytics.nn.tasks.DetectionModel_model/ultralytics.nn.modules.block.C2PSA_10/torch.nn.modules."
             "container.Sequential_m/ultralytics.nn.modules.block.PSABlock_0/"
             "ultralytics.nn.modules.block.Attention_attn;1")
    assert not re.search(LITERT_FLOAT_SCOPE, stock)


def test_onnx_quantizer_refuses_a_graph_without_the_psa_nodes(tmp_path):
    """A renamed scope must not quantize the scores silently: the patched quantize_static raises, naming the layer."""
    ortq = pytest.importorskip("onnxruntime.quantization")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="/model.0/Identity")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    with float_attention("onnx", [PSA]), pytest.raises(RuntimeError, match=re.escape(PSA)):
        ortq.quantize_static(str(path), str(tmp_path / "q.onnx"), None)
