"""The fine setting a trained PST checkpoint keeps (pst_yolo.training): the trainer validates at the setting it trains
with, chooses among fine attention in every PST layer, in each alone, or in none for last.pt and best.pt when training
ends, stores the choice, and the stock ``yolo val``, ``yolo predict`` and ``yolo export`` use it; ``PST_TOPK`` still
overrides it. Real trainings through the stock CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from _watched import run_watched  # noqa: E402  (tests/ is on sys.path under pytest)
from pst_yolo.compare import yolo_command
from pst_yolo.data import make_detection_dataset
from pst_yolo.training import pst_attention, store_fine

pytestmark = pytest.mark.slow
YOLO = yolo_command()[0]
IMGSZ = 96


def _run(*args, cwd, env=None):
    p = subprocess.run([*args], cwd=cwd, capture_output=True, text=True, timeout=900,
                       env={**os.environ, **(env or {})})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    return out


def _map(log: str) -> float:
    """mAP50-95 of the ``all`` row of the last validation table in a log."""
    rows = re.findall(r"^\s*all\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s*$", log, re.M)
    return float(rows[-1])


def _ckpt(path):
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    data = make_detection_dataset(root / "data", n_train=32, n_val=16, imgsz=IMGSZ)
    log = _run(YOLO, "train", "model=yolo11n-pst.yaml", f"data={data}", "epochs=3", f"imgsz={IMGSZ}", "batch=8",
               "workers=0", "device=cpu", "seed=0", "deterministic=True", "plots=False", "save_period=1",
               f"project={root / 'runs'}", "name=t", "exist_ok=True", cwd=root)
    return dict(root=root, data=data, log=log, weights=root / "runs" / "t" / "weights")


def test_checkpoints_store_the_choice_and_the_trainer_reports_it(trained):
    w = trained["weights"]
    order = ["8", "8@13", "8@16", "0"]  # the preference at a tie: fine attention where it does not cost
    for name in ("last", "best"):
        ckpt = _ckpt(w / f"{name}.pt")
        info = ckpt["pst_fine"]
        assert list(info["fitness"]) == order and info["chosen_by"] == "fitness"
        best = max(order, key=lambda n: (info["fitness"][n], -order.index(n)))
        assert info["setting"] == best
        want = {"8": {13: 8, 16: 8}, "8@13": {13: 8, 16: 0}, "8@16": {13: 0, 16: 8}, "0": {13: 0, 16: 0}}[best]
        assert info["layers"] == {str(i): v for i, v in want.items()} and info["k"] == max(want.values())
        for i, k in want.items():
            assert {(m.topk, m.fine_k) for m in pst_attention(ckpt["model"].model[i])} == {(k, 8)}
        assert f"pst-yolo: fine attention in {name}.pt: fitness" in trained["log"]
    # mid-training checkpoints hold the setting the trainer validated at: coarse-only, as trained
    epoch0 = _ckpt(w / "epoch0.pt")
    assert {m.topk for m in pst_attention(epoch0["ema"])} == {0}
    # the trainer's final validation (of best.pt) is the stored setting's: `yolo val` reproduces it exactly
    final = _map(trained["log"].split("Validating")[-1])
    val = _map(_run(YOLO, "val", f"model={w / 'best.pt'}", f"data={trained['data']}", f"imgsz={IMGSZ}", "batch=8",
                    "device=cpu", "plots=False", f"project={trained['root'] / 'v'}", "name=a", cwd=trained["root"]))
    assert val == final


def test_val_predict_and_export_use_the_stored_setting(trained, tmp_path):
    """Checkpoints storing k=0 and k=8 (both outcomes of the choice, stored by the same function): the stock commands
    use the stored k, and PST_TOPK overrides it (forced on the k=0 checkpoint, it gives what the k=8 one stores, and
    the other way round)."""
    root, data = trained["root"], trained["data"]
    common = [f"data={data}", f"imgsz={IMGSZ}", "batch=8", "device=cpu", "plots=False", f"project={tmp_path / 'v'}"]
    weights = {}
    for k in (0, 8):
        ckpt = _ckpt(trained["weights"] / "best.pt")
        store_fine(ckpt, {"k": k}, 8)  # no per-layer entries: every PST layer at k
        weights[k] = tmp_path / f"k{k}.pt"
        torch.save(ckpt, weights[k])
    stored = {k: _map(_run(YOLO, "val", f"model={weights[k]}", *common, f"name=s{k}", cwd=root)) for k in (0, 8)}
    forced = {k: _map(_run(YOLO, "val", f"model={weights[8 - k]}", *common, f"name=f{k}", cwd=root,
                           env={"PST_TOPK": str(k)})) for k in (0, 8)}
    assert stored == forced
    for k in (0, 8):
        code = (f"from ultralytics import YOLO; from pst_yolo.training import pst_attention; "
                f"m = YOLO(r'{weights[k]}'); "
                f"m.predict(r'{data.parent / 'images' / 'val'}', imgsz={IMGSZ}, device='cpu', verbose=False); "
                "print('TOPK', sorted({a.topk for a in pst_attention(m.predictor.model.model)}))")
        assert f"TOPK [{k}]" in _run(sys.executable, "-c", code, cwd=root)
    onnx = pytest.importorskip("onnx")
    for k in (0, 8):
        _run(YOLO, "export", f"model={weights[k]}", "format=onnx", f"imgsz={IMGSZ}", cwd=root)
        ops = {n.op_type for n in onnx.load(str(weights[k].with_suffix(".onnx"))).graph.node}
        assert ("TopK" in ops) == (k > 0)


def test_fine_choice_can_be_switched_off(tmp_path):
    """PST_FINE_CHOICE=0: the checkpoints keep the layers' own k (the paper's inference setting), both figures
    stored."""
    data = make_detection_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64)
    log = _run(YOLO, "train", "model=yolo11n-pst.yaml", f"data={data}", "epochs=1", "imgsz=64", "batch=4", "workers=0",
               "device=cpu", "plots=False", f"project={tmp_path / 'runs'}", "name=t", cwd=tmp_path,
               env={"PST_FINE_CHOICE": "0"})
    info = _ckpt(tmp_path / "runs" / "t" / "weights" / "last.pt")["pst_fine"]
    assert info["k"] == 8 and info["chosen_by"] == "kept" and info["layers"] == {"13": 8, "16": 8}
    assert list(info["fitness"]) == ["8", "8@13", "8@16", "0"]
    assert "kept k=8" in log


def test_the_stored_setting_says_what_it_buys_and_costs(trained):
    """``ckpt["pst_fine"]`` and the trainer's line carry the paired-bootstrap gain over k=0 on the validation images and
    the FLOPs fine attention adds at the trained size, equal to torch's FLOP counter on the checkpoint's model."""
    from torch.utils.flop_counter import FlopCounterMode

    from pst_yolo import attention

    for name in ("last", "best"):
        ckpt = _ckpt(trained["weights"] / f"{name}.pt")
        info = ckpt["pst_fine"]
        gain, cost = info["gain"], info["cost"]
        lo, hi = gain["interval"]
        assert lo <= gain["map50_95"] <= hi and gain["within_noise"] == (lo <= 0 <= hi)
        assert gain["images"] == 16 and gain["resamples"] == 200 and gain["level"] == 0.9
        assert gain["setting"] == cost["setting"] == (info["setting"] if info["setting"] != "0" else "8")
        net = ckpt["model"].float().eval()
        counted = {}
        attention.set_backend("reference")
        try:
            for which, layers in (("k0", {}), ("fine", {"8": {13: 8, 16: 8}, "8@13": {13: 8}, "8@16": {16: 8}}[
                    gain["setting"]])):
                for i, layer in enumerate(net.model):
                    for m in pst_attention(layer):
                        m.topk = layers.get(i, 0)
                with torch.no_grad(), FlopCounterMode(display=False) as counter:
                    net(torch.zeros(1, 3, IMGSZ, IMGSZ))
                counted[which] = counter.get_total_flops() / 1e9
        finally:
            attention.set_backend(None)
        assert cost["imgsz"] == IMGSZ
        assert cost["gflops_k0"] == pytest.approx(counted["k0"], abs=1e-4)
        assert cost["gflops"] == pytest.approx(counted["fine"], abs=1e-4) and cost["extra_gflops"] > 0
    assert "mAP50-95 over k=0 on validation (90% interval" in trained["log"]


@pytest.mark.parametrize("k", [0, 8])
def test_export_says_what_the_stored_fine_setting_buys(trained, tmp_path, k):
    ckpt = _ckpt(trained["weights"] / "best.pt")
    store_fine(ckpt, {**ckpt["pst_fine"], "k": k, "layers": {}}, 8)
    weights = tmp_path / f"k{k}.pt"
    torch.save(ckpt, weights)
    out = _run(YOLO, "export", f"model={weights}", "format=onnx", f"imgsz={IMGSZ}", cwd=tmp_path)
    line = [s for s in out.splitlines() if "pst-yolo: fine attention on" in s]
    if k == 0:
        assert not line  # a checkpoint stored at k=0 exports coarse-only and says nothing
    else:
        assert len(line) == 1 and "(k=8)" in line[0] and "mAP50-95 over k=0 on validation" in line[0], line
        assert "GFLOPs" in line[0] and "PST_TOPK=0 exports coarse-only" in line[0]
        out = _run(YOLO, "export", f"model={weights}", "format=onnx", f"imgsz={IMGSZ}", cwd=tmp_path,
                   env={"PST_TOPK": "0"})
        assert "pst-yolo: fine attention on" not in out


def test_finecheck_prints_what_the_stored_setting_buys(trained):
    from pst_yolo.runner import entry_point

    cmd = [entry_point("pst-yolo"), "finecheck", trained["weights"] / "last.pt", "--data", trained["data"], "--imgsz",
           IMGSZ, "--fusions", "joint", "--batch", "8"]
    out = run_watched(cmd, cwd=trained["root"]).check().out  # never silent for 30 s (issue #46)
    assert "| stored setting |" in out and "mAP50-95 over k=0 on validation" in out and "GFLOPs" in out, out[-3000:]
