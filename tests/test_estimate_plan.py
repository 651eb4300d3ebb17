"""`afbench plan --estimate` prices exactly the runs `afbench plan` plans, with the same ids (issue 38): a task
whose data is not here (table1's `argument`, a local file) is skipped by both, so the MT-A run and the fusions
that read it carry the same ids in both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmark.cli import main
from conftest import MIRROR, ROOT, needs_mirror


def test_estimate_prices_the_runs_plan_plans_on_table1(tmp_path, capsys):
    common = ["table1", "--data-dir", "", "--results-dir", str(tmp_path)]  # the Hub, offline: declared sizes
    assert main(["plan", *common]) == 0
    out = capsys.readouterr().out
    planned = {line.split()[-1] for line in out.splitlines() if "__bert-base-uncased__s" in line}
    assert "skipped task argument" in out
    assert main(["plan", *common, "--estimate", "--device", "h100", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    priced = [r["id"] for r in est["runs"]]
    assert len(priced) == len(set(priced)) == len(planned) == 273
    assert set(priced) == planned
    assert any("__fusion_mt_a__" in r for r in priced) and not any(r.startswith("argument__") for r in priced)
    assert "task argument" in est["skipped"]


@needs_mirror
def test_estimate_loads_no_torch(tmp_path):
    """`afbench plan quick --estimate` on the mirror, in a fresh interpreter: the cost model (plan layer) counts
    tokens and prices runs without torch (it once loaded it through the executor and data/batching.py)."""
    code = ("import sys; from benchmark.cli import main; "
            f"rc = main(['plan', 'quick', '--estimate', '--data-dir', {str(MIRROR)!r}, '--results-dir', {str(tmp_path)!r}]); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "total" in out.stdout and "CPU run-hours" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "0 False", out.stdout[-500:]


@needs_mirror
def test_estimate_pending_prices_only_what_is_left(capsys):
    """`--pending` leaves the finished runs out of the estimate: on the committed minilm_table1 results the priced
    runs are exactly those with no finished result.json."""
    from benchmark.records import is_finished

    common = ["minilm_table1", "--data-dir", str(MIRROR), "--results-dir", str(ROOT / "results"), "--estimate",
              "--json"]
    assert main(["plan", *common]) == 0
    every = [r["id"] for r in json.loads(capsys.readouterr().out)["runs"]]
    assert main(["plan", *common, "--pending"]) == 0
    left = [r["id"] for r in json.loads(capsys.readouterr().out)["runs"]]
    want = [i for i in every if not is_finished(ROOT / "results" / "minilm_table1" / i)]
    assert left == want and len(left) < len(every)
