"""Run a command and time its silences: the longest wait between two lines on stdout or stderr (issue #46: no
``pst-yolo`` command is silent for 30 s). Both streams are read as they come, each kept apart for the test's own
checks."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass

QUIET_LIMIT = 30.0  # seconds: the longest a pst-yolo command may go without a line


@dataclass
class Watched:
    returncode: int
    stdout: str
    stderr: str
    silence: float  # seconds: the longest gap between lines (start and end included)

    @property
    def out(self) -> str:
        return self.stdout + self.stderr

    def check(self, limit: float = QUIET_LIMIT) -> "Watched":
        """Fails unless the command succeeded and never went ``limit`` seconds without a line."""
        assert self.returncode == 0, self.stdout[-3000:] + self.stderr[-4000:]
        assert self.silence < limit, f"silent for {self.silence:.0f} s:\n{self.stdout[-2000:]}\n{self.stderr[-3000:]}"
        return self


def run_watched(cmd, cwd=None, env=None, timeout: float = 900) -> Watched:
    """Run ``cmd`` (``env``: its whole environment, as for ``subprocess``) to the end; its output and silences."""
    start = time.monotonic()
    stamps, texts = [start], {"out": [], "err": []}
    lock = threading.Lock()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def read(stream, key):
        for line in stream:
            with lock:
                stamps.append(time.monotonic())
                texts[key].append(line)

    readers = [threading.Thread(target=read, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=read, args=(proc.stderr, "err"), daemon=True)]
    for r in readers:
        r.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    for r in readers:
        r.join(timeout=30)
    stamps = sorted([*stamps, time.monotonic()])
    silence = max(b - a for a, b in zip(stamps, stamps[1:]))
    return Watched(code, "".join(texts["out"]), "".join(texts["err"]), silence)
