"""The Slurm executor without a cluster: submission plan, afterok mapping, adoption of queued jobs, the
status table, the cluster file, bad input; the experiment lock with real competing processes.

A fake submitit executor runs each submitted job in-process (with the SLURM_* variables a real job
has), and a fake squeue reports the states a real one would, so the driver's whole path is exercised.
The same paths against a live cluster are in test_slurm_cluster.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmark.cli import main, slurm_options
from benchmark.errors import SpecError
from benchmark.plan.build import build_plan
from benchmark.runner import slurm
from benchmark.runner.cluster import ClusterSpec, load_cluster, parse_sbatch_options
from benchmark.runner.lock import LockHeld, experiment_lock, read_lock
from benchmark.runner.slurm import JobState, dependency, submission_groups
from benchmark.runner.status import experiment_status, print_status
from conftest import MIRROR, ROOT, needs_mirror, tiny_experiment, write_experiments


@pytest.fixture
def smoke_plan(registry):
    return build_plan(registry, registry.experiments["smoke"], lambda task: None)


def by_kind(plan):
    out: dict[tuple, list] = {}
    for r in plan.runs:
        out.setdefault((r.method.method, r.backbone), []).append(r)
    return out


# ---------------------------------------------------------------- submission plan


def test_the_shared_tiny_experiment_is_what_the_runner_and_slurm_tests_train(tmp_path):
    """conftest.tiny_experiment is the one tiny grid of test_runner, test_slurm and test_slurm_cluster."""
    from benchmark.spec import load_registry

    specs = write_experiments(tmp_path / "specs", tiny=tiny_experiment(), cb_only=tiny_experiment(
        tasks=("cb",), methods=("fusion_st_a",)), flat=tiny_experiment(methods=("head", "st_a"), fusion=False),
        diverging=tiny_experiment(rows=32, eval_rows=16, epochs=2, diverge=True))
    reg = load_registry([specs])
    runs = {n: sorted((r.method.method, r.task) for r in build_plan(reg, reg.experiments[n], lambda t: None).runs)
            for n in ("tiny", "cb_only", "flat")}
    assert runs["tiny"] == [("fusion_st_a", "cb"), ("fusion_st_a", "rte"), ("head", "cb"), ("head", "rte"),
                            ("st_a", "cb"), ("st_a", "rte")]
    assert runs["cb_only"] == [("fusion_st_a", "cb"), ("st_a", "cb"), ("st_a", "rte")]
    assert runs["flat"] == [("head", "cb"), ("head", "rte"), ("st_a", "cb"), ("st_a", "rte")]
    d = reg.experiments["diverging"]
    assert (d.caps.max_train_rows, d.caps.max_eval_rows, d.caps.max_epochs) == (32, 16, 2) and d.overrides
    for name in ("test_runner.py", "test_slurm.py", "test_slurm_cluster.py"):
        assert "backbones: " + "[tiny-bert]" not in (ROOT / "tests" / name).read_text(), name



def test_groups_put_every_dependency_first_with_exact_deps(smoke_plan):
    runs = by_kind(smoke_plan)
    groups = submission_groups(smoke_plan.runs, set(), array=False)
    assert len(groups) == 23 and all(len(g.runs) == 1 for g in groups)
    order = [g.runs[0].id for g in groups]
    for g in groups:
        assert all(order.index(d) < order.index(g.runs[0].id) for d in g.deps)
    st_a_bert = sorted(r.id for r in runs[("st_a", "tiny-bert")])
    for g in groups:
        r = g.runs[0]
        if (r.method.method, r.backbone) == ("fusion_st_a", "tiny-bert"):
            assert g.deps == st_a_bert and g.depth == 1
        if r.method.method == "fusion_mt_a":
            assert g.deps == [runs[("mt_a", "tiny-bert")][0].id]
        if r.method.method in ("head", "full", "st_a", "mt_a"):
            assert g.deps == [] and g.depth == 0


def test_arrays_group_only_runs_with_the_same_dependencies(smoke_plan):
    groups = submission_groups(smoke_plan.runs, set(), array=True)
    assert sum(len(g.runs) for g in groups) == 23
    for g in groups:
        assert len({r.label for r in g.runs}) == 1
        assert all(sorted(d for d in r.deps) == g.deps for r in g.runs)
    fusion_bert = [g for g in groups if g.runs[0].method.method == "fusion_st_a" and g.runs[0].backbone == "tiny-bert"]
    assert len(fusion_bert) == 1 and len(fusion_bert[0].runs) == 3  # rte, cb, socialiqa read the same adapters
    # the tiny-roberta fusion reads other adapters: its own array, its own dependencies
    fusion_roberta = [g for g in groups if g.runs[0].method.method == "fusion_st_a" and g.runs[0].backbone != "tiny-bert"]
    assert len(fusion_roberta) == 1 and set(fusion_roberta[0].deps).isdisjoint(fusion_bert[0].deps)


def test_in_flight_runs_are_not_resubmitted_but_depended_on(smoke_plan):
    runs = by_kind(smoke_plan)
    busy = runs[("st_a", "tiny-bert")][0].id
    groups = submission_groups(smoke_plan.runs, {busy}, array=False)
    assert busy not in {r.id for g in groups for r in g.runs}
    fusion = [g for g in groups if g.runs[0].method.method == "fusion_st_a" and g.runs[0].backbone == "tiny-bert"]
    assert all(busy in g.deps for g in fusion)
    # finished runs are not in todo: no dependency on them
    todo = [r for r in smoke_plan.runs if r.method.method != "st_a"]
    groups = submission_groups(todo, set(), array=False)
    assert all(g.deps == [] for g in groups if g.runs[0].method.method == "fusion_st_a")
    assert dependency(["12", "13_1"]) == "afterok:12:13_1" and dependency([]) is None


# ---------------------------------------------------------------- the driver with a fake submitit and squeue


class FakeSlurm:
    """submitit.SlurmExecutor + squeue: jobs run at submission, in-process, as afterok would allow."""

    def __init__(self, monkeypatch, fail_submit_after: int | None = None):
        self.next_id, self.states, self.submitted, self.params = 100, {}, [], {}
        self.fail_submit_after = fail_submit_after
        self.validated = []
        fake = self

        class Executor:
            def __init__(self, folder):
                self.folder = Path(folder)
                self._array = None

            def update_parameters(self, **params):
                fake.params = params

            @contextlib.contextmanager
            def batch(self):
                self._array = [fake.next_id, 0]
                fake.next_id += 1
                yield
                self._array = None

            def submit(self, fn, *args):
                if fake.fail_submit_after is not None and len(fake.submitted) >= fake.fail_submit_after:
                    raise RuntimeError("sbatch: error: Batch job submission failed: Socket timed out")
                if self._array:
                    jid = f"{self._array[0]}_{self._array[1]}"
                    self._array[1] += 1
                else:
                    jid, fake.next_id = str(fake.next_id), fake.next_id + 1
                dep = fake.params.get("additional_parameters", {}).get("dependency")
                fake.submitted.append((jid, args[0].id, dep, dict(fake.params)))
                deps = dep.removeprefix("afterok:").split(":") if dep else []
                if any(fake.states.get(d) != "COMPLETED" for d in deps):
                    fake.states[jid] = "CANCELLED"  # --kill-on-invalid-dep=yes
                else:
                    old = dict(os.environ)
                    array, _, task = jid.partition("_")
                    # an array task has a job id of its own; squeue and submitit name it <array>_<task>
                    own_id = str(900 + len(fake.submitted)) if task else jid
                    os.environ.update({"SLURM_JOB_ID": own_id, "SLURMD_NODENAME": "node7",
                                       "CUDA_VISIBLE_DEVICES": "3"})
                    if task:
                        os.environ.update({"SLURM_ARRAY_JOB_ID": array, "SLURM_ARRAY_TASK_ID": task})
                    try:
                        fn(*args)
                        fake.states[jid] = "COMPLETED"
                    except RuntimeError:
                        fake.states[jid] = "FAILED"
                    finally:
                        os.environ.clear()
                        os.environ.update(old)
                return SimpleNamespace(job_id=jid, paths=SimpleNamespace(stdout=self.folder / f"{jid}_0_log.out"))

        monkeypatch.setattr(slurm, "_submitit", lambda: SimpleNamespace(SlurmExecutor=Executor))
        monkeypatch.setattr(slurm, "_require_sbatch", lambda: None)
        monkeypatch.setattr(slurm, "validate_submission", lambda params, folder, where: fake.validated.append(params))
        monkeypatch.setattr(slurm, "squeue", lambda: {j: JobState(j, s, "node7") for j, s in fake.states.items()})


def results(folder: Path) -> dict[str, dict]:
    return {(r := json.loads(f.read_text()))["run_id"]: r for f in folder.glob("*/result.json")}


@pytest.fixture
def tiny_specs(tmp_path):
    return write_experiments(tmp_path / "specs", tiny=tiny_experiment(rows=32, eval_rows=16, epochs=2),
                             tiny_broken=tiny_experiment(rows=32, eval_rows=16, epochs=2, diverge=True))


@needs_mirror
def test_driver_submits_with_afterok_and_results_land_as_locally(monkeypatch, tiny_specs, tmp_path, capsys):
    fake = FakeSlurm(monkeypatch)
    args = ["run", "tiny", "--specs", str(tiny_specs), "--results-dir", str(tmp_path / "r"), "--executor", "slurm",
            "--poll-s", "0.01", "--time-min", "30", "--cpus-per-run", "2", "--sbatch", "account=proj"]
    assert main(args) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "r" / "tiny"
    res = results(folder)
    assert len(res) == 6 and all(r["status"] == "finished" for r in res.values())
    job_of = {rid: jid for jid, rid, _, _ in fake.submitted}
    st_a = sorted(job_of[rid] for rid, r in res.items() if r["method"] == "st_a")
    for _jid, rid, dep, params in fake.submitted:
        assert params["time"] == 30 and params["cpus_per_task"] == 2 and "gpus_per_node" not in params
        assert params["additional_parameters"]["account"] == "proj"
        assert params["additional_parameters"]["kill-on-invalid-dep"] == "yes"
        if res[rid]["method"] == "fusion_st_a":
            assert sorted(dep.removeprefix("afterok:").split(":")) == st_a
        else:
            assert dep is None
    # job id, node and GPUs recorded; the job's threads are its CPUs
    assert {(r["slurm_node"], r["slurm_gpus"], r["torch_threads"]) for r in res.values()} == {("node7", "3", 2)}
    assert all(r["slurm_job_id"].isdigit() for r in res.values())
    jobs = json.loads((folder / ".slurm" / "jobs.json").read_text())["runs"]
    assert {rid: j["job_id"] for rid, j in jobs.items()} == job_of
    assert "6 trained" in out and "[run 6/6] ok" in out
    # rerun: everything finished, nothing submitted
    fake.submitted.clear()
    assert main(args) == 0 and fake.submitted == []


@needs_mirror
def test_failed_stage1_blocks_only_its_dependents_in_arrays(monkeypatch, tiny_specs, tmp_path, capsys):
    fake = FakeSlurm(monkeypatch)
    assert main(["run", "tiny_broken", "--specs", str(tiny_specs), "--results-dir", str(tmp_path / "r"),
                 "--executor", "slurm", "--poll-s", "0.01", "--array-parallelism", "2"]) == 1
    out = capsys.readouterr().out
    by = {(r["method"], r["task"]): r for r in results(tmp_path / "r" / "tiny_broken").values()}
    assert by[("head", "rte")]["status"] == "finished" and by[("head", "rte")]["slurm_job_id"] == "100_0"
    assert "NonFiniteLoss" in by[("st_a", "cb")]["error"]
    assert by[("fusion_st_a", "rte")]["error"].startswith("dependency failed: ")
    assert by[("st_a", "rte")]["run_id"] in by[("fusion_st_a", "rte")]["error"]
    assert fake.params["array_parallelism"] == 2
    assert "2 trained" in out and "4 failed" in out


@needs_mirror
def test_queued_jobs_of_an_earlier_driver_are_adopted(monkeypatch, tiny_specs, tmp_path, capsys):
    """A rerun while jobs still wait submits only the rest, with afterok on the waiting job's id."""
    fake = FakeSlurm(monkeypatch)
    folder = tmp_path / "r" / "tiny"
    reg_args = ["--specs", str(tiny_specs), "--results-dir", str(tmp_path / "r")]
    from benchmark.spec import load_registry

    reg = load_registry([tiny_specs])
    plan = build_plan(reg, reg.experiments["tiny"], lambda t: None, data_root=MIRROR)
    st_a = next(r for r in plan.runs if r.method.method == "st_a" and r.task == "rte")
    slurm.save_jobs(folder, {st_a.id: {"job_id": "77", "submitted_at": "x", "log": "l"}})
    fake.states["77"] = "PENDING"
    # a local driver refuses: it would train a run Slurm is about to train
    assert main(["run", "tiny", *reg_args]) == 2
    assert "still queued or running on Slurm (jobs 77)" in capsys.readouterr().err
    assert main(["run", "tiny", *reg_args, "--executor", "slurm", "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert "already queued as Slurm job 77; not resubmitted" in out and "5 job(s) submitted" in out
    # --no-wait trains nothing here: the last line says what was queued, not "done ... 0 trained"
    assert "run(s) queued on Slurm (not waited for)" in out and "done in" not in out
    assert st_a.id not in {rid for _, rid, _, _ in fake.submitted}
    for _, rid, dep, _ in fake.submitted:
        if "fusion" in rid:
            assert "77" in dep.removeprefix("afterok:").split(":")
    status = experiment_status(plan, folder)
    assert {s.run_id: s.state for s in status}[st_a.id] == "queued"
    jobs = slurm.load_jobs(folder)
    assert jobs[st_a.id]["job_id"] == "77" and len(jobs) == 6


@needs_mirror
def test_sbatch_failing_midway_keeps_the_submitted_job_ids(monkeypatch, tiny_specs, tmp_path, capsys):
    FakeSlurm(monkeypatch, fail_submit_after=2)
    code = main(["run", "tiny", "--specs", str(tiny_specs), "--results-dir", str(tmp_path / "r"),
                 "--executor", "slurm", "--no-wait"])
    err = capsys.readouterr().err
    assert code == 2 and "sbatch failed after 2 job(s) were submitted" in err and "Socket timed out" in err
    assert len(slurm.load_jobs(tmp_path / "r" / "tiny")) == 2


def test_missing_submitit_or_sbatch_is_one_paragraph(monkeypatch, tiny_specs, tmp_path, capsys):
    args = ["run", "tiny", "--specs", str(tiny_specs), "--results-dir", str(tmp_path / "r"), "--executor", "slurm"]
    monkeypatch.setitem(sys.modules, "submitit", None)  # import fails as if not installed
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "needs the submitit package" in err and "adapterfusion-bench[slurm]" in err and len(err.splitlines()) == 1
    monkeypatch.delitem(sys.modules, "submitit")
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "'sbatch' is not on PATH" in err and "--executor local" in err and len(err.splitlines()) == 1


def test_cuda_with_zero_gpus_is_refused():
    assert slurm.resolve_device(None, "auto", None) == ("cpu", 0)
    assert slurm.resolve_device("cuda", "auto", None) == ("cuda:0", 1)
    assert slurm.resolve_device(None, "auto", 2) == ("cuda:0", 2)
    assert slurm.resolve_device(None, "cpu", 0) == ("cpu", 0)
    with pytest.raises(Exception, match="0 GPUs per run"):
        slurm.resolve_device("cuda", "auto", 0)


def test_partition_time_limits_parse_as_slurm_writes_them():
    from benchmark.runner.slurm import _minutes

    assert _minutes("infinite") is None and _minutes("45") == 45 and _minutes("30:00") == 30
    assert _minutes("2:00:00") == 120 and _minutes("1-00:00:00") == 1440 and _minutes("1-12") == 2160
    assert _minutes("2-01:30") == 2 * 1440 + 90


def test_job_info_reads_the_slurm_environment(monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    assert slurm.job_info() == {}
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu03")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert slurm.job_info() == {"slurm_job_id": "4242", "slurm_node": "gpu03", "slurm_gpus": "1"}
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert slurm.job_info()["slurm_job_id"] == "4200_7"


def test_slurm_module_neither_imports_the_runner_nor_parses_flags():
    """No import circle: execute.py imports slurm.py, never the other way (the job body, execute.slurm_job,
    is passed to run_on_slurm and pickled by name); the flags live in cli.py, slurm.py takes SlurmOptions."""
    import ast
    import pickle

    from benchmark.runner import execute

    tree = ast.parse(Path(slurm.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "benchmark.runner.execute" not in imported and "argparse" not in imported
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "benchmark.runner" and
                   any(a.name == "execute" for a in n.names) for n in ast.walk(tree))
    assert pickle.loads(pickle.dumps(execute.slurm_job)) is execute.slurm_job
    assert not hasattr(slurm, "add_arguments") and not hasattr(slurm, "options_from_args")


# ---------------------------------------------------------------- cluster file


def test_cluster_file_validates_and_flags_override(tmp_path):
    spec = load_cluster(ROOT / "specs" / "clusters" / "example.yaml")
    assert spec.gpus_per_run == 1 and spec.sbatch == {"account": "myproject"}
    bad = tmp_path / "c.yaml"
    bad.write_text("partiton: gpu\n")
    with pytest.raises(SpecError) as e:
        load_cluster(bad)
    assert "unknown key 'partiton'" in e.value.render() and "did you mean 'partition'" in e.value.render()
    bad.write_text("time_min: 0\n")
    with pytest.raises(SpecError, match="time_min"):
        load_cluster(bad)
    args = SimpleNamespace(cluster=str(ROOT / "specs" / "clusters" / "example.yaml"), partition="big",
                           time_min=None, gpus_per_run=None, cpus_per_run=4, mem_gb=None, array_parallelism=None,
                           slurm_log_dir=None, sbatch=["qos=high", "exclusive"], wait=False, poll_s=1.0)
    opts = slurm_options(args)
    assert opts.cluster.partition == "big" and opts.cluster.cpus_per_run == 4 and opts.cluster.time_min == 2880
    assert opts.cluster.sbatch == {"account": "myproject", "qos": "high", "exclusive": True} and not opts.wait
    assert parse_sbatch_options(["--mail_type=END"]) == {"mail-type": "END"}
    assert ClusterSpec().gpus_per_run is None


def test_clusters_folder_is_not_a_spec(tmp_path, registry):
    from benchmark.spec.registry import spec_files

    assert not any("clusters" in p.parts for p in spec_files([ROOT / "specs"]))
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "mine.yaml").write_text("partition: gpu\n")
    assert spec_files([tmp_path]) == []


# ---------------------------------------------------------------- status


def test_status_table_shows_every_state(smoke_plan, tmp_path, capsys):
    exp_dir = tmp_path / "smoke"
    runs = smoke_plan.runs
    fin, fail, queued, running, gone, local, dead = (r.id for r in runs[:7])
    from benchmark.runner.results import write_json_atomic

    by_id = smoke_plan.by_id()

    def result(rid, **fields):  # the keys every reader relies on (records.read_result_file checks them; no schema key: read as schema 1)
        r = by_id[rid]
        return {"run_id": rid, "experiment": "smoke", "label": r.label, "backbone": r.backbone, "seed": r.seed,
                "task": r.task, "tasks": r.all_tasks, **fields}

    write_json_atomic(exp_dir / fin / "result.json", result(fin, status="finished", best_metric=61.25,
                                                            wall_seconds=12.0, slurm_job_id="5", slurm_node="n1"))
    write_json_atomic(exp_dir / fail / "result.json", result(fail, status="failed", error="NonFiniteLoss: nan\nmore"))
    slurm.save_jobs(exp_dir, {queued: {"job_id": "11"}, running: {"job_id": "12_3"}, gone: {"job_id": "13"}})
    queue = {"11": JobState("11", "PENDING", "", "0:00", "Dependency"),
             "12_3": JobState("12_3", "RUNNING", "gpu07", "1:02:03", "None")}
    with experiment_lock(exp_dir):
        (exp_dir / f".tmp-{local}-{os.getpid()}").mkdir()
        p = subprocess.Popen([sys.executable, "-c", "pass"])
        p.wait()
        (exp_dir / f".tmp-{dead}-{p.pid}").mkdir()  # a dead attempt is not running
        st = {s.run_id: s for s in experiment_status(smoke_plan, exp_dir, queue)}
        print_status(smoke_plan, tmp_path, queue)
    out = capsys.readouterr().out
    assert st[fin].state == "finished" and "61.25" in st[fin].detail and "Slurm job 5 on n1" in st[fin].detail
    assert st[fail].state == "failed" and st[fail].detail == "NonFiniteLoss: nan"
    assert st[queued].state == "queued" and "Slurm job 11 (Dependency)" in st[queued].detail
    assert st[running].state == "running" and st[running].detail == "Slurm job 12_3 on gpu07, elapsed 1:02:03"
    assert st[gone].state == "failed" and "ended (gone from the queue) without a result" in st[gone].detail
    assert st[local].state == "running" and f"local pid {os.getpid()}" in st[local].detail
    assert st[dead].state == "pending"
    assert f"driver: pid {os.getpid()}" in out
    assert "23 runs: 1 finished, 2 running, 1 queued, 2 failed, 17 pending" in out


# ---------------------------------------------------------------- lock: real processes

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from benchmark.runner.lock import experiment_lock
    with experiment_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold(exp_dir: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(exp_dir), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_driver_is_told_who_holds_the_lock(tmp_path, capsys):
    holder = hold(tmp_path / "r" / "smoke", 60)
    try:
        with pytest.raises(LockHeld) as e:
            with experiment_lock(tmp_path / "r" / "smoke"):
                pass
        assert f"pid {holder.pid}" in e.value.render() and "--wait-lock" in e.value.render()
        assert main(["run", "smoke", "--results-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "being run by another driver" in err
        assert read_lock(tmp_path / "r" / "smoke")["pid"] == holder.pid  # the loser did not remove it
    finally:
        holder.kill()
        holder.wait()


def test_wait_lock_queues_behind_the_holder(tmp_path):
    holder = hold(tmp_path, 1.5)
    t0, said = time.time(), []
    with experiment_lock(tmp_path, wait=True, poll_s=0.05, log=said.append) as me:
        assert time.time() - t0 > 1.0  # it held the lock 1.5 s
        holder.wait(timeout=30)
        assert read_lock(tmp_path) == me
    assert said and f"pid {holder.pid}" in said[0]
    assert read_lock(tmp_path) is None


def test_stale_lock_is_taken_over_and_other_hosts_are_only_reported(tmp_path):
    holder = hold(tmp_path, 60)
    holder.kill()  # killed with -9: the lock stays behind
    holder.wait()
    assert read_lock(tmp_path)["pid"] == holder.pid
    said = []
    with experiment_lock(tmp_path, log=said.append):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert "taking over a stale lock" in said[0] and f"pid {holder.pid}" in said[0]
    (tmp_path / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started_at": "t"}))
    with pytest.raises(LockHeld, match="another host"):
        with experiment_lock(tmp_path):
            pass


RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from benchmark.errors import BenchError
    from benchmark.runner.lock import experiment_lock
    while time.time() < float(sys.argv[2]):
        pass
    try:
        with experiment_lock(Path(sys.argv[1])):
            print("won", flush=True)
            time.sleep(1.0)
    except BenchError:
        print("lost", flush=True)
""")


def test_exactly_one_of_many_simultaneous_drivers_wins(tmp_path):
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), start], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT))) for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["lost", "lost", "lost", "won"]
    assert not (tmp_path / ".lock").exists()
