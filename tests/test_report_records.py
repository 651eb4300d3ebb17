"""A report reads what the runner recorded: which results are current comes from the specs and the data
fingerprints and command-line choices stored in the results, so it needs neither the data mirror nor the
training flags (``report/aggregate.load``, through ``plan.build.recorded``)."""

from __future__ import annotations

import pytest

from benchmark.report.aggregate import load
from conftest import MIRROR, ROOT, needs_mirror


@needs_mirror
@pytest.mark.parametrize("experiment", ["minilm_table1", "minilm_batching", "minilm_bf16"])
def test_the_committed_results_report_the_same_cells_with_no_data(experiment, registry, tmp_path, monkeypatch):
    with_data = load(ROOT / "results", experiment, registry, MIRROR)
    monkeypatch.setenv("AFBENCH_DATA_DIR", str(tmp_path))  # an empty folder: no data anywhere
    without = load(ROOT / "results", experiment, registry, tmp_path)
    assert with_data.cells and {k: (c.values, c.seeds, c.run_ids, c.expected) for k, c in with_data.cells.items()} \
        == {k: (c.values, c.seeds, c.run_ids, c.expected) for k, c in without.cells.items()}
    assert (without.stale, without.problems) == (with_data.stale, with_data.problems)
    assert [r.run_id for r in without.stage1] == [r.run_id for r in with_data.stage1]
