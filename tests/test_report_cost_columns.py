"""The cost table shows what the runs recorded (issue 38): a column no run recorded is left out and named once in
a note, never a column of "not recorded"; quick's results (older than train s, tokens/s, peak RSS and checkpoint
size) show their wall time and train examples/s instead."""

from __future__ import annotations

from benchmark.records import scan_experiment
from benchmark.report.cost import cost_table
from conftest import ROOT


def _table(experiment):
    return cost_table(scan_experiment(ROOT / "results", experiment).results)


def test_quick_cost_table_shows_what_its_runs_have():
    view = _table("quick")
    assert view.columns == ["runs", "trainable params", "% of backbone", "wall s (whole run)", "train ex/s"]
    assert all(r.cells[c] not in ("not recorded", "n/a (CPU)") for r in view.rows for c in view.columns)
    head = next(r for r in view.rows if r.label == "head")
    assert head.runs == 12 and float(head.cells["wall s (whole run)"]) > 0 and float(head.cells["train ex/s"]) > 0
    said = [n for n in view.notes if n.startswith("Not recorded by these runs")]
    assert len(said) == 1 and "peak RSS (MiB), checkpoint (MiB), train s, tokens/s" in said[0]
    assert "Every run trained on the CPU: no CUDA memory column." in view.notes


def test_recorded_columns_stay_and_need_no_fallback():
    view = _table("minilm_bf16")  # trained after these fields were recorded
    assert {"peak RSS (MiB)", "checkpoint (MiB)", "train s", "tokens/s"} <= set(view.columns)
    assert "wall s (whole run)" not in view.columns and "train ex/s" not in view.columns
