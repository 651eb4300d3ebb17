"""The reporter on a hand-made results folder with known means, stds, seeds, a missing cell and a failed run."""

from __future__ import annotations

import json
import statistics

import pytest

from benchmark.cli import main
from benchmark.report.build import build_data, paper_numbers
from benchmark.report.tables import arrow, welch_p
from benchmark.runner.results import write_json_atomic

# task -> column label -> per-seed accuracies (seeds 1, 2, 3)
VALUES = {
    "rte": {"st_a_rf16": [70.0, 72.0, 74.0], "fusion_st_a_rf16": [76.0, 77.0, 78.0], "head": [60.0, 61.0, 62.0]},
    "cb": {"st_a_rf16": [80.0, 80.0, 86.0], "fusion_st_a_rf16": [80.1, 80.1, 86.0], "head": [70.0, 72.0, 74.0]},
    "mrpc": {"st_a_rf16": [85.0, 86.0, 87.0], "fusion_st_a_rf16": [84.0, 85.0, 86.0]},  # head: failed
    "sick": {"st_a_rf16": [86.0, 86.5, 87.0], "head": [75.0, 75.0, 75.0]},  # fusion: not run
}
KIND = {"st_a_rf16": ("st_a", "st_a"), "fusion_st_a_rf16": ("fusion_st_a", "fusion_st_a"), "head": ("head", "head")}


def make_result(task, label, seed, value=None, error=None):
    method, kind = KIND[label]
    return {
        "schema": 1, "status": "failed" if error else "finished", "run_id": f"{task}__{label}__minilm-l6__s{seed}__x",
        "experiment": "handmade", "task": task, "tasks": [task], "method": method, "method_kind": kind,
        "label": label, "role": "grid", "reduction_factor": 16, "backbone": "minilm-l6",
        "paper_backbone": "bert-base-uncased", "seed": seed, "sources": [], "deps": [], "config": {},
        "best_metric": value, "best_epoch": 1, "history": [], "error": error, "wall_seconds": 10.0,
        "device": "cpu", "data": {"source": "mirror", "train_rows": 100, "train_rows_total": 100},
        "versions": {"torch": "2.13.0", "transformers": "5.23.0", "python": "3.11"},
        "git": {"revision": "abc123", "dirty": False},
        **({"fusion_attention": {"adapters": ["mnli", "rte", "cb"], "layers": [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]],
                                 "dev_accuracy": value}} if label.startswith("fusion") and task in ("rte", "cb") else {}),
    }


@pytest.fixture
def handmade(tmp_path):
    folder = tmp_path / "results" / "handmade"
    runs = []
    for task, cols in VALUES.items():
        for label, vals in cols.items():
            for seed, v in enumerate(vals, 1):
                r = make_result(task, label, seed, v)
                write_json_atomic(folder / r["run_id"] / "result.json", r)
                runs.append(r)
    failed = make_result("mrpc", "head", 1, error="RuntimeError: out of memory")
    write_json_atomic(folder / failed["run_id"] / "result.json", failed)
    # a result of an earlier version of the spec (its id is not in the plan): must not count as a seed
    stale = make_result("rte", "fusion_st_a_rf16", 1, 10.0) | {"run_id": "rte__fusion_st_a_rf16__minilm-l6__s1__old"}
    write_json_atomic(folder / stale["run_id"] / "result.json", stale)
    plan = {"experiment": "handmade", "description": "hand-made", "skipped": [
        {"what": "task boolq", "why": "not in the offline mirror"}],
        "runs": [{"id": r["run_id"], "task": r["task"], "tasks": [], "label": r["label"], "backbone": "minilm-l6",
                  "seed": r["seed"], "role": "grid"} for r in [*runs, failed]]
                + [{"id": "sick__fusion_st_a_rf16__minilm-l6__s1__x", "task": "sick", "tasks": [],
                    "label": "fusion_st_a_rf16", "backbone": "minilm-l6", "seed": 1, "role": "grid"}]}
    write_json_atomic(folder / "plan.json", plan)
    return tmp_path / "results"


def cell(table, task, column):
    row = next(r for r in table.rows if r.task == task)
    return row.cells[table.columns.index(column)]


def test_table1_numbers_and_paper_deltas(registry, handmade):
    data = build_data(registry, "handmade", handmade, None)
    t1 = next(t for t in data.tables if t.key == "table1")
    assert t1.columns == ["Head", "ST-A", "F. w/ ST-A"]
    assert [r.task for r in t1.rows] == ["boolq", "mrpc", "sick", "rte", "cb"]  # paper order, skipped task shown
    c = cell(t1, "rte", "ST-A")
    assert (c.mean, c.std, c.n) == (72.0, 2.0, 3)
    assert c.paper == 71.04 and c.paper_std == 1.62 and c.delta_text == "+0.96"
    assert c.text == "72.00 ± 2.00"
    f = cell(t1, "rte", "F. w/ ST-A")
    assert f.text == "77.00 ± 1.00†" and f.p_value < 0.05  # beyond seed noise
    assert cell(t1, "cb", "F. w/ ST-A").marker == ""  # +0.07 within noise
    assert cell(t1, "mrpc", "Head").text == "— (failed)"
    assert cell(t1, "sick", "F. w/ ST-A").text == "— (not run)"
    assert cell(t1, "boolq", "ST-A").text == "— (no data)"
    assert cell(t1, "sick", "Head").std == 0.0
    mean_st_a = t1.mean_row[t1.columns.index("ST-A")]
    assert mean_st_a.mean == pytest.approx(statistics.fmean([72.0, 82.0, 86.0, 86.5]))
    assert mean_st_a.reason == "over 4/5 tasks"
    # the paper mean is taken over the same tasks as ours (mrpc, sick, rte, cb)
    assert mean_st_a.paper == pytest.approx(statistics.fmean([85.16, 86.2, 71.04, 86.07]))
    assert not t1.comparable and any("stands in" in n for n in t1.notes)


