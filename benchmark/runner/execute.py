"""Execute a plan: skip finished runs, respect dependencies, record failures, report progress.

Each run trains into a private temp folder; only a complete run (weights, modules.json and a
``result.json`` with status "finished") is moved into ``results/<experiment>/<run id>/``. A failed run
is recorded with its error (without replacing an earlier finished result), and the grid goes on with
every run that does not depend on it.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.errors import BenchError
from benchmark.modeling.checkpoint import WEIGHTS
from benchmark.modeling.compute import DEFAULT, Compute
from benchmark.runner.plan import Plan, Run
from benchmark.runner.results import (
    RESULT,
    SCHEMA,
    git_revision,
    is_finished,
    now,
    versions,
    write_json_atomic,
)
from benchmark.runner.slurm import job_info
from benchmark.spec.registry import Registry


def pick_device(requested: str | None, exp_device: str = "auto") -> torch.device:
    want = requested or exp_device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no GPU is visible; use --device cpu")
    return torch.device(want)


@dataclass
class Summary:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished before this invocation
    failed: dict[str, str] = field(default_factory=dict)  # run id -> error
    seconds: float = 0.0


def plan_record(plan: Plan) -> dict:
    """What the report needs of the plan: the expected cells and the tasks left out (with why)."""
    return {
        "experiment": plan.experiment.name,
        "description": plan.experiment.description.strip(),
        "runs": [{"id": r.id, "task": r.task, "tasks": r.tasks, "label": r.label, "backbone": r.backbone,
                  "seed": r.seed, "role": "stage1" if r.implied else "grid"} for r in plan.runs],
        "skipped": [{"what": w, "why": y} for w, y in plan.skipped],
    }


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


def _recover(exp_dir: Path, run_id: str) -> None:
    """Undo a swap that a crash interrupted, and clear temp folders of dead attempts."""
    final, trash = exp_dir / run_id, exp_dir / f".trash-{run_id}"
    if trash.exists() and not final.exists():
        os.replace(trash, final)
    elif trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    for stale in exp_dir.glob(f".tmp-{run_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def record(run: Run, reg: Registry, plan: Plan, exp_dir: Path, device: torch.device, measured: dict | None,
           error: str | None, started: str, seconds: float, work: Path | None, compute: Compute = DEFAULT) -> None:
    final = exp_dir / run.id
    result = {
        "schema": SCHEMA,
        "status": "finished" if error is None else "failed",
        "run_id": run.id,
        "experiment": run.experiment,
        "task": run.task,
        "tasks": run.tasks or [run.task],
        "method": run.method.name,
        "method_kind": run.method.method,
        "label": run.label,
        "role": "stage1" if run.implied else "grid",  # stage1: only a dependency of fusion runs
        "reduction_factor": run.reduction_factor,
        "backbone": run.backbone,
        "paper_backbone": reg.backbones[run.backbone].paper_backbone,
        "seed": run.seed,
        "sources": run.sources,
        "deps": run.deps,
        "config": run.config(reg, plan.experiment),
        "metric": "accuracy (%) on the dev split",
        **(measured or {}),
        "error": error,
        "wall_seconds": seconds,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "torch_threads": torch.get_num_threads(),
        **compute.record(device),  # cpu_kernels, last_layer: see benchmark/modeling/compute.py
        **job_info(),  # slurm_job_id, slurm_node, slurm_gpus when run as a Slurm job
        "host": socket.gethostname(),
        "started_at": started,
        "finished_at": now(),
        "versions": versions(),
        "git": git_revision(),
    }
    if error is None:
        write_json_atomic(work / RESULT, result)
        trash = exp_dir / f".trash-{run.id}"
        if final.exists():
            os.replace(final, trash)
        os.replace(work, final)
        shutil.rmtree(trash, ignore_errors=True)
        return
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    if is_finished(final):  # never replace a finished result with a failed rerun
        write_json_atomic(final / "last_failure.json", result)
    else:
        write_json_atomic(final / RESULT, result)


def execute_one(run: Run, reg: Registry, plan: Plan, exp_dir: Path, data_dir: Path | None, device_name: str,
                threads: int | None = None, compute: Compute = DEFAULT) -> tuple[str, str | None, float]:
    """Train one run and record it. Returns (run id, error or None, seconds)."""
    from benchmark.training.recipe import RunContext, execute

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    _recover(exp_dir, run.id)
    work = exp_dir / f".tmp-{run.id}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    started, t0 = now(), time.perf_counter()
    ctx = RunContext(reg, plan.experiment, data_dir, device, lambda rid: exp_dir / rid, compute)
    try:
        measured, error = execute(run, ctx, work), None
    except KeyboardInterrupt:
        shutil.rmtree(work, ignore_errors=True)
        raise
    except Exception as e:  # noqa: BLE001 - every failure is recorded, the grid goes on
        msg = e.render() if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        tail = "".join(traceback.format_exception(e)[-3:])
        measured, error = {"traceback_tail": tail}, msg
    seconds = time.perf_counter() - t0
    record(run, reg, plan, exp_dir, device, measured, error, started, seconds, work, compute)
    return run.id, error, seconds


def run_plan(plan: Plan, reg: Registry, *, results_dir: Path, data_dir: Path | None, device: str | None = None,
             jobs: int = 1, force: bool = False, compute: Compute = DEFAULT, log=print,
             executor: str = "local", slurm_options=None) -> Summary:
    from benchmark.runner import slurm

    exp_dir = results_dir / plan.experiment.name
    exp_dir.mkdir(parents=True, exist_ok=True)
    # on Slurm each job picks its device (the driver's login node may have no GPU)
    dev = pick_device(device, plan.experiment.device) if executor == "local" else torch.device("cpu")
    summary, t_start = Summary(), time.perf_counter()
    in_flight = slurm.live_runs(exp_dir)  # queued/running Slurm jobs of earlier drivers: their temp folders are live
    if in_flight and executor == "local":
        raise slurm.busy_error(exp_dir, in_flight)
    for rid in [r.id for r in plan.runs if r.id not in in_flight]:
        _recover(exp_dir, rid)
    write_json_atomic(exp_dir / "plan.json", plan_record(plan))
    todo = []
    for r in plan.runs:
        if not force and is_finished(exp_dir / r.id):
            summary.skipped.append(r.id)
        else:
            todo.append(r)
    # A finished run whose weights are gone (results are committed to git without them) is redone
    # only if a pending run needs those weights.
    needed = {d for r in todo for d in r.deps}
    by_id = plan.by_id()
    for rid in [rid for rid in summary.skipped if rid in needed and not (exp_dir / rid / WEIGHTS).exists()]:
        summary.skipped.remove(rid)
        todo.insert(0, by_id[rid])
        log(f"  {rid} is finished but its weights are missing; a pending run needs them, so it is retrained")
    n = len(todo)
    log(f"{plan.experiment.name}: {len(plan.runs)} runs, {len(summary.skipped)} already finished, {n} to run "
        + (f"on {dev}" if executor == "local" else "on Slurm") + (f" with {jobs} jobs" if jobs > 1 else ""))
    for what, why in plan.skipped:
        log(f"  skipped {what}: {why}")
    done_ok = set(summary.skipped)
    durations: list[float] = []

    def progress(k: int, rid: str, err: str | None, secs: float) -> None:
        durations.append(secs)
        elapsed = time.perf_counter() - t_start
        eta = sum(durations) / len(durations) * (n - k) / max(1, jobs)
        state = "ok" if err is None else "FAILED"
        log(f"[run {k}/{n}] {state} {rid} ({secs:.1f}s) | elapsed {_fmt(elapsed)} | ETA {_fmt(eta)}")
        if err:
            log(f"    {err}")

    def blocked(r: Run) -> str | None:
        bad = [d for d in r.deps if d in summary.failed]
        return f"dependency failed: {', '.join(bad)}" if bad else None

    def finish(k: int, rid: str, err: str | None, secs: float) -> None:
        if err:
            summary.failed[rid] = err
        else:
            summary.finished.append(rid)
            done_ok.add(rid)
        progress(k, rid, err, secs)

    def note_failure(r: Run, why: str) -> None:
        summary.failed[r.id] = why
        record(r, reg, plan, exp_dir, dev, None, why, now(), 0.0, None, compute)

    k = 0
    if executor == "slurm":
        slurm.run_on_slurm(plan, reg, todo, summary, exp_dir, in_flight=in_flight, device=device, data_dir=data_dir,
                           compute=compute, options=slurm_options or slurm.SlurmOptions(), log=log,
                           note_failure=note_failure, progress=progress)
    elif jobs <= 1:
        for r in todo:
            k += 1
            why = blocked(r)
            if why:
                note_failure(r, why)
                progress(k, r.id, why, 0.0)
                continue
            log(f"[run {k}/{n}] start {r.id}")
            finish(k, *execute_one(r, reg, plan, exp_dir, data_dir, str(dev), None, compute))
    else:
        ngpu = torch.cuda.device_count() if dev.type == "cuda" else 0
        threads = max(1, (os.cpu_count() or 1) // jobs)
        pending, running = list(todo), {}
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            while pending or running:
                for r in list(pending):
                    if len(running) >= jobs:
                        break
                    why = blocked(r)
                    if why:
                        pending.remove(r)
                        k += 1
                        note_failure(r, why)
                        progress(k, r.id, why, 0.0)
                    elif all(d in done_ok for d in r.deps):
                        pending.remove(r)
                        name = f"cuda:{len(running) % ngpu}" if ngpu else str(dev)
                        running[pool.submit(execute_one, r, reg, plan, exp_dir, data_dir, name, threads,
                                                 compute)] = r
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    running.pop(fut)
                    k += 1
                    finish(k, *fut.result())
    summary.seconds = time.perf_counter() - t_start
    log(f"done in {_fmt(summary.seconds)}: {len(summary.finished)} trained, {len(summary.skipped)} already "
        f"finished, {len(summary.failed)} failed")
    for rid, err in summary.failed.items():
        log(f"  FAILED {rid}: {err}")
    return summary
