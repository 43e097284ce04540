"""Every Ultralytics mode and documented argument on PST models as on stock (issue #45's parity suite, second part).

Each test runs the same call on ``yolo11n.yaml`` (stock), the paper's ``yolo11n-pst.yaml`` and the recommended
``yolo11n-pst-res.yaml`` (the PST ones at the fine setting their checkpoint stores, k=8 for the paper layout on this
data, and at k=0 where it matters) on the same tiny data, in one process through the Python API the ``yolo`` command
wraps, and asserts that PST does what stock does: it succeeds where stock does, with the same kind of output (files
written, metrics keys, box counts within ``max_det`` and ``classes``). The cases that failed for PST only, and the
stock ``yolo`` command's subprocesses, are in tests/test_parity.py.

Covered: training arguments (freeze, multi_scale, cache, fraction, single_cls, optimizer, cos_lr, close_mosaic,
save_period, patience; rect, classes and time in a second run), val options (save_json, half, rect, batch=1), predict
options (augment, visualize, embed, stream, save_crop, classes, agnostic_nms, max_det), tracking with every shipped
tracker, benchmark mode, tune (two iterations: its fitness is the fine setting that deploys), the Python API (fuse,
info, deepcopy, pickle, export then predict in one process) and ONNX export flags (nms, batch, simplify, dynamic).
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pst_yolo.data import make_detection_dataset

pytestmark = pytest.mark.slow
IMGSZ = 64
MODELS = ("yolo11n.yaml", "yolo11n-pst.yaml", "yolo11n-pst-res.yaml")
COMMON = {"imgsz": IMGSZ, "batch": 8, "workers": 0, "device": "cpu", "seed": 0, "plots": False, "exist_ok": True,
          "verbose": False}
# one run with every training argument that combines with the others; rect, classes and time= in a second (nbs: an
# optimizer step every batch of this tiny set, not one per 64 images)
TRAIN_ARGS = {"epochs": 2, "nbs": 8, "freeze": 3, "multi_scale": 0.25, "cache": "ram", "fraction": 0.75,
              "single_cls": False, "optimizer": "AdamW", "cos_lr": True, "close_mosaic": 1, "save_period": 1, "patience": 5}
TRAIN_ARGS_2 = {"epochs": 50, "nbs": 8, "time": 0.003, "rect": True, "classes": [0, 1], "single_cls": True}


def _yolo(weights):
    from ultralytics import YOLO

    return YOLO(str(weights))


def _stem(model):
    return Path(model).stem


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each model trained with TRAIN_ARGS and with TRAIN_ARGS_2 on the same data: {model: (save_dir, save_dir_2)}."""
    root = tmp_path_factory.mktemp("parity-modes")
    data = make_detection_dataset(root / "data", n_train=16, n_val=8, imgsz=IMGSZ)
    out = {}
    for model in MODELS:
        dirs = []
        for i, args in enumerate((TRAIN_ARGS, TRAIN_ARGS_2)):
            trainer_model = _yolo(model)
            trainer_model.train(data=str(data), **COMMON, **args, project=str(root / "runs"),
                                name=f"{_stem(model)}-{i}")
            dirs.append(Path(trainer_model.trainer.save_dir))
        out[model] = dirs
    images = sorted((Path(data).parent / "images" / "val").glob("*.png"))
    return SimpleNamespace(root=root, data=data, dirs=out, images=images)


def _by_model(fn):
    """``{model: fn(model)}`` for stock and both PST models: PST is checked against what stock gave."""
    return {model: fn(model) for model in MODELS}


def test_training_arguments_work_as_on_stock(runs):
    for model, (first, second) in runs.dirs.items():
        weights = first / "weights"
        assert (weights / "last.pt").is_file() and (weights / "best.pt").is_file(), model
        assert (weights / "epoch0.pt").is_file() and (weights / "epoch1.pt").is_file(), f"{model}: save_period=1"
        ckpt = torch.load(weights / "last.pt", weights_only=False)
        assert ckpt["train_args"]["optimizer"] == "AdamW" and ckpt["train_args"]["freeze"] == 3
        epoch1 = torch.load(weights / "epoch0.pt", weights_only=False)["ema"].state_dict()
        final = ckpt["model"].state_dict()
        moved = {k.split(".")[1] for k in final
                 if final[k].is_floating_point() and not torch.equal(final[k], epoch1[k])}
        assert moved and not moved & {"0", "1", "2"}, f"{model}: freeze=3 layers moved: {sorted(moved, key=int)}"
        rows = (first / "results.csv").read_text().splitlines()
        assert len(rows) == 3, f"{model}: {len(rows) - 1} epochs logged, not 2"
        assert (second / "weights" / "last.pt").is_file(), f"{model}: the time= run wrote no last.pt"
        assert torch.load(second / "weights" / "last.pt", weights_only=False)["train_args"]["time"] == 0.003
    stock_cols = (runs.dirs["yolo11n.yaml"][0] / "results.csv").read_text().splitlines()[0]
    for model in MODELS[1:]:
        assert (runs.dirs[model][0] / "results.csv").read_text().splitlines()[0] == stock_cols, model


