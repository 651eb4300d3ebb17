"""The runner's processes and output (issues 37 and 38): a worker killed by a signal fails its run alone and the
grid goes on; a reader that closes the pipe fails nothing; progress inside each epoch reaches the driver under
--jobs N; one number per run in its start and end lines; an ETA corrected by what this process measured; a
calibration header that says which CPU it was fitted on; a loss that rose and stayed is flagged diverged."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmark.cli import main
from conftest import ROOT, needs_mirror

GRID = """
    backbones: [tiny-bert]
    seeds: [1, 2]
    groups: [{tasks: [rte, cb], methods: [head]}]
    caps: {max_train_rows: %d, max_eval_rows: 16, max_epochs: %d, max_length: 32}
"""


def _experiment(tmp_path: Path, name: str, rows: int = 16, epochs: int = 1) -> list[str]:
    specs = tmp_path / "specs" / "experiments"
    specs.mkdir(parents=True, exist_ok=True)
    (specs / f"{name}.yaml").write_text(textwrap.dedent(GRID % (rows, epochs)))
    return ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]


def _results(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/result.json")}


def _cli(name: str, args: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmark.cli", "run", name, *extra, *args]


def _env() -> dict:
    """Built inside a test, after conftest's session fixture set the mirror, the private cache and offline mode."""
    return dict(os.environ, PYTHONPATH=str(ROOT))


