"""The stock ``yolo`` command and the Python API on a trained PST checkpoint, each in a fresh process."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from pst_yolo.compare import yolo_command
from pst_yolo.data import make_detection_dataset

pytestmark = pytest.mark.slow
YOLO_CLI = yolo_command()[0]  # the `yolo` next to this interpreter: works from a venv that was never activated
IMGSZ = 96


def run(cmd, cwd, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def metric_rows(log):
    """The per-class metric rows ``name images instances P R mAP50 mAP50-95`` of the last validation in ``log``."""
    rows = {}
    for line in log.splitlines():
        m = re.match(r"^\s*(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", line)
        if m:
            if m.group(1) == "all":
                rows = {}
            rows[m.group(1)] = tuple(m.groups()[1:])
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train yolo11n-pst for 3 epochs with the stock CLI and the Table 5 recipe by name, from an empty directory."""
    root = tmp_path_factory.mktemp("cli")
    data = make_detection_dataset(root / "data", n_train=48, n_val=16, imgsz=IMGSZ)
    work = root / "work"
    work.mkdir()
    log = run(
        [YOLO_CLI, "train", "model=yolo11n-pst.yaml", "cfg=pst-det-n.yaml", f"data={data}", "epochs=3", f"imgsz={IMGSZ}", "batch=16",
         "workers=0", "device=cpu", "seed=0", "deterministic=True", "plots=False", f"project={root / 'runs'}",
         "name=train", "exist_ok=True"],
        cwd=work,
    )
    best = root / "runs" / "train" / "weights" / "best.pt"
    assert best.is_file(), log[-3000:]
    args = (root / "runs" / "train" / "args.yaml").read_text()
    assert "copy_paste: 0.1" in args and "epochs: 3" in args  # recipe value kept, CLI override wins
    final = metric_rows(log.split("Validating")[-1])
    assert "all" in final, log[-3000:]
    return dict(root=root, work=work, data=data, best=best, final=final, log=log)


def test_yolo_val_reproduces_final_training_metrics(trained):
    log = run([YOLO_CLI, "val", f"model={trained['best']}", f"data={trained['data']}", f"imgsz={IMGSZ}", "batch=16",
               "device=cpu", "plots=False", f"project={trained['root'] / 'runs'}", "name=val"], cwd=trained["work"])
    assert metric_rows(log) == trained["final"]


def test_pst_topk_env_switches_fine_attention_from_the_cli(trained):
    code = "from ultralytics import YOLO; from pst_yolo.modules import PyramidSparseAttention as A; " \
           f"m = YOLO(r'{trained['best']}'); print('TOPK', sorted({{x.topk for x in m.model.modules() if isinstance(x, A)}}))"
    import torch

    stored = torch.load(trained["best"], weights_only=False)["pst_fine"]["layers"]  # chosen when training ended
    assert f"TOPK {sorted(set(stored.values()))}" in run([sys.executable, "-c", code], cwd=trained["work"])
    assert "TOPK [0]" in run([sys.executable, "-c", code], cwd=trained["work"], env_extra={"PST_TOPK": "0"})
    log = run([YOLO_CLI, "val", f"model={trained['best']}", f"data={trained['data']}", f"imgsz={IMGSZ}", "batch=16",
               "device=cpu", "plots=False", f"project={trained['root'] / 'runs'}", "name=val_k0"],
              cwd=trained["work"], env_extra={"PST_TOPK": "0"})
    assert "all" in metric_rows(log)


def test_yolo_predict(trained):
    source = trained["data"].parent / "images" / "val"
    log = run([YOLO_CLI, "predict", f"model={trained['best']}", f"source={source}", f"imgsz={IMGSZ}", "device=cpu",
               "save=True", "save_txt=True", "conf=0.001", f"project={trained['root'] / 'runs'}", "name=pred"],
              cwd=trained["work"])
    saved = sorted((trained["root"] / "runs" / "pred").glob("*.png")) + sorted((trained["root"] / "runs" / "pred").glob("*.jpg"))
    assert len(saved) == 16, log[-2000:]
    assert "16/16" in log


def test_checkpoint_loads_in_new_process_with_safe_load(trained):
    code = textwrap.dedent(f"""
        from ultralytics import YOLO
        from ultralytics.nn.tasks import _SafeLoad
        import torch
        assert _SafeLoad.restricted()
        m = YOLO(r"{trained['best']}")
        assert sum(type(x).__name__ == "PST" for x in m.model.modules()) == 2
        m.model.float().eval()
        y = m.model(torch.zeros(1, 3, {IMGSZ}, {IMGSZ}))[0]
        assert torch.isfinite(y).all()
        print("SAFE OK", tuple(y.shape))
    """)
    out = run([sys.executable, "-c", code], cwd=trained["work"], env_extra={"ULTRALYTICS_SAFE_LOAD": "1"})
    assert "SAFE OK" in out


def test_set_topk_on_yolo_object(trained):
    from ultralytics import YOLO

    import pst_yolo
    from pst_yolo.modules import PyramidSparseAttention

    model = YOLO(str(trained["best"]))
    assert pst_yolo.set_topk(model, 3) == 2
    assert {m.topk for m in model.model.modules() if isinstance(m, PyramidSparseAttention)} == {3}
    with pytest.raises(ValueError, match="non-negative integer"):
        pst_yolo.set_topk(model, -1)
    with pytest.raises(ValueError, match="found no PST layer"):
        pst_yolo.set_topk(YOLO("yolo11n.yaml"), 2)
