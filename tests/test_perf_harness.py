"""The perf harness (``benchmark/perf/harness.py``): the drift guard (fp32 GEMM peak before and after; a move
beyond 10 % marks the report untrustworthy on its first line and in its JSON), the provenance every report
carries, and the reference side in its own interpreter, alternating with ours."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from benchmark.cli import main as cli
from benchmark.perf import harness
from benchmark.perf.harness import Harness, gemm_peak
from benchmark.perf.meta import Target
from benchmark.runner.provenance import cpu_model

TINY = ["--backbone", "bert-tiny-random", "--steps", "1", "--rounds", "2", "--batch-size", "2", "--length", "8",
        "--adapters", "", "--reps", "1", "--infer-batch", "2", "--precision", "fp32", "--no-memory",
        "--gemm-seconds", "0.01"]


def _report(h: Harness, tmp_path):
    out = tmp_path / "perf.md"
    h.write(["# Title", "", "body"], {"rounds": []}, [Target("ST-A >= 1.2x the reference", False, "1.10x")],
            out=out, quiet=True)
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_a_drift_beyond_ten_percent_makes_the_report_say_untrustworthy_first(tmp_path):
    peaks = iter([250.0, 200.0])  # the host got busy mid-run: 250 -> 200 GFLOP/s (-20 %)
    md, raw = _report(Harness("steps", peak=lambda: next(peaks)), tmp_path)
    assert md.splitlines()[0].startswith("> **UNTRUSTWORTHY: the machine's fp32 GEMM peak moved -20.0% during")
    assert raw["drift_guard"] == {"gemm_fp32_gflops_before": 250.0, "gemm_fp32_gflops_after": 200.0,
                                  "change": -0.2, "limit": 0.1, "trustworthy": False, "verdict": "untrustworthy"}
    assert "## Targets (measured during a drift: see the top)" in md
    assert "- ST-A >= 1.2x the reference: **MISSED** (1.10x)" in md
    assert raw["targets"] == [{"text": "ST-A >= 1.2x the reference", "met": False, "measured": "1.10x"}]
    assert "UNTRUSTWORTHY." in md.splitlines()[-1]


def test_a_steady_machine_is_trusted_and_the_title_stays_first(tmp_path):
    peaks = iter([250.0, 230.0])  # -8 %: within the limit
    md, raw = _report(Harness("steps", peak=lambda: next(peaks)), tmp_path)
    assert md.splitlines()[0] == "# Title" and "UNTRUSTWORTHY" not in md
    assert raw["drift_guard"]["verdict"] == "trustworthy" and raw["drift_guard"]["change"] == -0.08
    assert md.splitlines()[-1] == ("Drift guard: fp32 GEMM peak 250 GFLOP/s before, 230 after (-8.0%; limit ±10%): "
                                   "trustworthy.")
    assert "## Targets\n" in md


def test_every_report_records_provenance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    peaks = iter([100.0, 100.0])
    h = Harness("steps", argv=["perf", "--rounds", "1", "--out", str(tmp_path / "perf.md")], peak=lambda: next(peaks))
    md, raw = _report(h, tmp_path)
    p = raw["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", p["git"]["revision"]) and isinstance(p["git"]["dirty"], bool)
    assert p["date"].endswith("+00:00")  # UTC
    assert p["cpu"] == cpu_model() and p["threads"] == torch.get_num_threads() >= 1
    assert p["versions"]["torch"] == torch.__version__ and p["versions"]["transformers"]
    assert "adapters" in p["versions"] and p["versions"]["adapters"] is None  # no reference side ran
    assert p["command"] == "afbench perf --rounds 1 --out perf.md"
    assert f"Revision {p['git']['revision'][:12]}" in md and "Ran as `afbench perf --rounds 1 --out perf.md`" in md


@pytest.mark.parametrize("mode", ["steps", "inference", "roofline"])
def test_each_mode_measures_the_peak_before_and_after_and_reports_a_drift(mode, tmp_path, monkeypatch):
    """A real (tiny) run of each mode; the GEMM peak is the only thing injected: it falls by 30 % mid-run."""
    calls = []

    def fake(dtype, device, shapes, min_seconds=0.3):
        calls.append(shapes)
        return {"gflops": 300.0 if len(calls) == 1 else 210.0, "per_shape": {"1x1x1": 1.0}}

    monkeypatch.setattr(harness, "gemm_peak", fake)
    out = tmp_path / f"{mode}.md"
    assert cli(["perf", "--mode", mode, *TINY, "--out", str(out)]) == 0
    md, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    drift = [c for c in calls if c == harness.DRIFT_SHAPES["cpu"]]  # (the roofline measures its own peak too)
    assert len(drift) == 2 and calls[0] == drift[0]
    assert md.startswith("> **UNTRUSTWORTHY") and raw["drift_guard"]["verdict"] == "untrustworthy"
    assert raw["provenance"]["command"].startswith(f"afbench perf --mode {mode}") and len(raw["rounds"]) == 2


def test_the_drift_peak_is_the_roofline_measurement():
    got = gemm_peak(torch.float32, "cpu", ((32, 32, 32),), min_seconds=0.01)
    assert got["gflops"] > 0 and set(got["per_shape"]) == {"32x32x32"}


@pytest.mark.skipif(not os.environ.get("AFBENCH_REFERENCE_PYTHON"),
                    reason="set AFBENCH_REFERENCE_PYTHON to a python with adapters==1.3.0 (nox -s perf has one)")
def test_the_reference_side_alternates_and_its_version_is_recorded(tmp_path):
    out = tmp_path / "inf.md"
    assert cli(["perf", "--mode", "inference", *TINY, "--reference-python", os.environ["AFBENCH_REFERENCE_PYTHON"],
                "--out", str(out)]) == 0
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["provenance"]["versions"]["adapters"] == "1.3.0" and raw["reference"] == "adapters 1.3.0"
    assert [list(r) for r in raw["rounds"]] == [["ours_fp32", "reference_fp32"], ["reference_fp32", "ours_fp32"]]
    assert "adapters 1.3.0 (reference)" in out.read_text()
    # ST-A's four targets (batch 1 and the throughput batch, per precision) are marked whenever the reference ran
    assert sum("ST-A inference" in t["text"] for t in raw["targets"]) == 2 * len(raw["precisions"])


def test_a_failing_reference_side_is_one_message_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "python"
    bad.write_text("#!/bin/sh\necho 'no adapters here' >&2\nexit 3\n")
    bad.chmod(0o755)
    assert cli(["perf", "--mode", "inference", *TINY, "--reference-python", str(bad),
                "--out", str(tmp_path / "x.md")]) == 1
    err = capsys.readouterr().err
    assert "the reference side failed" in err and "no adapters here" in err and "Traceback" not in err
    assert not (tmp_path / "x.md").exists()
