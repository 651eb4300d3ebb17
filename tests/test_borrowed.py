"""``dependencies_from``: an experiment reads the finished stage-1 runs of another in place (same run ids),
trains only its own grid, and heals a borrowed dependency whose weights are gone by training it here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main
from conftest import needs_mirror, tiny_experiment, write_experiments

pytestmark = [needs_mirror, pytest.mark.slow]


def _results(folder: Path) -> dict[str, dict]:
    return {json.loads(f.read_text())["run_id"]: json.loads(f.read_text()) for f in folder.glob("*/result.json")}


def _specs(tmp_path: Path, lender: str = "tiny_lender") -> list[str]:
    lent = tiny_experiment(tasks=("cb",), methods=("fusion_st_a",))
    write_experiments(tmp_path / "specs", tiny_lender=lent,
                      tiny_borrower=lent + f"dependencies_from: [{lender}]\n")
    return ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]


def test_stage1_runs_are_read_in_place_and_the_fusion_run_is_the_same(tmp_path, capsys):
    args = _specs(tmp_path)
    assert main(["run", "tiny_lender", *args]) == 0
    lender = _results(tmp_path / "r" / "tiny_lender")
    assert len(lender) == 3  # the fusion run and its two stage-1 adapters (rte, cb)
    capsys.readouterr()
    assert main(["run", "tiny_borrower", *args]) == 0
    out = capsys.readouterr().out
    assert "2 implied run(s) read in place from the results of tiny_lender" in out and "1 trained" in out
    borrower = _results(tmp_path / "r" / "tiny_borrower")
    assert len(borrower) == 1  # only its own grid: nothing copied
    (rid, mine), = borrower.items()
    theirs = lender[rid]  # the same id: the same settings and the same stage-1 runs ...
    assert mine["deps"] == theirs["deps"] and mine["experiment"] == "tiny_borrower"
    # ... and the same result: training reads the lender's adapters exactly as the lender's fusion did
    keys = ("epoch", "train_loss", "dev_accuracy", "heldout_accuracy")  # every epoch's numbers (not its seconds)
    assert [{k: h.get(k) for k in keys} for h in mine["history"]] == \
           [{k: h.get(k) for k in keys} for h in theirs["history"]]
    assert mine["best_metric"] == theirs["best_metric"]
    # the plan and the status say where the implied runs are finished
    assert main(["plan", "tiny_borrower", *args]) == 0
    out = capsys.readouterr().out
    assert "3 runs: 3 finished" in out
    assert "2 implied run(s) are finished under tiny_lender and read from there" in out
    assert main(["status", "tiny_borrower", *args]) == 0
    assert capsys.readouterr().out.count("(under tiny_lender)") == 2
    # the estimate prices only what this experiment trains: the lent runs are read, not trained
    assert main(["plan", "tiny_borrower", *args, "--estimate", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in est["runs"]] == [rid] and est["not_priced_read_from"] == {"tiny_lender": 2}
    assert main(["plan", "tiny_lender", *args, "--estimate", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["runs"]) == 3  # the lender prices its own three
    # the report shows the borrower's own run and names no other experiment's result as foreign
    assert main(["report", "tiny_borrower", *args, "--out-dir", str(tmp_path / "rep")]) == 0
    assert "belongs to experiment" not in capsys.readouterr().out


def test_a_borrowed_dependency_without_weights_is_trained_here(tmp_path, capsys):
    args = _specs(tmp_path)
    assert main(["run", "tiny_lender", *args]) == 0
    lender = tmp_path / "r" / "tiny_lender"
    cb = next(rid for rid, r in _results(lender).items() if r["method"] == "st_a" and r["task"] == "cb")
    (lender / cb / "weights.safetensors").unlink()  # committed without weights, say
    capsys.readouterr()
    assert main(["run", "tiny_borrower", *args]) == 0
    out = capsys.readouterr().out
    assert f"{cb} (in tiny_lender) is finished but its weights are missing" in out and "2 trained" in out
    here = tmp_path / "r" / "tiny_borrower" / cb
    assert (here / "weights.safetensors").exists()
    assert not (lender / cb / "weights.safetensors").exists()  # the lender's folder is only ever read
    # the retrain is a rerun of the lender's result: it records what that measured, and reproduces it
    mine = json.loads((here / "result.json").read_text())
    theirs = json.loads((lender / cb / "result.json").read_text())
    assert mine["previous_result"]["best_metric"] == theirs["best_metric"] == mine["best_metric"]
    assert mine["previous_result"]["history"] == [
        {k: h.get(k) for k in ("epoch", "train_loss", "dev_accuracy", "heldout_accuracy")} for h in mine["history"]]
    # from now on the run is this experiment's own: --force retrains it (and the fusion), never the lender's rte
    capsys.readouterr()
    assert main(["run", "tiny_borrower", "--force", *args]) == 0
    out = capsys.readouterr().out
    assert "2 trained" in out and "1 implied run(s) read in place from the results of tiny_lender" in out


def test_a_lender_being_run_now_is_refused(tmp_path, capsys):
    import os
    import socket

    args = _specs(tmp_path)
    assert main(["run", "tiny_lender", *args]) == 0
    lock = tmp_path / "r" / "tiny_lender" / ".lock"  # held by a live driver: this very process
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started_at": "now",
                                "command": "afbench run tiny_lender --force"}))
    capsys.readouterr()
    assert main(["run", "tiny_borrower", *args]) != 0
    err = capsys.readouterr().err
    assert "experiment 'tiny_lender'" in err and "is being run now" in err and "afbench status tiny_lender" in err
    assert not (tmp_path / "r" / "tiny_borrower" / ".lock").exists()  # its own lock released
    lock.unlink()


def test_an_unknown_or_own_name_is_one_paragraph(tmp_path, capsys):
    args = _specs(tmp_path, lender="tiny_lendr")
    assert main(["plan", "tiny_borrower", *args]) != 0
    err = capsys.readouterr().err
    assert "tiny_borrower.yaml" in err and "dependencies_from" in err and "Did you mean 'tiny_lender'" in err
    args = _specs(tmp_path, lender="tiny_borrower")
    assert main(["plan", "tiny_borrower", *args]) != 0
    assert "names itself in dependencies_from" in capsys.readouterr().err


def test_force_with_only_retrains_the_matched_runs_not_their_finished_sources(tmp_path, capsys):
    """Refreshing fusion runs (e.g. to give them predictions) keeps the stage-1 adapters they read: --force
    applies to the runs the --only globs match; a dependency is retrained only if its weights are unusable."""
    args = _specs(tmp_path)
    assert main(["run", "tiny_lender", *args]) == 0
    folder = tmp_path / "r" / "tiny_lender"
    before = {rid: (folder / rid / "result.json").stat().st_mtime_ns for rid in _results(folder)}
    capsys.readouterr()
    assert main(["run", "tiny_lender", "--force", "--only", "*__fusion_st_a*", *args]) == 0
    assert "1 trained" in capsys.readouterr().out
    after = {rid: (folder / rid / "result.json").stat().st_mtime_ns for rid in _results(folder)}
    moved = {rid for rid in before if after[rid] != before[rid]}
    assert len(moved) == 1 and "__fusion_st_a" in moved.pop()
    assert main(["run", "tiny_lender", "--force", "--only", "*__st_a_*", *args]) == 0  # named: retrained
    assert "2 trained" in capsys.readouterr().out
