"""A plain (non-editable) ``pip install .`` ships the specs: they are found from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_a_plain_install_finds_every_spec_from_any_folder(tmp_path):
    target = tmp_path / "site"
    import importlib.util

    # with setuptools at hand, build offline with it; else pip fetches the build backend (PyPI)
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    if importlib.util.find_spec("pip"):
        installer = [sys.executable, "-m", "pip", "install", "-q"]
    elif shutil.which("uv"):  # a virtualenv made by uv (nox's default backend here) has no pip
        installer = ["uv", "pip", "install", "-q", "--python", sys.executable]
    else:
        pytest.skip("neither pip nor uv is available to build the package")
    build = subprocess.run([*installer, "--no-deps", *isolation, "--target", str(target), str(ROOT)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "AFBENCH_SPECS"}
    env["PYTHONPATH"] = str(target)  # the installed copy, not the checkout
    probe = ("import benchmark, json; from benchmark.spec.registry import default_spec_dir, load_registry; "
             "r = load_registry(); print(json.dumps([benchmark.__file__, str(default_spec_dir()), len(r.tasks), "
             "len(r.methods), len(r.backbones), len(r.experiments)]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=elsewhere,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    file, spec_dir, *counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert file.startswith(str(target)) and spec_dir.startswith(str(target))
    from benchmark.spec import load_registry

    here = load_registry()
    assert counts == [len(here.tasks), len(here.methods), len(here.backbones), len(here.experiments)]
