"""Nothing in the suite's commands or the main job tries to reach the network.

Every subprocess gets a ``sitecustomize`` with a Python audit hook that records each attempt to open a connection or
resolve a host name that is not the loopback interface (``socket.connect``, ``socket.getaddrinfo``,
``socket.gethostbyname``, ``urllib.Request``, ``http.client.connect``). The stock CLI (train, val, predict, export)
and the main job run under it with the suite's offline environment; a positive control shows the hook does catch
Ultralytics' own connectivity check when ``YOLO_OFFLINE`` is unset.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _watched import run_watched  # noqa: E402  (tests/ is on sys.path under pytest)
from pst_yolo.compare import yolo_command
from pst_yolo.runner import entry_point

REPO = Path(__file__).resolve().parents[1]
HOOK = '''
import os, sys
_log = os.environ.get("PST_NET_LOG")
_LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "", None)
def _record(event, args):
    if event == "socket.connect":
        addr = args[1]
        if not isinstance(addr, tuple) or addr[0] in _LOCAL:
            return
        what = addr
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "http.client.connect"):
        host = args[1] if event == "http.client.connect" else args[0]
        if host in _LOCAL:
            return
        what = host
    elif event == "urllib.Request":
        what = args[0]
    else:
        return
    with open(_log, "a") as f:
        f.write(f"{event} {what!r} pid={os.getpid()} argv={sys.argv[:3]}\\n")
if _log:
    sys.addaudithook(_record)
'''


@pytest.fixture
def audited(tmp_path):
    """(env, log path): an environment whose Python processes log every network attempt to the log."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "net.log"
    env = dict(os.environ, PST_NET_LOG=str(log), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])
    return env, log


def _run(cmd, env, cwd, timeout=600):
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def test_audit_hook_catches_ultralytics_connectivity_check(audited, tmp_path):
    """Positive control: without YOLO_OFFLINE, importing Ultralytics resolves public DNS names."""
    env, log = audited
    env = {k: v for k, v in env.items() if k != "YOLO_OFFLINE"}
    _run([sys.executable, "-c", "import ultralytics"], env, tmp_path)
    assert log.is_file() and "getaddrinfo" in log.read_text(), "the audit hook saw no lookup: it would prove nothing"


@pytest.mark.slow
def test_stock_cli_and_main_job_stay_offline(audited, tmp_path):
    from pst_yolo.data import make_detection_dataset

    env, log = audited
    assert env["YOLO_OFFLINE"] == "1"  # set by tests/conftest.py, inherited by every subprocess
    data = make_detection_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64)
    yolo = yolo_command()[0]
    common = ["imgsz=64", "device=cpu"]
    _run([yolo, "train", "model=yolo11n-pst.yaml", f"data={data}", "epochs=1", "batch=4", "workers=0",
          f"project={tmp_path / 'runs'}", "name=t", "exist_ok=True", *common], env, tmp_path)  # plots=True: fonts
    best = tmp_path / "runs" / "t" / "weights" / "best.pt"
    _run([yolo, "val", f"model={best}", f"data={data}", *common], env, tmp_path)
    _run([yolo, "predict", f"model={best}", f"source={data.parent / 'images' / 'val'}", *common], env, tmp_path)
    _run([yolo, "export", f"model={best}", "format=onnx", "imgsz=64"], env, tmp_path)
    # the main job, never silent for 30 s either (issue #46)
    run_watched([entry_point("pst-yolo"), "demo", "--epochs", "1", "--n-train", "8", "--n-val", "4", "--imgsz", "64",
                 "--out", tmp_path / "demo"], cwd=tmp_path, env=env, timeout=600).check()
    assert (tmp_path / "demo" / "summary.md").is_file()
    assert not log.exists(), f"network attempts:\n{log.read_text()[:3000]}"
