"""Attention kernels: every runnable path equals the reference; selection, overrides and fallbacks."""

import logging
from types import SimpleNamespace

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (imports Ultralytics before pst_yolo.modules, as the start-up hook expects)

from pst_yolo import attention as A
from pst_yolo import extras, log
from pst_yolo.modules import PST


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    """Each test starts with no process-wide override, no env var, fresh log-once memory and import cache."""
    monkeypatch.delenv(A.ENV_BACKEND, raising=False)
    monkeypatch.setattr(A, "_GLOBAL_BACKEND", None)
    monkeypatch.setattr(log, "_LOGGED", set())
    monkeypatch.setattr(extras, "_IMPORTS", {})


def _qkv(b=2, heads=3, n=77, m=20, d=32, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, s, d, generator=g, dtype=dtype).to(device) for s in (n, m, m)]


def _mask(b=2, m=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(b, 1, 1, m, generator=g) > 0.3
    keep[..., 0] = True
    return torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("with_mask", [False, True])
def test_every_runnable_kernel_equals_reference(device, with_mask):
    ran = []
    for dtype in (torch.float32, torch.float16) if device == "cuda" else (torch.float32,):
        q, k, v = _qkv(dtype=dtype, device=device)
        mask = _mask().to(device, dtype) if with_mask else None
        ref = A.reference_attention(q.double(), k.double(), v.double(), None if mask is None else mask.double())
        for name in A.KERNELS:
            if A.why_not(name, q, k, v, mask) is not None:
                continue
            out = A.KERNELS[name].fn(q, k, v, mask, None)
            tol = 1e-5 if dtype == torch.float32 else (5e-2 if name == "sage" else 5e-3)
            assert torch.allclose(out.double(), ref, atol=tol, rtol=tol), name
            ran.append(name)
    assert {"reference", "sdpa"} <= set(ran)


def _fake_flash(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn_func's documented contract, (B, N, heads, d) layout, spelled with the reference math."""
    assert q.stride(-1) == 1 and dropout_p == 0.0 and not causal
    t = [x.transpose(1, 2) for x in (q, k, v)]
    return A.reference_attention(*t, scale=softmax_scale).transpose(1, 2)


def _fake_sage(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, smooth_k=True):
    """sageattn 1.0.6's contract: HND layout, head dims 64/96/128 only, default scale 1/sqrt(padded head dim), and
    smooth_k subtracting the key mean from its *input* in place (softmax is invariant to it); reference math."""
    assert tensor_layout == "HND" and not is_causal and q.shape[-1] in (64, 96, 128), q.shape
    if smooth_k:
        k -= k.mean(dim=-2, keepdim=True)
    return A.reference_attention(q, k, v, scale=q.shape[-1] ** -0.5 if sm_scale is None else sm_scale)


@pytest.mark.parametrize("d", [32, 64, 80, 96, 128])
def test_sage_adapter_pads_to_its_head_dims_and_never_mutates_inputs(d, monkeypatch):
    monkeypatch.setitem(extras._IMPORTS, ("sageattention", "sageattn"), (_fake_sage, None))
    q, k, v = _qkv(n=30, m=9, d=d)
    before = [t.clone() for t in (q, k, v)]
    out = A.sage_attention(q, k, v, scale=0.1)
    torch.testing.assert_close(out, A.reference_attention(*before, scale=0.1), rtol=1e-5, atol=1e-6)
    assert out.shape == q.shape
    for t, t0 in zip((q, k, v), before):
        assert torch.equal(t, t0)  # the in-place smooth_k worked on the adapter's own copy


def test_sage_refuses_head_dims_above_128(monkeypatch):
    monkeypatch.setitem(extras._IMPORTS, ("sageattention", "sageattn"), (_fake_sage, None))
    with pytest.raises(ValueError, match="head dims up to 128"):
        A.sage_attention(*_qkv(d=160))
    assert "head dim 160" in A._sage_supports(_cuda_like(d=160), _cuda_like(n=64), None, None)


def test_adapters_layout_padding_and_scale(monkeypatch):
    """The flash/sage adapters transpose, pad head dim 32 -> 64 and pass the scale (checked on CPU with the libraries'
    documented call contracts standing in for their CUDA kernels)."""
    monkeypatch.setitem(extras._IMPORTS, ("flash_attn", "flash_attn_func"), (_fake_flash, None))
    monkeypatch.setitem(extras._IMPORTS, ("sageattention", "sageattn"), (_fake_sage, None))
    q, k, v = _qkv(n=45, m=12)
    ref = A.reference_attention(q, k, v, scale=0.2)
    assert torch.allclose(A.flash_attention(q, k, v, scale=0.2), ref, atol=1e-6)
    assert torch.allclose(A.sage_attention(q, k, v, scale=0.2), ref, atol=1e-6)
    assert torch.allclose(A.sage_attention(q, k, v), A.reference_attention(q, k, v), atol=1e-6)  # 32**-0.5, not 64
    with pytest.raises(ValueError, match="mask"):
        A.flash_attention(q, k, v, mask=_mask(m=12))


def test_package_not_installed_is_reported(monkeypatch):
    for name, mod in (("flash", "flash_attn"), ("sage", "sageattention")):
        try:
            __import__(mod)
            continue  # really installed: nothing to check here
        except ImportError:
            pass
        why = A.KERNELS[name].available()
        assert why is not None and mod in why and "not usable" in why
        with pytest.raises(RuntimeError, match="unavailable"):
            A.KERNELS[name].fn(*_qkv())


def _cuda_like(d=32, dtype=torch.float16, n=100):
    """Stand-in for a CUDA tensor for the shape/device predicates (no GPU here)."""
    return SimpleNamespace(is_cuda=True, dtype=dtype, shape=(1, 2, n, d), requires_grad=False)


def test_shape_and_device_support_predicates():
    assert A._flash_supports(_cuda_like(), None, None, None) is None
    assert "head dim 12" in A._flash_supports(_cuda_like(d=12), None, None, None)
    assert "head dim 512" in A._flash_supports(_cuda_like(d=512), None, None, None)
    assert "float16" in A._flash_supports(_cuda_like(dtype=torch.float32), None, None, None)
    assert "mask" in A._flash_supports(_cuda_like(), None, None, torch.zeros(1))
    assert "CUDA" in A._flash_supports(torch.zeros(1, 1, 4, 32, dtype=torch.float16), None, None, None)
    assert A._sage_supports(_cuda_like(), _cuda_like(n=128), None, None) is None
    assert "head dim 256" in A._sage_supports(_cuda_like(d=256), _cuda_like(n=128), None, None)
    # sageattention 1.0.6 is exact only for whole key blocks of 64 (tests/test_kernels_executed.py runs its kernel)
    for m in (16, 25, 100, 400, 660):
        assert f"{m} keys, not a multiple of 64" in A._sage_supports(_cuda_like(), _cuda_like(n=m), None, None)
    assert "mask" in A._sage_supports(_cuda_like(), _cuda_like(n=100), None, torch.zeros(1))  # the first reason


def _pretend_gpu_kernels(monkeypatch, flash_ok=True, sage_ok=True):
    """Make flash/sage 'installed and supported' on CPU tensors, computing with the reference math."""

    def supports(ok):
        return lambda q, k, v, mask: ("does not take an attention mask" if mask is not None else None) if ok else (
            "head dim 32 unsupported"
        )

    monkeypatch.setitem(A.KERNELS, "flash", A.Kernel(A.reference_attention, supports(flash_ok), lambda: None, True))
    monkeypatch.setitem(A.KERNELS, "sage", A.Kernel(A.reference_attention, supports(sage_ok), lambda: None, False))


def test_auto_selection(monkeypatch):
    q, k, v = _qkv()
    assert A.choose_kernel(q, k, v) == "sdpa"  # CPU: flash cannot serve -> sdpa
    _pretend_gpu_kernels(monkeypatch)
    assert A.choose_kernel(q, k, v) == "flash"
    assert A.choose_kernel(q, k, v, _mask()) == "sdpa"  # masks: flash can't
    _pretend_gpu_kernels(monkeypatch, flash_ok=False)
    assert A.choose_kernel(q, k, v) == "sdpa"  # shape unsupported; sage is never auto (int8 QK^T)
    monkeypatch.setattr(A, "in_export", lambda: True)
    _pretend_gpu_kernels(monkeypatch)
    assert A.choose_kernel(q, k, v) == "reference"  # exporting: the explicit MatMul -> Softmax -> MatMul form


def test_explicit_kernel_falls_back_once_with_reason(monkeypatch, caplog):
    q, k, v = _qkv()
    with caplog.at_level(logging.INFO, logger="pst_yolo"):
        for _ in range(3):
            assert A.choose_kernel(q, k, v, backend="flash") == "sdpa"
    msgs = [r.getMessage() for r in caplog.records if "'flash'" in r.getMessage()]
    assert len(msgs) == 1 and "CUDA" in msgs[0] and "sdpa" in msgs[0]
    _pretend_gpu_kernels(monkeypatch)
    assert A.choose_kernel(q, k, v, backend="sage") == "sage"
    qg = q.clone().requires_grad_()
    assert A.choose_kernel(qg, k, v, backend="sage") == "sdpa"  # no backward -> training falls back
    assert A.choose_kernel(qg, k, v, backend="flash") == "flash"  # flash has a backward
    with torch.no_grad():
        assert A.choose_kernel(qg, k, v, backend="sage") == "sage"


def test_overrides_precedence_and_errors(monkeypatch):
    assert A.resolve_backend() == "auto"
    monkeypatch.setenv(A.ENV_BACKEND, "reference")
    assert A.resolve_backend() == "reference"
    A.set_backend("sdpa")
    assert A.resolve_backend() == "sdpa"  # API beats env
    assert A.resolve_backend("reference") == "reference"  # module/argument beats API
    A.set_backend(None)
    assert A.resolve_backend() == "reference"
    monkeypatch.setenv(A.ENV_BACKEND, "flashy")
    with pytest.raises(ValueError, match="PST_ATTN"):
        A.resolve_backend()
    with pytest.raises(ValueError, match="set_backend"):
        A.set_backend("nope")
    with pytest.raises(ValueError, match="unknown attention kernel 'nope'"):
        PST(64, 64, 64, backend="nope")


@pytest.mark.parametrize("train", [False, True])
def test_pst_same_output_for_every_runnable_kernel(train):
    torch.manual_seed(0)
    m = PST(64, 96, 64, n=2).train(train)
    x, u = torch.randn(2, 64, 11, 14), torch.randn(2, 96, 6, 7)
    outs = {}
    for name in ("reference", "sdpa", "auto"):
        A.set_backend(name)
        if train:
            m.zero_grad()
            y = m([x, u])
            y.square().mean().backward()
            outs[name] = torch.cat([y.detach().flatten(), m.m[0].attn.q.conv.weight.grad.flatten()])
        else:
            with torch.no_grad():
                outs[name] = m([x, u])
    for name in ("sdpa", "auto"):
        assert torch.allclose(outs[name], outs["reference"], atol=1e-5, rtol=1e-4), name
