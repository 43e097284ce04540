"""Bad input to PST layers and models: a clear error naming the culprit, or a defined result; never a crash deep in
torch and never NaN made from finite input. The guarantees are listed in docs/reliability.md."""

from __future__ import annotations

import random

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (registers PST before pst_yolo.modules is used directly)

from pst_yolo.modules import PST, PyramidSparseAttention
from pst_yolo.runtime import set_topk


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("PST_TOPK", "PST_ATTN", "PST_CHECK_FINITE"):
        monkeypatch.delenv(var, raising=False)


def _pst(**kw):
    torch.manual_seed(0)
    m = PST(64, 96, 64, **kw).eval()
    m.i = 13  # what parse_model sets; errors name the layer by it
    return m


def _inputs(b=2, h=10, w=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 64, h, w, generator=g), torch.randn(b, 96, (h + 1) // 2, (w + 1) // 2, generator=g)]


# ------------------------------------------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 1])
def test_non_finite_input_stays_in_its_image_by_default(bad, where):
    """Default: no check (it would cost a GPU sync per layer); the damaged image's output is non-finite, every other
    image of the batch is exactly what it is when run alone (eval mode normalises with running statistics)."""
    m = _pst()
    xs = _inputs(b=3)
    xs[where][1, 5, 2, 3] = bad
    with torch.no_grad():
        y = m(xs)
        alone = m([xs[0][2:], xs[1][2:]])
    assert not torch.isfinite(y[1]).all()
    assert torch.isfinite(y[[0, 2]]).all()
    torch.testing.assert_close(y[2:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where,which", [(0, "finer"), (1, "coarser")])
def test_non_finite_input_raises_when_checking_is_on(monkeypatch, where, which):
    monkeypatch.setenv("PST_CHECK_FINITE", "1")
    m = _pst()
    xs = _inputs()
    xs[where][0, 0, 0, 0] = float("nan")
    xs[where][1, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=rf"PST layer 13: 2 non-finite values \(NaN/Inf\) in the {which} input"):
        m(xs)
    m.train()
    with pytest.raises(ValueError, match="PST layer 13"):
        m(xs)
    assert torch.isfinite(m(_inputs())).all()  # finite input passes the check


def test_extreme_finite_input_gives_finite_output():
    m = _pst()
    for scale in (1e-30, 1e4):
        xs = [t * scale for t in _inputs()]
        with torch.no_grad():
            assert torch.isfinite(m(xs)).all(), scale


# ----------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("train", [False, True])
def test_batch_size_zero_gives_empty_output_of_the_right_shape(train):
    m = _pst().train(train)
    y = m(_inputs(b=0, h=7, w=12))
    assert y.shape == (0, 64, 7, 12)


def test_batch_sizes_differ():
    x, u = _inputs(b=2)
    with pytest.raises(ValueError, match="PST layer 13: batch sizes differ: finer 2 vs coarser 1"):
        _pst()([x, u[:1]])


@pytest.mark.parametrize("coarse_hw", [(10, 9), (4, 5), (6, 5), (2, 2)])
def test_coarse_map_must_be_half_the_finer_one(coarse_hw):
    x = torch.randn(1, 64, 10, 9)
    u = torch.randn(1, 96, *coarse_hw)
    with pytest.raises(ValueError, match=r"PST layer 13: coarser map must be ceil\(H/2\) x ceil\(W/2\) = 5x5"):
        _pst()([x, u])


@pytest.mark.parametrize(
    "xs,match",
    [
        (torch.randn(1, 64, 8, 8), "expects \\[finer, coarser\\]"),
        ([torch.randn(1, 64, 8, 8)], "expects \\[finer, coarser\\]"),
        ([torch.randn(64, 8, 8), torch.randn(96, 4, 4)], "inputs must be 4-D"),
        ([torch.randn(1, 32, 8, 8), torch.randn(1, 96, 4, 4)], r"expected channels \(64, 96\), got \(32, 96\)"),
    ],
)
def test_malformed_inputs(xs, match):
    with pytest.raises(ValueError, match=match):
        _pst()(xs)


# ---------------------------------------------------------------------------------------------------------- k
@pytest.mark.parametrize("k", [-1, 2.5, "two", None, True])
def test_bad_k_is_a_clear_error_everywhere(k, monkeypatch):
    with pytest.raises(ValueError, match="non-negative integer"):
        PST(64, 96, 64, k=k)
    with pytest.raises(ValueError, match="non-negative integer"):
        set_topk(_pst(), k)
    monkeypatch.setenv("PST_TOPK", str(k))
    if str(k).isdigit():
        return
    with pytest.raises(ValueError, match="environment variable PST_TOPK"):
        PST(64, 96, 64)


def test_k_larger_than_the_coarse_map_is_clamped():
    m = _pst(k=10_000)
    with torch.no_grad():
        y = m(_inputs(h=3, w=3))  # 2x2 coarse map: 4 regions, all of them refined
        set_topk(m, 4)
        torch.testing.assert_close(y, m(_inputs(h=3, w=3)))


def test_set_topk_on_a_model_without_pst_layers():
    from ultralytics.nn.tasks import DetectionModel

    with pytest.raises(ValueError, match="set_topk found no PST layer"):
        set_topk(DetectionModel("yolov8n.yaml", verbose=False), 2)


# ---------------------------------------------------------------------------------------------- attention kernel
def test_unknown_attention_kernel_name(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown attention kernel 'flash3' \(from argument\)"):
        PyramidSparseAttention(64, backend="flash3")
    with pytest.raises(ValueError, match="unknown attention kernel 'flash3'"):
        PST(64, 96, 64, backend="flash3")
    m = _pst()
    monkeypatch.setenv("PST_ATTN", "bogus")  # read at call time: a typo in the environment fails the first forward
    with pytest.raises(ValueError, match=r"unknown attention kernel 'bogus' \(from environment variable PST_ATTN\)"):
        m(_inputs())


# ------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def pst_checkpoint(tmp_path_factory):
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("ckpt") / "pst.pt"
    YOLO("yolo11n-pst.yaml").save(path)
    return path


@pytest.mark.parametrize("kind", ["truncated", "garbage", "image", "empty", "plain-dict", "state-dict"])
def test_corrupted_or_foreign_checkpoint_is_a_clear_error(kind, pst_checkpoint, tmp_path):
    from ultralytics import YOLO

    bad = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        data = pst_checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        # fixed bytes, not os.urandom: about 1 in 20 random strings reach a pickle error Ultralytics' loader does not
        # catch (ValueError, UnicodeDecodeError: no file name in the message; stock behaviour, PST or not)
        bad.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "image":  # a PNG renamed .pt
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(4088))
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "plain-dict":
        torch.save({"weights": torch.zeros(3)}, bad)
    else:
        torch.save(YOLO(pst_checkpoint).model.state_dict(), bad)
    with pytest.raises(Exception, match=str(bad.name)) as err:
        YOLO(bad)
    assert "Traceback" not in str(err.value)


def test_pst_checkpoint_round_trips(pst_checkpoint):
    from ultralytics import YOLO

    model = YOLO(pst_checkpoint)
    attn = [m for m in model.model.modules() if isinstance(m, PyramidSparseAttention)]
    assert len(attn) == 2 and all(m.topk == 8 for m in attn)
    assert set_topk(model, 0) == 2
