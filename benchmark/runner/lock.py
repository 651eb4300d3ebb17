"""One driver per experiment: ``results/<experiment>/.lock`` (host, pid, start time, command).

Two drivers on the same results would each retrain the other's pending runs and clear each other's
temp folders, so ``afbench run`` (local or Slurm) takes this lock around the whole plan. It is created
complete or not at all, and only where there is none (``paths.write_atomic(exclusive=True)``: a hard
link, atomic on local file systems and NFS). A second driver says who holds it
and exits 2, or waits with ``--wait-lock``. With ``--jobs N`` the driver adds its worker pids
(``workers``). A lock whose pid and workers are all dead on this host is stale (the driver was killed
with -9 or the machine rebooted) and is taken over with a message; one whose driver died while a worker
lives is held (that worker may still train a run); a lock of another host cannot be checked and is only
reported.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from benchmark.errors import BenchError, StorageError
from benchmark.paths import pid_alive, swap_in, write_atomic
from benchmark.runner.results import now

LOCK = ".lock"
_UNWRITTEN_GRACE_S = 30.0  # a lock file still empty this long after creation was left by a crash


class LockHeld(BenchError):
    """Another driver is running this experiment."""


def read_lock(exp_dir: Path) -> dict | None:
    """The holder recorded in the lock, {} for a lock being written, None when there is no lock."""
    f = exp_dir / LOCK
    try:
        raw = f.read_bytes()
    except FileNotFoundError:
        return None
    try:  # bytes: a lock that is not UTF-8 (damaged) reads as one being written, stale after the grace period
        data = json.loads(raw)
        return data if isinstance(data, dict) else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def holder_alive(holder: dict | None, lock_file: Path | None = None) -> bool | None:
    """True/False when it can be told from here; None for a lock of another host."""
    if holder is None:
        return False
    if not holder:  # being written, or a crash between create and write
        try:
            age = time.time() - lock_file.stat().st_mtime if lock_file else 0.0
        except FileNotFoundError:
            return False
        return abs(age) < _UNWRITTEN_GRACE_S  # a future mtime (a clock set back, a copied file) ages too
    if holder.get("host") != socket.gethostname():
        return None
    pids = [holder.get("pid", -1), *(holder.get("workers") or [])]
    return any(pid_alive(int(p)) for p in pids if isinstance(p, int) and not isinstance(p, bool) and p > 0)


def describe(holder: dict) -> str:
    if not holder:
        return "a driver that is still writing the lock"
    workers = holder.get("workers") or []
    alive = [p for p in workers if isinstance(p, int) and pid_alive(p)] \
        if holder.get("host") == socket.gethostname() else []
    tail = f"; worker(s) {', '.join(map(str, alive))} still alive" if alive and not pid_alive(int(holder.get("pid", -1))) \
        else ""
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started_at')}"
            f" ({holder.get('command', '?')}){tail}")


def _try_create(f: Path, me: dict) -> bool:
    """Create the lock only if there is none; it appears complete (read-only, full, no permission: one
    StorageError paragraph; cli: exit 2, or a note if nothing to do)."""
    try:
        write_atomic(f, json.dumps(me), exclusive=True)
    except FileExistsError:
        return False
    return True


def _same_holder(a: dict | None, b: dict) -> bool:
    return bool(a) and all(a.get(k) == b.get(k) for k in ("host", "pid", "started_at"))


def record_workers(exp_dir: Path, me: dict, pids: list[int]) -> None:
    """Name the running worker processes (``--jobs N``, one per run) in the lock we hold: the lock stays live
    while any of them is alive on this host, so a rerun never trains a run that a worker of a killed driver
    still trains. Only the live ones: a finished worker's pid may be reused by another program.
    Rewritten atomically (temp file + rename); only if the lock is still ours."""
    new = sorted(set(pids))
    if new == me.get("workers") or not _same_holder(read_lock(exp_dir), me):
        return
    me["workers"] = new
    write_atomic(exp_dir / LOCK, json.dumps(me), root=exp_dir)


def _take_over_stale(f: Path, seen: dict) -> None:
    """Remove a stale lock, unless it changed since we judged it (another driver took it first)."""
    private = f.with_name(f"{LOCK}.stale-{os.getpid()}")
    try:
        swap_in(f, private)
    except FileNotFoundError:
        return
    try:
        raw = private.read_bytes()
        if json.loads(raw or b"{}") != seen:
            # not the stale lock we judged: give it back (fails only if yet another driver holds it)
            with suppress(FileExistsError):
                write_atomic(f, raw, exclusive=True)
    except (OSError, ValueError):  # unreadable (not JSON, not UTF-8): the stale lock we judged
        pass
    finally:
        private.unlink(missing_ok=True)


@contextmanager
def experiment_lock(exp_dir: Path, *, wait: bool = False, poll_s: float = 2.0,
                    log: Callable[[str], None] = print) -> Iterator[dict]:
    """Hold the experiment's lock for the body; released (only if still ours) on any exit."""
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError.from_os_error(exp_dir, e) from None
    f = exp_dir / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now(),
          "command": " ".join(["afbench", *sys.argv[1:4]])}
    announced = False
    while not _try_create(f, me):
        holder = read_lock(exp_dir)
        alive = holder_alive(holder, f)
        if holder is not None and alive is False:
            if holder:
                log(f"taking over a stale lock of {describe(holder)}: that process is gone")
            _take_over_stale(f, holder)
            continue
        if holder is None:
            continue  # released between our attempt and the read
        if not wait:
            where = "" if alive else " (on another host: it cannot be checked from here)"
            raise LockHeld(
                f"experiment '{exp_dir.name}' is being run by another driver: {describe(holder)}{where}",
                file=str(f),
                fix="wait for it (afbench status shows its progress), pass --wait-lock to queue behind it, "
                    "or, if that driver is surely gone, delete the lock file")
        if not announced:
            log(f"waiting for the lock of {describe(holder)}")
            announced = True
        time.sleep(poll_s)
    try:
        yield me
    finally:
        if _same_holder(read_lock(exp_dir), me):
            with suppress(OSError):
                f.unlink(missing_ok=True)
