"""``afbench sweep`` (issue 39): Optuna on the held-out slice of train, never dev; resumable; the best as a
method spec the user adopts. Needs the ``sweep`` extra (``nox -s tracking`` installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmark.cli import load_with_siblings
from conftest import MIRROR, ROOT, needs_mirror, write_experiments

optuna = pytest.importorskip("optuna", reason="optuna (the 'sweep' extra) is not installed; nox -s tracking has it")

pytestmark = needs_mirror
SPACE = ["lr=1e-5:1e-2:log"]
EXPERIMENT = ("backbones: [tiny-bert]\nseeds: [1]\ngroups: [{tasks: [rte], methods: [head]}]\n"
              "caps: {max_train_rows: 16, max_eval_rows: 8, max_epochs: 1, max_length: 32}\nselection: heldout\n")


def _registry(specs: Path):
    return load_with_siblings([specs])


def _sweep(tmp_path: Path, trials: int, experiment: str = "tinysweep"):
    from benchmark.runner.sweep import resolve, sweep

    reg = _registry(write_experiments(tmp_path / "specs", tinysweep=EXPERIMENT,
                                      devsweep=EXPERIMENT.replace("heldout", "dev")))
    exp = reg.experiments[experiment]
    return reg, sweep(reg, exp, resolve(reg, exp, "head", SPACE, trials), results_dir=tmp_path / "results",
                      data_dir=MIRROR, log=lambda _: None)


def _trial_dirs(tmp_path: Path) -> dict[str, float]:
    runs = tmp_path / "results" / "tinysweep" / ".sweep" / "head" / "tinysweep"
    return {p.name: (p / "result.json").stat().st_mtime for p in runs.iterdir() if (p / "result.json").exists()}


def test_sweep_finds_a_learning_rate_and_never_reads_dev(tmp_path, monkeypatch):
    """Dev accuracy is poisoned (every epoch's dev metric replaced by 13.0): the objective must still be each
    trial's held-out accuracy, so a sweep that read dev (best_metric, dev_accuracy) fails here."""
    from benchmark.records import load_run
    from benchmark.runner.sweep import write_variant
    from benchmark.training import loop

    fit = loop.fit

    def poisoned(*a, evaluate_epoch, **kw):
        return fit(*a, evaluate_epoch=lambda: {**evaluate_epoch(), "dev_accuracy": 13.0}, **kw)

    monkeypatch.setattr(loop, "fit", poisoned)
    reg, study = _sweep(tmp_path, 2)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2
    runs = tmp_path / "results" / "tinysweep" / ".sweep" / "head" / "tinysweep"
    for t in done:
        (rid,) = t.user_attrs["run_ids"]
        rec = load_run(runs / rid / "result.json")
        assert rec.selection == "heldout" and rec.best_metric == 13.0  # dev was poisoned ...
        assert t.value == rec.selection_metric != 13.0  # ... and never reached the objective
        assert 1e-5 <= t.params["lr"] <= 1e-2 and rec.config["method"]["train"]["lr"] == t.params["lr"]
    # the experiment's own folder holds no run and no plan: its ids are untouched
    assert sorted(p.name for p in (tmp_path / "results" / "tinysweep").iterdir()) == [".sweep"]
    out = write_variant(reg, reg.experiments["tinysweep"], "head", study, tmp_path / "swept")
    spec = yaml.safe_load(out.read_text())
    assert out.name == "head_swept.yaml" and spec["train"]["lr"] == study.best_params["lr"]
    assert "Dev was not used" in spec["notes"] and "2 trial(s)" in spec["notes"]
    reg2 = _registry(tmp_path / "swept")
    assert reg2.methods["head_swept"].train.lr == study.best_params["lr"]  # adoptable: a valid method spec
    # the report's "Swept methods" section, read from the study without Optuna: before and after adoption
    from benchmark.cli import main
    from benchmark.report.build import build_reports

    assert main(["run", "tinysweep", "--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "results"),
                 "--data-dir", str(MIRROR)]) == 0  # the experiment's own run, which the report's tables need
    lr = float(f"{study.best_params['lr']:.4g}")
    best = f"best held-out {study.best_value:.2f} at `lr={lr}`"
    build_reports(reg, "tinysweep", results_dir=tmp_path / "results", out_dir=tmp_path / "reports", data_root=MIRROR)
    md = (tmp_path / "reports" / "tinysweep.md").read_text()
    section = md.split("## Swept methods")[1]
    assert "**`head`**: 2 trial(s) finished" in section and best in section and "dev was never used" in section
    assert "lr in [1e-05, 0.01] (log)" in section and "Not adopted here" in section
    exp = tmp_path / "specs" / "experiments" / "tinysweep.yaml"
    exp.write_text(exp.read_text().replace("methods: [head]", "methods: [head, head_swept]"))
    reg3 = load_with_siblings([tmp_path / "specs", tmp_path / "swept"])
    build_reports(reg3, "tinysweep", results_dir=tmp_path / "results", out_dir=tmp_path / "reports", data_root=MIRROR)
    assert "Adopted as `head_swept`: column `head_swept`" in (tmp_path / "reports" / "tinysweep.md").read_text()
    html = (tmp_path / "reports" / "tinysweep.html").read_text()
    assert "<h2>Swept methods</h2>" in html and "<code>head_swept</code>" in html and "dev was never used" in html


def test_sweep_refuses_dev_selection(tmp_path):
    from benchmark.errors import BenchError

    with pytest.raises(BenchError, match="selection: heldout"):
        _sweep(tmp_path, 1, experiment="devsweep")


def test_sweep_without_flags_or_block_says_what_to_give(tmp_path, capsys):
    from benchmark.cli import main

    specs = write_experiments(tmp_path / "specs", tinysweep=EXPERIMENT)
    base = ["sweep", "tinysweep", "--specs", str(specs), "--out", str(tmp_path / "o"), "--results-dir", str(tmp_path)]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "tinysweep.yaml" in err and "no sweep: block" in err and "sweep: {method:" in err
    assert main([*base, "--method", "head"]) == 2 and "go together" in capsys.readouterr().err
    assert main([*base, "--method", "head", "--space", "lr=0:1:log"]) == 2
    assert "--space 'lr=0:1:log'" in capsys.readouterr().err
    assert main([*base, "--method", "head", "--space", "batching=1:2"]) == 2
    assert "not a numeric train hyper-parameter" in capsys.readouterr().err
    assert not (tmp_path / "tinysweep").exists()  # nothing was written


def test_sweep_resumes_after_a_kill(tmp_path):
    """A sweep process killed during its second trial; the rerun marks that trial failed, tries its values again,
    reads the first trial's run back (not retrained) and completes the study."""
    # the reruns name no --method/--space: the experiment's sweep: block says the same, so they continue the study
    write_experiments(tmp_path / "specs", tinysweep=EXPERIMENT + f"sweep: {{method: head, space: {{lr: '{SPACE[0][3:]}'}}, "
                                                                 "trials: 3}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "OMP_NUM_THREADS": "1"}
    # The first process's second trial blocks before training (a sitecustomize wraps loop.fit), so the kill always
    # lands in trial 2 with trial 1 finished: tiny trials take ~0.15 s and a poll alone could see two finish.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time\nfrom benchmark.training import loop\n_fit, _calls = loop.fit, []\n\n\n"
        "def fit(*a, **kw):\n    _calls.append(1)\n    if len(_calls) == 2:\n        time.sleep(3600)\n"
        "    return _fit(*a, **kw)\n\n\nloop.fit = fit\n")
    blocked = {**env, "PYTHONPATH": os.pathsep.join([str(hook), env["PYTHONPATH"]])}
    cmd = [sys.executable, "-m", "benchmark.cli", "sweep", "tinysweep", "--specs", str(tmp_path / "specs"),
           "--out", str(tmp_path / "swept"), "--results-dir", str(tmp_path / "results")]
    proc = subprocess.Popen([*cmd, "--method", "head", "--space", SPACE[0], "--trials", "3"], env=blocked, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(_trial_dirs(tmp_path) if (tmp_path / "results" / "tinysweep" / ".sweep" / "head" / "tinysweep").exists()
              else {}) < 1 and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    first = _trial_dirs(tmp_path)
    assert len(first) == 1
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name="tinysweep.head",
                              storage=f"sqlite:///{tmp_path / 'results/tinysweep/.sweep/head/study.db'}")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3
    after = _trial_dirs(tmp_path)
    assert all(after[rid] == mtime for rid, mtime in first.items())  # finished trial read back, not retrained
    # a rerun with more trials grows the study and retrains nothing that finished
    more = subprocess.run([*cmd, "--trials", "4"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert more.returncode == 0, more.stderr
    assert "1 to run" in more.stdout and all(_trial_dirs(tmp_path)[r] == m for r, m in after.items())
    assert (tmp_path / "swept" / "methods" / "head_swept.yaml").exists()


def test_sweep_on_slurm_submits_each_batch_of_trials_as_one_array(monkeypatch, tmp_path, capsys):
    """``--executor slurm --parallel 2 --array-parallelism 2``: each batch of two asked trials is one job array
    (the fake submitit of test_slurm runs the jobs in-process), the jobs train the trials' own values, their ids go
    to the sweep's own .slurm/jobs.json, and only this driver writes the study."""
    import json

    from test_slurm import FakeSlurm

    from benchmark.cli import main

    fake = FakeSlurm(monkeypatch)
    specs = write_experiments(tmp_path / "specs", tinysweep=EXPERIMENT)
    args = ["sweep", "tinysweep", "--specs", str(specs), "--method", "head", "--space", SPACE[0], "--trials", "4",
            "--parallel", "2", "--out", str(tmp_path / "swept"), "--results-dir", str(tmp_path / "r"),
            "--executor", "slurm", "--array-parallelism", "2", "--time-min", "20", "--poll-s", "0.01"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    arrays = sorted({jid.partition("_")[0] for jid, *_ in fake.submitted})
    assert len(fake.submitted) == 4 and len(arrays) == 2  # two batches, each one array of two trials
    assert all(p["array_parallelism"] == 2 and p["time"] == 20 and "dependency" not in p["additional_parameters"]
               for *_, p in fake.submitted)
    root = tmp_path / "r" / "tinysweep" / ".sweep" / "head"
    study = optuna.load_study(study_name="tinysweep.head", storage=f"sqlite:///{root / 'study.db'}")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 4
    jobs = json.loads((root / "tinysweep" / ".slurm" / "jobs.json").read_text())["runs"]
    for t in study.trials:
        (rid,) = t.user_attrs["run_ids"]
        rec = json.loads((root / "tinysweep" / rid / "result.json").read_text())
        assert rec["slurm_job_id"] == jobs[rid]["job_id"] and rec["config"]["method"]["train"]["lr"] == t.params["lr"]
        assert t.value == rec["selection_metric"]
    assert "submitted" in out and (tmp_path / "swept" / "methods" / "head_swept.yaml").exists()
    assert sorted(p.name for p in (tmp_path / "r" / "tinysweep").iterdir()) == [".sweep"]
    # --no-wait cannot tell Optuna a value: refused before anything is submitted
    fake.submitted.clear()
    assert main([*args, "--trials", "6", "--no-wait"]) == 2 and fake.submitted == []
    assert "--no-wait" in capsys.readouterr().err
