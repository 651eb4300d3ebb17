"""``--executor slurm`` against a live Slurm cluster (``nox -s slurm`` brings a one-node one up).

These tests submit real jobs, so they run only when asked: ``AFBENCH_REQUIRE_SLURM=1`` (set by
``nox -s slurm`` for the throwaway cluster it brings up; a missing cluster is then a failure) or
``AFBENCH_LIVE_SLURM=1`` (run them on the cluster ``sinfo`` answers for, e.g. a real login node, knowing
they queue small CPU jobs there). Otherwise, and when no cluster answers, they are skipped. Timings are
printed (``-s``) and appended to ``$AFBENCH_SLURM_TIMINGS`` when set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from conftest import ROOT, needs_mirror, tiny_experiment, write_experiments


def _cluster_up() -> str | None:
    if shutil.which("sinfo") is None:
        return "sinfo is not on PATH (no Slurm here; nox -s slurm brings a one-node cluster up)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "sinfo does not answer within 60 s"
    if out.returncode != 0 or not out.stdout.split():
        first = (out.stderr.strip().splitlines() or ["no nodes"])[0]
        return f"no Slurm controller answers sinfo ({first[:120]}); nox -s slurm brings one up"
    return None


REQUIRED = os.environ.get("AFBENCH_REQUIRE_SLURM") == "1"
if REQUIRED or os.environ.get("AFBENCH_LIVE_SLURM") == "1":
    WHY_NOT = _cluster_up()
else:  # a developer's login node answers sinfo too: never queue jobs there unasked
    WHY_NOT = ("live-cluster tests submit real jobs: nox -s slurm runs them on a throwaway one-node "
               "cluster; set AFBENCH_LIVE_SLURM=1 to run them on the cluster sinfo answers for")
if WHY_NOT and REQUIRED:
    raise RuntimeError(f"AFBENCH_REQUIRE_SLURM=1 but {WHY_NOT}")
pytestmark = [needs_mirror, pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]
POLL = ["--poll-s", "1"]


def timing(what: str, seconds: float) -> None:
    line = f"{what}: {seconds:.1f}s"
    print(line)
    if os.environ.get("AFBENCH_SLURM_TIMINGS"):
        with open(os.environ["AFBENCH_SLURM_TIMINGS"], "a") as fh:
            fh.write(line + "\n")


def results(folder: Path) -> dict[str, dict]:
    return {(r := json.loads(f.read_text()))["run_id"]: r for f in folder.glob("*/result.json")}


def squeue(*fmt: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "|".join(fmt)], capture_output=True, text=True, check=True)
    return [line.split("|") for line in out.stdout.split("\n") if line]


def job_ids_known() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i"], capture_output=True, text=True)
    return set(out.stdout.split())


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, **kw)


@pytest.fixture(scope="module")
def tiny_specs(tmp_path_factory) -> Path:
    return write_experiments(tmp_path_factory.mktemp("specs"), tiny_slurm=tiny_experiment(),
                             # as in test_runner: stage-1 adapters diverge
                             broken_slurm=tiny_experiment(rows=32, eval_rows=16, epochs=2, diverge=True))


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("local")
    t0 = time.perf_counter()
    assert main(["run", "smoke", "--results-dir", str(d)]) == 0
    timing("smoke grid, local (1 process)", time.perf_counter() - t0)
    return d / "smoke"


def test_smoke_on_slurm_matches_local_and_a_scancelled_job_is_redone(local_smoke, tmp_path, capsys):
    """The whole smoke grid as Slurm jobs: same metrics as locally; scancel one running job, rerun finishes it."""
    folder = tmp_path / "smoke"
    cmd = ["run", "smoke", "--results-dir", str(tmp_path), "--executor", "slurm", *POLL]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *cmd], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cancelled = None
    deadline = time.time() + 600
    while cancelled is None and time.time() < deadline and proc.poll() is None:
        jobs = json.loads((folder / ".slurm" / "jobs.json").read_text())["runs"] if \
            (folder / ".slurm" / "jobs.json").exists() else {}
        run_of = {j["job_id"]: rid for rid, j in jobs.items()}
        done = results(folder)
        running = [jid for jid, state in squeue("%i", "%T") if state == "RUNNING" and jid in run_of]
        # prefer a stage-1 adapter that fusion runs read: its dependents must be blocked, then redone
        stage1 = [jid for jid in running if "__st_a_rf16__tiny-bert__" in run_of[jid]]
        running = stage1 or (running if len(done) >= 12 else [])
        if running:
            subprocess.run(["scancel", running[0]], check=True)
            time.sleep(1.0)
            rid = run_of[running[0]]
            if done.get(rid, {}).get("status") != "finished" and \
                    results(folder).get(rid, {}).get("status") != "finished":
                cancelled = rid
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=600)
    first_seconds = time.perf_counter() - t0
    assert cancelled, f"no running job could be cancelled mid-grid:\n{out}"
    assert proc.returncode == 1, out  # the cancelled run (and runs reading it) failed
    assert "without a result" in out and "CANCELLED" in out, out
    if "__st_a_rf16__" in cancelled:
        assert out.count("dependency failed: ") >= 3, out  # the three tiny-bert fusions read it
    first = results(folder)
    # the killed job left nothing finished-looking: no finished result, no weights in the run folder
    assert first[cancelled]["status"] == "failed"
    assert not (folder / cancelled / "weights.safetensors").exists()
    failed_first = {rid for rid, r in first.items() if r["status"] == "failed"}
    kept = {rid: r["finished_at"] for rid, r in first.items() if r["status"] == "finished"}

    t1 = time.perf_counter()
    assert main(cmd) == 0
    rerun_seconds = time.perf_counter() - t1
    out = capsys.readouterr().out
    assert f"{len(failed_first)} job(s) submitted" in out, out
    after = results(folder)
    assert len(after) == 23 and all(r["status"] == "finished" for r in after.values())
    assert all(after[rid]["finished_at"] == t for rid, t in kept.items()), "finished runs were redone"
    assert not list(folder.glob(".tmp-*")) and not list(folder.glob(".trash-*"))
    jobs = json.loads((folder / ".slurm" / "jobs.json").read_text())["runs"]
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    for rid, r in after.items():  # every result names the Slurm job that wrote it
        assert r["slurm_job_id"] == jobs[rid]["job_id"] and r["slurm_node"] == node
        assert r["torch_threads"] == 1
    timing(f"smoke grid on Slurm incl. one scancel ({len(failed_first)} runs failed by it)", first_seconds)
    timing(f"rerun after the scancel ({len(failed_first)} runs)", rerun_seconds)

    # same metrics as locally: torch runs 1 thread per job here vs all cores locally, so sums inside
    # matmuls may be ordered differently; we accept float-level differences only
    reference = results(local_smoke)
    assert set(reference) == set(after)
    for rid, r in after.items():
        assert r["best_metric"] == pytest.approx(reference[rid]["best_metric"], abs=1e-6), rid
        assert [h["train_loss"] for h in r["history"]] == pytest.approx(
            [h["train_loss"] for h in reference[rid]["history"]], rel=1e-4, abs=1e-5), rid

    assert main(["status", "smoke", "--results-dir", str(tmp_path)]) == 0
    status = capsys.readouterr().out
    assert "23 runs: 23 finished" in status and "Slurm job" in status


def test_uninterrupted_smoke_grid_on_slurm_timing(tmp_path):
    """Wall time of the smoke grid as Slurm jobs (2 one-CPU jobs at a time on the test cluster)."""
    t0 = time.perf_counter()
    assert main(["run", "smoke", "--results-dir", str(tmp_path), "--executor", "slurm", *POLL]) == 0
    timing("smoke grid on Slurm (uninterrupted)", time.perf_counter() - t0)
    assert len(results(tmp_path / "smoke")) == 23


def test_killed_driver_rerun_submits_nothing_twice(tiny_specs, tmp_path):
    base = ["run", "tiny_slurm", "--specs", str(tiny_specs), "--results-dir", str(tmp_path), "--executor", "slurm",
            *POLL]
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *base], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "tiny_slurm"
    jobs_json = folder / ".slurm" / "jobs.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if jobs_json.exists() and len(json.loads(jobs_json.read_text())["runs"]) == 6 and results(folder):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = json.loads(jobs_json.read_text())["runs"]
    assert len(before) == 6 and len(results(folder)) < 6, "the kill should land mid-grid"
    assert (folder / ".lock").exists()  # left behind by the killed driver
    r = cli(*base)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "taking over a stale lock" in r.stdout and "0 job(s) submitted" in r.stdout, r.stdout
    assert json.loads(jobs_json.read_text())["runs"] == before
    after = results(folder)
    assert len(after) == 6 and all(x["status"] == "finished" for x in after.values())
    assert {rid: x["slurm_job_id"] for rid, x in after.items()} == {rid: j["job_id"] for rid, j in before.items()}
    assert not (folder / ".lock").exists()


def test_no_wait_then_status_then_adopt(tiny_specs, tmp_path):
    base = ["run", "tiny_slurm", "--specs", str(tiny_specs), "--results-dir", str(tmp_path), "--executor", "slurm"]
    r = cli(*base, "--no-wait", "--array-parallelism", "2")
    assert r.returncode == 0 and "6 job(s) submitted" in r.stdout and "--no-wait" in r.stdout, r.stdout + r.stderr
    st = cli("status", "tiny_slurm", "--specs", str(tiny_specs), "--results-dir", str(tmp_path))
    assert st.returncode == 0, st.stderr
    assert "pending" not in st.stdout.split("runs:")[-1] and ("queued" in st.stdout or "running" in st.stdout), \
        st.stdout
    assert "driver: none holds the lock" in st.stdout
    # a local driver must not train runs that Slurm is about to train
    loc = cli("run", "tiny_slurm", "--specs", str(tiny_specs), "--results-dir", str(tmp_path))
    assert loc.returncode == 2 and "still queued or running on Slurm" in loc.stderr, loc.stderr
    r = cli(*base, *POLL)
    assert r.returncode == 0 and "0 job(s) submitted" in r.stdout and "not resubmitted" in r.stdout, r.stdout
    st = cli("status", "tiny_slurm", "--specs", str(tiny_specs), "--results-dir", str(tmp_path))
    assert "6 runs: 6 finished" in st.stdout, st.stdout


def test_failed_stage1_blocks_only_its_dependents(tiny_specs, tmp_path, capsys):
    code = main(["run", "broken_slurm", "--specs", str(tiny_specs), "--results-dir", str(tmp_path),
                 "--executor", "slurm", *POLL])
    out = capsys.readouterr().out
    assert code == 1, out
    by = {(r["method"], r["task"]): r for r in results(tmp_path / "broken_slurm").values()}
    assert by[("head", "rte")]["status"] == by[("head", "cb")]["status"] == "finished"
    assert "NonFiniteLoss" in by[("st_a", "rte")]["error"] and by[("st_a", "rte")]["slurm_job_id"]
    assert by[("fusion_st_a", "cb")]["error"].startswith("dependency failed")
    assert "2 trained" in out and "4 failed" in out
    main(["status", "broken_slurm", "--specs", str(tiny_specs), "--results-dir", str(tmp_path)])
    status = capsys.readouterr().out
    assert "2 finished, 4 failed" in status and "NonFiniteLoss" in status


def test_sweep_trials_run_as_slurm_array_jobs(tmp_path):
    """``afbench sweep --executor slurm`` from an experiment's sweep: block: each batch of --parallel trials is one
    job array; the driver alone writes the study (sqlite), so a rerun continues it and submits nothing twice."""
    optuna = pytest.importorskip("optuna", reason="optuna (the 'sweep' extra) is not installed; nox -s tracking has it")
    specs = write_experiments(tmp_path / "specs", sweep_slurm=tiny_experiment(tasks=("rte",), methods=("head",),
                                                                              fusion=False) +
                              "selection: heldout\nsweep: {method: head, space: {lr: '1e-5:1e-2:log'}, trials: 2}\n")
    base = ["sweep", "sweep_slurm", "--specs", str(specs), "--results-dir", str(tmp_path / "r"), "--out",
            str(tmp_path / "swept"), "--executor", "slurm", "--parallel", "2", "--array-parallelism", "2", *POLL]
    t0 = time.perf_counter()
    r = cli(*base)
    timing("sweep of 2 trials as one Slurm array", time.perf_counter() - t0)
    assert r.returncode == 0 and r.stdout.count("submitted") >= 2, r.stdout + r.stderr
    root = tmp_path / "r" / "sweep_slurm" / ".sweep" / "head"
    study = optuna.load_study(study_name="sweep_slurm.head", storage=f"sqlite:///{root / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    found = results(root / "sweep_slurm")
    assert len(found) == 2 and len({x["slurm_job_id"].partition("_")[0] for x in found.values()}) == 1, found
    assert {x["config"]["method"]["train"]["lr"] for x in found.values()} == {t.params["lr"] for t in study.trials}
    assert (tmp_path / "swept" / "methods" / "head_swept.yaml").exists()
    again = cli(*base)
    assert again.returncode == 0 and "0 to run" in again.stdout and "submitted" not in again.stdout, again.stdout


@pytest.mark.parametrize("flags, words", [
    (["--partition", "nosuchpartition"], ["partition", "debug"]),
    (["--sbatch", "no-such-option=1"], ["unrecognized option", "--sbatch"]),
    (["--gpus-per-run", "1"], ["gres", "GPU partition"]),
    (["--mem-gb", "100000"], ["node configuration is not available"]),
    (["--partition", "short", "--time-min", "60"], ["exceeds the partition's limit of 30 min", "time_min"]),
])
def test_rejected_parameters_submit_nothing(tiny_specs, tmp_path, flags, words):
    before = job_ids_known()
    r = cli("run", "tiny_slurm", "--specs", str(tiny_specs), "--results-dir", str(tmp_path), "--executor", "slurm",
            *flags)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert job_ids_known() <= before  # no new job (ended ones may age out of squeue meanwhile)
    assert not (tmp_path / "tiny_slurm" / ".slurm" / "jobs.json").exists()
