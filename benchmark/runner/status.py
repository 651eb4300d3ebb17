"""``afbench status EXPERIMENT``: what each run of a plan is doing, for local and Slurm drivers alike.

Read-only: it looks at ``result.json`` files, the experiment lock, the ``.tmp-<run id>-<pid>`` folders
of runs training locally, and (when ``.slurm/jobs.json`` lists jobs) at ``squeue``. Per run:
finished / failed (the error's first line) / running (Slurm job, node, elapsed; or local pid) /
queued (Slurm job and the reason it waits) / corrupt (a damaged result.json, "corrupt: why"; the next run retrains it) /
newer (a result.json of a newer schema, "newer schema: upgrade afbench"; never retrained over) / pending (nothing yet).
"""

from __future__ import annotations

import re
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmark.paths import pid_alive
from benchmark.records import read_result_file, scan_experiment
from benchmark.runner import slurm
from benchmark.runner.borrowed import borrowed
from benchmark.runner.lock import LOCK, describe, holder_alive, read_lock
from benchmark.runner.slurm import QUEUED, JobState, load_jobs

_TMP = re.compile(r"^\.tmp-(?P<rid>.+)-(?P<pid>\d+)$")


@dataclass
class RunStatus:
    run_id: str
    state: str  # finished | failed | running | queued | corrupt | newer | pending
    detail: str = ""


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def local_running(exp_dir: Path) -> dict[str, str]:
    """run id -> detail for runs training in a live local driver (its lock held, its worker alive)."""
    holder = read_lock(exp_dir)
    if holder_alive(holder, exp_dir / LOCK) is False:  # also no lock at all
        return {}
    here = bool(holder) and holder.get("host") == socket.gethostname()
    out = {}
    for d in exp_dir.glob(".tmp-*"):
        m = _TMP.match(d.name)
        if not m or not d.is_dir():
            continue
        pid = int(m["pid"])
        if here and not pid_alive(pid):
            continue  # a dead attempt the next driver clears
        try:
            since = time.time() - d.stat().st_mtime
        except FileNotFoundError:
            continue
        out[m["rid"]] = f"local pid {pid} on {holder.get('host', '?')}, elapsed {_elapsed(since)}"
    return out


def experiment_status(plan, exp_dir: Path, queue: dict[str, JobState] | None = None) -> list[RunStatus]:
    """One RunStatus per planned run, in plan order."""
    jobs = load_jobs(exp_dir)
    if jobs and queue is None:
        queue = slurm.squeue()
    local = local_running(exp_dir)
    out: list[RunStatus] = []
    states: dict[str, str] = {}  # plan order lists dependencies first
    lent = borrowed(plan, exp_dir.parent)  # implied runs finished under another experiment (dependencies_from)
    for r in plan.runs:
        file = read_result_file(lent.get(r.id, exp_dir / r.id))
        res = file.record  # None: missing or corrupt
        job = jobs.get(r.id, {}).get("job_id")
        st = queue.get(job) if (queue is not None and job) else None
        if st is not None and st.active:
            if st.state in QUEUED:
                out.append(RunStatus(r.id, "queued", f"Slurm job {job} ({st.reason or st.state})"))
            else:
                out.append(RunStatus(r.id, "running", f"Slurm job {job} on {st.node}, elapsed {st.elapsed}"))
        elif r.id in local:
            out.append(RunStatus(r.id, "running", local[r.id]))
        elif res is not None and res.finished:
            where = f"Slurm job {res.slurm_job_id} on {res.slurm_node}" if res.slurm_job_id else res.host or ""
            where += f" (under {lent[r.id].parent.name})" if r.id in lent else ""
            acc = res.best_metric
            out.append(RunStatus(r.id, "finished", (f"dev {acc:.2f}, " if acc is not None else "")
                                 + f"{res.wall_seconds:.1f}s, {where}"))
        elif res is not None:
            out.append(RunStatus(r.id, "failed", res.first_error_line[:160]))
        elif job and queue is not None:
            bad = [d for d in r.deps if states.get(d) == "failed"]
            state = st.state if st else "gone from the queue"
            out.append(RunStatus(r.id, "failed", f"dependency failed: {', '.join(bad)}" if bad
                                 else f"Slurm job {job} ended ({state}) without a result"))
        elif job:
            out.append(RunStatus(r.id, "pending", f"Slurm job {job}: squeue unavailable, state unknown"))
        elif file.state == "corrupt":  # a damaged result.json: retrained by the next run, said here
            out.append(RunStatus(r.id, "corrupt", f"corrupt: {file.reason}; the next run retrains it"[:200]))
        elif file.state == "newer":  # written by a newer afbench: left alone, never retrained over
            out.append(RunStatus(r.id, "newer", file.reason))
        else:
            out.append(RunStatus(r.id, "pending"))
        states[r.id] = out[-1].state
    return out


