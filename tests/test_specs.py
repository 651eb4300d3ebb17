"""Specs: the shipped files validate; broken files give a clear one-paragraph error; templates are sandboxed;
a new task over local files works through validate and data without code changes."""

from __future__ import annotations

import json
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmark import methods
from benchmark.cli import main
from benchmark.errors import SpecError
from benchmark.spec import load_registry
from benchmark.spec.templates import render

PAPER_TASKS = {"mnli", "qqp", "sst2", "winogrande", "imdb", "hellaswag", "socialiqa", "cosmosqa", "scitail",
               "argument", "csqa", "boolq", "mrpc", "sick", "rte", "cb"}


def test_shipped_specs_cover_the_paper(registry):
    assert set(registry.tasks) == PAPER_TASKS
    paper_methods = {"head", "full", "st_a", "st_a_houlsby", "mt_a", "fusion_st_a", "fusion_mt_a"}
    kinds = set(methods.KINDS)  # the registry's kinds: the paper's and those beyond it (no paper value)
    assert paper_methods <= kinds
    assert {m.method for m in registry.methods.values()} == kinds  # a shipped spec of every kind, and only those
    assert kinds <= set(registry.methods)  # each kind's spec under the kind's own name
    assert {"bert-base-uncased", "roberta-base", "minilm-l6", "tiny-bert", "tiny-roberta"} <= set(registry.backbones)
    assert {"smoke", "table1", "table3", "table4", "quick"} <= set(registry.experiments)
    # paper defaults: adapters lr 1e-4 / 30 epochs / batch 32, fusion lr 5e-5 / 10 epochs
    st_a, fusion = registry.methods["st_a"], registry.methods["fusion_st_a"]
    assert (st_a.train.lr, st_a.train.epochs, st_a.train.batch_size) == (1e-4, 30, 32)
    assert (fusion.train.lr, fusion.train.epochs) == (5e-5, 10)
    assert fusion.fusion.regularization == 0.01 and fusion.fusion.type == "dynamic"
    assert registry.tasks["imdb"].splits.eval == "test"  # IMDB has no dev split
    assert registry.tasks["mnli"].splits.eval == "validation_matched"


def test_include_merges_shared_defaults(registry):
    # tasks include _defaults.yaml (max_length 128) and may override it
    assert registry.tasks["rte"].max_length == 128
    assert registry.tasks["imdb"].max_length == 256
    assert registry.methods["st_a"].train.patience == 3  # from _adapter_defaults.yaml


def test_validate_cli_passes_on_shipped_specs(capsys):
    assert main(["validate", "specs", "--no-data"]) == 0
    assert "valid: 16 tasks" in capsys.readouterr().out


GOOD_TASK = """
dataset: {path: nyu-mll/glue, name: rte}
type: classification
input: {text: "{{ sentence1 }}", text_pair: "{{ sentence2 }}"}
label: {column: label, names: [entailment, not_entailment]}
"""

