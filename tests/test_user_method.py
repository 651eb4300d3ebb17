"""A user adds a method the way ARCHITECTURE.md says: one package (config.py, layer.py, setup.py) in a folder named
by AFBENCH_METHODS, and one method YAML; no file of the package changes. Here a toy tuner, ``shift`` (a learned
vector d added to the output of each FFN output projection: y = W x + b + d, d = 0 at init), is planned, trained
on tiny-bert, saved, verified and found in the report, all in a fresh interpreter (the registry discovers the
user's packages when ``benchmark.methods`` is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, needs_mirror, tiny_experiment, write_experiments

CONFIG = '''
from typing import Literal

from pydantic import Field

from benchmark.methods import Column, MethodKind, register
from benchmark.methods.params import LinearTarget, Strict
from benchmark.methods.registry import section


class ShiftParams(Strict):
    type: Literal["shift"] = "shift"
    targets: list[LinearTarget] = Field(default_factory=lambda: ["output"], min_length=1)


def flops(p, shape, sources):
    return sum(shape.hidden for _ in p.targets)  # one add per output


section("shift", ShiftParams, flops)
register(MethodKind("shift", frozenset({"head", "adapter"}), needs=("shift",), after="ia3",
                    columns={"table1": (Column("shift", "shift", "Shift"),)}))
'''

LAYER = '''
import torch
from torch import nn

from benchmark.modeling.tuners import TargetTuner, TunerModule

from afbench_methods.shift.config import ShiftParams


class Shift(TunerModule):
    def __init__(self, in_features, out_features, params):
        super().__init__()
        self.params = params
        self.d = nn.Parameter(torch.zeros(out_features))

    def update(self, x, y):
        return y + self.d


class ShiftTuner(TargetTuner):
    child = "shift"
    title = "Shift"

    def make(self, in_features, out_features, params):
        return Shift(in_features, out_features, params)

    def params_from(self, d):
        return ShiftParams(**{k: v for k, v in d.items() if k != "dims"})


TUNER = ShiftTuner()
attach, activate, modules_of = TUNER.attach, TUNER.activate, TUNER.modules_of
describe, params_from, expected_shapes = TUNER.describe, TUNER.params_from, TUNER.expected_shapes
'''

SETUP = '''
from benchmark.modeling.model import Modules
from benchmark.training.recipe import Setup


def setup(model, run, ctx):
    model.add_adapter(run.task, run.method.shift)
    model.set_active(run.task)
    return Setup(trains=Modules(adapters=[run.task]))
'''


def _user_method(folder: Path) -> None:
    pkg = folder / "shift"
    pkg.mkdir(parents=True)
    for name, text in (("__init__", ""), ("config", CONFIG), ("layer", LAYER), ("setup", SETUP)):
        (pkg / f"{name}.py").write_text(text.lstrip())


def _afbench(args: list[str], methods: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AFBENCH_METHODS": str(methods), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_users_package_is_not_loaded_without_the_variable():
    from benchmark import methods

    assert "shift" not in methods.KINDS and os.environ.get("AFBENCH_METHODS") is None


@needs_mirror
@pytest.mark.slow
def test_a_user_method_is_one_package_and_one_yaml(tmp_path):
    user = tmp_path / "my_methods"
    _user_method(user)
    specs = write_experiments(tmp_path / "specs", toy=tiny_experiment(tasks=("rte",), methods=("head", "shift"),
                                                                      fusion=False, epochs=2))
    (specs / "methods").mkdir()
    (specs / "methods" / "shift.yaml").write_text(textwrap.dedent("""
        description: a learned shift of every FFN output (a toy user method)
        method: shift
        shift: {targets: [output]}
        train: {lr: 1.0e-2, batch_size: 8}
    """))
    args = ["--specs", str(specs), "--results-dir", str(tmp_path / "r")]
    out = _afbench(["run", "toy", *args], user)
    assert out.returncode == 0, out.stdout + out.stderr
    res = {r["method_kind"]: r for r in (json.loads(f.read_text()) for f in (tmp_path / "r" / "toy").glob("*/result.json"))}
    assert set(res) == {"head", "shift"} and res["shift"]["status"] == "finished"
    head = 32 * 32 + 32 + 32 * 2 + 2  # tiny-bert: hidden 32, two-layer head, 2 classes
    assert res["shift"]["params"]["trained"] == head + 2 * 32  # and one d [32] per layer (2 layers)
    # the weights hold the vectors under the tuner's keys, they moved, and the modules.json entry reads back
    run_dir = next(p.parent for p in (tmp_path / "r" / "toy").glob("*/result.json") if "shift" in p.parent.name)
    meta = json.loads((run_dir / "modules.json").read_text())
    assert meta["adapters"]["rte"]["type"] == "shift"
    check = ("import sys; from pathlib import Path; from safetensors.torch import load_file; "
             "from benchmark.modeling.checkpoint import verify_weights; d = Path(sys.argv[1]); "
             "assert verify_weights(d) is None, verify_weights(d); w = load_file(d / 'weights.safetensors'); "
             "ks = sorted(k for k in w if '.shift.rte.' in k); print(len(ks), max(w[k].abs().max().item() for k in ks))")
    env = {**os.environ, "AFBENCH_METHODS": str(user), "PYTHONPATH": str(ROOT)}
    got = subprocess.run([sys.executable, "-c", check, str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    n, moved = got.stdout.split()
    assert int(n) == 2 and float(moved) > 0
    # the report shows its column right after (IA)^3's place (here: after the head, the only other column)
    out = _afbench(["report", "toy", *args, "--out-dir", str(tmp_path / "rep")], user)
    assert out.returncode == 0, out.stdout + out.stderr
    md = (tmp_path / "rep" / "toy.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task | group |"))
    assert header.replace("| majority ", "").startswith("| task | group | Head | Shift |")
