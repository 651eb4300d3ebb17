"""``afbench run EXPERIMENT --executor slurm``: every pending run of a plan as its own Slurm job.

Jobs are submitted through submitit (``pip install 'adapterfusion-bench[slurm]'``); each one calls the
same ``execute.execute_one`` as the local runner, so results land exactly as locally (trained in a
temp folder, swapped in complete; a job the scheduler kills never leaves a finished-looking result).

Stage dependencies are exact Slurm ``afterok`` dependencies with ``--kill-on-invalid-dep=yes``: a
fusion job becomes eligible only once the stage-1 jobs it reads exited 0, and a failed stage-1 job
(its run raised: the job re-raises after recording the failure, so it exits non-zero) makes Slurm
cancel exactly its dependents, which the driver records as "dependency failed: ...".

Submitted job ids are kept in ``results/<experiment>/.slurm/jobs.json`` (written atomically after
every submission), so a rerun adopts jobs still queued or running instead of resubmitting them.
Without accounting storage ``sacct`` answers nothing, so job states come from ``squeue --states=all``
(live jobs, plus ended ones for ``MinJobAge``) and the outcome of an ended job from the result.json
its run wrote (``slurm_job_id`` says which job wrote it): a job gone from the queue without a result
of its own was cancelled, timed out, ran out of memory or lost its node, and is recorded as failed.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.paths import under, write_atomic
from benchmark.records import read_last_failure, read_result
from benchmark.runner.cluster import ClusterSpec
from benchmark.runner.results import now, write_json_atomic

JOBS = "jobs.json"
SLURM_DIR = ".slurm"
# squeue states in which a job waits to start (QUEUED) or may still write its result (ACTIVE)
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
ACTIVE = QUEUED | {"RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def job_info() -> dict:
    """Where this process runs on Slurm (job id, node, GPUs); {} outside a Slurm job.

    An array task's id is written ``<array job>_<task>``, as squeue and submitit name it.
    """
    jid = os.environ.get("SLURM_JOB_ID")
    if not jid:
        return {}
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return {"slurm_job_id": f"{array}_{task}" if array and task else jid,
            "slurm_node": os.environ.get("SLURMD_NODENAME"),
            "slurm_gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


# ---------------------------------------------------------------- queue and job records

@dataclass
class JobState:
    job_id: str
    state: str
    node: str = ""
    elapsed: str = ""
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def squeue() -> dict[str, JobState] | None:
    """This user's jobs Slurm still knows (live, and ended within MinJobAge); None if squeue fails or is missing."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-u", getpass.getuser(),
                              "-o", "%i|%T|%N|%M|%r"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {parts[0]: JobState(*parts) for line in out.stdout.splitlines()
            if len(parts := line.strip().split("|")) == 5}


def jobs_file(exp_dir: Path) -> Path:
    return under(exp_dir, SLURM_DIR, JOBS)


def load_jobs(exp_dir: Path) -> dict[str, dict]:
    """run id -> {job_id, submitted_at, log} of the latest submission of that run."""
    f = jobs_file(exp_dir)
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text()).get("runs", {})
    except (json.JSONDecodeError, AttributeError):
        return {}


def save_jobs(exp_dir: Path, runs: dict[str, dict]) -> None:
    write_json_atomic(jobs_file(exp_dir), {"runs": runs})


def live_runs(exp_dir: Path) -> dict[str, JobState]:
    """Runs of this experiment whose Slurm job is queued or running (no squeue call without jobs.json)."""
    jobs = load_jobs(exp_dir)
    if not jobs or (queue := squeue()) is None:
        return {}
    return {rid: queue[j["job_id"]] for rid, j in jobs.items()
            if j.get("job_id") in queue and queue[j["job_id"]].active}


def busy_error(exp_dir: Path, live: dict[str, JobState]) -> BenchError:
    ids = ", ".join(sorted(s.job_id for s in live.values()))
    return BenchError(
        f"{len(live)} run(s) of experiment '{exp_dir.name}' are still queued or running on Slurm (jobs {ids}); "
        "running them here as well would train them twice",
        file=str(jobs_file(exp_dir)),
        fix=f"watch them with 'afbench status {exp_dir.name}', rerun with --executor slurm to wait for them, "
            f"or scancel {ids.replace(', ', ' ')} first")


# ---------------------------------------------------------------- options

@dataclass
class SlurmOptions:
    """What ``afbench run --executor slurm`` asks for (``cli.py`` builds it from its flags and ``--cluster``)."""

    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    wait: bool = True
    poll_s: float = 10.0
    source: str | None = None  # the --cluster file, named in errors


