"""The composition table (issue 36): a fusion column and the variant columns of its kind that compose the same
sources another way (static mixing, weight merges), found from what the runs recorded, each row's accuracy,
difference from the fusion column (Table 1's variant comparison, not a second computation) and cost."""

from __future__ import annotations

import json
import statistics

import pytest
from test_report import check_markdown_tables, handmade, make_result  # noqa: F401 - handmade: the fixture

from benchmark import methods, records
from benchmark.report import build as report_build
from benchmark.report.paired import SENSITIVITY
from benchmark.runner.results import write_json_atomic
from conftest import MIRROR, ROOT, needs_mirror

HEADING = "## Composition table"
PAPER = str(ROOT / "benchmark" / "paper" / "adapterfusion_eacl2021.yaml")


def _records(experiment: str) -> dict[str, dict]:
    """Every result.json of a committed experiment of the seeds its report uses (``report_seeds``), read as plain
    JSON (not through the reporter's reader)."""
    from benchmark.spec import load_registry

    seeds = load_registry().experiments[experiment].report_seeds
    out = {}
    for p in sorted((ROOT / "results" / experiment).glob("*/result.json")):
        r = json.loads(p.read_text())
        if seeds is None or r["seed"] in seeds:
            out[r["run_id"]] = r
    return out


def _mixing(r: dict) -> str | None:
    fusion = ((r.get("config") or {}).get("method") or {}).get("fusion")
    return (fusion.get("mixing") or "attention") if isinstance(fusion, dict) else None


