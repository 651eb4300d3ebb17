"""The report's cost table (issue 25): means per method over finished runs, "not recorded" where a result
lacks a figure, and the notes on runs trained under another lock or a drifted environment."""

from __future__ import annotations

from benchmark.records import RunRecord
from benchmark.report.cost import NOT_RECORDED, cost_table

MIB = 1024 * 1024


def _result(label, seed, **extra):
    base = {"status": "finished", "run_id": f"t__{label}__b__s{seed}__x", "experiment": "e", "task": "t",
            "backbone": "b", "label": label, "seed": seed, "device": "cpu", "params": {"trained": 100, "total": 1100}}
    return RunRecord(**{**base, **extra})


def test_cost_is_a_mean_per_method_and_says_what_is_not_recorded():
    lock = {"lock": "requirements.lock", "lock_sha256": "a" * 64, "matches_lock": True, "drift": []}
    results = [
        _result("st_a", 1, memory={"peak_rss_bytes": 100 * MIB, "cuda_max_allocated_bytes": None},
                params={"trained": 100, "total": 1100, "backbone": 1000}, checkpoint_bytes=2 * MIB,
                train_seconds=10.0, padding={"real_tokens": 5000}, environment=lock),
        _result("st_a", 2, memory={"peak_rss_bytes": 300 * MIB, "cuda_max_allocated_bytes": None},
                params={"trained": 100, "total": 1100, "backbone": 1000}, checkpoint_bytes=4 * MIB,
                train_seconds=30.0, padding={"real_tokens": 9000},
                environment={**lock, "matches_lock": False, "drift": ["transformers 5.25.0 (lock: 5.24.0)"]}),
        _result("full", 1, params={"trained": 1050, "total": 1050}),  # committed-style: nothing recorded
        _result("full", 2, status="failed"),
    ]
    view = cost_table(results)
    rows = {r.label: r.cells for r in view.rows}
    assert rows["st_a"]["runs"] == "2" and rows["st_a"]["peak RSS (MiB)"] == "200"
    assert rows["st_a"]["trainable params"] == "100" and rows["st_a"]["% of backbone"] == "10.00"
    assert rows["st_a"]["checkpoint (MiB)"] == "3.00" and rows["st_a"]["train s"] == "20.0"
    assert rows["st_a"]["tokens/s"] == "400"  # mean of 500 and 300
    assert rows["st_a"]["CUDA max allocated (MiB)"] == "n/a (CPU)"
    assert rows["full"]["runs"] == "1" and rows["full"]["% of backbone"] == "105.00"  # head on top of the encoder
    assert all(rows["full"][c] == NOT_RECORDED for c in ("peak RSS (MiB)", "checkpoint (MiB)", "train s", "tokens/s"))
    notes = " ".join(view.notes)
    assert "drifted from its lock" in notes and "transformers 5.25.0 (lock: 5.24.0)" in notes
    assert "1 result(s) record no lock hash" in notes


def test_a_partly_recorded_mean_says_over_how_many_runs():
    results = [_result("head", 1, memory={"peak_rss_bytes": 64 * MIB}), _result("head", 2)]
    cells = cost_table(results).rows[0].cells
    assert cells["peak RSS (MiB)"] == "64 (1/2 runs)"
    assert cost_table([_result("head", 1, status="failed")]) is None
