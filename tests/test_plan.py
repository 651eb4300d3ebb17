"""The planner: implied runs, adapter seeds, reduction-factor sweeps, and run ids that change exactly when a
result would (prose edits never, a learning rate always)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.plan.build import Options, build_plan
from benchmark.spec import load_registry
from conftest import MIRROR, ROOT, needs_mirror


def _specs(tmp_path: Path, experiment: str) -> Path:
    """A private copy of the project's specs plus one experiment (so tests may edit any file)."""
    specs = tmp_path / "specs"
    shutil.copytree(ROOT / "specs", specs)
    (specs / "experiments" / "probe.yaml").write_text(textwrap.dedent(experiment))
    return specs


def _registry(specs: Path):
    return load_registry([specs], include_default=False)


def _plan(specs: Path, name: str = "probe", data_root=None, **options):
    reg = _registry(specs)
    return build_plan(reg, reg.experiments[name], data_root=data_root, options=Options(**options))


GRID = """
    backbones: [tiny-bert]
    seeds: [1, 2]
    groups:
      - tasks: [rte, cb]
        methods: [head, {method: st_a, reduction_factor: [2, 16]}, fusion_st_a, fusion_mt_a]
    fusion: {sources: [rte, cb, socialiqa], adapter_seed: matched}
    mt_a: {tasks: [rte, cb]}
    caps: {max_train_rows: 16, max_eval_rows: 8, max_epochs: 1}
"""


def test_plan_expands_the_grid_with_implied_runs(tmp_path):
    plan = _plan(_specs(tmp_path, GRID))
    by = {}
    for r in plan.runs:
        by.setdefault((r.label, r.task), []).append(r)
    # 2 seeds x 2 tasks for head, st_a rf2, st_a rf16, fusion_st_a, fusion_mt_a; the sweep labels carry the rf
    for label in ("head", "st_a_rf2", "st_a_rf16", "fusion_st_a_rf16", "fusion_mt_a"):
        assert len(by[(label, "rte")]) == len(by[(label, "cb")]) == 2, label
    # stage-1 sources: socialiqa is implied (not a grid task); rte/cb rf16 ST-A are the grid runs themselves
    social = by[("st_a_rf16", "socialiqa")]
    assert len(social) == 2 and all(r.implied for r in social)
    assert not any(r.implied for r in by[("st_a_rf16", "rte")])
    fusion = by[("fusion_st_a_rf16", "cb")][0]
    ids = plan.by_id()
    assert fusion.sources == ["rte", "cb", "socialiqa"]
    assert [ids[d].task for d in fusion.deps] == fusion.sources
    assert all(ids[d].seed == fusion.seed for d in fusion.deps)  # adapter_seed: matched
    # one implied MT-A run per seed, over the mt_a tasks; fusion_mt_a reads it
    mt = [r for r in plan.runs if r.label == "mt_a_rf16"]
    assert len(mt) == 2 and all(r.implied and r.tasks == ["rte", "cb"] and r.task is None for r in mt)
    fmt = by[("fusion_mt_a", "rte")][0]
    assert ids[fmt.deps[0]].label == "mt_a_rf16" and fmt.sources == ["rte", "cb"]
    # dependencies come first
    pos = {r.id: i for i, r in enumerate(plan.runs)}
    assert all(pos[d] < pos[r.id] for r in plan.runs for d in r.deps)
    assert len(pos) == len(plan.runs)  # ids unique


def test_a_fixed_adapter_seed_shares_stage1_runs_across_seeds(tmp_path):
    plan = _plan(_specs(tmp_path, GRID.replace("adapter_seed: matched", "adapter_seed: 7")))
    stage1 = [r for r in plan.runs if r.label == "st_a_rf16" and r.task == "socialiqa"]
    assert len(stage1) == 1 and stage1[0].seed == 7
    deps = {tuple(r.deps) for r in plan.runs if r.label == "fusion_st_a_rf16" and r.task == "cb"}
    assert len(deps) == 1  # both seeds' fusion runs read the same adapters


def test_an_adapter_seed_entry_is_its_own_column_and_keeps_the_shared_ids(tmp_path):
    """{method: fusion_st_a, adapter_seed: 1} beside the matched default: its seed-2 runs are exactly the runs
    an experiment with adapter_seed: 1 plans (same ids), its seed-1 run is the matched seed-1 run (one run,
    two columns), and the plan record and the report's cells carry the variant column."""
    from benchmark.records import RunRecord
    from benchmark.report.aggregate import collect

    both = GRID.replace("fusion_st_a, fusion_mt_a]", "fusion_st_a, fusion_mt_a, {method: fusion_st_a, adapter_seed: 1}]")
    plan = _plan(_specs(tmp_path / "a", both))
    shared = _plan(_specs(tmp_path / "b", GRID.replace("adapter_seed: matched", "adapter_seed: 1")))
    cols = {r.id: r.report_columns for r in plan.runs if r.kind.name == "fusion_st_a"}
    want = {r.id for r in shared.runs if r.kind.name == "fusion_st_a"}
    assert want <= set(cols)
    assert sorted(map(tuple, (cols[i] for i in want))) == sorted(
        [("fusion_st_a_rf16", "fusion_st_a_rf16@s1")] * 2 + [("fusion_st_a_rf16@s1",)] * 2)
    record = plan.record()
    fake = [RunRecord(run_id=r.id, status="finished", label=r.label, backbone=r.backbone, seed=r.seed, task=r.task,
                      best_metric=50.0 + r.seed, experiment="probe", method_kind=r.kind)
            for r in record.runs if r.kind == "fusion_st_a"]
    col = collect(fake, record, "probe")
    assert col.cells[("tiny-bert", "rte", "fusion_st_a_rf16@s1")].seeds == [1, 2]
    assert col.cells[("tiny-bert", "rte", "fusion_st_a_rf16")].seeds == [1, 2]
    assert col.kind_of("fusion_st_a_rf16@s1") == "fusion_st_a"