def _stats(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


@needs_mirror
def test_minilm_table1_composition_rows_recomputed_from_the_records(tmp_path):
    """The committed minilm_table1 results: one row per composition method (Fusion w/ ST-A first, then every label
    whose records compose the same seed's sources another way), each cell recomputed here from result.json: mean ±
    sd and n per task, the mean over tasks, Δ over the seeds both ran (the same comparison Table 1 prints for the
    variant), mean trainable parameters, training seconds and peak RSS."""
    from benchmark.spec import load_registry

    reg = load_registry()
    data = report_build.build_data(reg, "minilm_table1", ROOT / "results", PAPER, data_root=MIRROR)
    recs = _records("minilm_table1")
    fin = [r for r in recs.values() if r["status"] == "finished" and r.get("role", "grid") == "grid"]
    composed = [r for r in fin if _mixing(r) not in (None, "attention")]
    assert composed, "minilm_table1 has static-mixing and merge results committed"
    kinds = {r["method_kind"] for r in composed}
    assert len(kinds) == 1
    base = methods.KINDS[kinds.pop()].columns["table1"][0].label
    # the fusion column: its runs over their own seed's adapters (the shared-adapter column reads seed 42's)
    main = [r for r in fin if r["label"] == base and all(recs[d]["seed"] == r["seed"] for d in r["deps"])]
    labels = sorted({r["label"] for r in composed})
    by_label = {base: main} | {lb: [r for r in composed if r["label"] == lb] for lb in labels}

    [view] = data.composition
    assert view.backbone == "minilm-l6" and view.rows[0].label == base
    assert view.rows[0].name.startswith(methods.KINDS[main[0]["method_kind"]].columns["table1"][0].name)
    assert sorted(r.label for r in view.rows[1:]) == labels  # every composition label, each once
    table1 = next(t for t in data.tables if t.key == "table1")
    for row in view.rows:
        runs = by_label[row.label]
        assert len(row.runs) == len(runs) and {r.run_id for r in row.runs} == {r["run_id"] for r in runs}
        first = runs[0]
        fusion = first["config"]["method"]["fusion"]
        assert ("LoRA sources" in row.name) == (fusion.get("source_method") == "lora")  # its Δ holds adapter -> LoRA
        if first.get("merge"):
            how = first["merge"]["how"]
            assert "merge" in row.name and how.split("_")[0].lower() in row.name.lower()
            assert row.name.endswith("(head only)") != bool(first["merge"]["train_adapter"])
        elif first.get("lorahub"):  # its searched weights are a record entry, as a merge's settings are
            assert row.name == "LoraHub weights over LoRA sources (head only)"
        elif row.label != base:
            assert row.name == f"{_mixing(first).capitalize()} mixing"
        means = []
        for t, c in zip(view.tasks, row.cells, strict=True):
            acc = {r["seed"]: r["best_metric"] for r in runs if r["task"] == t}
            assert c.n == len(acc) and c.mean == pytest.approx(statistics.fmean(acc.values()))
            assert c.std == pytest.approx(statistics.stdev(acc.values()))
            means.append(statistics.fmean(acc.values()))
            j = table1.labels.index(row.label)
            # ‡ too, as Table 1 marks it; not Table 1's † (beyond seed noise against ST-A: not this table's comparison)
            assert next(r for r in table1.rows if r.task == t).cells[j].text.replace("†", "") == c.text
            assert c.text.removesuffix("‡") == _stats(list(acc.values()))
        assert row.mean.mean == pytest.approx(statistics.fmean(means)) and row.mean.n == len(view.tasks)
        for t, x in zip(view.tasks, row.deltas, strict=True):
            if row.label == base:
                assert x is None
                continue
            mine = {r["seed"]: r["best_metric"] for r in runs if r["task"] == t}
            ref = {r["seed"]: r["best_metric"] for r in main if r["task"] == t}
            common = sorted(set(mine) & set(ref))
            assert x.comparison.n == len(common) and x.family == SENSITIVITY and x.p is None
            assert x.comparison.delta == pytest.approx(statistics.fmean(mine[s] - ref[s] for s in common))
            assert x.comparison.low <= x.comparison.delta <= x.comparison.high
            j = table1.labels.index(row.label)  # Table 1's comparison of the variant with its kind's column
            assert next(r for r in table1.rows if r.task == t).cells[j].test.text() == x.text()
        trained = [r["params"]["trained"] for r in runs]
        secs = [r["train_seconds"] for r in runs]
        rss = [r["memory"]["peak_rss_bytes"] / 2**20 for r in runs]
        assert row.params == f"{statistics.fmean(trained):,.0f}"
        assert row.train_seconds == f"{statistics.fmean(secs):.1f}"
        assert row.peak_rss == f"{statistics.fmean(rss):.0f}"
    notes = " ".join(view.notes)
    for row in view.rows:  # each merge row's settings, as its records hold them
        merge = next((r["merge"] for r in by_label[row.label] if r.get("merge")), None)
        if merge:
            said = ", ".join(f"{name} {merge[key]:g}" for name, key in (("density", "density"), ("lambda", "weight"))
                             if merge[key] is not None) or "the plain mean"
            assert f"{row.name} {said}" in notes, row.name
    timed = records.read_speed(ROOT / "results" / "minilm_table1")  # afbench speed's measurement, if committed
    if timed is None:
        assert "Inference ex/s (over the N = 11 sources): not measured" in notes
        assert all(r.inference == "—" for r in view.rows)
    else:  # each row: per task timed for the fusion row the median over its runs, then the mean over the tasks
        runs = timed.runs
        tasks = sorted({runs[r["run_id"]].task for r in main if r["run_id"] in runs})
        for row in view.rows:
            eps = {t: [runs[r["run_id"]].examples_per_second for r in by_label[row.label]
                       if r["run_id"] in runs and runs[r["run_id"]].task == t] for t in tasks}
            want = f"{statistics.fmean(statistics.median(v) for v in eps.values()):.1f}" if all(eps.values()) else "—"
            assert row.inference.split(" (")[0] == want, (row.label, row.inference, want)
        assert f"on the {', '.join(tasks)} dev split" in notes and timed.drift_guard["verdict"] in notes
    cpus = {r["cpu_model"] for rs in by_label.values() for r in rs}
    assert all(c in notes for c in cpus)
    n_sources = {len(r["sources"]) for r in composed}
    assert f"N = {n_sources.pop()}" in notes

    out = tmp_path / "reports"
    report_build.build_reports(reg, "minilm_table1", results_dir=str(ROOT / "results"), out_dir=out,
                               paper_file=PAPER, data_root=MIRROR)
    md = (out / "minilm_table1.md").read_text()
    section = md[md.index(HEADING):md.index("## Where fusion attends")]
    check_markdown_tables(section)
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and "`" in ln]
    assert len(lines) == len(view.rows)
    for line, row in zip(lines, view.rows, strict=True):
        assert line.startswith(f"| {row.name} | `{row.label}` |")
        assert all(f"{c.text} <sup>n={c.n}</sup>" in line for c in row.cells)
        assert all(x.text(test=False) in line for x in row.deltas if x)
    assert md.index("## The paper's findings") < md.index(HEADING)  # after the paper's tables
    assert (out / "minilm_table1_files" / "composition-minilm-l6.tex").exists()