def test_a_time_limited_run_chooses_between_two_settings_only(runs):
    """``time=``: the run is at its limit, so the fine choice tries k everywhere and nowhere (two validations)."""
    full = torch.load(runs.dirs["yolo11n-pst.yaml"][0] / "weights" / "last.pt", weights_only=False)["pst_fine"]
    timed = torch.load(runs.dirs["yolo11n-pst.yaml"][1] / "weights" / "last.pt", weights_only=False)["pst_fine"]
    assert len(full["fitness"]) == 4 and sorted(timed["fitness"]) == ["0", "8"], (full["fitness"], timed["fitness"])


def test_the_chosen_setting_is_what_the_checkpoint_reports(tmp_path):
    """``train_metrics`` (what ``yolo tune`` and ``MultiTrainer`` read as a run's fitness) become the metrics of the
    setting the checkpoint deploys, not those of the epoch's validation at the training setting. On the demo-trained
    checkpoint (real, nonzero mAP) validated on other images than it was trained with."""
    import shutil

    from ultralytics.models.yolo.detect import DetectionValidator

    from pst_yolo.training import choose_fine

    path = tmp_path / "last.pt"
    shutil.copy(Path(__file__).parent / "data" / "yolo11n-pst-demo.pt", path)
    before = dict(torch.load(path, weights_only=False)["train_metrics"])
    data = make_detection_dataset(tmp_path / "data", n_train=8, n_val=16, imgsz=128, seed=3)
    validator = DetectionValidator(args={"data": str(data), "imgsz": 128, "batch": 8, "plots": False,
                                         "device": "cpu", "verbose": False})
    info = choose_fine(validator, path, 8)
    ckpt = torch.load(path, weights_only=False)
    chosen = info["fitness"][info["setting"]]
    assert chosen > 0 and ckpt["train_metrics"]["fitness"] == pytest.approx(chosen, abs=1e-6)
    assert ckpt["train_metrics"]["fitness"] != before["fitness"]  # it was the training-time validation's
    assert set(ckpt["train_metrics"]) == set(before)  # the same keys: the validation losses kept


def test_val_options_work_as_on_stock(runs, tmp_path):
    def val(model):
        m = _yolo(runs.dirs[model][0] / "weights" / "last.pt")
        metrics = m.val(data=str(runs.data), imgsz=IMGSZ, batch=1, rect=True, save_json=True, half=True,
                        device="cpu", plots=False, project=str(tmp_path), name=_stem(model), verbose=False)
        return metrics

    results = _by_model(val)
    keys = set(results["yolo11n.yaml"].results_dict)
    for model, metrics in results.items():
        assert set(metrics.results_dict) == keys, model
        assert all(np.isfinite(v) for v in metrics.results_dict.values()), model
        saved = json.loads((Path(metrics.save_dir) / "predictions.json").read_text())
        assert isinstance(saved, list), model


def test_predict_options_work_as_on_stock(runs, tmp_path):
    def predict(model):
        m = _yolo(runs.dirs[model][0] / "weights" / "last.pt")
        kw = {"imgsz": IMGSZ, "device": "cpu", "conf": 0.001, "verbose": False}
        out = m.predict(runs.images[:3], augment=True, classes=[0], agnostic_nms=True, max_det=3, save_crop=True,
                        project=str(tmp_path), name=_stem(model), **kw)
        # visualize: augment=True runs the model without it (stock's _predict_augment)
        streamed = m.predict(runs.images[:3], stream=True, visualize=True, project=str(tmp_path), name=_stem(model),
                             exist_ok=True, **kw)
        assert not isinstance(streamed, list)  # a generator, as stock
        streamed = list(streamed)
        embedded = m.predict(runs.images[:2], embed=[len(m.model.model) - 2], **kw)
        return out, streamed, embedded

    results = _by_model(predict)
    stock_embed = results["yolo11n.yaml"][2]
    for model, (out, streamed, embedded) in results.items():
        assert len(out) == 3 and len(streamed) == 3, model
        for r in out:
            assert len(r.boxes) <= 3 and set(r.boxes.cls.tolist()) <= {0.0}, model
        visual = list((tmp_path / _stem(model)).rglob("*_cam.jpg"))  # class activation maps (autograd through PSA)
        assert len(visual) == 3, f"{model}: visualize=True wrote {len(visual)} class activation maps, not 3"
        assert len(embedded) == len(stock_embed) and all(e.ndim == s.ndim for e, s in zip(embedded, stock_embed))
        assert all(torch.isfinite(e).all() for e in embedded), model


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort", "ocsort", "deepocsort", "fasttrack", "tracktrack"])
def test_tracking_works_as_on_stock(runs, tracker):
    pytest.importorskip("lap", reason="tracking needs lap (pip install 'pst-yolo[track]')")

    def track(model):
        m = _yolo(runs.dirs[model][0] / "weights" / "last.pt")
        return [m.track(str(image), tracker=f"{tracker}.yaml", persist=True, imgsz=IMGSZ, conf=0.01, device="cpu",
                        verbose=False)[0] for image in runs.images[:3]]

    results = _by_model(track)
    for model, frames in results.items():
        assert len(frames) == 3, model
        for r in frames:
            assert r.boxes is not None and (r.boxes.id is None or len(r.boxes.id) == len(r.boxes)), model