def test_adapter_seed_on_a_method_without_dependencies_is_an_error(tmp_path):
    from benchmark.errors import SpecError
    from benchmark.spec.registry import check_references

    specs = _specs(tmp_path, GRID.replace("methods: [head,", "methods: [{method: head, adapter_seed: 1},"))
    with pytest.raises(SpecError, match="adapter_seed"):
        check_references(_registry(specs))


def _ids(plan) -> dict[tuple, str]:
    return {(r.label, r.task, r.seed, tuple(r.tasks)): r.id for r in plan.runs}


def test_prose_edits_keep_every_run_id(tmp_path):
    specs = _specs(tmp_path, GRID)
    before = _ids(_plan(specs))
    for f in ("tasks/rte.yaml", "tasks/cb.yaml", "methods/st_a.yaml", "methods/fusion_st_a.yaml",
              "backbones/tiny-bert.yaml"):
        p = specs / f
        text = p.read_text()
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("description:"))
        notes = "" if "backbones" in f else "notes: a new note\n"
        p.write_text(text + "\ndescription: edited prose, nothing else\n" + notes)
    rte = specs / "tasks/rte.yaml"
    rte.write_text(rte.read_text().replace("paper: {order: 15, train_size: 2490, group: low}",
                                           "paper: {group: low, train_size: 2490, order: 15}"))  # key order
    exp = specs / "experiments/probe.yaml"
    exp.write_text(exp.read_text() + "description: a described experiment\nnotes: with notes\n")
    assert _ids(_plan(specs)) == before


def test_a_learning_rate_edit_changes_exactly_the_affected_ids(tmp_path):
    specs = _specs(tmp_path, GRID)
    before = _ids(_plan(specs))
    p = specs / "methods/fusion_st_a.yaml"
    p.write_text(p.read_text() + "train: {lr: 6.0e-5}\n")  # merged over _fusion_defaults.yaml's 5e-5
    after = _ids(_plan(specs))
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {k for k in before if k[0] == "fusion_st_a_rf16"}


def test_a_stage1_change_propagates_to_the_fusion_runs_that_read_it(tmp_path):
    specs = _specs(tmp_path, GRID)
    before = _ids(_plan(specs))
    p = specs / "tasks/socialiqa.yaml"
    p.write_text(p.read_text().replace("max_length: 128", "") + "max_length: 96\n")
    after = _ids(_plan(specs))
    changed = {k[0] for k in before if before[k] != after[k]}
    assert changed == {"st_a_rf16", "fusion_st_a_rf16"}  # socialiqa's adapter, and fusion through its deps


def test_compute_switches_batching_and_selection_are_part_of_the_id(tmp_path):
    specs = _specs(tmp_path, GRID)
    base = _ids(_plan(specs))
    for opts in ({"cpu_kernels": "stock"}, {"last_layer": "full"}, {"batching": "shuffled"}):
        assert not set(_ids(_plan(specs, **opts)).values()) & set(base.values()), opts
    exp = specs / "experiments/probe.yaml"
    exp.write_text(exp.read_text() + "selection: heldout\n")
    assert not set(_ids(_plan(specs)).values()) & set(base.values())
    # the first-token last layer only exists for [CLS] heads: under mean pooling it cannot change a result
    mean = specs / "backbones/tiny-bert.yaml"
    mean.write_text(mean.read_text() + "pooling: mean\n")
    assert _ids(_plan(specs)) == _ids(_plan(specs, last_layer="full"))


@needs_mirror
def test_data_fingerprints_are_contents_not_paths(tmp_path):

    specs = _specs(tmp_path, GRID)
    copy = tmp_path / "mirror"
    shutil.copytree(MIRROR / "nyu-mll__glue" / "rte", copy / "nyu-mll__glue" / "rte")
    shutil.copytree(MIRROR / "aps__super_glue", copy / "aps__super_glue")
    shutil.copytree(MIRROR / "allenai__social_i_qa", copy / "allenai__social_i_qa")
    a = _ids(_plan(specs, data_root=MIRROR))
    assert a == _ids(_plan(specs, data_root=copy))  # same bytes elsewhere: same ids
    import pyarrow.parquet as pq

    f = copy / "nyu-mll__glue" / "rte" / "train.parquet"
    t = pq.read_table(f)
    pq.write_table(t.slice(0, t.num_rows - 1), f)  # one row fewer
    b = _ids(_plan(specs, data_root=copy))
    assert {k[1] for k in a if a[k] != b[k]} >= {"rte"} and all(a[k] == b[k] for k in a if k[0] == "head"
                                                                and k[1] == "cb")