def test_table2_arrows_improved_and_agreement(registry, handmade):
    data = build_data(registry, "handmade", handmade, None)
    t2 = data.table2[0]
    assert t2.keys == ["fusion_st_a_vs_st_a"]
    rows = {r.task: r for r in t2.rows}
    assert set(rows) == {"mrpc", "rte", "cb"}
    assert rows["rte"].ours == ["up"] and rows["rte"].deltas[0] == pytest.approx(5.0)
    assert rows["cb"].ours == ["same"] and rows["mrpc"].ours == ["down"]
    assert [rows[t].paper[0] for t in ("mrpc", "rte", "cb")] == ["up", "up", "up"]
    # the paper's count over the same three tasks as ours (its printed arrows), not its 10/16 over all 16
    assert t2.improved_ours == ["1/3"] and t2.improved_paper == ["3/3"]
    assert t2.agreement == ["1/3"]
    assert any("10/16 improved as printed, 9/16 derived from its Table 1" in n and "imdb" in n for n in t2.notes)
    assert "rho = " in t2.rank_correlation and "over 3 tasks" in t2.rank_correlation


def test_findings_and_attention(registry, handmade):
    data = build_data(registry, "handmade", handmade, None)
    claims = {f.claim: f for f in data.findings["minilm-l6"]}
    small = claims["Fusion w/ ST-A improves over ST-A on tasks with < 5,000 training examples"]
    assert "rte +5.00" in small.ours and "mrpc -1.00" in small.ours and "rte +5.78" in small.paper
    assert small.verdict == "does not hold (no clear difference)"  # mean +1.36 but only 1 of 3 up
    att = {a.target: a for a in data.attention}
    assert att["rte"].top[0] == ("mnli", pytest.approx(0.55)) and att["rte"].mnli_rank == 1
    assert att["cb"].own == pytest.approx(0.15)
    assert any(f.name.startswith("attention-fusion_st_a") for f in data.figures)
    assert data.provenance["runs_finished"] == 30 and data.provenance["runs_failed"] == 1
    assert data.failures == [{"run": "mrpc__head__minilm-l6__s1__x", "error": "RuntimeError: out of memory"}]


def test_rendered_files(registry, handmade, tmp_path, capsys):
    out = tmp_path / "reports"
    assert main(["report", "handmade", "--results-dir", str(handmade), "--out-dir", str(out)]) == 0
    md = (out / "handmade.md").read_text()
    assert "| rte | low | 70.00" not in md  # cells are means, not first seeds
    assert "72.00 ± 2.00 <sup>n=3</sup> | 71.04 ± 1.62 | +0.96" in md
    assert "77.00 ± 1.00† <sup>n=3</sup>" in md
    assert "| **Improved** (ours / paper) | 1/3 / 3/3 |" in md
    assert "— (no data)" in md and "— (failed)" in md and "— (not run)" in md
    assert "1 older results not in the current plan (spec edited since) left out" in md
    html = (out / "handmade.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    tex = (out / "handmade.tex").read_text()
    assert r"\toprule" in tex and r"72.00 $\pm$ 2.00" in tex and r"$\nearrow$" in tex
    assert (out / "handmade_files").is_dir()
    assert "Table 2" in capsys.readouterr().out


def test_report_is_deterministic_apart_from_the_date(registry, handmade, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        main(["report", "handmade", "--results-dir", str(handmade), "--out-dir", str(d)])
    strip = lambda p: [ln for ln in p.read_text().splitlines() if "Generated:" not in ln and "generated" not in ln]  # noqa: E731
    for ext in ("md", "html", "tex"):
        assert strip(a / f"handmade.{ext}") == strip(b / f"handmade.{ext}")


def test_no_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "nothing", "--results-dir", str(tmp_path)]) == 2
    assert "afbench run nothing" in capsys.readouterr().err


def test_thresholds_and_welch():
    assert arrow(0.31) == "up" and arrow(-0.31) == "down" and arrow(0.3) == "same" and arrow(-0.3) == "same"
    assert welch_p([1.0], [2.0, 3.0]) is None and welch_p([1.0, 1.0], [1.0, 1.0]) is None
    assert welch_p([70.0, 72.0, 74.0], [76.0, 77.0, 78.0]) < 0.05


def test_bundled_paper_numbers_match_the_shared_copy():
    ours, _ = paper_numbers(None)
    from conftest import ROOT

    shared = ROOT.parent / "shared" / "paper" / "adapterfusion_eacl2021.yaml"
    if shared.exists():
        import yaml

        assert yaml.safe_load(shared.read_text()) == ours
    assert ours["table1"]["rows"]["cb"]["fusion_st_a"]["mean"] == 92.14
    assert json.dumps(ours["table2"]["improved"])
