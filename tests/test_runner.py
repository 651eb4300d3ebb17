"""The grid runner end to end on the smoke experiment (tiny models, real mirror data): all seven methods,
resumability after SIGKILL, failure recording, fusion built on the stage-1 adapters, repeatable seeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmark.cli import main
from conftest import ROOT, needs_mirror, tiny_experiment, write_experiments

pytestmark = [needs_mirror, pytest.mark.slow]
METHODS = {"head", "full", "st_a", "st_a_houlsby", "mt_a", "fusion_st_a", "fusion_mt_a"}


def results(folder: Path) -> dict[str, dict]:
    """The recorded results: run folders only (pathlib's ``*`` also matches the hidden ``.tmp-<id>-<pid>`` folder
    a run writes its result into just before swapping it in, a result that is not finished yet)."""
    out = {}
    for f in folder.glob("[!.]*/result.json"):
        r = json.loads(f.read_text())
        out[r["run_id"]] = r
    return out


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One uninterrupted smoke grid, shared by the tests below."""
    d = tmp_path_factory.mktemp("smoke-results")
    assert main(["run", "smoke", "--results-dir", str(d)]) == 0
    return d / "smoke"


def test_smoke_trains_all_seven_methods(smoke):
    res = results(smoke)
    assert len(res) == 23 and all(r["status"] == "finished" for r in res.values())
    assert {r["method"] for r in res.values()} == METHODS
    r = next(r for r in res.values() if r["method"] == "st_a")
    # provenance: resolved config, per-epoch metrics, parameter counts, versions, revision
    assert r["config"]["method"]["adapter"]["reduction_factor"] == 16
    assert len(r["history"]) >= 1 and "dev_accuracy" in r["history"][0]
    assert 0 < r["params"]["trained"] < r["params"]["total"]
    assert r["versions"]["torch"] and "revision" in r["git"] and r["seed"] == 1
    assert r["device"] == "cpu" and r["cpu_kernels"] == "fast" and r["last_layer"] == "first_token"
    assert r["data"]["train_rows"] == 48 and r["data"]["source"] == "mirror"
    mt = next(r for r in res.values() if r["method"] == "mt_a")
    assert set(mt["per_task"]) == {"rte", "cb", "socialiqa"} and mt["params"]["trained"] == mt["params"]["total"]
    for rid in res:
        files = {p.name for p in (smoke / rid).iterdir()}
        assert {"result.json", "weights.safetensors", "modules.json"} <= files
        assert not any(n.startswith(".") for n in files)
    assert json.loads((smoke / "plan.json").read_text())["experiment"] == "smoke"


def test_rerun_skips_finished_runs(smoke, capsys):
    before = {rid: r["finished_at"] for rid, r in results(smoke).items()}
    assert main(["run", "smoke", "--results-dir", str(smoke.parent)]) == 0
    assert "23 already finished, 0 to run" in capsys.readouterr().out
    assert {rid: r["finished_at"] for rid, r in results(smoke).items()} == before


def test_fusion_starts_from_the_stage1_adapters(smoke):
    res = results(smoke)
    fus = next(r for r in res.values() if r["method"] == "fusion_st_a" and r["task"] == "cb"
               and r["backbone"] == "tiny-bert")
    assert fus["sources"] == ["rte", "cb", "socialiqa"] and len(fus["deps"]) == 3
    fused = load_file(str(smoke / fus["run_id"] / "weights.safetensors"))
    for src, dep in zip(fus["sources"], fus["deps"]):
        stage1 = load_file(str(smoke / dep / "weights.safetensors"))
        keys = [k for k in stage1 if f".adapters.{src}." in k]
        assert keys and all(torch.equal(stage1[k], fused[k]) for k in keys)
    att = fus["fusion_attention"]
    assert att["adapters"] == fus["sources"] and len(att["layers"]) == 2
    fmt = next(r for r in res.values() if r["method"] == "fusion_mt_a" and r["task"] == "cb")
    assert res[fmt["deps"][0]]["method"] == "mt_a"


def test_plan_shows_runs_and_status(smoke, capsys):
    assert main(["plan", "smoke", "--results-dir", str(smoke.parent)]) == 0
    out = capsys.readouterr().out
    assert "23 runs: 23 finished" in out and "implied" in out