@needs_mirror
def test_committed_results_are_all_found_by_the_current_plan(capsys):
    """Acceptance of the run-id scheme: every committed experiment's plan finds all its results."""
    for exp, n in (("quick", 47), ("minilm_rte_cb", 5), ("minilm_rte_cb_long", 7), ("minilm_rte_mnli", 3),
                   ("minilm_rte_paper_lr", 1), ("minilm_batching", 6)):
        assert main(["plan", exp, "--results-dir", str(ROOT / "results")]) == 0
        assert f"{n} runs: {n} finished" in capsys.readouterr().out, exp
    # minilm_table1 trains across sessions: whatever is committed must be part of its current plan
    reg = load_registry()
    planned = {r.id for r in build_plan(reg, reg.experiments["minilm_table1"], data_root=MIRROR).runs}
    on_disk = {p.parent.name for p in (ROOT / "results" / "minilm_table1").glob("*/result.json")}
    assert on_disk <= planned, sorted(on_disk - planned)


def test_migration_renames_old_ids_by_content(tmp_path, capsys, monkeypatch):
    """A scheme-1 result (id hashed with prose) gets its scheme-2 id from what it stored."""
    import json

    specs = _specs(tmp_path, """
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{tasks: [rte], methods: [st_a]}]
        caps: {max_train_rows: 8, max_eval_rows: 8, max_epochs: 1, max_length: 32}
        batching: shuffled
        compute: {cpu_kernels: stock, last_layer: full}  # what a scheme-1 result without records trained with
    """)
    (run,) = _plan(specs, data_root=MIRROR).runs
    old_cfg = run.config(_registry(specs))
    for k in ("task_caps", "selection", "compute", "data"):  # what scheme-1 results did not store
        old_cfg.pop(k)
    old_cfg["method"]["train"].pop("batching")
    old_id = "rte__st_a_rf16__tiny-bert__s1__0123abcd"
    folder = tmp_path / "results" / "probe" / old_id
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "status": "finished", "run_id": old_id, "experiment": "probe", "task": "rte", "tasks": ["rte"],
        "label": "st_a_rf16", "backbone": "tiny-bert", "seed": 1, "deps": [], "config": old_cfg,
        "best_metric": 50.0}))
    monkeypatch.setenv("AFBENCH_SPECS", str(specs))
    args = ["--results-dir", str(tmp_path / "results")]
    assert main(["plan", "probe", *args]) == 0
    assert "1 runs: 1 pending" in capsys.readouterr().out
    assert main(["migrate", "probe", *args]) == 0
    assert main(["plan", "probe", *args]) == 0
    assert "1 runs: 1 finished" in capsys.readouterr().out
    moved = json.loads((tmp_path / "results" / "probe" / run.id / "result.json").read_text())
    assert moved["migrated_from"] == old_id and moved["id_scheme"] == 2


@pytest.mark.parametrize("busy,ngpu,want", [([], 4, 0), ([0], 4, 1), ([0, 1, 2, 3], 4, 0), ([1, 0, 3], 4, 2),
                                            ([0, 0, 1], 2, 1)])
def test_a_job_never_shares_a_gpu_while_another_is_free(busy, ngpu, want):
    from benchmark.runner.execute import free_gpu

    assert free_gpu(busy, ngpu) == want


@needs_mirror
def test_data_drift_names_each_evaluated_dev_split_that_differs_here_once(registry):
    """``plan.build.data_drift`` (prune and speed): only a run's own dev split counts; equal fingerprints say nothing,
    another file says "other rows", a Hub id against a file says they cannot be compared."""
    from types import SimpleNamespace

    from benchmark.data.sources import task_fingerprints
    from benchmark.plan.build import data_drift

    here = task_fingerprints(registry.tasks["rte"], MIRROR)
    run = lambda dev, train="sha256:0": SimpleNamespace(task="rte", data={"rte": {"validation": dev, "train": train},  # noqa: E731
                                                                         "mnli": {"validation_matched": "sha256:0"}})
    assert data_drift(registry, [run(here["validation"])], MIRROR) == []  # train and a source's data are not read
    [line] = data_drift(registry, [run("sha256:0"), run("sha256:1")], MIRROR)  # once per task
    assert "task 'rte', split 'validation'" in line and ", other rows;" in line and "--data-dir" in line
    [line] = data_drift(registry, [run("hub:nyu-mll/glue:rte:validation")], MIRROR)
    assert "cannot be compared" in line and "other rows" not in line
    assert data_drift(registry, [SimpleNamespace(task="gone", data={})], MIRROR) == []
