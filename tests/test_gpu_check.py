"""scripts/gpu_run.sh / ``pst-yolo gpu-check`` (the GPU verification of issues 11 and 22) rehearsed small on the CPU: the exact
script the one device call runs, so that the first GPU run is not where a typo is found."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = ["yolo11n", "yolo11n-pst k=0", "yolo11n-pst k=8", "yolo11n-pst k=8 chunked", "yolo12n", "yolo12n-pst k=0",
          "yolo12n-pst k=8", "yolo11n-pst-res k=0", "yolo11n-pst-res k=8", "yolo26n", "yolo26n-pst k=0",
          "yolo26n-pst k=8", "yolo26n-pst-res k=0", "yolo26n-pst-res k=8"]


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pst_yolo.tools.gpu_check", *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


@pytest.mark.slow
def test_gpu_run_rehearsal_on_cpu_fills_every_section(tmp_path):
    """``bash scripts/gpu_run.sh --rehearse``: the device call's script end to end (its summary included) on the CPU."""
    t = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_run.sh"), "--rehearse"], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable})
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"CPU rehearsal of scripts/gpu_run.sh: {seconds:.0f} s")
    summary = proc.stdout
    for line in ("gpu_run: fake-CUDA check exit 0: pst-yolo fake-cuda: clean in", "cli: ok", "kernels: ok", "memory: ok",
                 "target host syncs, yolo11n-pst k=8 eval forward: 0 (<= 0) met", "gpu_check exit 0"):
        assert line in summary, summary
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert all(v["seconds"] <= v["budget"] for v in res["sections"].values())
    assert res["host_syncs"]["yolo11n-pst k=8"]["aten::_local_scalar_dense"] == 0
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
    assert [t["what"].split(",")[0] for t in res["targets"]] == ["PST-N k=8 / yolo11n", "fine-attention overhead k=8 / k=0",
                                                                 "host syncs", "host syncs"]

    # memory: each model's training step and forward ran; the peaks are CUDA-only figures.
    assert [r["model"] for r in res["memory"]] == ["yolo11n", "yolo11n-pst", "yolo12n", "yolo12n-pst"]
    assert res["memory"][1]["forward_mib"] == {"0": None, "8": None}
    assert (tmp_path / "out" / "gpu_check.md").read_text().count("\n## ") == 4


@pytest.mark.slow
def test_section_budget_skips_and_says_so(tmp_path):
    """A spent budget skips the rest of a section with a note instead of overrunning the device call."""
    proc = run("--device", "cpu", "--smoke", "--only", "latency", "kernels", "--budget", "latency=0", "kernels=0",
               "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert res["latency"] == [] and any("skipped" in n for n in res["latency_notes"])
    assert res["kernels"] == [] and res["selection"] == []
    assert "not run: section budget spent" in (tmp_path / "out" / "gpu_check.md").read_text()
    bad = run("--budget", "latency=fast", "--out", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 2 and "--budget latency=fast" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_a_gpu_is_a_clear_error(tmp_path):
    proc = run("--device", "0", "--only", "kernels", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "--device 0: no CUDA device is visible" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()
