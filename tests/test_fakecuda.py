"""The CUDA path without a GPU (pst_yolo.fakecuda): every shipped PST model on fake CUDA tensors in every dtype mode,
an AMP training step each, the branches a PST layer takes on CUDA, torch.compile on fake CUDA, and one planted defect
of each kind the check exists to catch, named by layer and op."""

from __future__ import annotations

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (Ultralytics first; the start-up hook registers pst-yolo)

from pst_yolo import fakecuda
from pst_yolo.modules import PyramidSparseAttention
from _watched import run_watched  # noqa: E402  (tests/ is on sys.path under pytest)
from pst_yolo.runner import entry_point


@pytest.mark.slow
def test_every_shipped_pst_model_is_device_clean_on_fake_cuda():
    """``pst-yolo fake-cuda``: 34 models x (eval in float32, float16, autocast fp16 and bf16, k / batch / size in
    rotation) + an AMP training step with the task's loss each; no problem anywhere, no host sync inside a PST layer,
    the stock ones counted apart."""
    # the branch matrix: the tests below; never silent for 30 s (issue #46)
    cmd = [entry_point("pst-yolo"), "fake-cuda", "--workers", "2", "--verbose", "--no-branches"]
    out = run_watched(cmd).check().stdout
    assert out.rstrip().splitlines()[-1].startswith("pst-yolo fake-cuda: clean in")
    lines = [line for line in out.splitlines() if line.endswith("outside (stock) none") or "outside (stock)" in line]
    assert len(lines) == len(fakecuda.ZOO) * 5  # 4 dtype modes + 1 training step per model
    for model in fakecuda.ZOO:
        mine = [line for line in lines if line.startswith(f"{model} [")]
        assert {m for m in fakecuda.MODES if any(f"[{m}," in line and "eval]" in line for line in mine)} == \
            set(fakecuda.MODES), model
        assert any("train]" in line for line in mine), model
    assert all(": clean;" in line and "host syncs in PST layers 0" in line for line in lines)
    assert "models: 34, checks: 170 (34 AMP training steps), problems: 0, host syncs inside PST layers: 0" in out
    assert "(Detect) " in out.split("outside (stock code): ")[1]  # Ultralytics' own stride reads, named


@pytest.fixture(scope="module")
def matrix():
    return fakecuda.branch_matrix()


def _rows(matrix, **want):
    return [r for r in matrix if all(r[k] == v for k, v in want.items())]


def test_branch_matrix_is_clean_and_reaches_every_cuda_branch(matrix):
    assert all(not r["report"].problems for r in matrix), [r["report"].problems for r in matrix if r["report"].problems]
    reached = {b for r in matrix for b in r["report"].branches}
    for branch in ("scoring.resolve_strategy -> 'lse'", "scoring.attention_lse", "scoring.scores_from_lse",
                   "scoring.resolve_strategy -> 'chunked'", "scoring.explicit_attention",
                   "attention.choose_kernel -> 'sdpa'", "attention.sdpa_attention",
                   "attention.choose_kernel -> 'reference'", "attention.reference_attention",
                   "attention.choose_kernel -> 'flash'", "attention.flash_attention",
                   "attention.choose_kernel -> 'sage'", "attention.sage_attention",
                   "selection.select_fine_tokens", "fine.joint", "fine.fine", "fine.project_fine"):
        assert branch in reached, branch


def test_what_auto_picks_on_cuda(matrix):
    """auto: lse scores; the fused kernels CUDA has for them (memory-efficient in float32, flash in half precision);
    FlashAttention's own kernel for the lse pass once it is installed; SDPA for the masked fine attention."""
    for r in _rows(matrix, k=8, strategy="auto", backend="auto", libraries=False):
        rep = r["report"]
        assert "scoring.resolve_strategy -> 'lse'" in rep.branches
        half = r["mode"] != "float32"
        assert ("aten._scaled_dot_product_flash_attention.default" in rep.kernels) == half, (r["mode"], rep.kernels)
        assert "aten._scaled_dot_product_efficient_attention.default" in rep.kernels  # the float32 scores pass
        assert rep.kernels["aten._scaled_dot_product_efficient_attention.default"][0][:3] == ("float32",) * 3
    for r in _rows(matrix, k=8, strategy="auto", backend="auto", libraries=True):
        assert ("attention.choose_kernel -> 'flash'" in r["report"].branches) == (r["mode"] != "float32"), r["mode"]
    for r in _rows(matrix, k=0, backend="sage", libraries=True):
        # sage serves the unmasked coarse pass in half precision, and only over whole blocks of 64 keys (80 keys: SDPA)
        whole_blocks = r["imgsz"] == (16, 16)
        assert ("attention.sage_attention" in r["report"].branches) == (r["mode"] != "float32" and whole_blocks), r
        if not whole_blocks:
            assert "attention.choose_kernel -> 'sdpa'" in r["report"].branches