# (folder, file name, content, fragments the message must contain)
BROKEN = [
    ("tasks", "t1.yaml", GOOD_TASK.replace("label:", "lable:"), ["t1.yaml", "lable", "did you mean 'label'"]),
    ("tasks", "t2.yaml", GOOD_TASK + "max_length: long\n", ["t2.yaml", "max_length", "valid integer"]),
    ("tasks", "t3.yaml", GOOD_TASK.replace("type: classification\n", ""), ["t3.yaml", "'type'", "add this field"]),
    ("tasks", "t4.yaml", GOOD_TASK.replace("classification", "regression"), ["t4.yaml", "type", "use one of"]),
    ("tasks", "t5.yaml", GOOD_TASK.replace(", names: [entailment, not_entailment]", ""), ["t5.yaml", "label.names"]),
    ("tasks", "t6.yaml", GOOD_TASK.replace("classification", "multiple_choice"),
     ["t6.yaml", "multiple_choice task needs 'input.choices'"]),
    ("tasks", "t7.yaml", GOOD_TASK + "data_files: {train: a.csv}\n", ["t7.yaml", "exactly one of 'dataset'"]),
    ("tasks", "t8.yaml", GOOD_TASK.replace("{{ sentence1 }}", "{{ sentence1 "), ["t8.yaml", "input.text", "not valid Jinja2"]),
    ("tasks", "t9.yaml", GOOD_TASK.replace("names: [entailment, not_entailment]",
                                           "names: [entailment, not_entailment], map: {yes: 0, no: 5}"),
     ["t9.yaml", "outside 0..1"]),
    ("tasks", "t10.yaml", "type: classification\n\tinput: x\n", ["t10.yaml", "not valid YAML"]),
    ("tasks", "t11.yaml", "- a\n- b\n", ["t11.yaml", "not a mapping"]),
    ("tasks", "t12.yaml", "!!python/object/apply:os.system ['echo pwned']\n", ["t12.yaml", "not valid YAML"]),
    ("experiments", "e1.yaml", "backbones: [tiny-bert]\nseeds: [1]\ngroups: [{tasks: [rtee], methods: [st_a]}]\n",
     ["e1.yaml", "groups[0].tasks[0]", "unknown task 'rtee'", "Did you mean 'rte'"]),
    ("experiments", "e2.yaml", "backbones: [tiny-bert]\nseeds: [1]\ngroups: [{tasks: [rte], methods: [st_b]}]\n",
     ["e2.yaml", "unknown method 'st_b'"]),
    ("experiments", "e3.yaml", "backbones: [bert-large]\nseeds: [1]\ngroups: [{tasks: [rte], methods: [st_a]}]\n",
     ["e3.yaml", "backbones[0]", "unknown backbone"]),
    ("experiments", "e4.yaml", "backbones: [tiny-bert]\nseeds: [1]\ngroups: [{tasks: [rte], methods: [st_a]}]\n"
                               "overrides: {st_a: {learning_rate: 0.1}}\n",
     ["e4.yaml", "overrides.st_a.learning_rate", "not a training hyper-parameter"]),
    ("experiments", "e5.yaml", "backbones: [tiny-bert]\nseeds: [1]\n"
                               "groups: [{tasks: [rte], methods: [{method: head, reduction_factor: [2]}]}]\n",
     ["e5.yaml", "reduction_factor", "has no adapter"]),
    ("experiments", "e6.yaml", "backbones: [tiny-bert]\nseeds: one\ngroups: [{tasks: [rte], methods: [st_a]}]\n",
     ["e6.yaml", "seeds", "valid list"]),
    *[("experiments", f"s{i}.yaml", "backbones: [tiny-bert]\nseeds: [1]\ngroups: [{tasks: [rte], methods: [st_a]}]\n"
       f"sweep: {block}\n", [f"s{i}.yaml", *frags]) for i, (block, frags) in enumerate([
        ("{method: st_a, space: {lr: '1e-5:1e-3:log'}, trails: 5}", ["sweep.trails", "did you mean 'trials'"]),
        ("{method: st_a, space: {lr: '1e-3:1e-5'}}", ["sweep.space.lr", "low < high"]),
        ("{method: st_a, space: {lr: '0:1e-3:log'}}", ["sweep.space.lr", "low > 0 (log)"]),
        ("{method: st_a, space: {lr: '1e-5-1e-3'}}", ["sweep.space.lr", "not LOW:HIGH"]),
        ("{method: st_a, space: {}}", ["sweep.space", "at least 1"]),
        ("{method: head, space: {lr: '1e-5:1e-3'}}", ["sweep.method", "not a method of this experiment's groups",
                                                      "name one of st_a"]),
        ("{method: st_b, space: {lr: '1e-5:1e-3'}}", ["sweep.method", "unknown method 'st_b'"]),
        ("{method: st_a, space: {batching: '1:2'}}", ["sweep.space.batching", "not a numeric train", "search one of"]),
        ("{method: st_a, space: {warmup_ratio: '0:1'}}", ["sweep.space.warmup_ratio", "outside what the method"]),
    ], start=1)],
    ("methods", "m1.yaml", "method: st_a\n", ["m1.yaml", "needs an 'adapter' section"]),
    ("methods", "m2.yaml", "method: st_a\nadapter: {reduction_factor: 0}\n", ["m2.yaml", "adapter.reduction_factor"]),
    ("methods", "m3.yaml", "include: _missing.yaml\nmethod: head\n", ["m3.yaml", "include", "does not exist"]),
    ("backbones", "b1.yaml", "source: hub\n", ["b1.yaml", "needs 'model_id'"]),
    ("misc", "x1.yaml", "name: x\n", ["x1.yaml", "kind", "cannot tell what kind"]),
]


@pytest.mark.parametrize("folder,name,content,fragments", BROKEN, ids=[b[1] for b in BROKEN])
def test_broken_spec_gives_clear_error(tmp_path, capsys, folder, name, content, fragments):
    path = tmp_path / folder / name
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent(content))
    code = main(["validate", str(tmp_path), "--no-data"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("Error in ")
    assert len(err.strip().splitlines()) == 1, "one paragraph"
    for frag in fragments:
        assert frag in err, (frag, err)


def test_include_cycle_is_reported(tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "_a.yaml").write_text("include: _b.yaml\n")
    (tmp_path / "methods" / "_b.yaml").write_text("include: _a.yaml\n")
    (tmp_path / "methods" / "c.yaml").write_text("include: _a.yaml\nmethod: head\n")
    with pytest.raises(SpecError, match="include cycle"):
        load_registry([tmp_path])


def test_duplicate_names_are_reported(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "rte.yaml").write_text(GOOD_TASK)  # specs/tasks/rte.yaml exists too
    with pytest.raises(SpecError, match="defined twice"):
        load_registry([tmp_path])


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch /tmp/afbench-pwned').read() }}",
    "{{ self.__init__.__globals__ }}",
])
def test_hostile_template_cannot_run_code(template, tmp_path):
    with pytest.raises(SpecError) as e:
        render(template, {"premise": "x"}, file="evil.yaml", field="input.text")
    assert "evil.yaml" in str(e.value)
    assert not (tmp_path / "afbench-pwned").exists()


