"""Perf reports state each target as met or NOT met and say when, where and with what they were measured."""

from __future__ import annotations

from benchmark.perf import stamp, targets_met, write_report


def test_each_target_is_met_or_missed_with_its_value():
    mine = [{"ST-A": 1.0, "Fusion N=16": 1.5}]  # seconds per step
    ref = [{"ST-A": 1.18, "Fusion N=16": 7.5}]
    got = targets_met(mine, ref)
    assert got == ["Fusion N=16 >= 4x the reference: 5.00x, met", "ST-A >= 1.2x the reference: 1.18x, NOT met",
                   "Fusion N=16 step <= 1.6x a single-adapter step: 1.50x, met"]
    assert targets_met([{"ST-A": 1.0}], [])[0].endswith("not measured")


def test_a_perf_report_carries_revision_date_and_versions(tmp_path, capsys):
    s = stamp()
    assert s.startswith("Measured ") and " at revision " in s and "torch " in s and "transformers " in s
    write_report(tmp_path / "perf.md", ["# Title", "", "body"], {"rounds": []})
    lines = (tmp_path / "perf.md").read_text().splitlines()
    assert lines[0] == "# Title" and lines[2].startswith("Measured ") and lines[-1] == "body"
