"""Stock ``yolo train`` runs side by side in child processes: live progress, a clean stop, resume.

Each run is one ``yolo train`` process, as a user would start it, in a process group of its own, its output in a log
file beside its run folder. A run folder gets ``pst_compare_cmd.json`` (the exact command) when its training has
finished; running the same runs again reuses every finished one (and says so) and starts every unfinished one again
from scratch. Progress comes from each run's ``results.csv`` (one row per finished epoch, ``pst_yolo.progress``).
Ctrl-C (SIGINT) or SIGTERM stops every child (SIGTERM to its process group, SIGKILL 10 s later), so no process is left
behind, and raises :class:`Interrupted`, which says what finished and where.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

STAMP = "pst_compare_cmd.json"


@dataclass(eq=False)
class Job:
    """One training run: ``command`` writes the Ultralytics run folder ``dir``; ``metric`` is the results.csv column
    shown as its progress."""

    name: str
    command: list
    dir: Path
    epochs: int
    cwd: Path
    env: dict = field(default_factory=dict)
    metric: str | None = None

    @property
    def log(self) -> Path:
        return self.dir.parent / f"{self.dir.name}.log"


class Interrupted(RuntimeError):
    """A signal stopped the runs; ``signum`` is the signal, the message names the finished and stopped runs."""

    def __init__(self, signum: int, finished: list, stopped: list, where: Path):
        self.signum, self.finished, self.stopped = signum, finished, stopped
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}: {len(finished)} run(s) finished ({', '.join(finished) or 'none'}), "
            f"{len(stopped)} stopped ({', '.join(stopped) or 'none'}); results so far in {where}. Run the same "
            "command again to resume: finished runs are reused, stopped ones start again."
        )


class TrainingFailed(RuntimeError):
    """A ``yolo train`` process exited with an error; the message has the end of its log."""


def entry_point(name: str) -> str:
    """The console command ``name`` (``yolo``, ``pst-yolo``) of this interpreter's environment: the one next to
    ``sys.executable`` (a venv that was never activated), else the one on PATH."""
    exe = Path(sys.executable).parent / name
    if exe.is_file():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"pst-yolo: the `{name}` command is not on PATH; install the project first (pip install .)")
    return found


def rows(job: Job) -> list[dict]:
    """The complete rows of the run's results.csv (one per finished epoch); a partly written last line is left out."""
    path = job.dir / "results.csv"
    try:
        text = path.read_text()
    except OSError:
        return []
    lines = text.splitlines()
    if not lines or (text and not text.endswith("\n")):
        lines = lines[:-1] if len(lines) > 1 else []
    reader = csv.DictReader(lines)
    return [{k.strip(): v.strip() for k, v in r.items() if k} for r in reader if None not in r.values()]


def finished(job: Job) -> bool:
    """Whether ``job.dir`` holds this exact command's finished training."""
    stamp = job.dir / STAMP
    if not (stamp.is_file() and (job.dir / "weights" / "last.pt").is_file()):
        return False
    try:
        same = json.loads(stamp.read_text()) == [str(c) for c in job.command[1:]]
    except ValueError:
        return False
    return same and len(rows(job)) >= job.epochs


def _metric(job: Job, row: dict) -> str | None:
    if job.metric and row.get(job.metric):
        return f"{job.metric.split('/')[-1]} {float(row[job.metric]):.4f}"
    return None


def _start(job: Job) -> subprocess.Popen:
    if job.dir.exists():  # an unfinished run: start again from scratch
        shutil.rmtree(job.dir)
    job.dir.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "w") as log:
        return subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, cwd=job.cwd,
                                env={**os.environ, **job.env}, start_new_session=True)


def _stop(procs) -> None:
    """SIGTERM to every child's process group (the trainer and any dataloader workers), SIGKILL to what is left
    after 10 s."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def run_jobs(jobs: list, parallel: int, progress, where: Path, poll: float = 1.0) -> dict:
    """Run ``jobs``, at most ``parallel`` at a time; finished ones are reused. Returns ``{job.name: "reused" |
    "trained"}``.

    Raises:
        Interrupted: SIGINT or SIGTERM arrived (every child stopped first).
        TrainingFailed: A training exited with an error (the others stopped first).
    """
    outcome, pending, running = {}, [], {}
    for job in jobs:
        if finished(job):
            outcome[job.name] = "reused"
            progress.say(f"{job.name}: reused (finished earlier with the same arguments: {job.dir})")
        else:
            pending.append(job)
    signals = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, lambda signum, frame: signals.append(signum))
    try:
        while pending or running:
            if signals:
                _stop(running.values())
                stopped = [j.name for j in running] + [j.name for j in pending]
                raise Interrupted(signals[0], [n for n in outcome], stopped, where)
            while pending and len(running) < parallel:
                job = pending.pop(0)
                running[job] = _start(job)
                progress.start(job.name, job.epochs)
            for job, proc in list(running.items()):
                rc = proc.poll()  # before reading the rows: a run that just ended has written all of them
                done = rows(job)
                for n in range(1, len(done) + 1):  # every epoch its line, also two that ended within one poll
                    progress.epoch(job.name, n, _metric(job, done[n - 1]))
                if rc is None:
                    continue
                del running[job]
                if rc != 0:
                    _stop(running.values())
                    tail = job.log.read_text(errors="replace")[-3000:] if job.log.is_file() else ""
                    raise TrainingFailed(f"pst-yolo: training {job.name} failed with exit {rc}; log {job.log}:\n{tail}")
                (job.dir / STAMP).write_text(json.dumps([str(c) for c in job.command[1:]]))
                outcome[job.name] = "trained"
                progress.finish(job.name)
            progress.tick()
            time.sleep(poll)
    except BaseException:
        _stop(running.values())
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return outcome
