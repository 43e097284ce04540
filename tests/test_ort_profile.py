"""pst-yolo ort-profile: real exports through the stock exporter, onnxruntime's own profiler, and a table that puts
the PST layers' node time apart from the rest of the model."""

from __future__ import annotations

import pytest

from _watched import run_watched  # noqa: E402  (tests/ is on sys.path under pytest)
from pst_yolo.runner import entry_point


@pytest.mark.slow
def test_ort_profile_splits_pst_time_from_the_rest(tmp_path):
    pytest.importorskip("onnxruntime")
    cmd = [entry_point("pst-yolo"), "ort-profile", "yolo11n.yaml", "yolo11n-pst.yaml:8",
           "--imgsz", "64", "--runs", "2", "--warmup", "1", "--threads", "1", "--top", "100", "--workdir", str(tmp_path)]
    p = run_watched(cmd, cwd=tmp_path, timeout=600).check()  # and never silent for 30 s (issue #46)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in p.stdout.splitlines() if line.startswith("| ") and line.count("|") == 4}
    assert rows[""] == ["yolo11n.yaml", "yolo11n-pst.yaml:8"]
    total = [float(v) for v in rows["whole run (model_run)"]]
    pst = [float(v.strip("*")) for v in rows["**PST, all nodes**"]]
    rest = [float(v.strip("*")) for v in rows["**rest, all nodes**"]]
    assert pst[0] == 0.0 and pst[1] > 0.0  # the stock model has no PST layer; the PST model's layers are found
    assert all(t > 0 for t in total) and all(r > 0 for r in rest)
    assert {"PST: Softmax", "PST: TopK", "PST: GatherElements"} <= set(rows)  # coarse attention and the fine branch
    assert (tmp_path / "yolo11n-pst_k8_64.onnx").exists()
