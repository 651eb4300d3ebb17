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
    {"errors", "hashing", "methods", "paper", "paths"},
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
