"""The ``pst-yolo`` command (pst_yolo.tools): every subcommand's help, key=value arguments, live progress in captured
output, Ctrl-C that leaves no process behind, resume, and the refusal to mix other arguments into a comparison. Each
run goes through the installed command next to this interpreter, in a process of its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from _watched import run_watched  # noqa: E402  (tests/ is on sys.path under pytest)
from pst_yolo.progress import Watchdog
from pst_yolo.runner import entry_point
from pst_yolo.tools.cli import COMMANDS, as_options

PST_YOLO = entry_point("pst-yolo")


def _cli(*args, cwd=None, timeout=900):
    return subprocess.run([PST_YOLO, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_help_lists_every_command():
    p = _cli("help")
    assert p.returncode == 0 and all(f"  {name} " in p.stdout for name in COMMANDS), p.stdout
    assert _cli().stdout == p.stdout
    bad = _cli("trian")
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    """Through its module (``python -m pst_yolo.tools.<module>``), which is ``pst-yolo <command>``, watchdog included."""
    import sys

    p = subprocess.run([sys.executable, "-m", f"pst_yolo.tools.{COMMANDS[name][0]}", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith(f"usage: pst-yolo {name}"), p.stdout[:200]


def test_key_value_arguments_become_options():
    from pst_yolo.tools import compare

    argv = as_options(["yolo11n.yaml", "epochs=3", "imgsz=64", "val_data=v.yaml", "close_mosaic=2", "--jobs", "2"],
                      compare.parser())
    assert argv == ["yolo11n.yaml", "--epochs=3", "--imgsz=64", "--val-data=v.yaml", "close_mosaic=2", "--jobs", "2"]
    args = compare.parser().parse_intermixed_args(argv)
    assert (args.epochs, args.imgsz, args.val_data, args.jobs) == (3, 64, "v.yaml", 2)
    assert args.models == ["yolo11n.yaml", "close_mosaic=2"]  # not an option: a yolo train argument


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pst_yolo.data import make_detection_dataset

    return make_detection_dataset(tmp_path_factory.mktemp("cli-data") / "d", n_train=8, n_val=4, imgsz=64)


def _epoch_lines(out: str) -> dict:
    """run name -> the epoch numbers its progress lines reported, in order."""
    seen = {}
    for name, i, n in re.findall(r"^pst-yolo \w+: (\S+ s\d+): epoch (\d+)/(\d+)", out, re.M):
        seen.setdefault(name, []).append((int(i), int(n)))
    return seen


@pytest.mark.slow
def test_compare_prints_a_line_per_epoch_when_captured(data, tmp_path):
    p = run_watched([PST_YOLO, "compare", "yolo11n.yaml", "yolo11n-pst-res.yaml", f"data={data}", "epochs=2", "imgsz=64",
                     "batch=4", "jobs=2", "mosaic=0", "--out", tmp_path / "cmp"], cwd=tmp_path).check()
    assert "\r" not in p.stdout and "\x1b[" not in p.stdout.split("| model")[0]  # plain lines, no redraws
    assert _epoch_lines(p.stdout) == {"yolo11n s0": [(1, 2), (2, 2)], "yolo11n-pst-res s0": [(1, 2), (2, 2)]}
    assert p.stdout.splitlines()[0].startswith("pst-yolo compare: 2 training run(s), 2 at a time")
    assert "| yolo11n-pst-res | on (k=8) |" in p.stdout


def _children_of(marker: str) -> list:
    """PIDs of live processes whose command line mentions ``marker`` (the unique output folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_ctrl_c_stops_every_training_and_the_same_command_resumes(data, tmp_path):
    out = tmp_path / "cmp"
    cmd = [PST_YOLO, "compare", "yolo11n.yaml", f"data={data}", "epochs=2", "imgsz=64", "batch=4", "mosaic=0",
           "seeds=0,1", "jobs=1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    lines, deadline = [], time.monotonic() + 600
    for line in proc.stdout:  # seed 0 trains first (one at a time); interrupt once seed 1 has started
        lines.append(line)
        if "yolo11n s1: started" in line:
            break
        assert time.monotonic() < deadline, "".join(lines)
    time.sleep(3)  # seed 1's trainer is running
    assert _children_of(str(out)), "no training process to interrupt"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGINT, text[-3000:]
    assert "interrupted by SIGINT: 1 run(s) finished (yolo11n s0), 1 stopped (yolo11n s1)" in text, text[-3000:]
    assert str(out) in text.splitlines()[-1]
    time.sleep(1)
    assert _children_of(str(out)) == [], "a training process survived the interrupt"
    assert not (out / "runs" / "yolo11n-s1" / "pst_compare_cmd.json").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "yolo11n s0: reused" in again.stdout and "yolo11n s1: started" in again.stdout
    assert "yolo11n s0: started" not in again.stdout
    assert _epoch_lines(again.stdout) == {"yolo11n s1": [(1, 2), (2, 2)]}
    assert "| yolo11n | - |" in again.stdout

    other = _cli("compare", "yolo11n.yaml", f"data={data}", "epochs=3", "imgsz=64", "batch=4", "mosaic=0",
                 "--out", str(out), cwd=tmp_path)
    assert other.returncode == 2
    assert f"output folder {out} holds a comparison with other arguments (epochs=2; now epochs=3)" in other.stderr


def test_sigterm_is_an_interrupt_too(tmp_path):
    """The runner's own signal handling, on a child that would run for minutes: SIGTERM stops it at once."""
    from pst_yolo.progress import Progress
    from pst_yolo.runner import Interrupted, Job, run_jobs

    job = Job("sleeper", ["sleep", "600"], tmp_path / "run", 1, tmp_path)
    killer = subprocess.Popen(["bash", "-c", f"sleep 2; kill -TERM {os.getpid()}"])
    t = time.monotonic()
    with pytest.raises(Interrupted, match="interrupted by SIGTERM: 0 run\\(s\\) finished \\(none\\), 1 stopped"):
        run_jobs([job], 1, Progress("test", tty=False), tmp_path, poll=0.2)
    killer.wait()
    assert time.monotonic() - t < 30
    assert _children_of("sleep 600") == []


def test_progress_draws_bars_on_a_terminal():
    """On a terminal (a pseudo-terminal here, which reports no size) every run is a tqdm bar redrawn in place, with
    its epoch count and last metric; other lines go above the bars."""
    import os
    import pty
    import select
    import sys
    import textwrap

    code = textwrap.dedent("""
        from pst_yolo.progress import Progress
        p = Progress("demo")
        p.start("run a", 3)
        p.start("run b", 3)
        for i in (1, 2, 3):
            p.epoch("run a", i, "mAP50-95 0.1")
            p.epoch("run b", i, "mAP50-95 0.2")
        p.finish("run a")
        p.finish("run b")
        p.say("done")
    """)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while select.select([master], [], [], 30)[0]:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    assert proc.wait(timeout=30) == 0
    text = out.decode(errors="replace")
    assert "\r" in text and "run a: 100%" in text and "run b: 100%" in text and "3/3" in text
    assert "mAP50-95 0.2" in text and "demo: done" in text


@pytest.mark.slow
def test_bench_reports_as_it_goes(tmp_path):
    """``pst-yolo bench`` says what it builds, exports and times (a line at least every 20 s while it times), never
    silent for 30 s; the Targets table uses the limits the project decided."""
    out = run_watched(
        [PST_YOLO, "bench", "--quick", "--models", "yolo11n", "yolo11n-pst k=0", "yolo11n-pst k=8", "--no-openvino",
         "--no-memory", "--no-train", "--no-psa", "--threads", "1", "--workdir", str(tmp_path / "w")], tmp_path
    ).check().out
    for line in ("pst-yolo bench: building yolo11n-pst k=8", "pst-yolo bench: PyTorch 320 px: timing 3 models",
                 "pst-yolo bench: onnxruntime 320 px: exporting yolo11n-pst k=8",
                 "pst-yolo bench: onnxruntime 320 px: timing 3 models"):
        assert line in out, out[-3000:]
    assert "| onnxruntime latency, k=8 / k=0 (joint, paper layout) | 640 | not measured | 1.20 |" in out
    assert "| onnxruntime latency, k=8 / k=0 (joint, recommended) | 640 | not measured | 1.05 |" in out


def test_watchdog_speaks_when_a_command_is_quiet(capsys):
    """The net under every ``pst-yolo`` command (tests above and in the commands' own modules hold each below 30 s):
    a "still working" line with the last thing said, whenever nothing was written for ``quiet`` seconds."""
    with Watchdog("pst-yolo x", quiet=0.3, poll=0.05):
        print("exporting yolo11n-pst ...")
        time.sleep(1.0)
        print("exported")
        time.sleep(0.1)  # under quiet: nothing more
    err = capsys.readouterr().err.splitlines()
    assert len(err) >= 2 and all(e.startswith("pst-yolo x: still working (0:0") for e in err), err
    assert all(e.endswith("last: exporting yolo11n-pst ...)") for e in err), err
