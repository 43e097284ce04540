"""The portable form of the fine branch (``pst_yolo.portable``) and the export detection that selects it.

The portable form is traced for converters without TopK/Gather/comparisons (NCNN, CoreML, LiteRT, ExecuTorch, onnx2tf,
x2paddle); it must compute exactly what the eager path computes. Checked here by tracing real PSA layers with
``torch.jit.trace`` and ``torch.export`` in float64 (odd maps, ties, thresholds, k > M, every head count) and comparing
with the eager forward, and by the ops the traced graphs contain.
"""

from __future__ import annotations

import pytest
import torch

import ultralytics.nn.tasks  # noqa: F401  (Ultralytics first: start-up hook order)

from pst_yolo import portable
from pst_yolo.tracing import in_export
from pst_yolo.formats import current_form, export_form, form_for
from pst_yolo.modules import PyramidSparseAttention
from pst_yolo.selection import select_fine_tokens

# Ops the portable form must not contain (pnnx/NCNN, coremltools, litert, ExecuTorch's core set or x2paddle lack them).
FORBIDDEN = ("sort", "topk", "gather", "index", "where", "floor_divide", "remainder", "lt.", "gt.", "eq.", "ne.",
             "logical", "bitwise", "unflatten", "_to_copy", "arange", "ceil")


def _psa(c, topk, threshold, seed=0):
    torch.manual_seed(seed)
    m = PyramidSparseAttention(c, topk=topk, threshold=threshold)
    for mod in m.modules():  # non-trivial BatchNorm statistics so every projection matters
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.2)
    return m.double().eval()


def _inputs(c, h, w, batch=2, scale=4.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=g, dtype=torch.float64) * scale
    u = torch.randn(batch, c, (h + 1) // 2, (w + 1) // 2, generator=g, dtype=torch.float64) * scale
    return x, u


def _exported_op_names(module, args):
    with export_form("portable"), torch.no_grad():
        ep = torch.export.export(module, args)
    return ep, {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


CASES = [  # (channels, H, W, k, threshold): odd and even maps, k above M, thresholds that reject regions
    (64, 13, 9, 8, 1e-6),
    (32, 16, 16, 8, 1e-6),
    (96, 7, 11, 3, 1e-6),
    (64, 5, 3, 8, 1e-6),  # M = 6 < k: rounds past M come out masked
    (64, 12, 10, 8, 0.02),  # some chosen regions below the threshold
    (64, 9, 9, 8, 1.0),  # every region rejected: the fine output must be exactly 0, not NaN
]


@pytest.mark.parametrize("c,h,w,k,threshold", CASES, ids=lambda v: str(v))
def test_portable_trace_equals_eager(c, h, w, k, threshold):
    m = _psa(c, k, threshold)
    x, u = _inputs(c, h, w)
    with torch.no_grad():
        ref = m(x, u)
        with export_form("portable"):
            traced = torch.jit.trace(m, (x, u), check_trace=False)
        torch.testing.assert_close(traced(x, u), ref, rtol=0, atol=1e-10)
    ep, ops = _exported_op_names(m, (x, u))
    torch.testing.assert_close(ep.module()(x, u), ref, rtol=0, atol=1e-10)
    assert not [o for o in ops if any(f in o for f in FORBIDDEN)], sorted(ops)


def test_portable_selection_matches_eager_selection_with_ties():
    """Equal scores (flat inputs) go to the lower index, as in the eager stable sort and ONNX TopK."""
    scores = torch.tensor([[[0.1, 0.3, 0.3, 0.05, 0.3, 0.25]]], dtype=torch.float64)
    onehot, above = portable.select_onehot(scores, 4, 1e-6)
    assert onehot.argmax(-1).tolist() == [[[1, 2, 4, 5]]]
    assert above.tolist() == [[[1.0, 1.0, 1.0, 1.0]]]
    hot, inside = portable.block_onehot(onehot, (2, 3), (3, 5))  # a 3x5 fine map under a 2x3 coarse grid
    index, valid = select_fine_tokens(scores, 4, 1e-6, 3, 3, 5)
    # eager tokens are (round, offset)-major; portable ones offset-major: compare as sets of (position, valid)
    eager = sorted(i for i, ok in zip(index[0, 0].tolist(), valid[0, 0].tolist()) if ok)
    port = sorted(int(r.argmax()) for r, ok in zip(hot[0, 0], inside[0, 0]) if ok)
    assert eager == port == [2, 3, 4, 7, 8, 9, 12, 13, 14]  # blocks of coarse 1, 2, 4, 5, clipped at row 3 / col 5
    assert hot.sum().item() == inside.sum().item() == 9


def test_step_is_exact_at_the_smallest_differences():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-7, 0.5, 1.0, 7.0, -3.0], dtype=torch.float32)
    assert portable.step(x).tolist() == [0, 0, 1, 0, 1, 1, 1, 1, 0]
    assert portable.step(x.half()).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0]  # 1e-30 underflows to 0 in float16


def test_export_detection_covers_torch_export():
    """Regression: ``torch.export`` (ExecuTorch, litert-torch, the dynamo ONNX exporter) is an export trace, so PSA
    traces its export form there (no eager stable sort, no lookup tables)."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(in_export())
            return x * 2

    torch.export.export(Probe(), (torch.ones(2),))
    torch.jit.trace(Probe(), torch.ones(2), check_trace=False)
    assert seen and all(seen)
    assert not in_export()
    m = _psa(64, 8, 1e-6).float()
    x, u = _inputs(64, 8, 8)
    with torch.no_grad(), export_form("graph"):
        ops = {str(n.target) for n in torch.export.export(m, (x.float(), u.float())).graph.nodes}
    assert not any("sort" in o for o in ops), sorted(ops)  # the graph form's TopK, not the eager stable sort
    assert any("topk" in o for o in ops)


def test_formats_table_and_coarse_form():
    assert form_for("onnx") == ("graph", None)
    assert form_for("ncnn") == ("portable", None)
    assert form_for("saved_model") == ("portable", None)
    assert form_for("some_future_format")[0] == "portable"
    m = _psa(64, 8, 1e-6)
    x, u = _inputs(64, 8, 8)
    with torch.no_grad():
        m.topk = 0
        coarse_only = m(x, u)
        m.topk = 8
        with export_form("coarse", "format=test cannot carry fine attention: testing"):
            traced = torch.jit.trace(m, (x, u), check_trace=False)
    torch.testing.assert_close(traced(x, u), coarse_only, rtol=0, atol=1e-12)
    assert current_form() == "graph"
    with pytest.raises(ValueError, match="unknown export form"):
        with export_form("fast"):
            pass
