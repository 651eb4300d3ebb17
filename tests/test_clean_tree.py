"""A fresh clone stays clean (issue 38): `afbench run quick` (as `nox -s reproduce` runs it, every committed run
found) and `afbench report quick` (`nox -s report`) change nothing in the tree: an older plan.json is upgraded
in memory, not rewritten, and the committed report is current with the reporter. The clone is of HEAD: commit
first (a reporter with uncommitted changes says so in the report, which then differs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import MIRROR, ROOT, needs_mirror


def _git(repo, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


@needs_mirror
@pytest.mark.skipif(_git(ROOT, "rev-parse", "HEAD").returncode != 0, reason="not a git checkout")
def test_run_and_report_on_a_fresh_clone_leave_it_clean(tmp_path):
    repo = tmp_path / "clone"
    assert _git(tmp_path, "clone", "-q", "--shared", str(ROOT), str(repo)).returncode == 0
    assert '"kind"' not in (repo / "results" / "quick" / "plan.json").read_text()  # an older plan.json, as committed
    env = {k: v for k, v in os.environ.items() if k not in ("AFBENCH_RESULTS_DIR", "AFBENCH_SPECS")}
    env.update(PYTHONPATH=str(repo), AFBENCH_DATA_DIR=str(MIRROR), OMP_NUM_THREADS="1")
    for args in (["run", "quick"], ["report", "quick"]):
        done = subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert args[0] != "run" or "0 trained, 47 already finished" in done.stdout, done.stdout
        status = _git(repo, "status", "--porcelain", "--untracked-files=all").stdout
        assert status == "", (args, status, _git(repo, "diff").stdout[:3000])
