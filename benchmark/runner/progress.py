"""What a grid prints while it trains, written by the driver alone (``execute.run_plan``).

The runs do not write their progress: ``fit`` hands it to ``training.loop.REPORTER``, which the runner sets to a
class that forwards it to the driver (through a pipe from a worker process with ``--jobs N``, directly with one
job). The driver's ``Display`` shows it: inside each epoch a status line redrawn in place on a terminal (every
running run in one line), and elsewhere (a log file, nohup, Slurm output) a plain line per running run every
``PROGRESS_SECONDS``; the runs' epoch lines and the driver's own lines go through it, so the status line never
cuts them. ``Progress`` numbers each run once (its start and end lines carry the same number) and keeps the ETA.
``guard_streams``: a reader that goes away (``afbench run ... | head``) never fails a run or stops the grid.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from benchmark.plan.run import Run
from benchmark.training import loop

REDRAW_SECONDS = 0.5  # the terminal's status line, and how often a worker sends its step count
PRIOR_SECONDS = 120.0  # the cost model's word weighs as much as this many measured seconds (see Progress.ratio)


def fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


# ------------------------------------------------------------------------------------ closed pipes
class _Guarded:
    """A text stream whose writes never raise for a reader that went away: the first EPIPE points the file
    descriptor at /dev/null and everything after goes there (the runs and the grid go on)."""

    def __init__(self, stream):
        self._stream = stream

    def _gone(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def guard_streams():
    """Guard ``sys.stdout`` and ``sys.stderr`` of this process (and of the workers it forks) against a closed
    pipe while the block runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if s is None or isinstance(s, _Guarded) else _Guarded(s) for s in saved)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


# ----------------------------------------------------------------------------------- the display
class Display:
    """The driver's output while runs train: ``log`` for whole lines, ``step`` for a run's progress inside an
    epoch (``event``: desc, epoch, epochs, steps, steps_per_epoch, examples, seconds), ``end`` when it is over.
    ``tty``: redraw one status line in place (default: ``log`` is ``print`` to a terminal)."""

    def __init__(self, log, tty: bool | None = None, eta=None):
        self._log, self.eta = log, eta or (lambda: None)
        self.tty = (log is print and sys.stdout.isatty()) if tty is None else tty
        self.state: dict[str, tuple[str, dict]] = {}  # run id -> (its "[run i/n]" tag, its last event)
        self.last_line: dict[str, float] = {}
        self.drawn, self.last_draw = 0, 0.0

    def log(self, text: str) -> None:
        self._clear()
        self._log(text)
        if self._log is print:  # a log file or a pipe sees each line when it happens, not at exit
            sys.stdout.flush()
        self._draw()

    def step(self, rid: str, tag: str, event: dict) -> None:
        self.state[rid] = (tag, event)
        now = time.perf_counter()
        if self.tty:
            if now - self.last_draw >= REDRAW_SECONDS:
                self._clear()
                self._draw()
        elif now - self.last_line.setdefault(rid, now) >= loop.PROGRESS_SECONDS:
            self.last_line[rid] = now
            eta = self.eta()
            self.log(f"{tag} {loop.progress_line(**event).strip()}" + (f" | grid ETA {fmt(eta)}" if eta else ""))

    def end(self, rid: str) -> None:
        self.state.pop(rid, None)
        self.last_line.pop(rid, None)

    def _draw(self) -> None:
        if not (self.tty and self.state):
            return
        parts = [f"{tag} {e['desc']} ep {e['epoch']}/{e['epochs']} {e['steps']}/{e['steps_per_epoch']}"
                 for tag, e in self.state.values()]
        eta = self.eta()
        text = " | ".join(parts) + (f" | ETA {fmt(eta)}" if eta else "")
        width = max(20, _columns() - 1)
        sys.stdout.write("\r" + text[:width])
        sys.stdout.flush()
        self.drawn, self.last_draw = min(len(text), width), time.perf_counter()

    def _clear(self) -> None:
        if self.drawn:
            sys.stdout.write("\r" + " " * self.drawn + "\r")
            self.drawn = 0


def _columns() -> int:
    try:
        columns = os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return columns or 100  # a pty that reports 0 columns (``script``) has no width to fit: assume 100


