"""Shared by tests/test_ddp.py, tests/test_packaging.py and the DDP worker processes."""

import subprocess
import textwrap
from pathlib import Path

import torch

# Run by a (possibly different) Python: build a trainer exactly as YOLO(...).train() does before it launches DDP,
# set a per-model option that must reach the worker, and print the generated worker script's path.
_GENERATE = """
import sys
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.dist import generate_ddp_file
t = DetectionTrainer(overrides=dict(model="yolo11n-pst.yaml", data={data!r}, epochs=1, imgsz=64, batch=2,
    workers=0, device="cpu", val=False, plots=False, amp=False, project={project!r}, name="w"))
t.model = t.get_model(cfg="yolo11n-pst.yaml", weights=None)
t.model.model[13].m[0].attn.topk = 5
print("DDPFILE", generate_ddp_file(t))
"""
# Appended to the worker script (inside its ``if __name__ == "__main__":``): what the worker trained.
_PROBE = """
    from pst_yolo.modules import PyramidSparseAttention
    # fine_k: the k a layer refines with once trained (it validates at its training setting meanwhile; pst_yolo.training)
    print("PST_TOPKS", sorted({m.fine_k for m in trainer.model.modules() if isinstance(m, PyramidSparseAttention)}))
    print("WORKER_OK", type(trainer.model).__name__)
"""


def run_ddp_worker(python, data, work: Path, env, timeout=600) -> dict:
    """Generate Ultralytics' real DDP worker script for a yolo11n-pst trainer with ``python`` and run it, unchanged
    but for a probe appended at its end, in a fresh interpreter (no torchrun: RANK is unset, so the worker trains one
    process on CPU; Ultralytics' own DDP set-up needs GPUs).

    Returns:
        (dict): ``script`` (its text), ``pickled`` (the >= 8.4.140 mechanism: the trainer is unpickled with
        cloudpickle; before, the worker rebuilds it from the YAML name), ``topks`` (the PST k values the worker's model
        has), ``stdout``.
    """
    r = subprocess.run([str(python), "-c", _GENERATE.format(data=str(data), project=str(work / "runs"))], env=env,
                       capture_output=True, text=True, timeout=timeout, cwd=work)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    file = Path(next(line.split(" ", 1)[1] for line in r.stdout.splitlines() if line.startswith("DDPFILE ")))
    try:
        script = file.read_text()
        probe = work / "worker.py"
        probe.write_text(script + textwrap.dedent(_PROBE).replace("\n", "\n    ").rstrip() + "\n")
        w = subprocess.run([str(python), str(probe)], env=env, capture_output=True, text=True, timeout=timeout,
                           cwd=work)
        assert w.returncode == 0, w.stdout[-2000:] + w.stderr[-3000:]
        assert "WORKER_OK DetectionModel" in w.stdout, w.stdout[-2000:]
        topks = next(line.split(" ", 1)[1] for line in w.stdout.splitlines() if line.startswith("PST_TOPKS"))
        return {"script": script, "pickled": "torch_load(" in script, "topks": eval(topks), "stdout": w.stdout}
    finally:
        file.unlink(missing_ok=True)
        file.with_suffix(".pt").unlink(missing_ok=True)


def build_model():
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n-pst.yaml", nc=3, verbose=False).train()
    model.args = get_cfg()
    return model


def half_batch(rank: int) -> dict:
    """Rank r's half of a 2-image batch: image r and its boxes (batch_idx renumbered to 0)."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 64, 64, generator=g)
    boxes = [torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]]), torch.tensor([[0.7, 0.6, 0.3, 0.5]])]
    cls = [torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0]])]
    n = len(boxes[rank])
    return {"img": img[rank : rank + 1], "bboxes": boxes[rank], "cls": cls[rank], "batch_idx": torch.zeros(n)}
