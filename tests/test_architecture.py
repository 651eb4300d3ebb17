"""The package's layering (ARCHITECTURE.md): each layer imports only from the layers before it, anywhere
in a module (function-level imports included, so no cycle hides in a function body), and no modules import
each other in a circle."""

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
    {"plan", "adapterhub"},  # adapterhub: AdapterHub's format, which the planner checks published adapters against
    {"modeling"},
    {"training"},
    {"runner"},
    {"report"},
    {"perf", "parity"},
    {"analysis"},  # analyses of trained runs: rebuild a model (runner.export) and time it (perf.harness)
    {"cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
# A method package (benchmark/methods/<name>/, registry.py) spans layers: each of its files has its own.
PART_LAYERS = {"__init__": "methods", "config": "methods", "layer": "modeling", "setup": "training",
               "adapterhub": "adapterhub"}


def _layer(module: Path, package: Path = PACKAGE) -> str:
    parts = module.relative_to(package).with_suffix("").parts
    if len(parts) == 3 and parts[0] == "methods":  # a file of a method package
        assert parts[2] in PART_LAYERS, f"{module}: a method package holds only {sorted(PART_LAYERS)} (their " \
            "layers: PART_LAYERS); fold it into one of them, or give the new part a layer here and in registry.PARTS"
        return PART_LAYERS[parts[2]]
    return parts[0]


def _target_layer(name: str) -> str:
    """The layer of an imported module ``benchmark.x[.y...]`` (a method package's file has its own)."""
    parts = name.split(".")[1:]
    if len(parts) >= 3 and parts[0] == "methods" and parts[2] in PART_LAYERS:
        return PART_LAYERS[parts[2]]
    return parts[0]


def _imports(module: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "benchmark" or node.module.count(".") == 2 and node.module.startswith(
                    "benchmark.methods."):  # from benchmark import methods; from benchmark.methods.lora import layer
                names = [f"{node.module}.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, _target_layer(n)) for line, n in out if n.startswith("benchmark.")]


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


def test_a_method_package_spans_layers_file_by_file(tmp_path):
    """config.py is layer 0 (the schema and the planner read it), layer.py the modeling layer, setup.py the
    training layer: each may import only what its own layer may, and the core reaches them through the registry."""
    pkg = tmp_path / "benchmark"
    (pkg / "methods" / "toy").mkdir(parents=True)
    (pkg / "methods" / "toy" / "config.py").write_text("from benchmark.methods import registry\n"
                                                       "from benchmark.modeling import tuners\n")
    (pkg / "methods" / "toy" / "layer.py").write_text("from benchmark.modeling import tuners\n"
                                                      "from benchmark.methods.toy import config\n"
                                                      "from benchmark.training.recipe import Setup\n")
    (pkg / "methods" / "toy" / "setup.py").write_text("from benchmark.methods.toy import layer\n"
                                                      "from benchmark.training.recipe import Setup\n")
    (pkg / "spec").mkdir()
    (pkg / "spec" / "schema.py").write_text("from benchmark.methods.toy import config\n"
                                            "from benchmark.methods.toy.layer import X\n")
    assert sorted(violations(pkg)) == ["benchmark/methods/toy/config.py:2 imports benchmark.modeling",
                                       "benchmark/methods/toy/layer.py:3 imports benchmark.training",
                                       "benchmark/spec/schema.py:2 imports benchmark.modeling"]


def test_the_core_names_no_method_package():
    """Outside benchmark/methods/<name>/ no module imports a method package: the core asks the registry
    (``registry.part``), so adding a method touches no core file."""
    packages = {d.name for d in (PACKAGE / "methods").iterdir() if (d / "config.py").is_file()}
    assert {"lora", "ia3"} <= packages
    found = []
    for module in PACKAGE.rglob("*.py"):
        rel = module.relative_to(PACKAGE).parts
        if rel[0] == "methods" and len(rel) == 3:
            continue
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module else []
            found += [f"{module.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                      if n.split(".")[:2] == ["benchmark", "methods"] and len(n.split(".")) > 2
                      and n.split(".")[2] in packages]
    assert not found, "core modules that import a method package (ask benchmark.methods.registry):\n" + "\n".join(found)


def test_the_rule_catches_an_upward_import_inside_a_function(tmp_path):
    pkg = tmp_path / "benchmark"
    (pkg / "training").mkdir(parents=True)
    (pkg / "training" / "loop.py").write_text("from benchmark.data import encode\n\n\ndef f():\n"
                                              "    from benchmark.runner.execute import run_plan\n")
    assert violations(pkg) == ["benchmark/training/loop.py:5 imports benchmark.runner"]


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (module level and in functions; not under ``TYPE_CHECKING``,
    which never runs). ``from benchmark.x import y`` names the module ``benchmark.x.y`` where that is one."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        hidden = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                  ast.unparse(node.test) for stmt in node.body for n in ast.walk(stmt)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_circles(package: Path) -> list[list[str]]:
    """Every set of modules that import each other in a circle (strongly connected, Tarjan's algorithm)."""
    graph, index, low, stack, circles = import_graph(package), {}, {}, [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(part) > 1:
                circles.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circle_in_the_package():
    circles = import_circles(PACKAGE)
    assert not circles, "modules that import each other (move the shared part to a leaf module, or an " \
        "annotation-only import under TYPE_CHECKING):\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_sees_function_level_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "benchmark"
    (pkg / "spec").mkdir(parents=True)
    (pkg / "spec" / "a.py").write_text("from benchmark.spec import b\n")
    (pkg / "spec" / "b.py").write_text("def f():\n    from benchmark.spec.c import x\n")
    (pkg / "spec" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                       "    from benchmark.spec.a import y\n")
    assert import_circles(pkg) == []
    (pkg / "spec" / "c.py").write_text("import benchmark.spec.a\n")
    assert import_circles(pkg) == [["benchmark.spec.a", "benchmark.spec.b", "benchmark.spec.c"]]


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
