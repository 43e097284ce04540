"""PST checkpoints are portable across devices and kernels: a model set to a kernel the machine cannot run
(FlashAttention, SageAttention: CUDA-only, optional), or to any score strategy, loads and validates on a CPU-only
machine with one fallback line, and runs on (fake) CUDA without the optional library. YOLOv12's own users hit the opposite: a
checkpoint trained with FlashAttention fails on a GPU without it (sunsmarterjie/yolov12 issue 127)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (registration before pst_yolo.modules)

from pst_yolo import extras, fakecuda, log
from pst_yolo.modules import PyramidSparseAttention


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pst_yolo.data import make_detection_dataset

    return make_detection_dataset(tmp_path_factory.mktemp("port") / "d", n_train=2, n_val=4, imgsz=64)


def _checkpoint(path, backend):
    """An Ultralytics checkpoint (half weights, as the trainer writes) whose PST layers ask for ``backend``."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n-pst.yaml", nc=3, verbose=False)
    for m in model.modules():
        if isinstance(m, PyramidSparseAttention):
            m.backend = backend
    model.args = vars(get_cfg())
    torch.save({"model": copy.deepcopy(model).half(), "train_args": {"task": "detect", "imgsz": 64}}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["flash", "sage", "sdpa"])
def test_checkpoint_set_to_a_kernel_validates_on_a_cpu_only_machine(backend, data, tmp_path, monkeypatch, caplog):
    from ultralytics import YOLO

    monkeypatch.setattr(log, "_LOGGED", set())
    monkeypatch.setattr(extras, "_IMPORTS", {})
    weights = _checkpoint(tmp_path / f"{backend}.pt", backend)
    for strategy in ("auto", "lse", "chunked", "reference"):
        monkeypatch.setenv("PST_SCORES", strategy)
        with caplog.at_level(logging.WARNING, logger="pst_yolo"):
            r = YOLO(str(weights)).val(data=str(data), imgsz=64, batch=4, device="cpu", workers=0, plots=False,
                                       verbose=False, project=str(tmp_path / "val"), name=strategy, exist_ok=True)
        assert 0.0 <= r.box.map <= 1.0
    fallbacks = [rec.getMessage() for rec in caplog.records if "cannot serve this call" in rec.getMessage()]
    if backend == "sdpa":
        assert not fallbacks
    else:  # said once per reason, not once per forward
        assert fallbacks and all(f"attention kernel {backend!r} cannot serve this call" in f for f in fallbacks)
        assert len(fallbacks) == len(set(fallbacks)) and "using 'sdpa'" in fallbacks[0]


@pytest.mark.parametrize("env", [{"PST_ATTN": "flash"}, {"PST_ATTN": "sage"}, {}])
@pytest.mark.parametrize("backend", ["flash", "sage", None])
def test_checkpoint_set_to_a_kernel_runs_on_cuda_without_the_library(backend, env, tmp_path, monkeypatch):
    """On (fake) CUDA, in half precision where the libraries would run, with neither library installed: the checkpoint
    runs, device-clean, on SDPA."""
    from ultralytics import YOLO

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    net = YOLO(str(_checkpoint(tmp_path / "w.pt", backend))).model.float()
    for report in fakecuda.check(net=net, model="checkpoint", modes=("float16", "autocast-fp16"), k=0, batch=1,
                                 imgsz=(64, 64), branches=True, libraries=False):
        assert report.problems == [], report.problems
        assert "attention.sdpa_attention" in report.branches
        assert "attention.flash_attention" not in report.branches and "attention.sage_attention" not in report.branches
