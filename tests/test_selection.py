"""Exact, memory-bounded top-k selection and the gather-first fine branch of PSA."""

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (imports Ultralytics before pst_yolo.modules, as the start-up hook expects)

from pst_yolo import selection
from pst_yolo.attention import reference_attention
from pst_yolo.modules import PyramidSparseAttention
from pst_yolo.selection import (
    chunk_rows,
    coarse_attention_and_scores,
    coarse_scores,
    select_fine_tokens,
)


def _qk(b=2, heads=2, n=37 * 23, m=19 * 12, d=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, heads, n, d, generator=g, dtype=dtype)
    k = torch.randn(b, heads, m, d, generator=g, dtype=dtype)
    v = torch.randn(b, heads, m, d, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [1, 7, 100, 850, 851, 10_000, "auto"])
def test_chunked_scores_select_same_tokens(dtype, chunk, monkeypatch):
    monkeypatch.setattr(selection, "SCORE_BUDGET", 3000)  # "auto" -> 3000 // (2*2*228) = 3 rows per chunk
    q, k, _ = _qk(dtype=dtype)  # N = 851 (prime factors 23 * 37: no chunk size above divides it)
    ref = coarse_scores(q, k, 32**-0.5, chunk=None)
    got = coarse_scores(q, k, 32**-0.5, chunk=chunk)
    assert torch.allclose(got, ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)  # fp32: summation order
    assert torch.allclose(got.sum(-1), torch.ones_like(got.sum(-1)))
    for topk in (1, 8, 228):
        i_ref, v_ref = select_fine_tokens(ref, topk, 1e-6, 12, 37, 23)
        i_got, v_got = select_fine_tokens(got, topk, 1e-6, 12, 37, 23)
        assert torch.equal(i_ref, i_got) and torch.equal(v_ref, v_got)


@pytest.mark.parametrize("chunk", [None, 5, "auto"])
def test_fused_coarse_pass_matches_reference(chunk, monkeypatch):
    monkeypatch.setattr(selection, "SCORE_BUDGET", 5000)
    q, k, v = _qk(dtype=torch.float64, seed=1)
    out, scores = coarse_attention_and_scores(q, k, v, 32**-0.5, chunk=chunk)
    assert torch.allclose(out, reference_attention(q, k, v), atol=1e-12)
    assert torch.allclose(scores, coarse_scores(q, k, 32**-0.5, chunk=None), atol=1e-14)


def test_chunk_rows_bound_the_transient():
    q = torch.empty(1, 2, 25600, 32)  # P4 level of a 1280 px image has 2 heads in yolo11n-pst
    rows = chunk_rows(q, 6400)
    assert rows * 2 * 6400 <= selection.SCORE_BUDGET
    assert chunk_rows(q, 6400, None) is None and chunk_rows(q, 6400, 30000) is None
    with pytest.raises(ValueError, match="chunk"):
        chunk_rows(q, 6400, 0)


def _dense_fine(attn, x, q, k, coarse_w):
    """The straightforward fine branch: project the whole finer map with the K/V convs, then gather, masked softmax."""
    h, w = x.shape[-2:]
    scores = coarse_scores(q, k, attn.scale, chunk=None)
    index, valid = select_fine_tokens(scores, attn.topk, attn.threshold, coarse_w, h, w)
    kf, vf = attn._heads(attn.k(x)), attn._heads(attn.v(x))
    gather = index.unsqueeze(-1).expand(-1, -1, -1, attn.head_dim)
    kf, vf = kf.gather(2, gather), vf.gather(2, gather)
    logits = (q @ kf.transpose(-2, -1)) * attn.scale
    logits = logits.masked_fill(~valid.unsqueeze(-2), float("-inf"))
    p = logits.softmax(-1).nan_to_num(0.0)  # all-masked rows contribute nothing
    return p @ vf


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def _capture_fine_inputs(model, im):
    """(module, x, u) for every PSA of a real model forward."""
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append((mod, *args)))
        for m in model.modules()
        if isinstance(m, PyramidSparseAttention)
    ]
    with torch.no_grad():
        model(im)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("fuse", [False, True])
def test_gather_first_fine_branch_equals_dense(fuse):
    """yolo11n-pst at 256x160, eval, float64, before and after the real DetectionModel.fuse()."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n-pst.yaml", nc=3, verbose=False)
    _randomize_bn(model)
    model = model.double().eval()
    if fuse:
        model.fuse(verbose=False)
        assert not any(hasattr(m, "bn") for m in model.modules() if isinstance(m, PyramidSparseAttention))
    im = torch.rand(1, 3, 256, 160, dtype=torch.float64)
    captured = _capture_fine_inputs(model, im)
    assert len(captured) == 2
    for attn, x, u in captured:
        _check_fine(attn, x, u)


def _check_fine(attn, x, u):
    with torch.no_grad():
        q, k = attn._heads(attn.q(x)), attn._heads(attn.k(u))
        # (8, 0.05) leaves some regions below the threshold -> masked path; (1000, ...) clamps k to M
        for topk, threshold in ((8, 1e-6), (3, 1e-6), (1000, 1e-6), (8, 0.05), (8, 1.0)):
            attn.topk, attn.threshold = topk, threshold
            fast = attn.fine(x, q, k, u.shape[-1])
            ref = _dense_fine(attn, x, q, k, u.shape[-1])
            assert torch.allclose(fast, ref, atol=1e-10, rtol=0), (topk, threshold)
    attn.topk, attn.threshold = 8, 1e-6


@pytest.mark.parametrize("fuse", [False, True])
def test_gather_first_fine_branch_odd_map(fuse):
    """Odd finer map (13x9 -> coarse 7x5): the 2x2 blocks of the last row/column are clipped (masked path)."""
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    torch.manual_seed(1)
    attn = PyramidSparseAttention(64)
    _randomize_bn(attn, seed=3)
    attn = attn.double().eval()
    if fuse:  # what DetectionModel.fuse() does to every Conv
        for m in (attn.q, attn.k, attn.v, attn.pe, attn.proj):
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    x, u = torch.randn(2, 64, 13, 9, dtype=torch.float64), torch.randn(2, 64, 7, 5, dtype=torch.float64)
    _check_fine(attn, x, u)
