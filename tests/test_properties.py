"""Property-based tests (hypothesis): PyramidSparseAttention against the explicit reference in tests/reference.py over
random batch sizes, channels, map sizes (1x1, odd, non-square), k, thresholds, dtypes, kernels, score strategies and
memory layouts.

Ties in the top-k scores would make the selection ambiguous; random inputs and random BN statistics make them
measure-zero, and the comparison runs the model in float64 where the dtype is float64.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ultralytics.nn.tasks  # noqa: F401
from pst_yolo import scoring
from pst_yolo.modules import PST, PyramidSparseAttention

from reference import psa_reference  # noqa: E402  (tests/ is on sys.path under pytest's rootdir-relative import)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (2e-4, 2e-4), torch.bfloat16: (6e-2, 6e-2)}


def _randomise_bn(module, g):
    """Non-trivial BN statistics so the reference's explicit BN is really exercised."""
    for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=g) * 0.1)


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "non_contiguous":  # a strided view of a bigger tensor
        big = torch.zeros(t.shape[0], t.shape[1] * 2, t.shape[2], t.shape[3] + 1, dtype=t.dtype)
        big[:, ::2, :, : t.shape[3]] = t
        view = big[:, ::2, :, : t.shape[3]]
        assert not view.is_contiguous()
        return view
    return t


@SETTINGS
@given(
    b=st.integers(1, 3),
    heads=st.integers(1, 3),
    h=st.integers(1, 13),
    w=st.integers(1, 13),
    topk=st.integers(0, 12),
    threshold=st.sampled_from([0.0, 1e-6, 0.02, 0.2, 2.0]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    backend=st.sampled_from(["sdpa", "reference"]),
    layout=st.sampled_from(["contiguous", "channels_last", "non_contiguous"]),
    strategy=st.sampled_from(["chunked", "lse", "reference"]),
    seed=st.integers(0, 2**16),
)
def test_psa_matches_reference(b, heads, h, w, topk, threshold, dtype, backend, layout, strategy, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c = 32 * heads
    attn = PyramidSparseAttention(c, topk=topk, threshold=threshold, backend=backend)
    with torch.no_grad():
        _randomise_bn(attn, g)
    attn = attn.eval().to(dtype)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    u = torch.randn(b, c, (h + 1) // 2, (w + 1) // 2, generator=g, dtype=torch.float64)
    xi, ui = _layout(x.to(dtype), layout), _layout(u.to(dtype), layout)
    scoring.set_strategy(strategy)  # every score strategy (pst_yolo.scoring) must select exactly what eq. 3 selects
    try:
        with torch.no_grad():
            got = attn(xi, ui)
    finally:
        scoring.set_strategy(None)
    with torch.no_grad():
        want = psa_reference(attn, xi, ui, fine=True)
        coarse = psa_reference(attn, xi, ui, fine=False)
    assert got.shape == (b, c, h, w) and got.dtype == dtype
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)
    # The coarse-only path (what training runs) with eval BN statistics: k = 0.
    attn.topk = 0
    with torch.no_grad():
        torch.testing.assert_close(attn(xi, ui).double(), coarse, rtol=rtol, atol=atol)


@SETTINGS
@given(h=st.integers(1, 9), w=st.integers(1, 9), topk=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_psa_bfloat16_is_close_to_float64_reference(h, w, topk, seed):
    """bf16 weights and inputs: finite, and within bf16 rounding of the float64 reference for the same values (the
    top-k set itself may legitimately differ at near-ties, so only k=0 is compared numerically)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    attn = PyramidSparseAttention(64, topk=topk).eval().to(torch.bfloat16)
    x = torch.randn(2, 64, h, w, generator=g).to(torch.bfloat16)
    u = torch.randn(2, 64, (h + 1) // 2, (w + 1) // 2, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        got = attn(x, u)
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        if topk == 0:
            want = psa_reference(attn, x, u, fine=False)
            torch.testing.assert_close(got.double(), want, rtol=5e-2, atol=5e-2 * want.abs().max().item())


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(0, 2), n=st.integers(1, 2), h=st.integers(1, 11), w=st.integers(1, 11), topk=st.integers(0, 9),
    seed=st.integers(0, 2**16),
)
def test_pst_block_shapes_and_batch_independence(b, n, h, w, topk, seed):
    """Whole PST layer: right shape for any map size and batch (also 0), and each image independent of the others."""
    torch.manual_seed(seed)
    m = PST(48, 80, 64, n=n, k=topk).eval()
    x, u = torch.randn(b + 1, 48, h, w), torch.randn(b + 1, 80, (h + 1) // 2, (w + 1) // 2)
    with torch.no_grad():
        y = m([x, u])
        last = m([x[-1:], u[-1:]])
    assert y.shape == (b + 1, 64, h, w) and torch.isfinite(y).all()
    torch.testing.assert_close(y[-1:], last, rtol=1e-4, atol=1e-4)