def test_sigkill_midway_then_rerun_finishes_each_run_once(smoke, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "smoke", "--results-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "smoke"
    deadline = time.time() + 300
    while len(list(folder.glob("[!.]*/result.json"))) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {rid: r["finished_at"] for rid, r in results(folder).items()}
    assert 0 < len(first) < 23, "the kill should land mid-grid"
    assert all(r["status"] == "finished" for r in results(folder).values())
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    after = results(folder)
    assert len(after) == 23 and all(r["status"] == "finished" for r in after.values())
    assert all(after[rid]["finished_at"] == t for rid, t in first.items()), "finished runs were redone"
    assert not list(folder.glob(".tmp-*")) and not list(folder.glob(".trash-*"))
    reference = results(smoke)
    for rid, r in after.items():  # the same metrics as the uninterrupted grid: seeds make CPU runs repeatable
        assert r["best_metric"] == reference[rid]["best_metric"], rid
        assert [h["train_loss"] for h in r["history"]] == [h["train_loss"] for h in reference[rid]["history"]], rid


def test_failed_run_is_recorded_and_the_grid_goes_on(tmp_path, capsys):
    write_experiments(tmp_path / "specs", broken_lr=tiny_experiment(
        rows=32, eval_rows=16, epochs=2, diverge=True,
        description="stage-1 adapters diverge (lr 1e30); heads must still train, fusions are blocked"))
    code = main(["run", "broken_lr", "--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 1
    res = results(tmp_path / "r" / "broken_lr")
    by = {(r["method"], r["task"]): r for r in res.values()}
    assert by[("head", "rte")]["status"] == by[("head", "cb")]["status"] == "finished"
    assert by[("st_a", "rte")]["status"] == "failed" and "NonFiniteLoss" in by[("st_a", "rte")]["error"]
    assert by[("fusion_st_a", "cb")]["status"] == "failed"
    assert "dependency failed" in by[("fusion_st_a", "cb")]["error"]
    # a run that never ran records no device or threads (it did not run on the CPU)
    assert by[("fusion_st_a", "cb")]["device"] is None and by[("fusion_st_a", "cb")]["torch_threads"] is None
    assert by[("st_a", "rte")]["device"] == "cpu"
    assert "2 trained" in out and "4 failed" in out and "FAILED" in out
    # a failed run never leaves weights that look finished
    assert not (tmp_path / "r" / "broken_lr" / by[("st_a", "rte")]["run_id"] / "weights.safetensors").exists()


def test_parallel_jobs_and_missing_weights_are_retrained(tmp_path, capsys):
    write_experiments(tmp_path / "specs", tiny_jobs=tiny_experiment())
    # compute switches are part of the run ids: a rerun must name them again
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r"), "--cpu-kernels", "stock",
            "--last-layer", "full"]
    assert main(["run", "tiny_jobs", "--jobs", "2", *args]) == 0
    folder = tmp_path / "r" / "tiny_jobs"
    res = results(folder)
    assert len(res) == 6 and all(r["status"] == "finished" for r in res.values())
    # the options reach the worker processes
    assert {(r["cpu_kernels"], r["last_layer"]) for r in res.values()} == {("stock", "full")}
    # results committed without weights: a rerun keeps them unless a pending run needs the weights
    stage1 = [rid for rid, r in res.items() if r["method"] == "st_a"]
    fusion = [rid for rid, r in res.items() if r["method"] == "fusion_st_a"]
    (folder / stage1[0] / "weights.safetensors").unlink()
    capsys.readouterr()
    assert main(["run", "tiny_jobs", *args]) == 0
    assert "6 already finished, 0 to run" in capsys.readouterr().out
    (folder / fusion[0] / "result.json").unlink()
    assert main(["run", "tiny_jobs", *args]) == 0
    out = capsys.readouterr().out
    assert "weights are missing" in out and "2 trained" in out
    assert (folder / stage1[0] / "weights.safetensors").exists()


def test_partial_dependency_weights_are_retrained_with_a_reason(tmp_path, capsys):
    from safetensors.torch import save_file

    args = _tiny_fusion(tmp_path, "tiny_heal")
    assert main(["run", "tiny_heal", *args]) == 0
    folder = tmp_path / "r" / "tiny_heal"
    res = results(folder)
    rte = next(rid for rid, r in res.items() if r["task"] == "rte")
    fusion = next(rid for rid, r in res.items() if r["method"] == "fusion_st_a")
    w = folder / rte / "weights.safetensors"
    save_file({k: v for k, v in load_file(str(w)).items() if ".adapters." not in k}, str(w))  # stripped
    (folder / fusion / "result.json").unlink()
    capsys.readouterr()
    assert main(["run", "tiny_heal", *args]) == 0
    out = capsys.readouterr().out
    assert f"{rte} is finished but its weights are partial" in out and "2 trained" in out
    assert any(".adapters.rte." in k for k in load_file(str(w)))


def test_a_full_disk_stops_the_grid_with_one_paragraph(tmp_path, capsys, monkeypatch):
    import errno

    from benchmark import paths
    from benchmark.modeling import checkpoint

    write_experiments(tmp_path / "specs", tiny_full=tiny_experiment(methods=("head", "st_a"), fusion=False))
    real, calls = checkpoint.write_atomic, []

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    def filling(path, data, **k):  # the third weights file meets a full disk where it shows: at fsync
        calls.append(path)
        if sum(p.name == checkpoint.WEIGHTS for p in calls) <= 2 or path.name != checkpoint.WEIGHTS:
            return real(path, data, **k)
        with monkeypatch.context() as full:
            full.setattr(paths.os, "fsync", no_space)
            return real(path, data, **k)

    monkeypatch.setattr(checkpoint, "write_atomic", filling)
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_full", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "the disk is full" in err and "intact" in err and "Traceback" not in err
    res = results(tmp_path / "r" / "tiny_full")
    assert sorted(r["status"] for r in res.values()) == ["failed", "finished", "finished"]  # the grid stopped
    failed = next(r for r in res.values() if r["status"] == "failed")
    assert "disk is full" in failed["error"]
    assert not list((tmp_path / "r" / "tiny_full").glob(".tmp-*"))


def test_only_runs_the_selection_and_its_dependencies_and_hashes_weights(tmp_path, capsys):
    write_experiments(tmp_path / "specs", tiny_only=tiny_experiment())
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_only", "--only", "cb__fusion_st_a*", *args]) == 0
    res = results(tmp_path / "r" / "tiny_only")
    assert sorted((r["method"], r["task"]) for r in res.values()) == [
        ("fusion_st_a", "cb"), ("st_a", "cb"), ("st_a", "rte")]  # the fusion run and the adapters it reads
    assert "6 runs (3 selected with --only)" in capsys.readouterr().out
    st_a = next(rid for rid, r in res.items() if r["method"] == "st_a")
    from benchmark.runner.execute import weights_problem

    assert weights_problem(tmp_path / "r" / "tiny_only" / st_a) is None
    w = tmp_path / "r" / "tiny_only" / st_a / "weights.safetensors"
    state = load_file(str(w))
    k = next(iter(state))
    state[k] = state[k] + 1.0  # same names and shapes, other numbers: only the hash can tell
    from safetensors.torch import save_file

    save_file(state, str(w))
    assert "sha256 differs" in weights_problem(tmp_path / "r" / "tiny_only" / st_a)
    assert main(["run", "tiny_only", "--only", "nothing*", *args]) == 2
    assert "matches no run" in capsys.readouterr().err


def _tiny_fusion(tmp_path, name="tiny_mig"):
    write_experiments(tmp_path / "specs", **{name: tiny_experiment(tasks=("cb",), methods=("fusion_st_a",))})
    return ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]


def _to_scheme1(folder: Path, res: dict) -> dict[str, str]:
    """Turn scheme-2 results back into what an older version wrote: other ids, no id_scheme."""
    old = {rid: rid.rsplit("__", 1)[0] + "__0ld" + rid[-4:] for rid in res}
    for rid, r in res.items():
        r = dict(r, run_id=old[rid], deps=[old[d] for d in r["deps"]])
        r.pop("id_scheme", None)
        (folder / rid / "result.json").write_text(json.dumps(r))
        (folder / rid).rename(folder / old[rid])
    return old


def test_migration_round_trips_and_survives_an_interruption(tmp_path, capsys):
    args = _tiny_fusion(tmp_path)
    assert main(["run", "tiny_mig", *args]) == 0
    folder = tmp_path / "r" / "tiny_mig"
    res = results(folder)
    old = _to_scheme1(folder, res)
    stage1 = next(rid for rid, r in res.items() if r["task"] == "rte")
    (folder / old[stage1]).rename(folder / stage1)  # a crash after renaming, before rewriting result.json
    assert main(["migrate", "tiny_mig", *args]) == 0
    after = results(folder)
    assert set(after) == set(res)  # every result back under the id the current plan gives it
    assert all(after[rid]["deps"] == res[rid]["deps"] and after[rid]["migrated_from"] == old[rid] for rid in res)
    plan_file = folder / "plan.json"
    plan_file.write_text(plan_file.read_text() + "\n")  # as a committed plan.json of an older schema would be
    before = plan_file.read_bytes()
    assert main(["migrate", "tiny_mig", *args]) == 0  # nothing left to rename: nothing is rewritten
    assert plan_file.read_bytes() == before
    stale = json.loads(before)  # a crash after the renames, before plan.json was written: it lists old ids
    stale["runs"] = [{**r, "id": old.get(r["id"], r["id"])} for r in stale["runs"]]
    plan_file.write_text(json.dumps(stale))
    assert main(["migrate", "tiny_mig", *args]) == 0
    assert [r["id"] for r in json.loads(plan_file.read_text())["runs"]] == [r["id"] for r in json.loads(before)["runs"]]
    capsys.readouterr()
    assert main(["run", "tiny_mig", *args]) == 0
    assert "3 already finished, 0 to run" in capsys.readouterr().out


def test_an_error_that_is_not_storage_fails_one_run_not_the_grid(tmp_path, capsys, monkeypatch):
    from benchmark.training import recipe

    args = _tiny_fusion(tmp_path, "tiny_net")
    real = recipe.execute

    def flaky(run, ctx, out_dir):
        if run.task == "rte":
            raise ConnectionError("the Hub hung up")  # an OSError, but no disk is full
        return real(run, ctx, out_dir)

    monkeypatch.setattr("benchmark.runner.execute.execute", flaky)
    assert main(["run", "tiny_net", *args]) == 1  # failures, not a stopped grid (2)
    res = results(tmp_path / "r" / "tiny_net")
    by = {(r["method"], r["task"]): r for r in res.values()}
    assert "ConnectionError: the Hub hung up" in by[("st_a", "rte")]["error"]
    assert by[("st_a", "cb")]["status"] == "finished"
    assert "dependency failed" in by[("fusion_st_a", "cb")]["error"]


def test_report_finds_runs_trained_with_command_line_switches(tmp_path, capsys):
    """The report reads the switches from the records: it takes no training flag."""
    args = _tiny_fusion(tmp_path, "tiny_flags")
    assert main(["run", "tiny_flags", "--cpu-kernels", "stock", *args]) == 0
    out = ["--out-dir", str(tmp_path / "rep")]
    assert main(["report", "tiny_flags", *args, *out]) == 0
    md = (tmp_path / "rep" / "tiny_flags.md").read_text()
    assert "| cb |" in md and "not run" not in md
    with pytest.raises(SystemExit):
        main(["report", "tiny_flags", "--cpu-kernels", "stock", *args, *out])


def test_fusion_over_mt_a_starts_right_after_mt_a_then_seed_by_seed(registry):
    """minilm_table1's shape (three seeds; each seed's Fusion w/ MT-A runs read that seed's MT-A run,
    ``adapter_seed: matched``), started one at a time as the scheduler does (the first ready run in
    start order): a seed's four Fusion w/ MT-A runs right after its MT-A run, and otherwise every run of
    a seed before the next seed's."""
    from benchmark.plan.build import build_plan
    from benchmark.plan.order import start_order

    plan = build_plan(registry, registry.experiments["minilm_table1"], available=lambda _task: None)
    pending, done, started = start_order(plan.runs), set(), []
    while pending:
        r = next(x for x in pending if all(d in done for d in x.deps))
        pending.remove(r)
        done.add(r.id)
        started.append(r)
    assert sorted(r.id for r in started) == sorted(r.id for r in plan.runs)
    for seed in (42, 43, 44):
        i = next(i for i, r in enumerate(started) if r.kind.multitask and r.seed == seed)
        readers = started[i + 1:i + 5]
        assert all(started[i].id in r.deps and r.kind.depends_on == "mt_a" for r in readers)
        assert [r.seed for r in readers] == [seed] * 4
    rest = [r for r in started if r.kind.depends_on != "mt_a"]
    assert [r.seed for r in rest] == sorted(r.seed for r in rest)
