"""scripts/gpu_check.py (issue 11's GPU checklist) runs every section small on the CPU, so it is ready when a GPU is."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
MODELS = ["yolo11n", "yolo11n-pst k=0", "yolo11n-pst k=8", "yolo11n-pst k=8 chunked", "yolo12n", "yolo12n-pst k=0",
          "yolo12n-pst k=8"]


def run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.mark.slow
def test_smoke_run_on_cpu_fills_every_section(tmp_path):
    proc = run("--device", "cpu", "--smoke", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    status = {s: v["status"] for s, v in res["sections"].items()}
    # latency's targets are GPU targets: on a CPU they may be missed, which the status says (a crash would be FAILED)
    assert status == {"cli": "ok", "kernels": "ok", "memory": "ok", "latency": status["latency"]}
    assert status["latency"] == ("ok" if all(t["met"] for t in res["targets"]) else "TARGET MISSED")
    assert res["stamp"]["gpu"] == "none (CPU run)" and res["stamp"]["torch"] == torch.__version__

    # cli: both models trained by `yolo train` with finite losses; `yolo val` at k=0 and k=8 printed metric rows; the
    # same checkpoint validated on both devices; `yolo predict` wrote one picture per validation image.
    assert set(res["train"]) == {"yolo11n", "yolo11n-pst"} and all(r["finite"] for r in res["train"].values())
    assert set(res["cli_val"]) == {"0", "8"} and all(len(v) == 2 for v in res["cli_val"].values())
    assert res["parity"]["ok"] and res["parity"]["max_abs_diff"] <= 1e-3
    assert res["predict"]["images"] == 16 and "inference" in res["predict"]["speed"]

    # kernels: the two CPU kernels within tolerance in fp16 and bf16 at both shapes; the CUDA kernels say why not.
    ok = [(r["kernel"], r["dtype"]) for r in res["kernels"] if r["status"] == "ok"]
    assert sorted(set(ok)) == sorted({(k, d) for k in ("reference", "sdpa (auto)")
                                      for d in ("torch.float16", "torch.bfloat16")})
    assert len(ok) == 8 and all(r["error"] <= r["tol"] for r in res["kernels"] if r["status"] == "ok")
    assert all(r["status"] == "not run: needs a CUDA tensor" for r in res["kernels"] if r["kernel"] in ("flash", "sage"))
    assert {r["strategy"] for r in res["selection"]} == {"lse", "chunked"}
    assert all(r["same_topk"] == 1.0 and r["score_error"] < 1e-3 for r in res["selection"])

    # latency: every model at both batch sizes, eager (the only mode on a CPU); the per-kernel table and both targets.
    assert sorted((r["model"], r["batch"], r["mode"]) for r in res["latency"]) == sorted(
        (m, b, "eager") for m in MODELS for b in (1, 2))
    assert all(r["ms"] > 0 for r in res["latency"])
    assert set(res["per_kernel"]) == {"reference", "sdpa", "flash", "sage"}
    assert res["per_kernel"]["flash"]["served_by"].startswith("sdpa (fallback")
    assert [t["what"].split(",")[0] for t in res["targets"]] == ["PST-N k=8 / yolo11n", "fine-attention overhead k=8 / k=0"]

    # memory: each model's training step and forward ran; the peaks are CUDA-only figures.
    assert [r["model"] for r in res["memory"]] == ["yolo11n", "yolo11n-pst", "yolo12n", "yolo12n-pst"]
    assert res["memory"][1]["forward_mib"] == {"0": None, "8": None}
    assert (tmp_path / "out" / "gpu_check.md").read_text().count("\n## ") == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_a_gpu_is_a_clear_error(tmp_path):
    proc = run("--device", "0", "--only", "kernels", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "--device 0: no CUDA device is visible" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()
