"""The ``joint`` fusion of fine attention (pst_yolo.fine): one softmax over the coarse keys whose regions are not refined
and the fine tokens of those that are (each fine logit lowered by log 4), against the float64 reference; the same in
the exported forms; and the property that makes it safe to switch on: the output stays a convex combination of values,
equal to the coarse output when the fine tokens repeat their region's key and value."""

from __future__ import annotations

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (registration before pst_yolo.modules)
from reference import psa_reference, randomize

from pst_yolo.formats import export_form
from pst_yolo.modules import PyramidSparseAttention

SHAPES = [(2, 64, 8, 8), (1, 32, 7, 5), (2, 64, 5, 9), (1, 32, 1, 1), (3, 96, 12, 6)]


def _attn(c, topk=8, threshold=1e-6, backend="reference", dtype=torch.float64):
    return randomize(PyramidSparseAttention(c, topk, threshold, backend, fusion="joint")).to(dtype).eval()


def _inputs(b, c, h, w, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h, w, generator=g, dtype=dtype),
            torch.randn(b, c, (h + 1) // 2, (w + 1) // 2, generator=g, dtype=dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("topk", [1, 3, 8, 1000])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_joint_matches_reference_float64(shape, topk, backend):
    attn = _attn(shape[1], topk, backend=backend)
    x, u = _inputs(*shape)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, u), psa_reference(attn, x, u, fine=True), rtol=0, atol=1e-10)


@pytest.mark.parametrize("threshold", [0.02, 1.0])  # some regions, then every region, below the threshold
def test_joint_with_rejected_regions_keeps_their_coarse_keys(threshold):
    attn = _attn(64, 8, threshold)
    x, u = _inputs(2, 64, 9, 7)
    with torch.no_grad():
        got = attn(x, u)
        torch.testing.assert_close(got, psa_reference(attn, x, u, fine=True), rtol=0, atol=1e-10)
        if threshold == 1.0:
            attn.topk = 0
            torch.testing.assert_close(got, attn(x, u), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 64, 8, 8), (1, 64, 7, 5)])
def test_joint_equals_coarse_when_fine_tokens_repeat_their_region(shape):
    """x = u upsampled (nearest): every fine token equals its region's coarse key and value, so replacing a coarse key
    by its four tokens at -log 4 leaves each softmax weight and the output unchanged (odd maps: clipped regions keep
    fewer tokens, so they are not compared there)."""
    b, c, h, w = shape
    attn = _attn(c, 8)
    u = torch.randn(b, c, (h + 1) // 2, (w + 1) // 2, dtype=torch.float64)
    x = torch.nn.functional.interpolate(u, scale_factor=2, mode="nearest")[..., :h, :w]
    with torch.no_grad():
        fine = attn(x, u)
        attn.topk = 0
        coarse = attn(x, u)
    if h % 2 == 0 and w % 2 == 0:
        torch.testing.assert_close(fine, coarse, rtol=0, atol=1e-12)
    assert torch.isfinite(fine).all()


def test_joint_keeps_each_channels_scale_within_the_values_range():
    """The stated bound: before the output projection, each channel of the joint output is a convex combination of the
    coarse and fine values, so it stays within their per-channel min..max, and its mean / std over the map stay within
    that range's width of the coarse-only output's; the paper's sum can leave the range (two attention outputs)."""
    torch.manual_seed(3)
    attn = _attn(64, 8)
    x, u = _inputs(2, 64, 12, 10, seed=4)
    seen = {}
    attn.proj.register_forward_hook(lambda m, a, o: seen.__setitem__("in", a[0]))
    with torch.no_grad():
        v = torch.cat([attn._heads(attn.v(u)), attn._heads(attn.v(x))], dim=-2)  # every value a query could mix
        lo, hi = v.amin(dim=(0, 2)).flatten(), v.amax(dim=(0, 2)).flatten()  # per channel, (head, d) order
        pe = attn._cpe(attn.v(u), 12, 10)
        results = {}
        for fusion, k in (("joint", 8), ("joint", 0), ("add", 8)):
            attn.fusion, attn.topk = fusion, k
            attn(x, u)
            results[fusion, k] = (seen["in"] - pe).transpose(0, 1).flatten(1)  # (C, B*H*W) attention output
    joint, coarse, added = results["joint", 8], results["joint", 0], results["add", 8]
    assert ((joint >= lo[:, None] - 1e-9) & (joint <= hi[:, None] + 1e-9)).all()
    width = hi - lo
    assert ((joint.mean(1) - coarse.mean(1)).abs() <= width).all()
    assert ((joint.std(1) - coarse.std(1)).abs() <= width).all()
    assert not ((added >= lo[:, None] - 1e-9) & (added <= hi[:, None] + 1e-9)).all()


@pytest.mark.parametrize("c,h,w,k", [(64, 13, 9, 8), (32, 16, 16, 8), (64, 5, 3, 8)])
def test_joint_portable_trace_equals_eager(c, h, w, k):
    attn = _attn(c, k, backend=None)
    x, u = _inputs(2, c, h, w)
    with torch.no_grad():
        want = attn(x, u)
        with export_form("portable"):
            traced = torch.jit.trace(attn, (x, u), check_trace=False)
        torch.testing.assert_close(traced(x, u), want, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_joint_onnx_graph_form_runs_in_onnxruntime(tmp_path):
    """A dynamic export traced at one size runs at others: another batch, another map, fewer coarse keys than k."""
    ort = pytest.importorskip("onnxruntime")
    attn = _attn(64, 8, backend=None, dtype=torch.float32)
    x, u = _inputs(1, 64, 16, 12, dtype=torch.float32)
    path = tmp_path / "joint.onnx"
    with torch.no_grad():
        torch.onnx.export(attn, (x, u), str(path), opset_version=17, dynamo=False, input_names=["x", "u"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "u": {0: "b", 2: "hu", 3: "wu"}})
    session = ort.InferenceSession(str(path))
    for b, h, w in ((1, 16, 12), (2, 10, 8), (1, 4, 4)):  # the last: a 2x2 coarse map, M = 4 < k = 8
        x, u = _inputs(b, 64, h, w, dtype=torch.float32)
        with torch.no_grad():
            want = attn(x, u).numpy()
        got = session.run(None, {"x": x.numpy(), "u": u.numpy()})[0]
        assert abs(got - want).max() < 1e-4, (b, h, w)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_joint_graph_form_under_torch_export(backend):
    """torch.export (ExecuTorch, litert-torch, the dynamo ONNX exporter) traces the joint mask with a symbolic M: a
    key count taken from data there is an unbacked size SDPA cannot check against the keys."""
    attn = _attn(64, 8, backend=backend, dtype=torch.float32)
    x, u = _inputs(1, 64, 8, 8, dtype=torch.float32)
    with torch.no_grad(), export_form("graph"):
        program = torch.export.export(attn, (x, u))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x, u), attn(x, u), rtol=1e-5, atol=1e-5)