def reporter(send):
    """A ``training.loop.REPORTER`` class that hands a run's progress to ``send``: ``("step", event)`` at most
    every ``REDRAW_SECONDS`` (and at the end of each epoch), ``("line", text)`` for its epoch lines."""

    class Forward:
        def __init__(self, desc: str, epoch: int, epochs: int, steps_per_epoch: int):
            self.event = {"desc": desc, "epoch": epoch, "epochs": epochs, "steps_per_epoch": steps_per_epoch}
            self.last = 0.0

        def step(self, steps: int, examples: int, seconds: float) -> None:
            now = time.perf_counter()
            if now - self.last >= REDRAW_SECONDS or steps == self.event["steps_per_epoch"]:
                self.last = now
                send(("step", {**self.event, "steps": steps, "examples": examples, "seconds": seconds}))

        def close(self) -> None:
            pass

        @staticmethod
        def line(text: str) -> None:
            send(("line", text))

    return Forward


# ------------------------------------------------------------------------------- counter and ETA
class Progress:
    """One number per run (``[run 2/4] start X`` ... ``[run 2/4] ok X``) and the grid's ETA.

    The ETA is the cost model's predicted seconds (``cost.py``) of what is left (runs not started, and the
    unfinished share of running ones, from their step counts) times ``ratio``: measured over predicted seconds
    of the work done so far in this process, finished runs and the done share of running ones, with
    ``PRIOR_SECONDS`` of the prediction's own word (ratio 1) so the first minute does not swing it. The runs
    left are laid along the dependency graph on ``jobs`` workers (``cost.makespan``), running ones first.
    Without predictions (a GPU), the mean of the finished runs."""

    def __init__(self, runs: list[Run], jobs: int, log, predicted: dict[str, float] | None = None):
        self.runs, self.n, self.jobs, self.log = list(runs), len(runs), jobs, log
        self.t0, self.predicted = time.perf_counter(), dict(predicted or {})
        self.number: dict[str, int] = {}
        self.started: dict[str, float] = {}  # running run -> when it started
        self.fraction: dict[str, float] = {}  # running run -> share of its epochs done
        self.done: dict[str, float] = {}  # run id -> seconds (0 for one that never started)
        self.failed: set[str] = set()

    def tag(self, rid: str) -> str:
        return f"[run {self.number.setdefault(rid, len(self.number) + 1)}/{self.n}]"

    def start(self, rid: str, where: str = "") -> None:
        self.started[rid], self.fraction[rid] = time.perf_counter(), 0.0
        self.log(f"{self.tag(rid)} start {rid}{where}")

    def step(self, rid: str, event: dict) -> None:
        epochs = max(1, event["epochs"])
        self.fraction[rid] = min(1.0, (event["epoch"] - 1 + event["steps"] / max(1, event["steps_per_epoch"]))
                                 / epochs)

    def ratio(self) -> float:
        spent = predicted = PRIOR_SECONDS
        for rid, secs in self.done.items():
            if rid in self.predicted and rid not in self.failed:
                spent, predicted = spent + secs, predicted + self.predicted[rid]
        now = time.perf_counter()
        for rid, t in self.started.items():
            if rid in self.predicted and self.fraction.get(rid):
                spent, predicted = spent + now - t, predicted + self.predicted[rid] * self.fraction[rid]
        return spent / predicted

    def eta(self) -> float:
        """Never less than what a running run still needs at its own measured pace (a short grid's prior would
        otherwise promise less than the epoch in progress)."""
        left = [r for r in self.runs if r.id not in self.done]
        now = time.perf_counter()
        own = max([(now - t) * (1 - f) / f for rid, t in self.started.items() if (f := self.fraction.get(rid))],
                  default=0.0)
        if self.predicted and all(r.id in self.predicted for r in left):
            from benchmark.plan.cost import makespan

            ratio = self.ratio()
            seconds = {r.id: self.predicted[r.id] * ratio * (1 - self.fraction.get(r.id, 0.0)) for r in left}
            order = sorted(left, key=lambda r: r.id not in self.started)  # running first, then in start order
            return max(own, makespan(seconds, self.jobs, order))
        ran = [s for rid, s in self.done.items() if s]
        return max(own, sum(ran) / len(ran) * len(left) / max(1, self.jobs) if ran else 0.0)

    def __call__(self, rid: str, err: str | None, secs: float) -> None:
        tag = self.tag(rid)
        self.started.pop(rid, None)
        self.fraction.pop(rid, None)
        self.done[rid] = secs
        if err:
            self.failed.add(rid)
        self.log(f"{tag} {'ok' if err is None else 'FAILED'} {rid} ({secs:.1f}s) | {len(self.done)}/{self.n} done | "
                 f"elapsed {fmt(time.perf_counter() - self.t0)} | ETA {fmt(self.eta())}")
        if err:
            self.log(f"    {err}")
