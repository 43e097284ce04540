"""PSA / PST math against the independent reference in tests/reference.py (SPEC section 1)."""

import copy

import pytest
import torch
from reference import paper_param_formula, psa_reference, pst_reference, randomize, spec_param_count

from pst_yolo.modules import PST, PyramidSparseAttention


def make_attn(c, topk=8, threshold=1e-6, backend="reference", dtype=torch.float64, fusion="joint"):
    return randomize(PyramidSparseAttention(c, topk, threshold, backend, fusion=fusion)).to(dtype).eval()


def inputs(b, c, h, w, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    u = torch.randn(b, c, (h + 1) // 2, (w + 1) // 2, generator=g, dtype=dtype)
    return x, u


SHAPES = [(2, 64, 8, 8), (1, 32, 7, 5), (2, 64, 5, 9), (1, 32, 1, 1), (3, 96, 12, 6)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("topk", [0, 1, 3, 8, 1000])  # 1000 > number of coarse tokens
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("fusion", ["joint", "add"])  # the default, and the paper's eq. 6 by name
def test_psa_matches_reference_float64(shape, topk, backend, fusion):
    attn = make_attn(shape[1], topk, backend=backend, fusion=fusion)
    x, u = inputs(*shape)
    with torch.no_grad():
        got = attn(x, u)
        want = psa_reference(attn, x, u, fine=True)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_psa_sdpa_float32_matches_float64_reference(shape):
    attn = make_attn(shape[1], 8, backend="sdpa", dtype=torch.float32)
    x, u = inputs(*shape, dtype=torch.float32)
    with torch.no_grad():
        got = attn(x, u).double()
        want = psa_reference(copy.deepcopy(attn).double(), x.double(), u.double(), fine=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_all_regions_under_threshold_gives_coarse_only_and_no_nan():
    # scores are probabilities averaged over queries, so they sum to 1: a threshold of 1 rejects every region
    attn = make_attn(64, topk=8, threshold=1.0)
    x, u = inputs(2, 64, 9, 7)
    with torch.no_grad():
        got = attn(x, u)
        attn.topk = 0
        coarse = attn(x, u)
    assert torch.isfinite(got).all()
    # equal up to summation order: with fine attention on, the coarse output comes from the fused score pass
    torch.testing.assert_close(got, coarse, rtol=0, atol=1e-12)
    attn.topk = 8
    torch.testing.assert_close(got, psa_reference(attn, x, u, fine=True), rtol=0, atol=1e-10)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("hw", [(8, 8), (7, 11)])
def test_pst_matches_reference(n, hw):
    pst = randomize(PST(48, 80, 64, n=n, k=4, backend="reference")).double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 48, *hw, generator=g, dtype=torch.float64)
    u = torch.randn(2, 80, (hw[0] + 1) // 2, (hw[1] + 1) // 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pst([x, u]), pst_reference(pst, x, u, fine=True), rtol=0, atol=1e-10)
        pst.eval()
        for m in pst.modules():
            if isinstance(m, PyramidSparseAttention):
                m.topk = 0
        torch.testing.assert_close(pst([x, u]), pst_reference(pst, x, u, fine=False), rtol=0, atol=1e-10)


def _train_mode_attention_eval_bn(module):
    """Training-mode attention (coarse only) with frozen BN statistics, so outputs are comparable to eval."""
    module.train()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return module


def test_train_mode_ignores_k_and_eval_k0_is_train_math():
    pst = randomize(PST(64, 64, 64, k=8)).double()
    x, u = torch.randn(2, 64, 10, 10, dtype=torch.float64), torch.randn(2, 64, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        _train_mode_attention_eval_bn(pst)
        train_k8 = pst([x, u])
        for m in pst.modules():
            if isinstance(m, PyramidSparseAttention):
                m.topk = 0
        train_k0 = pst([x, u])
        pst.eval()
        eval_k0 = pst([x, u])
        for m in pst.modules():
            if isinstance(m, PyramidSparseAttention):
                m.topk = 8
        eval_k8_a, eval_k8_b = pst([x, u]), pst([x, u])
    assert torch.equal(train_k8, train_k0)
    torch.testing.assert_close(eval_k0, train_k0, rtol=0, atol=1e-12)
    assert (eval_k8_a - eval_k0).abs().max() > 1e-3  # fine attention changes the output
    assert torch.equal(eval_k8_a, eval_k8_b)  # and deterministically


def test_train_topk_trains_what_eval_k_computes(monkeypatch):
    """PST_TRAIN_TOPK=k: the training forward adds the fine branch (the eval-mode k forward's math, BN statistics
    aside) and gradients reach the projections through it; unset, training stays coarse-only."""
    monkeypatch.setenv("PST_TRAIN_TOPK", "4")
    pst = randomize(PST(64, 64, 64, k=4)).double()
    assert {m.train_topk for m in pst.modules() if isinstance(m, PyramidSparseAttention)} == {4}
    x, u = torch.randn(2, 64, 10, 10, dtype=torch.float64), torch.randn(2, 64, 5, 5, dtype=torch.float64)
    _train_mode_attention_eval_bn(pst)
    train_fine = pst([x, u])
    pst.eval()
    with torch.no_grad():
        eval_k4 = pst([x, u])
    torch.testing.assert_close(train_fine.detach(), eval_k4, rtol=0, atol=1e-12)
    for m in pst.modules():
        if isinstance(m, PyramidSparseAttention):
            m.train_topk = 0
    with torch.no_grad():
        train_coarse = _train_mode_attention_eval_bn(pst)([x, u])
    assert (train_fine.detach() - train_coarse).abs().max() > 1e-3
    train_fine.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in pst.parameters() if p.grad is not None)
    monkeypatch.delenv("PST_TRAIN_TOPK")
    assert {m.train_topk for m in PST(64, 64, 64).modules() if isinstance(m, PyramidSparseAttention)} == {0}
    monkeypatch.setenv("PST_TRAIN_TOPK", "-1")
    with pytest.raises(ValueError, match="environment variable PST_TRAIN_TOPK"):
        PST(64, 64, 64)


def test_gradients_flow_in_training():
    pst = PST(64, 128, 64, n=2).train()
    x, u = torch.randn(2, 64, 8, 8, requires_grad=True), torch.randn(2, 128, 4, 4, requires_grad=True)
    pst([x, u]).square().mean().backward()
    for name, p in pst.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert x.grad.abs().sum() > 0 and u.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg", [(64, 128, 64, 1), (256, 512, 128, 1), (384, 256, 256, 2), (96, 64, 512, 4)])
def test_parameter_count_matches_spec(cfg):
    c1, c_up, c2, n = cfg
    model = PST(c1, c_up, c2, n=n)
    got = sum(p.numel() for p in model.parameters())
    assert got == spec_param_count(c1, c_up, c2, n)
    # The paper's closed form is approximate (loose notation); report it, don't assert it.
    paper = paper_param_formula(c1, c_up, c2 // 2)
    print(f"PST{cfg}: {got} params, paper formula {paper} ({(paper - got) / got:+.1%})")


def test_hidden_width_not_multiple_of_32_is_a_clear_error():
    with pytest.raises(ValueError, match=r"int\(100 \* 0.5\) = 50 must be a positive multiple of the head dim 32"):
        PST(64, 64, 100)
