"""Exact top-k selection: every score strategy against the float64 reference, memory, ties, the gather-first fine
branch, and the eval forward's host syncs and op count (the GPU-readiness of pst_yolo.scoring)."""

import math

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (imports Ultralytics before pst_yolo.modules, as the start-up hook expects)
from reference import randomize_bn
from torch.profiler import profile

from pst_yolo import scoring
from pst_yolo.attention import reference_attention
from pst_yolo.modules import PyramidSparseAttention
from pst_yolo.opcount import ops_and_syncs as _ops_and_syncs
from pst_yolo.scoring import chunk_rows, coarse_attention, coarse_scores, scores_from_lse
from pst_yolo.selection import block_positions, select_fine_tokens

STRATEGIES = ("reference", "chunked", "lse")


def _qkv(b=2, heads=2, n=37 * 23, m=19 * 12, d=32, dtype=torch.float32, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, s, d, generator=g, dtype=dtype) * spread for s in (n, m, m)]


def _explicit_scores(q, k):
    """mean_i softmax(q k^T / sqrt(d))_ij in float64, written out."""
    p = (q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return p.mean(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_equals_explicit_scores_and_output(strategy, dtype, monkeypatch):
    monkeypatch.setattr(scoring, "SCORE_BUDGET", 3000)  # chunked: 3000 // (2*2*228) = 3 queries per chunk
    q, k, v = _qkv(dtype=dtype, spread=2.0)  # N = 851 (23 * 37: no chunk size divides it)
    out, s = coarse_attention(q, k, v, 32**-0.5, strategy=strategy)
    ref = _explicit_scores(q, k)
    assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rel = ((s.double() - ref).abs() / ref).max().item()
    assert rel < (1e-11 if dtype == torch.float64 else 1e-5), rel
    want = reference_attention(q.double(), k.double(), v.double())
    tol = 1e-10 if dtype == torch.float64 else 5e-5
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    for topk in (1, 8, 228):
        assert torch.equal(select_fine_tokens(s, topk, 1e-6, 12, 37, 23)[0],
                           select_fine_tokens(ref, topk, 1e-6, 12, 37, 23)[0])
    # the scores alone (the joint fusion at k > 0), in the same chunks: the same scores, no output
    none, alone = coarse_attention(q, k, v, 32**-0.5, strategy=strategy, output=False)
    assert none is None or strategy == "lse"  # the fused kernel returns its output anyway
    torch.testing.assert_close(alone, s, rtol=1e-12 if dtype == torch.float64 else 2e-6, atol=0)


def test_lse_scores_on_a_large_map():
    """The P3 level of a 640 px image (6400 queries x 1600 keys): relative error < 1e-5, the same top-8."""
    q, k, _ = _qkv(b=1, n=6400, m=1600, seed=3, spread=1.5)
    ref = _explicit_scores(q, k)
    s = coarse_scores(q, k, 32**-0.5, strategy="lse")
    assert ((s.double() - ref).abs() / ref).max() < 1e-5
    assert torch.equal(s.topk(8).indices, ref.topk(8).indices)


def test_scores_from_lse_never_forms_the_n_by_m_matrix():
    """Largest single allocation of each strategy at N=6400, M=1600, 2 heads (the N x M matrix is 82 MB in fp32)."""
    q, k, v = _qkv(b=1, n=6400, m=1600, seed=4)
    full = 2 * 6400 * 1600 * 4

    def largest(strategy):
        coarse_attention(q, k, v, 32**-0.5, strategy=strategy)  # warm-up
        with profile(profile_memory=True) as p:
            coarse_attention(q, k, v, 32**-0.5, strategy=strategy)
        return max(e.self_cpu_memory_usage for e in p.events())

    assert largest("reference") >= full  # the check sees the matrix where there is one
    for strategy in ("lse", "chunked"):
        assert largest(strategy) < full / 16, strategy  # O(N d) (lse) or one bounded chunk (chunked)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_constant_logits_give_uniform_scores_and_lowest_index_ties(strategy):
    """All logits equal (a blank image): every key gets s_j = 1/M. The explicit strategies produce bit-equal scores,
    so the selection is the lowest indices, as ONNX TopK picks them; the lse kernel's fp32 rounding differs between
    rows by ~1e-7 relative, so its order among exact ties is the kernel's (documented in docs/deployment.md, "Ties")."""
    q, k = torch.zeros(1, 1, 50, 32), torch.zeros(1, 1, 10, 32)
    s = coarse_scores(q, k, 32**-0.5, strategy=strategy)
    torch.testing.assert_close(s, torch.full((1, 1, 10), 0.1), rtol=1e-6, atol=0)
    if strategy != "lse":
        assert len(set(s.flatten().tolist())) == 1
        index, _ = select_fine_tokens(s, 3, 1e-6, 5, 4, 10)  # coarse 2x5 -> blocks of keys 0, 1, 2
        assert index.tolist() == [[[0, 1, 10, 11, 2, 3, 12, 13, 4, 5, 14, 15]]]


def test_ties_break_towards_the_lower_index():
    s = torch.tensor([[[0.1, 0.3, 0.3, 0.0, 0.3, 0.3]]])
    index, valid = select_fine_tokens(s, 3, 1e-6, 6, 2, 12)
    assert (index.view(3, 4)[:, 0] // 2).tolist() == [1, 2, 4] and valid.all()


def test_chunk_rows_bound_the_transient():
    q = torch.empty(1, 2, 25600, 32)  # P4 level of a 1280 px image has 2 heads in yolo11n-pst
    rows = chunk_rows(q, 6400)
    assert rows * 2 * 6400 <= scoring.SCORE_BUDGET
    assert chunk_rows(q, 6400, None) is None and chunk_rows(q, 6400, 30000) is None
    with pytest.raises(ValueError, match="chunk"):
        chunk_rows(q, 6400, 0)


def test_strategy_switch_and_errors(monkeypatch):
    q = torch.zeros(1, 1, 4, 32)
    monkeypatch.setenv(scoring.ENV_SCORES, "lse")
    assert scoring.resolve_strategy(q) == "lse"
    monkeypatch.setenv(scoring.ENV_SCORES, "auto")
    assert scoring.resolve_strategy(q) == "chunked"  # CPU
    scoring.set_strategy("reference")
    try:
        assert scoring.resolve_strategy(q) == "reference"
    finally:
        scoring.set_strategy(None)
    monkeypatch.setenv(scoring.ENV_SCORES, "fast")
    with pytest.raises(ValueError, match="PST_SCORES"):
        scoring.resolve_strategy(q)


def test_block_positions_clip_odd_maps():
    pos, inside = block_positions(torch.tensor([0, 4, 14]), 5, 5, 9)  # coarse 3x5 over a 5x9 map
    assert pos.tolist() == [[0, 1, 9, 10], [8, 8, 17, 17], [44, 44, 44, 44]]
    assert inside.tolist() == [[True] * 4, [True, False, True, False], [True, False, False, False]]


def _dense_fine(attn, x, q, k, coarse_w):
    """The straightforward fine branch: project the whole finer map with the K/V convs, then gather, masked softmax."""
    h, w = x.shape[-2:]
    scores = _explicit_scores(q, k)
    index, valid = select_fine_tokens(scores, attn.topk, attn.threshold, coarse_w, h, w)
    kf, vf = attn._heads(attn.k(x)), attn._heads(attn.v(x))
    gather = index.unsqueeze(-1).expand(-1, -1, -1, attn.head_dim)
    kf, vf = kf.gather(2, gather), vf.gather(2, gather)
    logits = (q @ kf.transpose(-2, -1)) * attn.scale
    logits = logits.masked_fill(~valid.unsqueeze(-2), float("-inf"))
    p = logits.softmax(-1).nan_to_num(0.0)  # all-masked rows contribute nothing
    return p @ vf, scores


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
    randomize_bn(model)
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
        # (8, 0.05) leaves some regions below the threshold -> masked tokens; (1000, ...) clamps k to M; (8, 1.0)
        # rejects every region (the output must be exactly 0, not NaN)
        for topk, threshold in ((8, 1e-6), (3, 1e-6), (1000, 1e-6), (8, 0.05), (8, 1.0)):
            attn.topk, attn.threshold = topk, threshold
            ref, scores = _dense_fine(attn, x, q, k, u.shape[-1])
            fast = attn.fine(x, q, scores, tuple(u.shape[-2:]))
            assert torch.allclose(fast, ref, atol=1e-10, rtol=0), (topk, threshold)
    attn.topk, attn.threshold = 8, 1e-6


@pytest.mark.parametrize("fuse", [False, True])
def test_gather_first_fine_branch_odd_map(fuse):
    """Odd finer map (13x9 -> coarse 7x5): the 2x2 blocks of the last row/column are clipped (masked tokens)."""
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    torch.manual_seed(1)
    attn = PyramidSparseAttention(64)
    randomize_bn(attn, seed=3)
    attn = attn.double().eval()
    if fuse:  # what DetectionModel.fuse() does to every Conv
        for m in (attn.q, attn.k, attn.v, attn.pe, attn.proj):
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    x, u = torch.randn(2, 64, 13, 9, dtype=torch.float64), torch.randn(2, 64, 7, 5, dtype=torch.float64)
    _check_fine(attn, x, u)


def test_fine_projection_cache_follows_weight_changes():
    """The folded fine K/V weights are cached in eval, and rebuilt after any weight or BN-statistic change."""
    torch.manual_seed(2)
    attn = PyramidSparseAttention(64).eval()
    x, u = torch.randn(1, 64, 10, 10), torch.randn(1, 64, 5, 5)
    with torch.no_grad():
        first = attn(x, u)
        assert torch.equal(attn(x, u), first)  # served from the cache, identical
        attn.k.bn.running_var.mul_(4.0)  # an in-place change bumps the tensor's version
        changed = attn(x, u)
        attn.k.bn.running_var.div_(4.0)
        assert not torch.allclose(changed, first) and torch.equal(attn(x, u), first)
    assert "_fine_cache" not in attn.__getstate__()  # never pickled into a checkpoint


# ---------------------------------------------------------------------------------- syncs and op count (GPU path)
@pytest.fixture(scope="module")
def fused_models():
    from ultralytics.nn.tasks import DetectionModel

    from pst_yolo.runtime import set_topk

    stock = DetectionModel("yolo11n.yaml", verbose=False).eval().fuse(verbose=False)
    pst = DetectionModel("yolo11n-pst.yaml", verbose=False).eval().fuse(verbose=False)
    set_topk(pst, 8)
    return stock, pst


@pytest.mark.parametrize("strategy", ["lse", "auto"])
def test_eval_forward_has_no_host_sync(fused_models, strategy, monkeypatch):
    monkeypatch.setenv(scoring.ENV_SCORES, strategy)
    for size in (96, 224):
        assert _ops_and_syncs(fused_models[1], torch.rand(1, 3, size, size))[1] == 0, (strategy, size)


def test_lse_op_count_is_flat_and_within_1p5x_stock(fused_models, monkeypatch):
    monkeypatch.setenv(scoring.ENV_SCORES, "lse")
    stock, pst = fused_models
    counts = {s: _ops_and_syncs(pst, torch.rand(1, 3, s, s))[0] for s in (96, 160, 320)}
    assert len(set(counts.values())) == 1, counts  # no growth with the image size
    base = _ops_and_syncs(stock, torch.rand(1, 3, 160, 160))[0]
    assert counts[160] <= 1.5 * base, (counts, base)


@pytest.mark.slow
def test_lse_strategy_compiles_fullgraph(monkeypatch):
    """torch.compile(fullgraph=True) traces the GPU strategy without a graph break and matches eager."""
    monkeypatch.setenv(scoring.ENV_SCORES, "lse")
    torch.manual_seed(5)
    attn = PyramidSparseAttention(64, topk=4).eval()
    randomize_bn(attn, seed=5)
    x, u = torch.randn(1, 64, 11, 9), torch.randn(1, 64, 6, 5)
    with torch.no_grad():
        want = attn(x, u)
        torch._dynamo.reset()
        got = torch.compile(attn, fullgraph=True, dynamic=False)(x, u)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_scores_from_lse_matches_with_a_given_lse():
    """The second pass alone: with lse_i from the explicit logits, exp(LSE_j)/N equals the mean probability."""
    q, k, _ = _qkv(b=1, heads=3, n=200, m=50, dtype=torch.float64, seed=9)
    lse = ((q @ k.transpose(-2, -1)) * 32**-0.5).logsumexp(-1)
    torch.testing.assert_close(scores_from_lse(q, k, lse, 32**-0.5), _explicit_scores(q, k), rtol=1e-12, atol=0)


def test_fine_projection_with_inference_tensors():
    """Weights created (or fused) under torch.inference_mode have no version counter: computed, never cached."""
    with torch.inference_mode():
        attn = PyramidSparseAttention(64).eval()
        x, u = torch.randn(1, 64, 6, 6), torch.randn(1, 64, 3, 3)
        assert torch.equal(attn(x, u), attn(x, u))
    assert "_fine_cache" not in attn.__dict__


@pytest.mark.slow
def test_first_forward_compiles_fullgraph_with_its_log_lines(monkeypatch):
    """The very first forward of a process compiled with fullgraph=True: the one-time log lines (kernel and score
    strategy chosen) are emitted inside the traced code, which torch.compile accepts for pst-yolo's logger (registered as
    reorderable by the start-up hook) instead of breaking the graph."""
    import pst_yolo.log as log

    monkeypatch.setenv(scoring.ENV_SCORES, "auto")
    monkeypatch.setattr(log, "_LOGGED", set())  # as in a fresh process: nothing said yet
    torch.manual_seed(6)
    attn = PyramidSparseAttention(64, topk=4).eval()
    x, u = torch.randn(1, 64, 11, 9), torch.randn(1, 64, 6, 5)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(attn, fullgraph=True, dynamic=False)(x, u)
        torch.testing.assert_close(got, attn(x, u), rtol=1e-4, atol=1e-5)
    assert log.LOGGER.log in torch._dynamo.config.reorderable_logging_functions