def resolve_device(device: str | None, exp_device: str, gpus: int | None) -> tuple[str, int]:
    """(device of each job, GPUs per job), decided without looking at the driver's own GPUs.

    The driver usually runs on a login node without a GPU, so ``auto`` means cuda exactly when GPUs
    per run were asked for.
    """
    want = device or exp_device
    if want == "auto":
        want = "cuda" if gpus else "cpu"
    if gpus is None:
        gpus = 1 if want.startswith("cuda") else 0
    if want.startswith("cuda") and gpus == 0:
        raise BenchError(f"device {want} was asked for with 0 GPUs per run", field="--gpus-per-run",
                         fix="give --gpus-per-run 1 (or more), or --device cpu")
    return ("cuda:0" if want.startswith("cuda") else want), gpus


# ---------------------------------------------------------------- submission plan (pure)

@dataclass
class Group:
    """Runs submitted together: one job, or one array when they share their dependencies."""

    runs: list  # list[Run]
    deps: list[str]  # run ids (pending or in flight) that must exit 0 first
    depth: int


def submission_groups(todo: list, in_flight: set[str], array: bool) -> list[Group]:
    """Runs to submit, grouped, in an order where every dependency is submitted before its dependents.

    A dependency that is already finished needs no Slurm dependency; one still queued or running from
    an earlier driver is depended on by its existing job id.
    """
    pending = {r.id for r in todo}
    depth: dict[str, int] = {}
    for r in todo:  # todo lists dependencies before dependents
        if r.id in in_flight:
            depth[r.id] = -1
            continue
        depth[r.id] = 1 + max((depth.get(d, 0) for d in r.deps if d in pending), default=-1)
    groups: dict[tuple, Group] = {}
    for r in todo:
        if r.id in in_flight:
            continue
        deps = sorted(d for d in r.deps if d in pending or d in in_flight)  # a --force rerun in flight too
        key = (depth[r.id], tuple(deps), r.label) if array else (depth[r.id], r.id)
        groups.setdefault(key, Group([], deps, depth[r.id])).runs.append(r)
    return sorted(groups.values(), key=lambda g: g.depth)


def dependency(job_ids: list[str]) -> str | None:
    """The sbatch --dependency value: every listed job must exit 0."""
    return "afterok:" + ":".join(job_ids) if job_ids else None


# ---------------------------------------------------------------- submitit

def _submitit():
    try:
        import submitit
    except ImportError:
        raise BenchError("--executor slurm needs the submitit package, which is not installed",
                         field="--executor",
                         fix="pip install 'adapterfusion-bench[slurm]' (or pip install submitit)") from None
    return submitit


def _require_sbatch() -> None:
    for exe in ("sbatch", "squeue"):
        if shutil.which(exe) is None:
            raise BenchError(f"'{exe}' is not on PATH, so no Slurm job can be submitted or watched from here",
                             field="--executor",
                             fix="run afbench on a Slurm login node (or load the slurm module), "
                                 "or use --executor local")


def sbatch_parameters(spec: ClusterSpec, gpus: int, job_name: str) -> dict:
    """submitit SlurmExecutor parameters of one job (dependency added per group)."""
    params: dict = {"job_name": job_name, "time": spec.time_min, "cpus_per_task": spec.cpus_per_run,
                    "ntasks_per_node": 1, "nodes": 1, "signal_delay_s": 60,
                    "additional_parameters": {"kill-on-invalid-dep": "yes", **spec.sbatch}}
    optional = {"partition": spec.partition, "gpus_per_node": gpus,
                "mem": f"{int(spec.mem_gb * 1024)}MB" if spec.mem_gb else None, "setup": list(spec.setup),
                "array_parallelism": spec.array_parallelism}
    return params | {k: v for k, v in optional.items() if v}  # unset: the cluster's default