@needs_mirror
def test_an_experiment_without_composition_columns_has_no_composition_table(tmp_path):
    """minilm_bf16 has a variant of the fusion kind (fusion in bf16), which composes its sources by fusion's attention
    as the kind's column does: no composition table."""
    from benchmark.spec import load_registry

    reg = load_registry()
    recs = _records("minilm_bf16").values()
    assert any(_mixing(r) == "attention" for r in recs) and not any(_mixing(r) not in (None, "attention")
                                                                     for r in recs)
    data = report_build.build_data(reg, "minilm_bf16", ROOT / "results", PAPER, data_root=MIRROR)
    assert data.composition == []
    out = tmp_path / "reports"
    report_build.build_reports(reg, "minilm_bf16", results_dir=str(ROOT / "results"), out_dir=out, paper_file=PAPER,
                               data_root=MIRROR)
    assert HEADING not in (out / "minilm_bf16.md").read_text()
    assert "Composition table" not in (out / "minilm_bf16.html").read_text() + (out / "minilm_bf16.tex").read_text()
    assert not list((out / "minilm_bf16_files").glob("composition-*"))


def _variant(task: str, label: str, seed: int, value: float, fusion: dict, **extra) -> dict:
    r = make_result(task, "fusion_st_a_rf16", seed, value)
    r.pop("fusion_attention", None)  # fusion's attention: only where ``extra`` has its own
    return r | {
        "run_id": f"{task}__{label}__minilm-l6__s{seed}__x", "label": label, "method": label.rsplit("_rf", 1)[0],
        "config": {"method": {"fusion": fusion}}, "params": {"trained": 1000 + seed},
        "train_seconds": 10.0 * seed, "memory": {"peak_rss_bytes": seed * 2**20}, "cpu_model": "CPU X",
        "torch_threads": 1, **extra}


