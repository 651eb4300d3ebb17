"""The nox sessions that run the package share one virtualenv (issue 38): on a warm env a session's set-up takes
about a second, reproduce and report use the same env, and nothing warns that uv is missing. Runs where nox is
on PATH and `.nox/afbench` is current (as inside `nox -s tests`); skipped elsewhere."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

ENV = ROOT / ".nox" / "afbench"


def _current() -> bool:
    stamp = ENV / ".afbench-stamp"
    key = hashlib.sha256((ROOT / "requirements.lock").read_bytes() + (ROOT / "pyproject.toml").read_bytes()
                         + os.environ.get("AFBENCH_TORCH", "torch==2.13.0").encode()).hexdigest()
    return stamp.exists() and stamp.read_text() == key


@pytest.mark.skipif(shutil.which("nox") is None or not _current(), reason="nox or a current .nox/afbench missing")
def test_reproduce_and_report_share_one_warm_env():
    for session in ("reproduce", "report"):
        done = subprocess.run(["nox", "-s", session, "--", "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log
        ready = re.search(r"virtualenv (\S+): ready in ([\d.]+) s", log)
        assert ready and ready.group(1) == str(ENV), log
        assert float(ready.group(2)) < 5, log
        assert "uv binary not found" not in log and "usage: afbench" in log