def print_status(plan, results_dir: Path, queue: dict[str, JobState] | None = None, out=print) -> int:
    from tabulate import tabulate

    exp_dir = results_dir / plan.experiment.name
    rows = experiment_status(plan, exp_dir, queue)
    holder = read_lock(exp_dir)
    if holder is not None:
        alive = holder_alive(holder, exp_dir / LOCK)
        out(f"driver: {describe(holder)}" + (" (stale: that process is gone)" if alive is False else ""))
    else:
        out("driver: none holds the lock")
    table = [(i, r.task or "+".join(r.tasks), r.label, r.backbone, r.seed, s.state, s.detail, s.run_id)
             for i, (s, r) in enumerate(zip(rows, plan.runs, strict=True), 1)]  # rows are in plan order
    out(tabulate(table, headers=["#", "task", "method", "backbone", "seed", "status", "detail", "run id"]))
    c = Counter(s.state for s in rows)
    out(f"{plan.experiment.name}: {len(rows)} runs: "
        + ", ".join(f"{c[k]} {k}" for k in ("finished", "running", "queued", "failed", "corrupt", "newer", "pending")
                 if c[k]))
    return 0


def unmatched_note(plan, results_dir: Path, data_root: Path | None) -> list[str]:
    """Why results on disk are not in this plan (run ids hash the data, the spec and the run options), in the
    words ``afbench report`` uses; empty when every result on disk is planned."""
    ids = {r.id for r in plan.runs}
    scan = scan_experiment(results_dir, plan.experiment.name)
    stale = [r for r in scan.results if r.run_id not in ids]
    if not stale:
        return []
    folder = results_dir / plan.experiment.name
    matched = len(scan.results) - len(stale)
    if data_root is None and any(r.data_source == "mirror" for r in stale):
        return [f"note: {len(stale)} result(s) under {folder} were trained on the offline data mirror, and run ids "
                "include a content hash of the data: with AFBENCH_DATA_DIR unset the plan reads the Hub instead, so "
                f"{'none' if not matched else 'not all'} of their ids is in it. Fix: set AFBENCH_DATA_DIR (or "
                "--data-dir) to the mirror, e.g. AFBENCH_DATA_DIR=../shared/data; `afbench run` without it would "
                "train every run anew on Hub data."]
    return [f"note: {len(stale)} result(s) under {folder} are not in this plan: they come from an older version "
            "of the spec, other data, or other --batching / --cpu-kernels / --last-layer options (each changes the "
            "run ids); `afbench report` leaves them out."]


def empty_plan_note(plan, data_root: Path | None) -> list[str]:
    """Why a plan has no run at all (every task skipped), and what to do."""
    if plan.runs:
        return []
    why = (f"every task was skipped ({len(plan.skipped)} listed above)" if plan.skipped
           else "the experiment lists no runnable group")
    hint = (" Without AFBENCH_DATA_DIR the data is read from the Hugging Face Hub; set it (or --data-dir) to an "
            "offline mirror, e.g. AFBENCH_DATA_DIR=../shared/data." if data_root is None else "")
    return [f"note: this plan has no runs: {why}.{hint}"]
