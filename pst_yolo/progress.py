"""Live progress of long jobs (trainings side by side, validations, exports), for a terminal and for a log.

On a terminal every training run is one tqdm bar (epoch i/N, the last validation metric, elapsed and estimated time
left), redrawn in place; anything else (a CI log, ``| tee``, a captured subprocess) gets plain lines: one when a run
starts, one per finished epoch, one when it ends, and a "still running" line whenever 25 s pass without one, so a log is
never silent for long. tqdm because it draws several bars at fixed positions and keeps other output above them
(``tqdm.write``); Ultralytics' own bar draws a single line.
"""

from __future__ import annotations

import shutil
import sys
import time

HEARTBEAT = 25.0  # seconds without a line before a "still running" line (plain output)


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Progress of named runs of known length (epochs), shown as bars on a terminal, as lines otherwise.

    Args:
        what (str): Prefix of every line, e.g. ``"pst-yolo compare"``.
        stream: Where to write (default ``sys.stdout``); bars only when it is a terminal (``tty=None``).
        tty (bool | None): Force bars (True) or lines (False).
    """

    def __init__(self, what: str, stream=None, tty: bool | None = None):
        self.what, self.stream = what, stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.runs: dict = {}  # name -> dict(total, done, metric, start, bar)
        self.last_line = time.monotonic()

    def say(self, msg: str) -> None:
        """One line of its own (above the bars on a terminal)."""
        if self.tty:
            from tqdm import tqdm

            tqdm.write(f"{self.what}: {msg}", file=self.stream)
        else:
            print(f"{self.what}: {msg}", file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def start(self, name: str, total: int, note: str = "") -> None:
        run = self.runs[name] = {"total": total, "done": 0, "metric": None, "start": time.monotonic(), "bar": None,
                                 "running": True}
        if self.tty:
            from tqdm import tqdm

            # the terminal's size, or 100 x 20 where it reports none (a pseudo-terminal without a window): tqdm would
            # then draw nothing
            size = shutil.get_terminal_size((100, 20))
            run["bar"] = tqdm(total=total, desc=name, unit="ep", position=len(self.runs) - 1, leave=True,
                              file=self.stream, ncols=size.columns, nrows=size.lines)
        else:
            self.say(f"{name}: started{note} ({total} epochs)")

    def epoch(self, name: str, done: int, metric: str | None = None) -> None:
        """``done`` epochs of run ``name`` are finished; ``metric`` is the last validation, e.g. ``mAP50-95 0.31``."""
        run = self.runs[name]
        if done <= run["done"]:
            return
        step, run["done"], run["metric"] = done - run["done"], done, metric
        if run["bar"] is not None:
            run["bar"].update(step)
            if metric:
                run["bar"].set_postfix_str(metric)
            return
        elapsed = time.monotonic() - run["start"]
        left = elapsed / done * (run["total"] - done)
        self.say(f"{name}: epoch {done}/{run['total']}" + (f", {metric}" if metric else "") +
                 f", {clock(elapsed)} elapsed, ~{clock(left)} left")

    def finish(self, name: str, note: str = "done") -> None:
        run = self.runs[name]
        run["running"] = False
        if run["bar"] is not None:
            run["bar"].set_postfix_str(f"{run['metric'] or ''} {note}".strip())
            run["bar"].close()
        else:
            self.say(f"{name}: {note} after {clock(time.monotonic() - run['start'])}"
                     + (f" ({run['metric']})" if run["metric"] else ""))

    def tick(self) -> None:
        """Call often: on plain output, a "still running" line after ``HEARTBEAT`` quiet seconds."""
        if self.tty or time.monotonic() - self.last_line < HEARTBEAT:
            return
        active = [f"{n} epoch {r['done'] + 1}/{r['total']}" for n, r in self.runs.items()
                  if r["running"]]
        if active:
            self.say("still running: " + ", ".join(active))

    def close(self) -> None:
        for run in self.runs.values():
            if run["bar"] is not None and not run["bar"].disable:
                run["bar"].close()


class _Watched:
    """A text stream that notes when it was last written to (the rest goes to the stream it wraps)."""

    def __init__(self, stream, watch):
        self._stream, self._watch = stream, watch

    def write(self, text):
        n = self._stream.write(text)
        if text:
            self._watch.seen(text)
            if "\n" in text:  # a pipe is block-buffered: what was said must also reach the reader
                self._stream.flush()
        return n

    def __getattr__(self, name):
        return getattr(self._stream, name)


class Watchdog:
    """Never silent for long: while a command runs, a line ``<what>: still working (m:ss in; last: ...)`` goes to
    stderr whenever ``quiet`` seconds pass without anything written to ``sys.stdout`` or ``sys.stderr``.

    The commands say what they do step by step; this is the net under the steps that take long with nothing to say
    (an export or a validation in a subprocess whose output is captured, a long kernel check), so a log or a CI job
    never waits minutes without knowing the command is alive (``pst-yolo <command>`` runs every command under it).

    Example:
        >>> with Watchdog("pst-yolo bench"):
        ...     run_the_command()
    """

    def __init__(self, what: str, quiet: float = 20.0, poll: float = 1.0):
        import threading

        self.what, self.quiet, self.poll = what, float(quiet), float(poll)
        self.last, self.last_text, self.start = time.monotonic(), "", time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pst-yolo-watchdog", daemon=True)

    def seen(self, text: str) -> None:
        self.last = time.monotonic()
        line = text.strip().splitlines()[-1] if text.strip() else ""
        if line:
            self.last_text = line

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            now = time.monotonic()
            if now - self.last >= self.quiet:
                last = self.last_text if len(self.last_text) <= 100 else self.last_text[:97] + "..."
                self._stderr.write(f"{self.what}: still working ({clock(now - self.start)} in"
                                   + (f"; last: {last})\n" if last else ")\n"))
                self._stderr.flush()
                self.last = now

    def __enter__(self):
        self._saved = sys.stdout, sys.stderr
        self._stderr = sys.stderr
        sys.stdout, sys.stderr = _Watched(sys.stdout, self), _Watched(sys.stderr, self)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        sys.stdout, sys.stderr = self._saved
        return False
