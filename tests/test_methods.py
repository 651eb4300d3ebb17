"""A new method kind is one registry entry, one recipe function and one YAML: the planner runs it, the
recipe trains exactly what it declares, and the report shows its column."""

from __future__ import annotations

import json
import textwrap

import pytest

from benchmark import methods
from benchmark.cli import main
from benchmark.modeling.model import Modules
from benchmark.training import recipe
from conftest import needs_mirror

KIND = "st_a_frozen_head"


@pytest.fixture
def eighth_kind():
    # 1. the registry: what it trains, how it is labelled, which report column it feeds
    methods.register(methods.MethodKind(
        KIND, frozenset({"adapter"}), needs=("adapter",), label_rf="adapter.reduction_factor",
        columns={"table1": (methods.Column(f"{KIND}_rf16", KIND, "ST-A, frozen head"),)}))

    # 2. one recipe function: the modules it adds (the head is added, and here left frozen, by the recipe)
    @recipe.setup(KIND)
    def _frozen_head(model, run, ctx):
        model.add_adapter(run.task, run.method.adapter)
        model.set_active(run.task)
        return recipe.Setup(trains=Modules(adapters=[run.task]))

    yield
    methods.unregister(KIND)
    recipe.SETUPS.pop(KIND)


@needs_mirror
@pytest.mark.slow
def test_an_eighth_method_kind_runs_and_reports(eighth_kind, tmp_path, capsys):
    specs = tmp_path / "specs"
    (specs / "methods").mkdir(parents=True)
    (specs / "experiments").mkdir()
    # 3. one YAML
    (specs / "methods" / f"{KIND}.yaml").write_text(textwrap.dedent(f"""
        description: ST-A whose head stays at its random init (a hypothetical eighth column)
        method: {KIND}
        adapter: {{type: pfeiffer, reduction_factor: 16}}
        train: {{lr: 1.0e-3, epochs: 1, batch_size: 8}}
    """))
    (specs / "experiments" / "eighth.yaml").write_text(textwrap.dedent(f"""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{{tasks: [rte], methods: [st_a, {KIND}]}}]
        caps: {{max_train_rows: 16, max_eval_rows: 8, max_epochs: 1, max_length: 32}}
        overrides: {{st_a: {{lr: 1.0e-3}}}}
    """))
    args = ["--specs", str(specs), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "eighth", *args]) == 0
    res = [json.loads(f.read_text()) for f in (tmp_path / "r" / "eighth").glob("*/result.json")]
    mine = next(r for r in res if r["method_kind"] == KIND)
    st_a = next(r for r in res if r["method_kind"] == "st_a")
    assert mine["label"] == f"{KIND}_rf16" and mine["status"] == "finished"
    # it trained the adapter only: ST-A's trained count minus the head's parameters
    head = 32 * 32 + 32 + 32 * 2 + 2  # tiny-bert: hidden 32, two-layer head, 2 classes
    assert mine["params"]["trained"] == st_a["params"]["trained"] - head
    assert main(["report", "eighth", *args, "--out-dir", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "eighth.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task | group |"))
    assert header.replace("| majority ", "").startswith("| task | group | ST-A | ST-A, frozen head |")  # tiny-bert: no paper columns


def test_the_schema_reads_the_registry(eighth_kind):
    from benchmark.spec.schema import MethodSpec

    assert MethodSpec(name="x", method=KIND, adapter={}).method_kind.name == KIND
    with pytest.raises(ValueError, match="needs an 'adapter' section"):
        MethodSpec(name="x", method=KIND)
    with pytest.raises(ValueError, match="unknown method kind 'nope'"):
        MethodSpec(name="x", method="nope")


def test_every_registered_kind_has_a_recipe():
    assert all(recipe.setup_of(k) is not None or recipe.recipe_of(k) is not None for k in methods.KINDS)


def test_a_label_rf_that_names_no_section_field_is_refused_when_registered():
    with pytest.raises(ValueError, match="section.field"):
        methods.register(methods.MethodKind("bad_label", frozenset({"adapter"}), label_rf="adapter"))
    assert "bad_label" not in methods.KINDS
