"""Stock Ultralytics workflows on PST models as on stock: the same command succeeds for ``yolo11n.yaml``, the paper's
``yolo11n-pst.yaml`` and the recommended ``yolo11n-pst-res.yaml`` (k=0 and k=8), with the same kind of output.

Each case here failed for PST only before issue #45 was fixed: knowledge distillation with a PST student, ONNX
opsets 11 and 12, dynamic exports on non-finite input (TorchScript's warm-up on ``torch.empty``, ONNX on NaN), and the
end-of-training fine choice under ``compile=True``. Real trainings and exports through the stock ``yolo`` command.
"""

from __future__ import annotations

import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pst_yolo.compare import yolo_command
from pst_yolo.data import make_detection_dataset

pytestmark = pytest.mark.slow
YOLO = yolo_command()[0]
IMGSZ = 64
MODELS = ("yolo11n.yaml", "yolo11n-pst.yaml", "yolo11n-pst-res.yaml")
COMMON = ("epochs=1", f"imgsz={IMGSZ}", "batch=8", "workers=0", "device=cpu", "seed=0", "plots=False", "exist_ok=True")


def _run(*args, cwd, env=None, ok=True):
    p = subprocess.run([*args], cwd=cwd, capture_output=True, text=True, timeout=900,
                       env={**os.environ, **(env or {})})
    out = p.stdout + p.stderr
    if ok:
        assert p.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of each model on the same tiny data (the checkpoints the exports and the distillation start from)."""
    root = tmp_path_factory.mktemp("parity")
    data = make_detection_dataset(root / "data", n_train=16, n_val=8, imgsz=IMGSZ)
    weights = {}
    for model in MODELS:
        name = model.removesuffix(".yaml")
        _run(YOLO, "train", f"model={model}", f"data={data}", *COMMON, f"project={root / 'runs'}", f"name={name}",
             cwd=root)
        weights[model] = root / "runs" / name / "weights" / "last.pt"
    return SimpleNamespace(root=root, data=data, weights=weights)


@pytest.mark.parametrize("student", ["yolo11n-pst.yaml", "yolo11n-pst-res.yaml"])
def test_distillation_with_a_pst_student_ends_and_the_student_stores_its_fine_choice(trained, student):
    name = f"distill-{student.removesuffix('.yaml')}"
    out = _run(YOLO, "train", f"model={student}", f"distill_model={trained.weights['yolo11n.yaml']}",
               f"data={trained.data}", *COMMON, f"project={trained.root / 'runs'}", f"name={name}", cwd=trained.root)
    assert "pst-yolo: fine attention in last.pt" in out
    ckpt = torch.load(trained.root / "runs" / name / "weights" / "last.pt", weights_only=False)
    assert "pst_fine" in ckpt and ckpt["pst_fine"]["setting"] in ckpt["pst_fine"]["fitness"]
    model = ckpt["model"]
    assert not hasattr(model, "student_model")  # Ultralytics stores the student alone once training ends
    from pst_yolo.training import pst_attention

    chosen = ckpt["pst_fine"]["layers"]
    for i, layer in enumerate(model.model):
        for m in pst_attention(layer):
            assert m.topk == chosen[str(i)]


def test_distillation_with_a_pst_teacher_is_left_as_stock(trained):
    out = _run(YOLO, "train", "model=yolo11n.yaml", f"distill_model={trained.weights['yolo11n-pst-res.yaml']}",
               f"data={trained.data}", *COMMON, f"project={trained.root / 'runs'}", "name=distill-stock", cwd=trained.root)
    assert "pst-yolo: fine attention in" not in out  # the student has no PST layer: nothing to choose


def _ort(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _pytorch(weights, x, k):
    from ultralytics import YOLO as Model

    from pst_yolo.runtime import set_topk

    from pst_yolo.training import pst_attention

    net = Model(str(weights)).model.float().eval()
    if pst_attention(net):  # stock: nothing to set
        set_topk(net, k)
    with torch.no_grad():
        return net(torch.from_numpy(x))[0].numpy()


@pytest.mark.parametrize("model, opset", [("yolo11n.yaml", 11), *((m, o) for m in MODELS[1:] for o in (11, 12))])
def test_low_onnx_opsets_export_and_match_pytorch(trained, tmp_path, model, opset):
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    for k in ((0,) if model == "yolo11n.yaml" else (8,)):  # k=8 holds every op k=0 has, and the fine branch's
        out = _run(YOLO, "export", f"model={trained.weights[model]}", "format=onnx", f"opset={opset}",
                   f"imgsz={IMGSZ}", cwd=tmp_path, env={"PST_TOPK": str(k)})
        assert "export success" in out, out[-2000:]
        onnx_file = trained.weights[model].with_suffix(".onnx")
        import onnx

        assert [o.version for o in onnx.load(str(onnx_file)).opset_import if o.domain in ("", "ai.onnx")] == [opset]
        got, want = _ort(onnx_file, x), _pytorch(trained.weights[model], x, k)
        assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max()), (model, opset, k)


@pytest.mark.parametrize("model", MODELS)
def test_dynamic_onnx_returns_nan_on_nan_input_as_stock(trained, tmp_path, model):
    for k in ((0,) if model == "yolo11n.yaml" else (8,)):  # the token count is read in the fine branch (k > 0)
        _run(YOLO, "export", f"model={trained.weights[model]}", "format=onnx", "dynamic=True", f"imgsz={IMGSZ}",
             cwd=tmp_path, env={"PST_TOPK": str(k)})
        onnx_file = trained.weights[model].with_suffix(".onnx")
        for h, w in ((IMGSZ, IMGSZ), (96, 64)):
            for bad in (np.nan, np.inf):
                y = _ort(onnx_file, np.full((1, 3, h, w), bad, np.float32))  # raised in onnxruntime before
                assert y.shape[-1] == (h // 8) * (w // 8) + (h // 16) * (w // 16) + (h // 32) * (w // 32)
                assert not np.isfinite(y).all()


@pytest.mark.parametrize("model", ["yolo11n-pst.yaml", "yolo11n-pst-res.yaml"])
def test_dynamic_torchscript_validates_with_yolo_val(trained, tmp_path, model):
    """AutoBackend warms a dynamic TorchScript file up on an uninitialised ``torch.empty`` batch: any value, NaN too."""
    for k in (8,):
        _run(YOLO, "export", f"model={trained.weights[model]}", "format=torchscript", "dynamic=True",
             f"imgsz={IMGSZ}", cwd=tmp_path, env={"PST_TOPK": str(k)})
        ts = trained.weights[model].with_suffix(".torchscript")
        out = _run(YOLO, "val", f"model={ts}", f"data={trained.data}", f"imgsz={IMGSZ}", "batch=4", "device=cpu",
                   "plots=False", f"project={tmp_path / 'val'}", cwd=tmp_path)
        assert "all" in out and "mAP50-95" in out
        net = torch.jit.load(str(ts))
        with torch.no_grad():
            y = net(torch.full((1, 3, 96, 64), float("nan")))
        y = y[0] if isinstance(y, (list, tuple)) else y
        assert not torch.isfinite(y).all()


def test_fine_choice_validates_eagerly_whatever_compile_says(tmp_path):
    """``compile=True``: each fine-choice validation would compile the checkpoint anew (minutes a batch on a CPU); they
    run uncompiled, as Ultralytics' own final validation does, and the validator's setting is restored."""
    from pst_yolo import training

    seen = []

    class Validator:
        args = SimpleNamespace(plots=True, compile=True)

        def __call__(self, model):
            seen.append((self.args.compile, self.args.plots, os.path.exists(model)))
            return {"fitness": 0.5}

    from ultralytics import YOLO as Model

    ckpt = {"model": Model("yolo11n-pst-res.yaml").model, "epoch": 0}
    validator = Validator()
    metrics = training._validate(validator, ckpt, {13: 8}, tmp_path / "trial.pt")
    assert metrics == {"fitness": 0.5} and seen == [(False, False, True)]
    assert validator.args.compile is True and validator.args.plots is True
