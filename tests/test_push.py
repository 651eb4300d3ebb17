"""``afbench push --dry-run``: the folder that would be uploaded, written by a real CLI process (no network)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from benchmark import predictions
from benchmark.hashing import file_sha256
from benchmark.records import add_to_run, scan_experiment
from conftest import ROOT


def _push(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "benchmark.cli", "push", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_dry_run_on_minilm_table1(tmp_path):
    """One table row per run, the experiment's reports, and a card naming the backbone's deviation."""
    out = _push("minilm_table1", "--repo", "org/results", "--dry-run", "--out", str(tmp_path / "ds"))
    assert out.returncode == 0, out.stderr
    ds = tmp_path / "ds"
    table = pq.read_table(ds / "data" / "runs.parquet").to_pylist()
    runs = scan_experiment(ROOT / "results", "minilm_table1").results
    assert sorted(r["run_id"] for r in table) == sorted(r.run_id for r in runs)
    got = {r["run_id"]: r for r in table}
    for r in runs:
        assert got[r.run_id]["seed"] == r.seed and got[r.run_id]["label"] == r.label
        if r.best_metric is not None:
            assert got[r.run_id]["best_metric"] == r.best_metric
    card = (ds / "README.md").read_text()
    assert "**minilm-l6** stands in for the paper's **bert-base-uncased**" in card
    assert "6-layer, 384-wide" in card and "MultiNLI" in card and "[CLS]" in card
    assert "## Provenance" in card and f"{sum(r.finished for r in runs)} finished" in card
    assert (ds / "reports" / "minilm_table1.md").read_bytes() == (ROOT / "reports" / "minilm_table1.md").read_bytes()
    with_predictions = [r.run_id for r in runs if r.predictions]  # every ST-A rf 16 run (33 of seeds 42-44, more since)
    assert sum("__st_a_rf16__" in rid for rid in with_predictions) == sum("__st_a_rf16__" in r.run_id for r in runs) >= 33
    assert f"{len(with_predictions)} runs' dev predictions" in card
    assert sorted(p.stem for p in (ds / "predictions").iterdir()) == sorted(with_predictions)
    for rid in with_predictions:
        assert (ds / "predictions" / f"{rid}.parquet").read_bytes() == \
            (ROOT / "results" / "minilm_table1" / rid / "predictions.parquet").read_bytes()
    assert "/tmp/" not in card and str(ROOT) not in card
    # what is uploaded is exactly what this push staged: a folder with anything in it is refused
    again = _push("minilm_table1", "--repo", "org/results", "--dry-run", "--out", str(ds))
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    inside = _push("minilm_table1", "--repo", "org/results", "--dry-run", "--out", str(ROOT / "results" / "x"))
    assert inside.returncode == 2 and "overlaps the results root" in inside.stderr
    assert not (ROOT / "results" / "x").exists()


def test_predictions_are_included_and_a_missing_report_is_one_paragraph(tmp_path):
    res, reports = tmp_path / "results", tmp_path / "reports"
    shutil.copytree(ROOT / "results" / "minilm_batching", res / "minilm_batching",
                    ignore=shutil.ignore_patterns("*.safetensors", "modules.json"))
    reports.mkdir()
    args = ["minilm_batching", "--repo", "o/n", "--dry-run", "--out", str(tmp_path / "ds"), "--results-dir",
            str(res), "--reports-dir", str(reports)]
    out = _push(*args)
    assert out.returncode == 2 and "afbench report minilm_batching" in out.stderr and "Traceback" not in out.stderr
    shutil.copy(ROOT / "reports" / "minilm_batching.md", reports)
    run = sorted(p for p in (res / "minilm_batching").iterdir() if p.is_dir())[0]
    cols = {"task": ["rte"] * 2, "split": ["validation"] * 2, "row": [0, 1], "source_row": [0, 1], "id": ["0", "1"]}
    for last in ({"gold": [1, 1]}, {"correct": [True, False]}):  # before 2026-12-07, and before 2026-12-08
        pq.write_table(pa.Table.from_pydict({**cols, "pred": [1, 0], **last}), run / predictions.FILE)
        assert tuple(pq.read_schema(run / predictions.FILE).names) in predictions.LEGACY
        add_to_run(run / "result.json", {"predictions": {"file": predictions.FILE, "rows": 2,
                                                         "sha256": file_sha256(run / predictions.FILE)}})
        out = _push(*args)  # labels (gold, or pred with correct) are never published: migrate first
        assert out.returncode == 2 and "afbench migrate minilm_batching" in out.stderr and "Traceback" not in out.stderr
    add_to_run(run / "result.json", {"predictions": predictions.write(run, {**cols, "correct": [True, False]})})
    out = _push(*args)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ds" / "predictions" / f"{run.name}.parquet").read_bytes() == (run / predictions.FILE).read_bytes()
    assert "1 runs' dev predictions" in (tmp_path / "ds" / "README.md").read_text()
    assert pq.read_table(tmp_path / "ds" / "data" / "runs.parquet").num_rows == 6
