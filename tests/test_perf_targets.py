"""Perf reports state each target as met or MISSED and say when, where and with what they were measured."""

from __future__ import annotations

from benchmark.perf.meta import Target, provenance, provenance_lines, target_lines, write_report


def test_each_target_is_met_missed_or_not_measured_with_its_value():
    lines = target_lines([Target("Fusion N=16 >= 4x the reference", True, "5.00x"),
                          Target("ST-A >= 1.2x the reference", False, "1.18x"),
                          Target("bf16 epoch >= 1.5x fp32", None)])
    assert lines[0] == "## Targets"
    assert lines[2:] == ["- Fusion N=16 >= 4x the reference: **met** (5.00x)",
                         "- ST-A >= 1.2x the reference: **MISSED** (1.18x)",
                         "- bf16 epoch >= 1.5x fp32: **not measured**"]


def test_a_perf_report_carries_revision_date_and_versions(tmp_path):
    (line,) = provenance_lines(provenance("cpu"))
    assert line.startswith("Revision ") and "torch " in line and "transformers " in line and "Python " in line
    write_report(tmp_path / "perf.md", ["# Title", "", line, "", "body"], {"rounds": []}, quiet=True)
    text = (tmp_path / "perf.md").read_text()
    assert text.splitlines()[2] == line and (tmp_path / "perf.json").exists() and "/work/" not in text
