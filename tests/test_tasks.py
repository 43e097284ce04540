"""PST necks beyond the paper: segmentation, pose and oriented boxes (YOLO11 and YOLO12), with the stock CLI.

Every task model builds by name at every scale; for each task the yolo11n model trains one epoch on the task's demo
data with the stock ``yolo <task> train``, validates with fine attention off and on, predicts, exports to ONNX with
fine attention and matches onnxruntime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import ultralytics.nn.tasks  # noqa: F401  (Ultralytics first: start-up hook order)
from ultralytics import YOLO

from pst_yolo.compare import yolo_command
from pst_yolo.data import MAKERS
from pst_yolo.modules import PST, PyramidSparseAttention
from pst_yolo.runtime import set_topk

REPO = Path(__file__).resolve().parents[1]
TASKS = ("segment", "pose", "obb")
SUFFIX = {"segment": "seg", "pose": "pose", "obb": "obb"}
IMGSZ = 96


def _cli(*args, cwd, env=None):
    cmd = [*yolo_command(), *args]
    p = subprocess.run(cmd, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.mark.parametrize("version", ["11", "12"])
@pytest.mark.parametrize("task", TASKS)
def test_task_models_build_by_name_at_every_scale(task, version):
    for scale in "nslmx":
        name = f"yolo{version}{scale}-{SUFFIX[task]}-pst.yaml"
        model = YOLO(name, verbose=False)
        assert model.task == task, name
        psts = [m for m in model.model.modules() if isinstance(m, PST)]
        assert len(psts) == 2, name  # the two top-down fusions, as in the detection model
        head = type(model.model.model[-1]).__name__
        assert head == {"segment": "Segment", "pose": "Pose", "obb": "OBB"}[task], (name, head)


@pytest.fixture(scope="module", params=TASKS)
def trained(request, tmp_path_factory):
    """(task, work dir, data YAML, last.pt): yolo11n-<task>-pst trained one epoch with the stock CLI."""
    task = request.param
    work = tmp_path_factory.mktemp(task)
    data = MAKERS[task](work / "data", n_train=16, n_val=6, imgsz=IMGSZ)
    _cli(task, "train", f"model=yolo11n-{SUFFIX[task]}-pst.yaml", f"data={data}", "epochs=1", f"imgsz={IMGSZ}",
         "batch=8", "workers=0", "device=cpu", "plots=False", "mosaic=0", f"project={work / 'runs'}", "name=t",
         "exist_ok=True", cwd=work)
    last = work / "runs" / "t" / "weights" / "last.pt"
    assert last.is_file()
    return task, work, data, last


@pytest.mark.slow
def test_task_validates_with_fine_attention_off_and_on(trained):
    task, work, data, last = trained
    metrics = {}
    for k in (0, 8):  # the stock `yolo <task> val`, k from PST_TOPK
        out = _cli(task, "val", f"model={last}", f"data={data}", f"imgsz={IMGSZ}", "batch=8", "device=cpu",
                   "plots=False", cwd=work, env={"PST_TOPK": str(k)})
        metrics[k] = [line for line in out.splitlines() if line.strip().startswith("all ")]
        assert metrics[k], out[-2000:]
    model = YOLO(str(last))
    assert {m.topk for m in model.model.modules() if isinstance(m, PyramidSparseAttention)} == {8}
    assert model.task == task


@pytest.mark.slow
def test_task_predicts_with_the_stock_cli(trained):
    task, work, data, last = trained
    out = _cli(task, "predict", f"model={last}", f"source={data.parent / 'images' / 'val'}", f"imgsz={IMGSZ}",
               "device=cpu", "save=False", "conf=0.001", cwd=work)
    assert out.count("image ") >= 6 or "6 images" in out or "Speed:" in out, out[-1500:]


@pytest.mark.slow
def test_task_exports_with_fine_attention_and_matches_onnxruntime(trained):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from pst_yolo.export import attention_problems, topk_values

    task, work, data, last = trained
    case = work / "export"
    case.mkdir(exist_ok=True)
    shutil.copy(last, case / "best.pt")
    _cli("export", "model=best.pt", "format=onnx", f"imgsz={IMGSZ}", cwd=case)
    f = case / "best.onnx"
    graph = onnx.load(str(f))
    assert topk_values(graph) == [8, 8] and attention_problems(graph) == []
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    net = YOLO(str(last)).model.float().fuse().eval()
    set_topk(net, 8)
    with torch.no_grad():
        y = net(torch.from_numpy(x))[0]  # eval: (exported outputs, raw head dict)
    want = list(y) if isinstance(y, (list, tuple)) else [y]  # segmentation: (predictions, mask prototypes)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        # 1e-4 on [0, 1]-scale values; pixel coordinates (up to IMGSZ) get float32's relative rounding on top
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-4, err_msg=task)