def test_torch_compile_fullgraph_traces_the_eval_forward_on_fake_cuda():
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    attn = PyramidSparseAttention(64, topk=4).eval()
    mode = FakeTensorMode()
    fakecuda.to_fake_cuda(attn, mode)
    with mode:
        x, u = torch.empty(1, 64, 11, 9, device="cuda"), torch.empty(1, 64, 6, 5, device="cuda")
    torch._dynamo.reset()
    with torch.no_grad(), mode:
        y = torch.compile(attn, fullgraph=True, backend="eager", dynamic=False)(x, u)
    assert y.device.type == "cuda" and tuple(y.shape) == (1, 64, 11, 9)


# ----------------------------------------------------------------------------------------- planted defects, caught
def _probe_report(monkeypatch, patch, mode="float32", k=8):
    probe = fakecuda.PSTProbe().eval()
    patch(monkeypatch)
    return fakecuda.check(probe, modes=(mode,), k=k, batch=1, imgsz=(20, 16), net=probe)[0]


def test_planted_cpu_tensor_is_caught_with_layer_and_op(monkeypatch):
    def patch(mp):
        original = PyramidSparseAttention._cpe

        def cpe(self, v_map, h, w):  # a positional bias made without a device: a CPU tensor in a CUDA forward
            return original(self, v_map, h, w) + torch.linspace(0, 1, w)
        mp.setattr(PyramidSparseAttention, "_cpe", cpe)

    report = _probe_report(monkeypatch, patch)
    assert any(p.startswith("model.2 (PST): aten.linspace") and "creates a CPU tensor (16,)" in p
               for p in report.problems), report.problems


def test_planted_item_is_caught_as_a_host_sync_in_the_pst_layer(monkeypatch):
    def patch(mp):
        original = PyramidSparseAttention.mix

        def mix(self, coarse, fine):
            if coarse.abs().max().item() > 1e4:  # a Python branch on a tensor value
                coarse = coarse.clamp(-1e4, 1e4)
            return original(self, coarse, fine)
        mp.setattr(PyramidSparseAttention, "mix", mix)

    report = _probe_report(monkeypatch, patch)
    assert report.pst_syncs == 1
    assert report.problems == ["model.2 (PST): host sync aten._local_scalar_dense.default (a data-dependent read "
                               "inside a PST layer)"]


def test_planted_float32_into_a_half_kernel_is_caught(monkeypatch):
    from pst_yolo import scoring

    def patch(mp):
        original = scoring.attention_lse

        def attention_lse(q, k, v, scale, backend=None):  # one operand left in float32 by mistake
            return original(q, k.float(), v, scale, backend) if q.dtype == torch.float16 else original(q, k, v, scale,
                                                                                                         backend)
        mp.setattr(scoring, "attention_lse", attention_lse)

    report = _probe_report(monkeypatch, patch, mode="float16")
    assert report.problems == ["model.2 (PST): aten._scaled_dot_product_flash_attention.default gets q/k/v of mixed "
                               "dtypes ('float16', 'float32', 'float16')"]


def test_flash_stand_in_enforces_the_library_rules():
    with torch._subclasses.fake_tensor.FakeTensorMode():
        q = torch.empty(1, 10, 2, 32, device="cuda", dtype=torch.float16)
        assert fakecuda._flash_stand_in(q, q, q).shape == q.shape
        with pytest.raises(ValueError, match="needs one fp16/bf16 dtype"):
            fakecuda._flash_stand_in(q.float(), q.float(), q.float())
        with pytest.raises(ValueError, match="head dim that is a multiple of 8"):
            odd = torch.empty(1, 10, 2, 20, device="cuda", dtype=torch.float16)
            fakecuda._flash_stand_in(odd, odd, odd)
        with pytest.raises(ValueError, match="head dim of 64, 96 or 128"):
            fakecuda._sage_stand_in(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [77, 100, 1600])
def test_cuda_log_sum_exp_kernels_give_one_value_per_query(dtype, n):
    """The ``lse`` scores' constraints on CUDA (docs/performance.md, the kernel table): SDPA's flash kernel (half) and
    memory-efficient kernel (float32; its log-sum-exp is padded to a multiple of 32 queries, which pst-yolo cuts), head
    dim a multiple of 8 and <= 256, the score pass's head dim d + 8 = 40 in float32: out (B, heads, N, d) in the input
    dtype, lse (B, heads, N) float32, at query counts that are not multiples of 32."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pst_yolo import scoring

    with FakeTensorMode():
        q = torch.empty(2, 3, n, 32, device="cuda", dtype=dtype)
        k = torch.empty(2, 3, 25, 32, device="cuda", dtype=dtype)
        out, lse = scoring.attention_lse(q, k, k, 32**-0.5)
        assert tuple(out.shape) == (2, 3, n, 32) and out.dtype == dtype
        assert tuple(lse.shape) == (2, 3, n) and lse.dtype == torch.float32
        scores = scoring.scores_from_lse(q, k, lse, 32**-0.5)  # d + 8 = 40 columns, float32, memory-efficient kernel
        assert tuple(scores.shape) == (2, 3, 25) and scores.dtype == torch.float32
