"""PST models beyond the paper with the stock CLI: segmentation, pose and oriented boxes (YOLO11, YOLO12, YOLO26), the
YOLO26 family with its end-to-end (NMS-free) heads, and the recommended residual-PST models (``pst_yolo.zoo``).

Every task model builds by name at every scale; each model of ``CHAIN`` trains one epoch on its task's demo data with
the stock ``yolo <task> train``, validates with fine attention off and on, exports to ONNX with fine attention and
matches onnxruntime; the stock ``yolo <task> predict`` runs once per task and head family. YOLO26 PST models give
outputs of the shape the stock YOLO26 model gives.
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
# (task, model) trained, validated, predicted and exported through the stock CLI: every task of the paper-layout
# YOLO11 family, the recommended YOLO11 models, and every YOLO26 PST model (paper layout and recommended)
CHAIN = [
    *((t, f"yolo11n-{SUFFIX[t]}-pst.yaml") for t in TASKS),
    *((t, f"yolo11n{'' if t == 'detect' else '-' + SUFFIX[t]}-pst-res.yaml") for t in ("detect", *TASKS)),
    *((t, f"yolo26n{'' if t == 'detect' else '-' + SUFFIX[t]}-pst{res}.yaml") for t in ("detect", *TASKS)
      for res in ("", "-res")),
]
HEADS = {"11": {"segment": "Segment", "pose": "Pose", "obb": "OBB"},
         "12": {"segment": "Segment", "pose": "Pose", "obb": "OBB"},
         "26": {"segment": "Segment26", "pose": "Pose26", "obb": "OBB26"}}


def _cli(*args, cwd, env=None):
    cmd = [*yolo_command(), *args]
    p = subprocess.run(cmd, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.mark.parametrize("family", ["11", "11-res", "12", "26", "26-res"])
@pytest.mark.parametrize("task", TASKS)
def test_task_models_build_by_name_at_every_scale(task, family):
    version, _, res = family.partition("-")
    for scale in "nslmx":
        name = f"yolo{version}{scale}-{SUFFIX[task]}-pst{'-res' if res else ''}.yaml"
        model = YOLO(name, verbose=False)
        assert model.task == task, name
        psts = [m for m in model.model.modules() if isinstance(m, PST)]
        # the two top-down fusions, as in the detection model; the residual family: one PST, inside the P4 C3k2PST
        assert len(psts) == (1 if res else 2), name
        head = type(model.model.model[-1]).__name__
        assert head == HEADS[version][task], (name, head)


@pytest.mark.parametrize("task", ["detect", *TASKS])
def test_yolo26_pst_outputs_have_the_stock_end_to_end_shape(task):
    """yolo26n*-pst(-res): the stock YOLO26 end-to-end head, so eval outputs (NMS-free detections and the raw
    branches) have exactly the stock model's structure and shapes."""
    suffix = "" if task == "detect" else f"-{SUFFIX[task]}"
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    stock = YOLO(f"yolo26n{suffix}.yaml", verbose=False).model.eval()
    want = [tuple(t.shape) for t in _flat(stock(x))]
    for name in (f"yolo26n{suffix}-pst.yaml", f"yolo26n{suffix}-pst-res.yaml"):
        model = YOLO(name, verbose=False).model.eval()
        assert model.yaml["end2end"] and getattr(model.model[-1], "one2one_cv2", None) is not None, name
        with torch.no_grad():
            assert [tuple(t.shape) for t in _flat(model(x))] == want, name


def _flat(out):
    if torch.is_tensor(out):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return [t for o in items for t in _flat(o)]


@pytest.fixture(scope="module", params=CHAIN, ids=lambda c: c[1])
def trained(request, tmp_path_factory):
    """(task, work dir, data YAML, last.pt): the model trained one epoch with the stock CLI."""
    task, name = request.param
    work = tmp_path_factory.mktemp(name.replace(".yaml", ""))
    data = MAKERS[task](work / "data", n_train=16, n_val=6, imgsz=IMGSZ)
    _cli(task, "train", f"model={name}", f"data={data}", "epochs=1", f"imgsz={IMGSZ}",
         "batch=8", "workers=0", "device=cpu", "plots=False", "mosaic=0", f"project={work / 'runs'}", "name=t",
         "exist_ok=True", cwd=work)
    last = work / "runs" / "t" / "weights" / "last.pt"
    assert last.is_file()
    return task, work, data, last


@pytest.mark.slow
def test_task_validates_with_fine_attention_off_and_on(trained):
    """Fine attention off (k=0) and on (k=8) both validated by the task's stock validator: the training's fine choice
    ran it at both settings (their fitness is in the checkpoint), and the stock `yolo <task> val` runs fine attention
    on (PST_TOPK=8, whatever the checkpoint stores) and prints its metric row."""
    task, work, data, last = trained
    fitness = torch.load(last, weights_only=False)["pst_fine"]["fitness"]
    assert {"0", "8"} <= set(fitness) and all(np.isfinite(v) for v in fitness.values()), fitness
    out = _cli(task, "val", f"model={last}", f"data={data}", f"imgsz={IMGSZ}", "batch=8", "device=cpu",
               "plots=False", cwd=work, env={"PST_TOPK": "8"})
    assert [line for line in out.splitlines() if line.strip().startswith("all ")], out[-2000:]
    model = YOLO(str(last))
    assert {m.topk for m in model.model.modules() if isinstance(m, PyramidSparseAttention)} == {8}
    assert model.task == task


@pytest.mark.slow
def test_task_predicts_with_the_stock_cli(trained, request):
    """The stock `yolo <task> predict` once per task and head family (YOLO11, YOLO26): the predictor's code depends on
    the task's head, not on the PST layout, which validation and export check for every model."""
    task, work, data, last = trained
    name = request.node.callspec.params["trained"][1]
    first = next(n for t, n in CHAIN if t == task and n[:6] == name[:6])
    if name != first:
        pytest.skip(f"the {task} head of {name[:6]} predicts in {first}'s test")
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
    n_pst = sum(isinstance(m, PST) for m in YOLO(str(last)).model.modules())
    assert topk_values(graph) == [8] * n_pst and attention_problems(graph) == []
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