def test_composition_rows_come_from_the_records_not_from_labels(registry, handmade):  # noqa: F811 - the fixture
    """Labels the reporter has never seen: a static-mixing variant, a merge variant (a merge entry, how and
    train_adapter named in the row) and a fusion variant over other adapters (attention: not a row). Without the
    first two the handmade report has no composition table."""
    assert report_build.build_data(registry, "handmade", handmade, None).composition == []
    folder = handmade / "handmade"
    plan = json.loads((folder / "plan.json").read_text())
    values = {"rte": [70.0, 71.0, 75.0], "cb": [81.0, 79.0, 86.0]}
    merge = {"how": "task_arithmetic", "weight": 0.4, "sources": ["mnli", "rte", "cb"], "source_seed": 1,
             "base": "init", "train_adapter": True}
    for label, fusion, extra in (
            ("mixed_rf16", {"mixing": "static"}, {"fusion_attention": {"adapters": ["mnli", "rte", "cb"],
                                                                        "layers": [[0.4, 0.3, 0.3]], "mixing": "static"}}),
            ("merged_rf16", {"mixing": "merge", "merge": {"how": "task_arithmetic"}}, {"merge": merge}),
            ("other_adapters_rf16", {"type": "dynamic"}, {})):
        for task, vals in values.items():
            for seed, v in enumerate(vals, 1):
                r = _variant(task, label, seed, v, fusion, **extra)
                write_json_atomic(folder / r["run_id"] / "result.json", r)
                plan["runs"].append({"id": r["run_id"], "task": task, "tasks": [], "label": label,
                                     "backbone": "minilm-l6", "seed": seed, "role": "grid"})
    write_json_atomic(folder / "plan.json", plan)
    data = report_build.build_data(registry, "handmade", handmade, None)
    [view] = data.composition
    assert [(r.name, r.label) for r in view.rows] == [
        ("Fusion w/ ST-A (attention)", "fusion_st_a_rf16"), ("Static mixing", "mixed_rf16"),
        ("Task arithmetic merge (merged adapter and head trained)", "merged_rf16")]
    assert view.tasks[-2:] == ["rte", "cb"]  # in the paper's order, with the tasks only the fusion column has
    fusion = {"rte": [76.0, 77.0, 78.0], "cb": [80.1, 80.1, 86.0]}  # test_report.VALUES
    table1 = next(t for t in data.tables if t.key == "table1")
    for row in view.rows[1:]:
        for t, x in zip(view.tasks, row.deltas, strict=True):
            if t not in values:
                assert x is None and row.cells[view.tasks.index(t)].mean is None
                continue
            assert x.comparison.delta == pytest.approx(statistics.fmean(a - b for a, b in zip(values[t], fusion[t])))
            assert x.comparison.level == "seeds" and x.comparison.n == 3
            j = table1.labels.index(row.label)
            assert next(r for r in table1.rows if r.task == t).cells[j].test.text() == x.text()
        assert (row.params, row.train_seconds, row.peak_rss) == ("1,002", "20.0", "2")
    assert view.rows[0].params == "not recorded"  # the handmade fusion runs record no cost
    assert "every Δ here is seed-level" in " ".join(view.notes)
    assert "Static mixing are shown beside Fusion w/ ST-A's attention" in " ".join(view.notes)

    # afbench speed's measurement (records.SPEED) fills the inference column: each row's median over its runs timed
    # on the tasks timed for the first row (rte here), so no row is read on other dev rows than fusion's
    assert [r.inference for r in view.rows] == ["—"] * 3
    assert any(n.startswith("Inference ex/s (over the sources): not measured") for n in view.notes)
    timed = {x.run_id: {"task": x.task, "seed": x.seed, "examples_per_second": (999.0 if x.task != "rte" else
                                                                                  base + x.seed)}
             for row, base in zip(view.rows, (10.0, 40.0, 30.0)) for x in row.runs
             if x.task == "rte" or row is not view.rows[0]}
    write_json_atomic(folder / "inference_speed.json", {
        "rounds": 3, "runs": timed, "provenance": {"machine": "CPU X, 2 threads", "date": "D", "git": {}},
        "drift_guard": {"verdict": "trustworthy", "change": 0.02}})
    view = report_build.build_data(registry, "handmade", handmade, None).composition[0]
    assert [r.inference for r in view.rows] == ["12.0", "42.0", "32.0"]
    note = next(n for n in view.notes if n.startswith("Inference ex/s"))
    assert "on the rte dev split" in note and "CPU X, 2 threads" in note and "trustworthy (fp32 GEMM peak +2.0%)" in note
    assert "static mixing computed each adapter's output in turn" in note  # timed before it served stacked
    write_json_atomic(folder / "inference_speed.json", {
        "rounds": 3, "runs": timed, "weights": "frozen", "static_mixing": "stacked", "provenance": {},
        "drift_guard": {"verdict": "trustworthy"}})
    note = next(n for n in report_build.build_data(registry, "handmade", handmade, None).composition[0].notes
                if n.startswith("Inference ex/s"))
    assert "every weight frozen" in note and "both run the N down projections as one matmul" in note
    # fusion timed on rte and cb: per task the median, then the mean over the tasks; a row timed on cb only has none
    # (cb's shorter dev rows would make it look faster than a row timed on both)
    for x in view.rows[0].runs:
        if x.task == "cb":
            timed[x.run_id] = {"task": x.task, "seed": x.seed, "examples_per_second": 100.0}
    timed = {k: v for k, v in timed.items() if not (k in {x.run_id for x in view.rows[1].runs} and v["task"] == "rte")}
    write_json_atomic(folder / "inference_speed.json", {"rounds": 3, "runs": timed,
                                                         "drift_guard": {"trustworthy": False, "change": 0.3}})
    view = report_build.build_data(registry, "handmade", handmade, None).composition[0]
    assert [r.inference for r in view.rows] == ["56.0 (untrustworthy)", "—", "515.5 (untrustworthy)"]
    assert any(n.startswith("UNTRUSTWORTHY timings") and "on the cb, rte dev split" in n
               for n in view.notes)
    # a file that is not afbench speed's measurement: the report says so in the note, the rest renders
    for bad in ({"runs": {"x": {"task": "rte", "seed": 1}}}, {"runs": [1]}, "not json"):
        (folder / "inference_speed.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
        view = report_build.build_data(registry, "handmade", handmade, None).composition[0]
        assert [r.inference for r in view.rows] == ["—"] * 3
        assert any(n.startswith("Inference ex/s: not shown, inference_speed.json is not readable") and "Fix:" in n
                   for n in view.notes), view.notes
