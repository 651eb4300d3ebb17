"""Execute a plan: skip finished runs, respect dependencies, record failures, report progress.

Each run trains into a private temp folder; only a complete run (weights, modules.json and a
``result.json`` with status "finished") is moved into ``results/<experiment>/<run id>/``. A failed run
is recorded with its error (without replacing an earlier finished result), and the grid goes on with
every run that does not depend on it.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from pathlib import Path

import torch

from benchmark.errors import BenchError, StorageError
from benchmark.hashing import file_sha256
from benchmark.modeling.checkpoint import WEIGHTS, verify_weights
from benchmark.modeling.compute import Compute
from benchmark.paths import pid_alive, remove, swap_in, under
from benchmark.plan.identity import ID_SCHEME
from benchmark.plan.order import start_order
from benchmark.plan.run import Plan, Run
from benchmark.records import (
    LAST_FAILURE,
    PLAN,
    RESULT,
    SCHEMA,
    RunRecord,
    is_finished,
    read_result,
    read_result_file,
    write_plan,
    write_run,
)
from benchmark.runner import slurm
from benchmark.runner.borrowed import borrowed
from benchmark.runner.lock import LOCK, LockHeld, describe, holder_alive, read_lock
from benchmark.runner.progress import REDRAW_SECONDS, Display, Progress, guard_streams, reporter
from benchmark.runner.progress import fmt as _fmt
from benchmark.runner.provenance import PeakMemory, cpu_model, environment
from benchmark.runner.results import git_revision, now, versions
from benchmark.runner.tracking import tracked
from benchmark.spec.registry import Registry
from benchmark.training import loop
from benchmark.training.recipe import RunContext, execute

STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # writes cannot succeed: stop the grid


def pick_device(requested: str | None, exp_device: str = "auto") -> torch.device:
    want = requested or exp_device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"the device '{want}' was requested but torch sees no GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})",
                         field="--device (or the experiment's device:)",
                         fix="use --device cpu, or install a CUDA build of torch (AFBENCH_TORCH, see README)")
    return torch.device(want)


@dataclass
class Summary:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished before this invocation
    failed: dict[str, str] = field(default_factory=dict)  # run id -> error
    seconds: float = 0.0
    submitted: int = 0  # Slurm --no-wait: runs left queued, neither trained nor failed yet


def _recover(exp_dir: Path, run_id: str) -> None:
    """Undo a swap that a crash interrupted, and clear temp folders of dead attempts."""
    final, trash = under(exp_dir, run_id), under(exp_dir, f".trash-{run_id}")
    if trash.exists() and not (final.exists() or final.is_symlink()):
        swap_in(trash, final)
    else:
        remove(trash)
    for stale in exp_dir.glob(f".tmp-{run_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def record(run: Run, reg: Registry, plan: Plan, exp_dir: Path, device: torch.device | None, measured: dict | None,
           error: str | None, started: str, seconds: float, work: Path | None) -> None:
    """Write the run's result (``device`` None: it never ran, e.g. its dependency failed, so no device,
    threads or compute switches are recorded)."""
    final = under(exp_dir, run.id)
    if read_result_file(final).state == "newer":  # a newer afbench's record is never written over
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        return
    # what this id measured before: here, or under the experiment it was read from (a borrowed dependency
    # whose weights were unusable is retrained here, and its lender's result is the one it reruns)
    lender = None if error else borrowed(plan, exp_dir.parent, ids=[run.id]).get(run.id)
    previous = None if error else read_result(final) or (read_result(lender) if lender else None)
    result = {
        "schema": SCHEMA,
        "id_scheme": ID_SCHEME,
        "status": "finished" if error is None else "failed",
        "run_id": run.id,
        "experiment": run.experiment,
        "task": run.task,
        "tasks": run.all_tasks,
        "method": run.method.name,
        "method_kind": run.kind.name,
        "label": run.label,
        "role": "stage1" if run.implied else "grid",  # stage1: only a dependency of fusion runs
        "reduction_factor": run.reduction_factor,
        "backbone": run.backbone,
        "paper_backbone": reg.backbones[run.backbone].paper_backbone,
        "seed": run.seed,
        "sources": run.sources,
        "deps": run.deps,
        "config": run.config(reg, plan.experiment),
        "batching": run.batching,
        "selection": run.selection.protocol,
        "metric": "accuracy (%) on the dev split",
        **(measured or {}),
        "error": error,
        "wall_seconds": seconds,
        "device": None if device is None else str(device) if device.type == "cpu"
        else f"{device} ({torch.cuda.get_device_name(device)})",
        "torch_threads": None if device is None else torch.get_num_threads(),
        # cpu_kernels, last_layer, precision, matmul_dtype: benchmark/modeling/compute.py
        **({} if device is None else Compute.of(run.compute).record(device)),
        **slurm.job_info(),  # slurm_job_id, slurm_node, slurm_gpus when run as a Slurm job
        "cpu_model": None if device is None else cpu_model(),
        "host": socket.gethostname(),
        "started_at": started,
        "finished_at": now(),
        "versions": versions(),
        "environment": environment(),
        "git": git_revision(),
    }
    if previous is not None and previous.finished:
        result["previous_result"] = previous_summary(previous)
    if error is None:
        if (work / WEIGHTS).exists():
            result["weights_sha256"] = file_sha256(work / WEIGHTS)
        write_run(work / RESULT, RunRecord.model_validate(result))
        trash = under(exp_dir, f".trash-{run.id}")
        remove(trash)  # left by an earlier swap that could not clear it
        swap_in(work, final, trash)
        remove(trash)
        return
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    if final.is_symlink():  # never written through: a link to a finished result is kept as it is (the failure
        if is_finished(final):  # is in this command's summary), any other link is replaced by a folder of its own
            return
        final.unlink()
    # never replace a finished result with a failed rerun: its failure goes beside it
    write_run(final / (LAST_FAILURE if is_finished(final) else RESULT), RunRecord.model_validate(result), root=exp_dir)


PREVIOUS_KEYS = ("best_metric", "best_epoch", "selection_metric", "wall_seconds", "finished_at", "git", "versions",
                 "cpu_model", "torch_threads", "host",
                 "weights_sha256", "per_task")


def previous_summary(previous: RunRecord) -> dict:
    """What a rerun of the same id keeps of the finished result it replaces (a retrain for missing weights,
    or ``--force``): enough to say how far the numbers moved (a reproducibility check of its own)."""
    stored = previous.dump()
    out = {k: stored[k] for k in PREVIOUS_KEYS if k in stored}
    out["history"] = [{k: getattr(h, k) for k in ("epoch", "train_loss", "dev_accuracy", "heldout_accuracy")}
                      for h in previous.history]
    return out


@tracked  # afbench run --track / an experiment's tracking: block (tracking.py); as it is without
def execute_one(run: Run, reg: Registry, plan: Plan, exp_dir: Path, data_dir: Path | None, device_name: str,
                threads: int | None = None) -> tuple[str, str | None, float]:
    """Train one run and record it. Returns (run id, error or None, seconds)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    _recover(exp_dir, run.id)
    work = under(exp_dir, f".tmp-{run.id}-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    started, t0 = now(), time.perf_counter()
    # stage-1 / MT-A runs read from another experiment (dependencies_from): the folder pending_runs vetted
    where = borrowed(plan, exp_dir.parent, usable=_usable, ids=run.deps)
    ctx = RunContext(reg, plan.experiment, data_dir, device, lambda rid: where.get(rid, exp_dir / rid))
    peak = PeakMemory(device)
    try:
        with peak:
            measured, error = execute(run, ctx, work), None
        measured = {**measured, "memory": peak.record()}
    except KeyboardInterrupt:
        shutil.rmtree(work, ignore_errors=True)
        raise
    except Exception as e:  # noqa: BLE001 - every failure is recorded, the grid goes on
        if isinstance(e, StorageError) or (isinstance(e, OSError) and e.errno in STORAGE_ERRNOS):
            # the disk is full or read-only: the grid stops (run_plan); record this run as failed if we can
            shutil.rmtree(work, ignore_errors=True)
            err = e if isinstance(e, StorageError) else StorageError.from_os_error(e.filename or work, e)
            with contextlib.suppress(BenchError, OSError):
                record(run, reg, plan, exp_dir, device, None, err.render(), started, time.perf_counter() - t0, None)
            raise err from None
        msg = e.render() if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        tail = "".join(traceback.format_exception(e)[-3:])
        measured, error = {"traceback_tail": tail}, msg
        if isinstance(e, loop.Diverged):  # not retrained unless --force: the same settings diverge again
            measured["diverged"] = True
    seconds = time.perf_counter() - t0
    record(run, reg, plan, exp_dir, device, measured, error, started, seconds, work)
    return run.id, error, seconds


# ------------------------------------------------------------------------------------ scheduling
def die_with_driver(driver_pid: int) -> None:
    """Pool initializer (``--jobs N``): this worker must not outlive the driver that started it (kill -9,
    or SIGTERM from a scheduler). On Linux the kernel sends it SIGKILL when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``); everywhere a watchdog thread checks once a second that the parent is
    still the driver and the driver still runs, else kills this process. The lock also lists the
    workers (``lock.record_workers``), so a rerun waits for any that is somehow still alive."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if parent == 1 or not _driver_alive(driver_pid, parent):  # it died before the prctl took effect
        os._exit(1)

    def watch() -> None:
        while _driver_alive(driver_pid, parent):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="afbench-driver-watchdog", daemon=True).start()


def _driver_alive(driver_pid: int, parent: int) -> bool:
    return os.getppid() == parent and pid_alive(driver_pid)  # reparented: the process that started us is gone


def free_gpu(busy: list[int], ngpu: int) -> int:
    """The GPU with the fewest running jobs, lowest index first: never a shared GPU while another is free."""
    counts = [busy.count(i) for i in range(ngpu)]
    return counts.index(min(counts))


def pending_runs(plan: Plan, exp_dir: Path, force: bool | set[str], log, only: set[str] | None = None
                 ) -> tuple[list[Run], list[str]]:
    """(runs to train, ids already finished), among ``only`` if given. A finished dependency whose weights
    are missing, partial or changed is retrained only if a pending run needs them (results are committed
    to git without most weights). An implied run with no result here that is finished under an experiment
    of ``dependencies_from`` counts as finished (``borrowed.py``; ``--force`` retrains this experiment's
    runs, not the lenders'), and when a pending run needs it, its weights there are checked the same way:
    if no lender's are usable it is trained here."""
    todo, done = [], []
    elsewhere = borrowed(plan, exp_dir.parent)
    for r in plan.runs:
        if only is not None and r.id not in only:
            continue
        forced = r.id in force if isinstance(force, set) else force  # a set: the runs --only names, not their deps
        if r.id in elsewhere or (not forced and is_finished(exp_dir / r.id)):
            done.append(r.id)
        elif (newer := read_result_file(exp_dir / r.id)).state == "newer":  # never retrained over, even with --force
            log(f"  {r.id}: {newer.reason}; not retrained")
        elif not forced and (prev := read_result(exp_dir / r.id)) is not None and prev.diverged:
            log(f"  {r.id} diverged before ({prev.error}); not retrained: "
                "change its settings, or pass --force to retry")
        else:
            todo.append(r)
    needed = {d for r in todo for d in r.deps}
    by_id = plan.by_id()
    vetted = borrowed(plan, exp_dir.parent, usable=_usable, ids=needed & elsewhere.keys()) if elsewhere else {}
    for rid in [rid for rid in done if rid in needed and rid not in vetted]:  # vetted: a lender's weights are usable
        folder = elsewhere.get(rid, exp_dir / rid)
        why = weights_problem(folder)
        if why:
            done.remove(rid)
            todo.insert(0, by_id[rid])
            there = f" (in {folder.parent.name})" if rid in elsewhere else ""
            log(f"  {rid}{there} is finished but {why}; a pending run needs its weights, so it is retrained here")
    if (lent := sorted({elsewhere[rid].parent.name for rid in done if rid in elsewhere})):
        log(f"  {sum(rid in elsewhere for rid in done)} implied run(s) read in place from the results of "
            f"{', '.join(lent)} (dependencies_from)")
    return todo, done


def _usable(folder: Path) -> bool:
    return weights_problem(folder) is None


def weights_problem(folder: Path) -> str | None:
    """Why a finished run's weights cannot be used (missing, partial, unreadable, changed), or None.
    Weights committed to git are trusted after the same check: their tensors fit the declared modules
    and their content hash is the one the run recorded."""
    why = verify_weights(folder)
    if why:
        return f"its weights are {why}"
    recorded = (rec := read_result(folder)) and rec.weights_sha256
    if recorded and file_sha256(folder / WEIGHTS) != recorded:
        return "its weights changed since the run wrote them (sha256 differs from result.json)"
    return None


def slurm_job(run: Run, reg: Registry, plan: Plan, exp_dir: Path, data_dir, device_name: str, threads: int):
    """Body of one Slurm job (``slurm.run_on_slurm`` submits it): train and record the run as the local
    runner does; fail the job if the run failed, so its ``afterok`` dependents are cancelled."""
    rid, err, secs = execute_one(run, reg, plan, exp_dir, data_dir, device_name, threads)
    if err is not None:
        raise RuntimeError(f"run {rid} failed (recorded in its result.json): {err.splitlines()[0]}")
    return rid, err, secs


def predicted_seconds(plan: Plan, reg: Registry, data_dir, todo: list[Run], dev: torch.device, jobs: int,
                      log, results_dir: Path | None = None) -> dict[str, float]:
    """The cost model's seconds per pending run on this CPU (an ETA from the first finished run was 5x off);
    {} on a GPU or when the model cannot price the runs (the ETA then falls back to finished runs)."""
    if dev.type != "cpu" or not todo:
        return {}
    try:
        from benchmark.modeling.backbone import READER
        from benchmark.plan import cost

        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else torch.get_num_threads()
        est = cost.estimate(plan, reg, data_dir, READER, device="cpu", devices=jobs, threads=threads, runs=todo,
                            cpu=cpu_model(), results_root=results_dir)
    except Exception as e:  # noqa: BLE001 - the ETA is a convenience; it never stops a grid
        log(f"  (no cost-model ETA: {type(e).__name__}: {e})")
        return {}
    log(f"  cost model ({est.calibration}): {est.total_hours:.2f} run-hours, about {_fmt(est.wall_seconds)} "
        f"with {jobs} job(s)")
    return {c.id: c.seconds for c in est.runs}


def run_plan(plan: Plan, reg: Registry, *, results_dir: Path, data_dir: Path | None, device: str | None = None,
             jobs: int = 1, force: bool | set[str] = False, only: set[str] | None = None, log=print,
             executor: str = "local", slurm_options=None, on_workers=None) -> Summary:
    """Train what is not finished (``only``: a subset of run ids, ``plan.build.select``), locally or as
    Slurm jobs (``executor``, ``slurm.py``)."""
    exp_dir = under(results_dir, plan.experiment.name)  # PathOutsideRoot for a name that leaves the root
    exp_dir.mkdir(parents=True, exist_ok=True)
    # on Slurm each job picks its device (the driver's login node may have no GPU)
    dev = pick_device(device, plan.experiment.device) if executor == "local" else torch.device("cpu")
    summary, t_start = Summary(), time.perf_counter()
    in_flight = slurm.live_runs(exp_dir)  # queued/running Slurm jobs of earlier drivers: their temp folders are live
    if in_flight and executor == "local":
        raise slurm.busy_error(exp_dir, in_flight)
    # a lender being run now may swap the folders read here; a --force of this lender would swap the folders
    # its borrowers read while they run
    name, lenders = plan.experiment.name, plan.experiment.dependencies_from
    borrowers = sorted(n for n, e in reg.experiments.items() if name in e.dependencies_from) if force else []
    for other in [*lenders, *borrowers]:
        holder = read_lock(results_dir / other)
        if holder is not None and holder_alive(holder, results_dir / other / LOCK) is not False:
            why = f"whose finished stage-1 runs '{name}' reads (dependencies_from)" if other in lenders else \
                f"which reads the finished stage-1 runs of '{name}' (dependencies_from) that --force retrains"
            raise LockHeld(f"experiment '{other}', {why}, is being run now by {describe(holder)}",
                           fix=f"wait until that run ends (afbench status {other}), then run this one again")
    for rid in [r.id for r in plan.runs if r.id not in in_flight]:
        _recover(exp_dir, rid)
    write_plan(exp_dir / PLAN, plan.record(), root=results_dir)
    todo, summary.skipped = pending_runs(plan, exp_dir, force, log, only)
    seen = {r.id for r in todo} | set(summary.skipped)
    for r in plan.runs:  # diverged before and not retried: its dependents are blocked, as on the first run
        if r.id not in seen and (only is None or r.id in only):
            newer = read_result_file(exp_dir / r.id)
            summary.failed[r.id] = newer.reason if newer.state == "newer" else \
                "diverged (recorded before; --force retrains it)"
    if executor == "local":  # bf16 on a device without it: one paragraph before anything trains
        for r in todo:
            Compute.of(r.compute).check(dev)
    chosen = f" ({len(only)} selected with --only)" if only is not None else ""
    log(f"{plan.experiment.name}: {len(plan.runs)} runs{chosen}, {len(summary.skipped)} already finished, {len(todo)} "
        + (f"to run on {dev}" if executor == "local" else "to run on Slurm") + (f" with {jobs} jobs" if jobs > 1 else ""))
    for what, why in plan.skipped:
        log(f"  skipped {what}: {why}")
    try:
        if executor == "slurm":
            def note_failure(r: Run, why: str) -> None:  # a job that never ran its training
                summary.failed[r.id] = why
                record(r, reg, plan, exp_dir, None, None, why, now(), 0.0, None)

            for r in list(todo):  # dependents of a run that diverged before (the local loop does this itself)
                bad = [d for d in r.deps if d in summary.failed]
                if bad:
                    todo.remove(r)
                    note_failure(r, f"dependency failed: {', '.join(bad)}")
            slurm.run_on_slurm(plan, reg, todo, summary, exp_dir, in_flight=in_flight, device=device,
                               data_dir=data_dir, options=slurm_options or slurm.SlurmOptions(), log=log,
                               note_failure=note_failure, progress=Progress(todo, 1, log), job=slurm_job)
        else:
            predicted = predicted_seconds(plan, reg, data_dir, todo, dev, jobs, log, results_dir)
            _schedule(todo, summary, plan, reg, exp_dir, data_dir, dev, jobs, log, on_workers, predicted)
    except OSError as e:  # a write outside the guarded writers (e.g. a rename): the same one paragraph
        if e.errno not in STORAGE_ERRNOS:
            raise
        raise StorageError.from_os_error(e.filename or exp_dir, e) from None
    summary.seconds = time.perf_counter() - t_start
    if summary.submitted:  # Slurm --no-wait: nothing trained yet, the jobs run on
        log(f"submitted in {_fmt(summary.seconds)}: {summary.submitted} run(s) queued on Slurm (not waited for), "
            f"{len(summary.skipped)} already finished, {len(summary.failed)} failed before submission")
    else:
        log(f"done in {_fmt(summary.seconds)}: {len(summary.finished)} trained, {len(summary.skipped)} already "
            f"finished, {len(summary.failed)} failed")
    for rid, err in summary.failed.items():
        log(f"  FAILED {rid}: {err}")
    return summary


def _schedule(todo: list[Run], summary: Summary, plan: Plan, reg: Registry, exp_dir: Path, data_dir,
              dev: torch.device, jobs: int, log, on_workers=None, predicted: dict[str, float] | None = None) -> None:
    """Start every run whose dependencies finished (at most ``jobs`` at once); a run whose dependency
    failed is recorded as failed without training; on CUDA each job gets the least-busy GPU. With ``--jobs 1``
    a run trains in this process, with ``--jobs N`` each in a worker process of its own (``_Worker``), which
    dies with this process (``die_with_driver``); ``on_workers(pids)`` hears of each (the lock records them).
    A worker lost to a signal (the kernel's out-of-memory killer, ``kill -9``) fails its run alone: the grid
    goes on. The runs' progress comes here and this process alone prints it (``progress.py``).
    ``predicted``: the cost model's seconds per run, for the ETA."""
    display = Display(log)
    progress, done_ok = Progress(todo, jobs, display.log, predicted), set(summary.skipped)
    display.eta = progress.eta
    ngpu = torch.cuda.device_count() if dev.type == "cuda" and jobs > 1 else 0
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    pending, running = start_order(todo), {}

    def note(rid: str, message: tuple) -> None:  # what a run reports while it trains
        kind, body = message
        if kind == "step":
            progress.step(rid, body)
            display.step(rid, progress.tag(rid), body)
        else:
            display.log(body)

    def finish(rid: str, err: str | None, secs: float) -> None:
        display.end(rid)
        if err:
            summary.failed[rid] = err
        else:
            summary.finished.append(rid)
            done_ok.add(rid)
        progress(rid, err, secs)

    try:
        while pending or running:
            started = False  # with one job a run trains (and ends) right here, so look again
            for r in list(pending):
                if len(running) >= max(1, jobs):
                    break
                bad = [d for d in r.deps if d in summary.failed]
                if bad:
                    pending.remove(r)
                    why = f"dependency failed: {', '.join(bad)}"
                    summary.failed[r.id] = why
                    record(r, reg, plan, exp_dir, None, None, why, now(), 0.0, None)
                    progress(r.id, why, 0.0)
                elif all(d in done_ok for d in r.deps):
                    pending.remove(r)
                    gpu = free_gpu([w.gpu for w in running.values()], ngpu) if ngpu else None
                    name = f"cuda:{gpu}" if gpu is not None else str(dev)
                    progress.start(r.id, f" on {name}" if ngpu else "")
                    started = True
                    args = (r, reg, plan, exp_dir, data_dir, name, threads)
                    if jobs <= 1:
                        previous, loop.REPORTER = loop.REPORTER, reporter(lambda m, rid=r.id: note(rid, m))
                        try:
                            finish(*execute_one(*args))
                        finally:
                            loop.REPORTER = previous
                        continue
                    running[r.id] = _Worker(r, gpu, args)
                    if on_workers is not None:
                        on_workers([w.proc.pid for w in running.values()])
            if not running and not started:
                for r in pending:  # dependencies neither finished nor pending: nothing can start them
                    display.log(f"  not started {r.id}: its dependencies did not run")
                break
            if not running:
                continue
            wait_any([w.conn for w in running.values()] + [w.proc.sentinel for w in running.values()],
                     timeout=REDRAW_SECONDS)
            for rid, w in list(running.items()):
                outcome = w.poll(lambda m, rid=rid: note(rid, m))
                if outcome is not None:
                    del running[rid]
                    if on_workers is not None:  # the lock names the running workers only (a finished pid may recur)
                        on_workers([w.proc.pid for w in running.values()])
                    if outcome == "lost":
                        outcome = w.lost(reg, plan, exp_dir)
                    finish(*outcome)
    finally:
        for w in running.values():  # an error or Ctrl-C in the driver: its runs stop with it
            w.proc.kill()
            w.proc.join()
            _recover(exp_dir, w.run.id)


def _work(conn, driver_pid: int, args: tuple) -> None:
    """A worker process (``--jobs N``): train one run (``execute_one``), its progress and its outcome sent to
    the driver through ``conn``; an exception the grid must see (a full disk) is sent too, and raised there."""
    die_with_driver(driver_pid)
    loop.REPORTER = reporter(conn.send)
    try:
        with guard_streams():
            conn.send(("done", execute_one(*args)))
    except BaseException as e:  # noqa: BLE001 - handed to the driver, which decides
        with contextlib.suppress(Exception):
            conn.send(("raise", e))


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed since boot (``/proc/vmstat``), if it
    says: a worker killed by SIGKILL while this count rose most likely ran out of memory."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return None


class _Worker:
    """One run in a worker process of its own: the driver reads its messages (``poll``) and, if the process
    ends without an outcome (killed by a signal), records the run failed with the signal (``lost``)."""

    def __init__(self, run: Run, gpu: int | None, args: tuple):
        ctx = multiprocessing.get_context()
        self.run, self.gpu, self.outcome, self.raised = run, gpu, None, None
        self.conn, theirs = ctx.Pipe(duplex=False)
        self.oom, self.started, self.t0 = oom_kills(), now(), time.perf_counter()
        self.proc = ctx.Process(target=_work, args=(theirs, os.getpid(), args), name=f"afbench-{run.id}")
        self.proc.start()
        theirs.close()  # the worker holds the only writing end: its death ends the pipe

    def poll(self, note):
        """The outcome (run id, error, seconds), "lost" if the process died without one, or None while it runs."""
        while self.outcome is None and self.raised is None and self.conn.poll():
            try:
                kind, body = self.conn.recv()
            except Exception:  # noqa: BLE001 - EOF, or a message cut by the worker's death
                break
            if kind == "done":
                self.outcome = body
            elif kind == "raise":
                self.raised = body
            else:
                note((kind, body))
        if self.outcome is None and self.raised is None and self.proc.is_alive():
            return None
        self.proc.join()
        self.conn.close()
        if self.raised is not None:
            raise self.raised
        return self.outcome or "lost"

    def lost(self, reg: Registry, plan: Plan, exp_dir: Path) -> tuple[str, str, float]:
        """Record the run of a worker that died without an outcome as failed; a rerun retrains it."""
        code, secs = self.proc.exitcode, time.perf_counter() - self.t0
        extra: dict = {}
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            oom = sig == "SIGKILL" and None not in (self.oom, after := oom_kills()) and after > self.oom
            why = (f"the worker process training this run was killed by {sig}"
                   + ("; out of memory (the kernel's out-of-memory killer killed a process meanwhile, "
                      "/proc/vmstat oom_kill): run fewer --jobs, or lower batch_size or max_length" if oom else "")
                   + "; the rest of the grid went on, and a rerun retrains it")
            extra = {"worker_signal": sig, "out_of_memory": oom}
        else:
            why = f"the worker process training this run exited with code {code} before recording it"
        _recover(exp_dir, self.run.id)  # its temp folder, or a swap it left half done
        record(self.run, reg, plan, exp_dir, None, extra, why, self.started, secs, None)
        return self.run.id, why, secs