def test_template_renders_row_values():
    assert render("{{ sentence.replace('_', option1) }}", {"sentence": "A _ b", "option1": "x"}) == "A x b"
    assert render("{{ choices.text[1] }}", {"choices": {"text": ["a", "b"]}}) == "b"


ROWS = [{"claim": f"claim number {i}", "evidence": f"evidence {i}", "verdict": ["SUPPORTS", "REFUTES"][i % 2]}
        for i in range(12)]


def _write(fmt: str, path, rows):
    if fmt == "csv":
        path.write_text("claim,evidence,verdict\n" + "".join(f"{r['claim']},{r['evidence']},{r['verdict']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_new_task_over_local_files_needs_no_code(tmp_path, capsys, fmt):
    d = tmp_path / "mytasks" / "tasks"
    d.mkdir(parents=True)
    _write(fmt, d / f"train.{fmt}", ROWS)
    _write(fmt, d / f"dev.{fmt}", ROWS[:4])
    (d / "factcheck.yaml").write_text(textwrap.dedent(f"""
        description: a user's own task over local files with its own column names
        data_files: {{train: train.{fmt}, validation: dev.{fmt}}}
        type: classification
        input: {{text: "{{{{ claim }}}}", text_pair: "{{{{ evidence }}}}"}}
        label: {{column: verdict, names: [SUPPORTS, REFUTES], map: {{SUPPORTS: 0, REFUTES: 1}}}}
    """))
    assert main(["validate", str(d / "factcheck.yaml"), "--specs", str(tmp_path / "mytasks")]) == 0
    out = capsys.readouterr().out
    assert "factcheck" in out and "train (12 rows)" in out and "validation (4 rows)" in out
    assert main(["data", "factcheck", "--specs", str(tmp_path / "mytasks")]) == 0
    out = capsys.readouterr().out
    assert "train: 12 rows" in out and "SUPPORTS: 6, REFUTES: 6" in out
    assert "text: 'claim number 0'" in out and "text_pair: 'evidence 0'" in out


def test_local_task_with_missing_column_and_bad_label(tmp_path, capsys):
    d = tmp_path / "tasks"
    d.mkdir()
    _write("jsonl", d / "train.jsonl", ROWS + [{"claim": "c", "evidence": "e", "verdict": "MAYBE"}])
    _write("jsonl", d / "dev.jsonl", ROWS[:4])
    spec = textwrap.dedent("""
        data_files: {train: train.jsonl, validation: dev.jsonl}
        type: classification
        input: {text: "{{ claim }}", text_pair: "{{ evidense }}"}
        label: {column: verdict, names: [SUPPORTS, REFUTES], map: {SUPPORTS: 0, REFUTES: 1}}
    """)
    (d / "fc.yaml").write_text(spec)
    assert main(["validate", str(d / "fc.yaml"), "--specs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "fc.yaml" in err and "input.text_pair" in err and "['evidense']" in err
    (d / "fc.yaml").write_text(spec.replace("evidense", "evidence"))
    assert main(["validate", str(d / "fc.yaml"), "--specs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "label.map" in err and "'MAYBE' (1 rows)" in err and "Traceback" not in err


def test_missing_local_file_names_task_split_and_fix(tmp_path, capsys):
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "gone.yaml").write_text(textwrap.dedent("""
        data_files: {train: nowhere/train.csv, validation: nowhere/dev.csv}
        type: classification
        input: {text: "{{ a }}"}
        label: {column: y, names: [n, p]}
        notes: Ask the corpus owners for the files.
    """))
    assert main(["data", "gone", "--specs", str(tmp_path)]) == 2  # data prints MISSING per split, then fails
    out = capsys.readouterr().out
    assert "train: MISSING" in out and "nowhere/train.csv" in out


def test_sweep_block_parses_and_never_enters_run_ids(tmp_path):
    """``sweep:`` (afbench sweep's method, space and trials) is validated with the spec and changes no run id."""
    from benchmark.plan.build import build_plan

    plain = "backbones: [tiny-bert]\nseeds: [1]\ngroups: [{tasks: [rte], methods: [st_a, head]}]\n"
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "plain.yaml").write_text(plain)
    (tmp_path / "experiments" / "swept.yaml").write_text(
        plain + "sweep: {method: st_a, space: {lr: '1e-5:1e-3:log', epochs: {low: 1, high: 4}}, trials: 7, seed: 3}\n")
    reg = load_registry([tmp_path])
    sw = reg.experiments["swept"].sweep
    assert (sw.method, sw.trials, sw.seed) == ("st_a", 7, 3)
    assert (sw.space["lr"].low, sw.space["lr"].high, sw.space["lr"].log) == (1e-5, 1e-3, True)
    assert (sw.space["epochs"].low, sw.space["epochs"].high, sw.space["epochs"].log) == (1, 4, False)
    ids = [[r.id.replace(n, "") for r in build_plan(reg, reg.experiments[n], lambda t: None).runs]
           for n in ("plain", "swept")]
    assert ids[0] == ids[1] and len(ids[0]) == 2