def _minutes(limit: str) -> float | None:
    """A Slurm time limit (``infinite``, ``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS``, ``MM``) in minutes."""
    limit = limit.strip()
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [float(x) for x in rest.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m, sec = parts + [0.0] * (3 - len(parts))
    else:  # MM, MM:SS, HH:MM:SS
        h, m, sec = [0.0] * (3 - len(parts)) + parts if len(parts) > 1 else (0.0, parts[0], 0.0)
    return (float(days) if days else 0.0) * 1440 + h * 60 + m + sec / 60


def check_time_limit(spec: ClusterSpec, where: str | None) -> None:
    """A time limit above the partition's leaves jobs pending forever (PartitionTimeLimit): refuse it."""
    args = ["sinfo", "-h", "-o", "%l"] + (["-p", spec.partition] if spec.partition else [])
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return
    try:
        limits = [_minutes(x) for x in out.stdout.split()] if out.returncode == 0 else []
    except ValueError:
        return
    if limits and all(m is not None for m in limits) and spec.time_min > max(limits):
        raise BenchError(
            f"a time limit of {spec.time_min} min per run exceeds the partition's limit of {max(limits):.0f} min, "
            "so the jobs would wait forever (PartitionTimeLimit)", file=where, field="time_min",
            fix="lower --time-min (time_min), or choose a partition with a longer limit (sinfo -o '%P %l')")


def validate_submission(params: dict, folder: Path, where: str | None) -> None:
    """``sbatch --test-only`` of the exact script submitit will submit: nothing is queued."""
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit itself submits

    try:
        script = _make_sbatch_string(command="true", folder=str(folder), **params)
    except (ValueError, TypeError) as e:
        raise BenchError(f"the Slurm parameters are not valid: {e}", file=where,
                         fix="check partition, time, GPUs, CPUs, memory and the sbatch options") from None
    folder.mkdir(parents=True, exist_ok=True)
    test = folder / f".test-only-{os.getpid()}.sh"
    write_atomic(test, script)
    try:
        out = subprocess.run(["sbatch", "--test-only", str(test)], capture_output=True, text=True, timeout=120)
    finally:
        test.unlink(missing_ok=True)
    if out.returncode == 0:
        return
    msg = " ".join(line.strip() for line in out.stderr.splitlines() if line.strip()) or f"exit {out.returncode}"
    msg = msg.replace("sbatch: error: ", "")
    if "partition" in msg.lower():
        parts = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()
        fix = f"use one of the partitions {', '.join(sorted(set(parts))) or '(sinfo lists none)'}"
        field_ = "partition"
    elif "gres" in msg.lower():
        fix, field_ = ("the partition offers no such GPUs (GRES): choose a GPU partition with --partition, or run on "
                       "CPUs with --device cpu"), "gpus_per_run"
    elif "unrecognized option" in msg or "invalid option" in msg:
        fix, field_ = "correct or remove that option (--sbatch KEY=VALUE, or 'sbatch:' in the cluster file)", "sbatch"
    else:
        fix = ("ask for what the partition offers (sinfo -o '%P %c %m %G %l' lists CPUs, memory, GPUs, time limit "
               "per partition)")
        field_ = None
    raise BenchError(f"Slurm rejects the jobs before any is submitted: {msg}", file=where, field=field_, fix=fix)


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- the driver

def run_on_slurm(plan, reg, todo: list, summary, exp_dir: Path, *, in_flight: dict[str, JobState],
                 device: str | None, data_dir, options: SlurmOptions, log: Callable[[str], None],
                 note_failure: Callable, progress: Callable, job: Callable) -> None:
    """Submit ``todo`` (dependencies first), then with ``options.wait`` follow the jobs to the end.

    ``job(run, reg, plan, exp_dir, data_dir, device_name, threads)`` is what each Slurm job runs (the
    runner's ``execute.slurm_job``, a module-level function submitit pickles by name): passed in, so this
    module never imports ``execute`` (which imports it).

    ``note_failure(run, why)`` and ``progress(run id, error, seconds)`` are the local runner's, so
    failures are recorded and progress printed the same way; ``summary`` is filled in place.
    """
    spec = options.cluster
    where = options.source
    if not todo:
        return
    submitit = _submitit()
    _require_sbatch()
    device_name, gpus = resolve_device(device, plan.experiment.device, spec.gpus_per_run)
    folder = Path(spec.log_dir) if spec.log_dir else under(exp_dir, SLURM_DIR)
    base = sbatch_parameters(spec, gpus, f"afbench-{plan.experiment.name}")
    groups = submission_groups(todo, set(in_flight), array=spec.array_parallelism is not None)
    if groups:
        check_time_limit(spec, where)
        validate_submission(base, folder, where)
    jobs = load_jobs(exp_dir)
    job_of = {rid: st.job_id for rid, st in in_flight.items()}
    for rid, st in in_flight.items():
        log(f"  {rid} is already {'queued' if st.state in QUEUED else 'running'} as Slurm job {st.job_id}; "
            "not resubmitted")
    ex = submitit.SlurmExecutor(folder=str(folder))
    submitted = 0
    for g in groups:
        params = {**base, "job_name": f"afbench-{plan.experiment.name}-{g.runs[0].label}"}
        dep = dependency([job_of[d] for d in g.deps])
        if dep:
            params["additional_parameters"] = {**params["additional_parameters"], "dependency": dep}
        ex.update_parameters(**params)
        try:  # several runs: one job array
            with ex.batch() if len(g.runs) > 1 else contextlib.nullcontext():
                handles = [ex.submit(job, r, reg, plan, exp_dir, data_dir, device_name, spec.cpus_per_run)
                           for r in g.runs]
        except Exception as e:  # noqa: BLE001 - sbatch failing mid-way: say what is already queued
            save_jobs(exp_dir, jobs)
            raise BenchError(
                f"sbatch failed after {submitted} job(s) were submitted ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''})",
                file=str(jobs_file(exp_dir)),
                fix="the submitted jobs are recorded and will not be resubmitted; fix the cause and rerun "
                    "the same command") from None
        for r, h in zip(g.runs, handles):
            job_of[r.id] = h.job_id
            jobs[r.id] = {"job_id": h.job_id, "submitted_at": now(), "log": _rel(Path(h.paths.stdout), exp_dir)}
            submitted += 1
            log(f"  submitted {r.id} ({r.label} {r.task or '+'.join(r.tasks)}) as Slurm job {h.job_id}"
                + (f" after {dep}" if dep else ""))
        save_jobs(exp_dir, jobs)  # after every group: a driver killed now loses no job id
    log(f"{submitted} job(s) submitted, {len(in_flight)} already in the queue; device {device_name}, "
        f"{gpus} GPU(s), {spec.cpus_per_run} CPU(s), {spec.time_min} min per run"
        + (f", partition {spec.partition}" if spec.partition else ""))
    if not options.wait:
        summary.submitted = len([r for r in todo if r.id not in summary.failed])
        log(f"not waiting (--no-wait); watch with: afbench status {plan.experiment.name}")
        return
    try:
        _follow(todo, summary, exp_dir, job_of, jobs, options.poll_s, log, note_failure, progress)
    except KeyboardInterrupt:
        log(f"stopped waiting: the Slurm jobs keep running; watch them with afbench status {plan.experiment.name}, "
            "and rerun the same command to wait again (nothing is submitted twice)")
        raise


def _follow(todo, summary, exp_dir, job_of, jobs, poll_s, log, note_failure, progress) -> None:
    """Poll squeue until every job ended; record each outcome as the local runner would."""
    left = {r.id: r for r in todo}
    started: set[str] = set()
    failures_in_a_row = 0
    while left:
        queue = squeue()
        if queue is None:
            failures_in_a_row += 1
            if failures_in_a_row % 6 == 1:
                log("  squeue does not answer; still waiting (Ctrl-C leaves the jobs running)")
            time.sleep(poll_s)
            continue
        failures_in_a_row = 0
        for rid, r in list(left.items()):
            jid = job_of[rid]
            st = queue.get(jid)
            if st is not None and st.active:
                if st.state == "RUNNING" and rid not in started:
                    started.add(rid)
                    log(f"  start {rid} (job {jid} on {st.node})")
                continue
            if any(d in left for d in r.deps):
                continue  # Slurm may cancel a dependent before its failed dependency leaves the queue
            res = read_result(exp_dir / rid)
            own = res is not None and res.slurm_job_id == jid
            if not own:  # a failed rerun of a finished run writes last_failure.json beside the kept result
                failure = read_last_failure(exp_dir / rid)
                if failure is not None and failure.slurm_job_id == jid:
                    res, own = failure, True
            del left[rid]
            if own and res.finished:
                summary.finished.append(rid)
                progress(rid, None, float(res.wall_seconds or 0.0))
                continue
            if own:
                err = res.error or "failed"
            else:
                bad = [d for d in r.deps if d in summary.failed]
                state = st.state if st else "gone from the queue"
                err = (f"dependency failed: {', '.join(bad)}" if bad else
                       f"Slurm job {jid} ended ({state}) without a result: cancelled, timed out, out of memory "
                       f"or node failure; see {jobs.get(rid, {}).get('log', 'its log')}")
                note_failure(r, err)
            summary.failed[rid] = err
            progress(rid, err, float(res.wall_seconds or 0.0) if own else 0.0)
        if left:
            time.sleep(poll_s)