# ------------------------------------------------------------------------------ a worker killed
@needs_mirror
@pytest.mark.slow
def test_a_worker_killed_by_sigkill_fails_its_run_alone_and_a_rerun_retrains_it(tmp_path):
    args = _experiment(tmp_path, "oom", rows=600, epochs=2)
    proc = subprocess.Popen(_cli("oom", args, "--jobs", "2"), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "r" / "oom"
    deadline, temps = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None and len(temps) < 2:
        temps = sorted(folder.glob(".tmp-*"))  # .tmp-<run id>-<worker pid>: both workers are training
        time.sleep(0.05)
    assert len(temps) == 2, "two runs should train at once"
    victim, pid = temps[0].name[len(".tmp-"):].rsplit("-", 1)
    other = temps[1].name[len(".tmp-"):].rsplit("-", 1)[0]
    os.kill(int(pid), signal.SIGKILL)  # what the kernel's out-of-memory killer does
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "BrokenProcessPool" not in out + err
    res = _results(folder)
    assert len(res) == 4
    assert res[victim]["status"] == "failed" and "killed by SIGKILL" in res[victim]["error"]
    assert res[victim]["worker_signal"] == "SIGKILL" and isinstance(res[victim]["out_of_memory"], bool)
    # the run the other worker was training, and the runs not started yet, all finished
    assert res[other]["status"] == "finished"
    assert [rid for rid, r in res.items() if r["status"] != "finished"] == [victim]
    assert "3 trained" in out and "1 failed" in out and not list(folder.glob(".tmp-*"))
    rerun = subprocess.run(_cli("oom", args, "--jobs", "2"), cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "3 already finished, 1 to run" in rerun.stdout and "1 trained" in rerun.stdout
    assert _results(folder)[victim]["status"] == "finished"


# ------------------------------------------------------------------------------- a closed pipe
@needs_mirror
@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_reader_that_closes_the_pipe_fails_no_run(tmp_path, jobs):
    """`afbench run ... | head -1`: the reader goes away after the first line; every run still finishes."""
    args = _experiment(tmp_path, "piped", rows=64)
    proc = subprocess.Popen(_cli("piped", args, "--jobs", jobs), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert b"piped: 4 runs" in proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) in (0, 141), err
    assert "Traceback" not in err and "BrokenPipe" not in err
    res = _results(tmp_path / "r" / "piped")
    assert len(res) == 4 and all(r["status"] == "finished" for r in res.values()), \
        {k: r.get("error") for k, r in res.items()}


# ------------------------------------------------------------------------- progress under --jobs
@needs_mirror
@pytest.mark.slow
def test_progress_inside_each_epoch_reaches_the_driver_under_jobs_2(tmp_path, monkeypatch, capsys):
    """Not a terminal (a log, Slurm output): a plain line per running run every PROGRESS_SECONDS (here 0: each
    step report), tagged with the run's own number, the same in its start and ok lines."""
    from benchmark.training import loop

    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    args = _experiment(tmp_path, "bars", rows=64)
    assert main(["run", "bars", "--jobs", "2", *args]) == 0
    out = capsys.readouterr().out.splitlines()
    steps = [ln for ln in out if re.match(r"\[run \d/4\] .* epoch 1/1: step \d+/\d+, .* train ex/s", ln)]
    assert {ln.split("]")[0] for ln in steps} == {f"[run {i}/4" for i in range(1, 5)}, out
    assert any("grid ETA" in ln for ln in steps)  # once the cost model or a finished run can tell
    starts = dict(re.match(r"(\[run \d/4\]) start (\S+)", ln).groups()[::-1] for ln in out if " start " in ln)
    oks = dict(re.match(r"(\[run \d/4\]) ok (\S+)", ln).groups()[::-1] for ln in out if " ok " in ln)
    assert starts == oks and len(set(starts.values())) == 4  # one number per run
    assert any("dev accuracy" in ln for ln in out)  # the workers' epoch lines come through the driver


def test_a_terminal_gets_one_status_line_redrawn_in_place(capsys):
    from benchmark.runner.progress import Display

    lines = []
    d = Display(lines.append, tty=True, eta=lambda: 95.0)
    event = {"desc": "rte head", "epoch": 1, "epochs": 3, "steps": 7, "steps_per_epoch": 40, "examples": 56,
             "seconds": 3.0}
    d.step("a", "[run 1/2]", event)
    d.last_draw = 0.0
    d.step("b", "[run 2/2]", {**event, "desc": "cb head", "steps": 2})
    drawn = capsys.readouterr().out.split("\r")[-1]
    assert drawn == "[run 1/2] rte head ep 1/3 7/40 | [run 2/2] cb head ep 1/3 2/40 | ETA 1m35s"
    d.log("[run 1/2] ok a")
    out = capsys.readouterr().out
    assert out.startswith("\r" + " " * len(drawn) + "\r") and "[run 2/2] cb head" in out  # cleared, redrawn
    assert lines == ["[run 1/2] ok a"]


# ----------------------------------------------------------------------------------------- ETA
def _runs(*ids, deps=()):
    return [SimpleNamespace(id=i, deps=list(deps) if i == ids[-1] else []) for i in ids]


def test_the_eta_scales_the_predictions_by_what_this_process_measured():
    from benchmark.runner.progress import PRIOR_SECONDS, Progress

    lines = []
    p = Progress(_runs("a", "b", "c"), 1, lines.append, {"a": 100.0, "b": 200.0, "c": 300.0})
    assert p.eta() == pytest.approx(600.0)  # nothing measured: the cost model
    p.start("a")
    p("a", None, 200.0)  # twice as slow as predicted
    ratio = (200 + PRIOR_SECONDS) / (100 + PRIOR_SECONDS)
    assert p.eta() == pytest.approx(500 * ratio)
    assert lines[0] == "[run 1/3] start a" and lines[1].startswith("[run 1/3] ok a (200.0s) | 1/3 done")
    # a run half way through its epochs after 300 s: the running share counts before it finishes
    p.start("b")
    p.started["b"] -= 300.0
    p.step("b", {"epoch": 2, "epochs": 2, "steps": 0, "steps_per_epoch": 10})
    ratio = (200 + 300 + PRIOR_SECONDS) / (100 + 100 + PRIOR_SECONDS)
    assert p.eta() == pytest.approx((100 + 300) * ratio, rel=1e-3)
    q = Progress(_runs("a", "b", "c"), 2, lines.append)  # no prediction (a GPU): the mean of the finished runs
    q("a", None, 10.0)
    assert q.eta() == pytest.approx(10.0)


def test_the_eta_is_never_below_what_a_running_run_needs_at_its_own_pace():
    """Issue 38.3 again: a short grid whose cost model promised 20 s printed a grid ETA below the epoch's own."""
    from benchmark.runner.progress import Progress

    p = Progress(_runs("a"), 1, lambda _: None, {"a": 20.0})
    p.start("a")
    p.started["a"] -= 30.0  # 30 s in, a quarter done: 90 s to go at its own pace
    p.step("a", {"epoch": 1, "epochs": 1, "steps": 1, "steps_per_epoch": 4})
    assert p.eta() == pytest.approx(90.0, rel=1e-3)


def test_a_terminal_that_reports_no_width_gets_a_readable_status_line(monkeypatch):
    from benchmark.runner import progress

    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert progress._columns() == 100


def test_the_eta_follows_the_dependency_graph_on_n_workers():
    from benchmark.runner.progress import Progress

    p = Progress(_runs("a", "b", "fusion", deps=("a", "b")), 2, lambda _: None,
                 {"a": 100.0, "b": 100.0, "fusion": 100.0})
    assert p.eta() == pytest.approx(200.0)  # a and b side by side, then the fusion run alone (not 300 / 2)


# ------------------------------------------------------------------------------ calibration note
def test_the_calibration_header_names_the_cpu_it_was_fitted_on_and_whether_this_one_matches():
    from benchmark.plan.cost import UNRECORDED_CPU, calibration_note

    assert calibration_note("Intel Xeon 8480", "Intel Xeon 8480") == \
        "CPU calibration fitted on this CPU model (Intel Xeon 8480)"
    note = calibration_note(UNRECORDED_CPU, "AMD EPYC")
    assert note.startswith("CPU calibration fitted on AMD EPYC, 2 cores") and "this CPU (AMD EPYC) matches" in note
    assert "none of its own" not in note
    other = calibration_note(UNRECORDED_CPU, "Intel(R) Xeon(R) Gold 6230")
    assert "does not match" in other and "Intel(R) Xeon(R) Gold 6230" in other


# ------------------------------------------------------------------------------------- divergence
def test_a_loss_that_rose_four_times_and_stayed_is_diverged():
    from benchmark.training.loop import DIVERGED_RATIO, diverged

    assert diverged(2.9, 0.69, 2)  # the probe: 0.69 -> 2.9
    assert not diverged(0.9, 0.69, 2) and not diverged(DIVERGED_RATIO * 0.69, 0.69, 2)  # noisy, not diverged
    assert not diverged(1.59, 1.61, 5)  # csqa's committed epochs (5 choices) stay near ln 5
