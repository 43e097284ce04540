"""Half-precision numerics of PSA without a GPU: float16 and bfloat16 on CPU tensors, against the float64 reference.

PyTorch runs half-precision matmuls, softmax and SDPA on the CPU, so the numerics a GPU run would show at AMP and
``half=True`` are checked here: every score strategy, fine attention off and on, activations from unit scale to
logits of several hundred. Stated tolerance: with ``u`` the unit roundoff (2^-11 for float16, 2^-8 for bfloat16) and
``L`` the largest |logit|, the output error relative to the reference's largest value stays within
``u * (4 + 0.15 L)``: half precision rounds each logit by about ``u * L``, which moves softmax probabilities by about
that much (measured: 1.5u at L=3, 4-5u at L=40, 40-50u at L=600). The top-k regions are the reference's wherever the
reference ranks them clear of the k-th by more than that bound; nothing is inf or NaN.
"""

from __future__ import annotations

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (registration before pst_yolo.modules)

from pst_yolo import scoring
from pst_yolo.modules import PyramidSparseAttention
from reference import psa_reference, randomize_bn

UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("strategy", ["chunked", "lse", "reference"])
@pytest.mark.parametrize("k", [0, 8])
@pytest.mark.parametrize("scale", [1.0, 4.0, 16.0])
def test_half_precision_psa_matches_the_float64_reference(dtype, strategy, k, scale, monkeypatch):
    monkeypatch.setenv(scoring.ENV_SCORES, strategy)
    torch.manual_seed(0)
    half = randomize_bn(PyramidSparseAttention(64, topk=k), seed=1).eval().to(dtype)
    exact = PyramidSparseAttention(64, topk=k).eval()
    exact.load_state_dict(half.state_dict())  # the very same (rounded) weights, in float64
    exact = exact.double()
    x, u = (torch.randn(2, 64, 20, 16) * scale).to(dtype), (torch.randn(2, 64, 10, 8) * scale).to(dtype)
    with torch.no_grad():
        got = half(x, u)
        want = psa_reference(exact, x.double(), u.double(), fine=k > 0)
        q, kk = half._heads(half.q(x)), half._heads(half.k(u))
        scores = scoring.coarse_scores(q, kk, half.scale)
        qd, kd = exact._heads(exact.q(x.double())), exact._heads(exact.k(u.double()))
        logits = (qd * exact.scale) @ kd.transpose(-2, -1)
        want_scores = logits.softmax(-1).mean(-2)
    largest = logits.abs().max().item()
    tol = UNIT[dtype] * (4 + 0.15 * largest)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    error = ((got.double() - want).abs().max() / want.abs().max()).item()
    assert error <= tol, f"relative error {error:.3g} > {tol:.3g} (largest |logit| {largest:.0f})"
    if k:  # the same regions, up to regions the reference ties with the k-th within the bound
        ranked = want_scores.sort(-1, descending=True).values
        kth, next_ = ranked[..., k - 1 : k], ranked[..., k : k + 1]
        chosen = torch.zeros_like(want_scores, dtype=torch.bool).scatter_(-1, scores.topk(k, -1).indices, True)
        must = want_scores > next_ + tol * kth  # clearly in the reference's top k
        may = want_scores >= kth - tol * kth  # within the bound of the k-th
        assert must.sum() >= want_scores.shape[0] * want_scores.shape[1]  # not vacuous: every row has a clear region
        assert (chosen | ~must).all() and (may | ~chosen).all()