def test_benchmark_mode_works_as_on_stock(runs, tmp_path, monkeypatch):
    from ultralytics.utils.benchmarks import benchmark

    monkeypatch.chdir(tmp_path)  # benchmark() writes benchmarks.log into the working directory

    def bench(model):
        return benchmark(model=str(runs.dirs[model][0] / "weights" / "last.pt"), data=str(runs.data), imgsz=IMGSZ,
                         device="cpu", format="torchscript", verbose=False)

    results = _by_model(bench)
    for model, table in results.items():
        text = str(table)
        assert "TorchScript" in text and "✅" in text, f"{model}:\n{text}"


def test_python_api_works_as_on_stock(runs, tmp_path):
    def api(model):
        m = _yolo(runs.dirs[model][0] / "weights" / "last.pt")
        clone = copy.deepcopy(m)
        net = pickle.loads(pickle.dumps(m.model))
        x = torch.rand(1, 3, IMGSZ, IMGSZ)
        with torch.no_grad():
            same = torch.allclose(net.eval()(x)[0], m.model.eval()(x)[0])
        info = m.info(verbose=True)
        m.fuse()
        fused = m.predict(runs.images[0], imgsz=IMGSZ, conf=0.001, device="cpu", verbose=False)[0]
        onnx = m.export(format="onnx", imgsz=IMGSZ, project=str(tmp_path))
        exported = _yolo(onnx).predict(runs.images[0], imgsz=IMGSZ, conf=0.001, device="cpu", verbose=False)[0]
        return clone, same, info, fused, exported

    for model, (clone, same, info, fused, exported) in _by_model(api).items():
        assert clone.model is not None and same, model
        assert len(info) == 4 and info[1] > 0, model  # layers, parameters, gradients, GFLOPs
        top = lambda r: r.boxes.conf[:10].numpy()  # noqa: E731
        assert np.allclose(top(fused), top(exported), atol=2e-3), f"{model}: {top(fused)} vs {top(exported)}"


@pytest.mark.parametrize("flags", [{"nms": True}, {"batch": 2, "simplify": True}], ids=["nms", "batch2-simplify"])
def test_onnx_export_flags_work_as_on_stock(runs, tmp_path, flags):
    pytest.importorskip("onnxruntime")

    def export(model):
        m = _yolo(runs.dirs[model][0] / "weights" / "last.pt")
        path = m.export(format="onnx", imgsz=IMGSZ, **flags)
        exported = _yolo(path)
        return exported.val(data=str(runs.data), imgsz=IMGSZ, batch=flags.get("batch", 1), device="cpu",
                            plots=False, project=str(tmp_path), name=_stem(model), verbose=False).results_dict

    results = _by_model(export)
    for model, metrics in results.items():
        assert set(metrics) == set(results["yolo11n.yaml"]) and all(np.isfinite(list(metrics.values()))), model


def test_tune_records_the_fitness_of_the_setting_that_deploys(tmp_path):
    """Two ``tune`` iterations of the paper layout: each is a ``yolo train`` whose best.pt ``train_metrics`` the
    tuner reads; the recorded fitness is the one of the fine setting that checkpoint deploys."""
    from ultralytics import YOLO

    data = make_detection_dataset(tmp_path / "data", n_train=16, n_val=8, imgsz=IMGSZ)
    model = YOLO("yolo11n-pst.yaml")
    model.tune(data=str(data), epochs=1, iterations=2, imgsz=IMGSZ, batch=8, workers=0, device="cpu", plots=False,
               project=str(tmp_path / "tune"), name="pst", exist_ok=True)
    tune_dir = tmp_path / "tune" / "pst"
    rows = [json.loads(line) for line in (tune_dir / "tune_results.ndjson").read_text().splitlines() if line.strip()]
    assert len(rows) == 2
    best = max(rows, key=lambda r: r["fitness"])
    ckpt = torch.load(next((tune_dir / "weights").rglob("best.pt")), weights_only=False)
    fine = ckpt["pst_fine"]
    assert best["fitness"] == pytest.approx(fine["fitness"][fine["setting"]], abs=1e-5), (best, fine)
