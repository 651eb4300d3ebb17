"""The package's layering (ARCHITECTURE.md): each layer imports only from the layers before it, anywhere
in a module (function-level imports included, so no cycle hides in a function body)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "benchmark"
# Lowest first. A module may import from its own layer and from every layer listed before it.
LAYERS = [
    {"errors", "hashing", "methods", "paper", "paths", "predictions", "records"},
    {"spec"},
    {"data"},
    {"plan"},
    {"modeling"},
    {"training"},
    {"runner"},
    {"report"},
    {"perf", "parity"},
    {"cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _layer(module: Path, package: Path = PACKAGE) -> str:
    return module.relative_to(package).parts[0].removesuffix(".py")


def _imports(module: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "benchmark":  # from benchmark import methods
                names = [f"benchmark.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, n.split(".")[1]) for line, n in out if n.startswith("benchmark.")]


def violations(package: Path) -> list[str]:
    modules = [p for p in package.rglob("*.py") if _layer(p, package) != "__init__"]
    unknown = {_layer(p, package) for p in modules} - set(RANK)
    assert not unknown, f"new top-level module(s) {unknown}: give them a layer in LAYERS (and ARCHITECTURE.md)"
    bad = []
    for module in modules:
        own = RANK[_layer(module, package)]
        for line, target in _imports(module):
            if target in RANK and RANK[target] > own:
                bad.append(f"{module.relative_to(package.parent)}:{line} imports benchmark.{target}")
    return bad


def test_every_layer_imports_only_from_layers_before_it():
    bad = violations(PACKAGE)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_rule_catches_an_upward_import_inside_a_function(tmp_path):
    pkg = tmp_path / "benchmark"
    (pkg / "training").mkdir(parents=True)
    (pkg / "training" / "loop.py").write_text("from benchmark.data import encode\n\n\ndef f():\n"
                                              "    from benchmark.runner.execute import run_plan\n")
    assert violations(pkg) == ["benchmark/training/loop.py:5 imports benchmark.runner"]


def test_every_subpackage_ships():
    """pyproject lists the packages (so specs/ can ship as benchmark.bundled_specs): none may be missed."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found | {"benchmark.bundled_specs"} == listed


def test_the_reporter_loads_neither_torch_nor_the_runner_or_the_training_code():
    """``import benchmark.report.build`` in a fresh interpreter: no torch, no runner, no training, no modeling
    (the reporter reads records, the planner and the data readers only)."""
    import subprocess
    import sys

    code = ("import sys, benchmark.report.build; "
            "print(sorted(m for m in ('torch', 'transformers', 'benchmark.runner', 'benchmark.training', "
            "'benchmark.modeling') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing the reporter loaded {out.stdout.strip()}"


def _registered_names() -> set[str]:
    """Every method kind, run label, paper column key and Table 2 key of the registry, every method and backbone
    spec name, and the paper's backbones."""
    import yaml

    from benchmark import methods

    names = set()
    for k in methods.KINDS.values():
        names.add(k.name)
        names |= {x for cols in k.columns.values() for c in cols for x in (c.label, c.paper_key)}
        names |= {x for c in k.comparisons for x in (c.key, c.ours, c.baseline)}
    names |= {x for c in methods.CLAIMS for x in (c.ours, c.baseline)}
    for folder in ("methods", "backbones"):
        names |= {p.stem for p in (ROOT / "specs" / folder).glob("*.yaml") if not p.stem.startswith("_")}
    for p in (ROOT / "specs" / "backbones").glob("*.yaml"):
        pb = (yaml.safe_load(p.read_text()) or {}).get("paper_backbone")
        names |= {pb} if pb else set()
    paper = yaml.safe_load((PACKAGE / "paper" / "adapterfusion_eacl2021.yaml").read_text())
    names |= {t["backbone"] for t in paper.values() if isinstance(t, dict) and "backbone" in t}
    return names


def test_the_reporter_names_no_method_or_backbone_by_string():
    """Report cells and findings are keyed by what the registry declares (``benchmark/methods``), never by a
    label, kind or backbone spelled in ``benchmark/report/``: a renamed label cannot make a finding vanish."""
    names = _registered_names()
    assert {"full", "head", "st_a", "fusion_st_a_rf16", "roberta-base", "bert-base-uncased"} <= names
    found = []
    for module in sorted((PACKAGE / "report").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{module.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, "method or backbone names spelled in the reporter (read them from benchmark.methods):\n" \
        + "\n".join(found)
