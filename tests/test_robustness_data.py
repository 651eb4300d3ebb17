"""Robustness of the spec and data layers (issue 13): broken data files give one paragraph at validate
time and a failed (never finished) run; duplicate keys, duplicate names and merged labels are errors;
templates and spec files have limits that fail fast."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import DataError, SpecError
from benchmark.spec import load_registry
from benchmark.spec.loader import MAX_SPEC_BYTES, read_yaml
from benchmark.spec.templates import MAX_RENDER_CHARS, render

HEADER = "premise,hypothesis,label\n"
ROWS = "".join(f"premise {i},hypothesis {i},{['yes', 'no'][i % 2]}\n" for i in range(16))


def make_task(root: Path, train: str | None = HEADER + ROWS, dev: str | None = HEADER + ROWS,
              data_files: str = "{train: train.csv, validation: dev.csv}") -> Path:
    """A task folder with its CSVs and a one-group experiment (head on tiny-bert) beside it."""
    d = root / "specs"
    (d / "tasks").mkdir(parents=True, exist_ok=True)
    (d / "experiments").mkdir(exist_ok=True)
    if train is not None:
        (d / "tasks" / "train.csv").write_text(train)
    if dev is not None:
        (d / "tasks" / "dev.csv").write_text(dev)
    (d / "tasks" / "mine.yaml").write_text(textwrap.dedent(f"""
        include: _defaults.yaml
        data_files: {data_files}
        type: classification
        input: {{text: "{{{{ premise }}}}", text_pair: "{{{{ hypothesis }}}}"}}
        label: {{column: label, names: ["yes", "no"], map: {{"yes": 0, "no": 1}}}}
    """))
    (d / "experiments" / "mine_exp.yaml").write_text(textwrap.dedent("""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{tasks: [mine], methods: [head]}]
        caps: {max_epochs: 1, max_length: 32}
    """))
    return d


def validate(d: Path, capsys) -> tuple[int, str, str]:
    code = main(["validate", str(d / "tasks" / "mine.yaml"), "--specs", str(d)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_once(d: Path, results: Path, capsys) -> tuple[int, dict | None, str]:
    code = main(["run", "mine_exp", "--specs", str(d), "--results-dir", str(results)])
    out = capsys.readouterr().out
    found = list((results / "mine_exp").glob("*/result.json"))
    return code, (json.loads(found[0].read_text()) if found else None), out


BROKEN_DATA = [
    # (case, make_task kwargs, fragments of the validate paragraph)
    ("empty train", dict(train=HEADER), ["split 'train' has no rows", "train.csv", "data_files.train"]),
    ("empty eval", dict(dev=HEADER), ["split 'validation' has no rows", "dev.csv", "data_files.validation"]),
    ("zero-byte train", dict(train=""), ["split 'train' has no rows"]),
    ("short row", dict(train=HEADER + ROWS + "premise x,hypothesis x\n"),
     ["line 18", "no value for column(s) ['label']", "train.csv"]),
    ("short templated column", dict(train=HEADER + ROWS + "premise x\n"),
     ["line 18", "['hypothesis', 'label']", "train.csv"]),
    ("extra field", dict(train=HEADER + ROWS + "a,b,yes,extra\n"), ["line 18", "more than the header"]),
]


@pytest.mark.parametrize("case,kw,fragments", BROKEN_DATA, ids=[b[0] for b in BROKEN_DATA])
def test_broken_data_is_one_paragraph_at_validate_and_a_failed_run(tmp_path, capsys, case, kw, fragments):
    d = make_task(tmp_path, **kw)
    code, out, err = validate(d, capsys)
    assert code == 2 and "data ok" not in out
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for frag in fragments:
        assert frag in err, (frag, err)
    code, result, log = run_once(d, tmp_path / "results", capsys)
    assert code == 1 and result is not None, log
    assert result["status"] == "failed" and any(frag in result["error"] for frag in fragments), result["error"]
    assert not (tmp_path / "results" / "mine_exp" / result["run_id"] / "weights.safetensors").exists()


def test_a_directory_in_data_files_is_an_error_and_a_failed_run(tmp_path, capsys):
    d = make_task(tmp_path)
    (d / "tasks" / "folder").mkdir()
    make_task(tmp_path, data_files="{train: folder, validation: dev.csv}")
    code, out, err = validate(d, capsys)
    assert code == 2 and "is a directory, not a data file" in err and "data_files.train" in err
    assert "Traceback" not in err
    code, result, _ = run_once(d, tmp_path / "results", capsys)
    assert code == 1 and result["status"] == "failed" and "is a directory" in result["error"]


def test_a_missing_data_file_is_never_data_ok(tmp_path, capsys):
    d = make_task(tmp_path, dev=None)
    code, out, err = validate(d, capsys)
    assert code == 2 and "data ok" not in out
    assert "MISSING" in out and "dev.csv does not exist" in out and "data_files.validation" in out
    assert "the data of mine is missing" in err
    # validating the folder lists it as missing without failing the other specs (e.g. the UKP corpus)
    assert main(["validate", str(d), "--specs", str(d)]) == 0
    assert "MISSING" in capsys.readouterr().out


def test_empty_split_can_never_finish_through_encode(registry, tiny_bert, tmp_path):
    from benchmark.data.encode import encode_split

    d = make_task(tmp_path, train=HEADER)
    reg = load_registry([d])
    with pytest.raises(DataError, match="has no rows"):
        encode_split(reg.tasks["mine"], "train", tiny_bert[0], use_cache=False)


def test_a_null_value_is_not_rendered_as_none(tmp_path, capsys):
    d = tmp_path / "specs" / "tasks"
    d.mkdir(parents=True)
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2} for i in range(10)]
    rows[3]["hypothesis"] = None
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "nul.yaml").write_text(textwrap.dedent("""
        data_files: {train: train.jsonl, validation: train.jsonl}
        type: classification
        input: {text: "{{ premise }}", text_pair: "{{ hypothesis }}"}
        label: {column: label, names: [a, b]}
    """))
    assert main(["validate", str(d / "nul.yaml"), "--specs", str(d.parent)]) == 2
    err = capsys.readouterr().err
    assert "split 'train', row 3" in err and "missing (None)" in err and "input.text_pair" in err


# -------------------------------------------------------------------------------- label mapping
LABEL_CASES = [
    ("duplicate YAML key", "label: {column: y, names: [a, b]}\nlabel: {column: z, names: [a, b]}\n",
     ["the key 'label' is given twice", "lines 5 and 6"]),
    ("duplicate nested key", "label: {column: y, names: [a, b], map: {x: 0, x: 1}}\n",
     ["the key 'x' is given twice", "at field 'label.map.x'"]),
    ("duplicate class names", "label: {column: y, names: [a, a]}\n", ["label.names lists ['a'] more than once"]),
    ("many-to-one map", "label: {column: y, names: [a, b], map: {entails: 0, entailment: 0, neutral: 1}}\n",
     ["sends several raw values to one id", "['entails', 'entailment'] -> 0", "allow_merge: true"]),
]


@pytest.mark.parametrize("case,label,fragments", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_label_mapping_mistakes_are_errors(tmp_path, capsys, case, label, fragments):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "lab.yaml").write_text(
        "dataset: {path: a/b}\ntype: classification\ninput: {text: '{{ a }}'}\n# a comment\n" + label)
    assert main(["validate", str(tmp_path), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "lab.yaml" in err and "Traceback" not in err
    for frag in fragments:
        assert frag in err, (frag, err)


def test_allow_merge_accepts_a_many_to_one_map(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "m.yaml").write_text(
        "dataset: {path: a/b}\ntype: classification\ninput: {text: '{{ a }}'}\n"
        "label: {column: y, names: [a, b], map: {entails: 0, entailment: 0, neutral: 1}, allow_merge: true}\n")
    assert load_registry([tmp_path]).tasks["m"].label.allow_merge is True


def test_yaml_merge_keys_may_still_override(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("base: &b {lr: 1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 3\n")
    assert read_yaml(f)["train"] == {"lr": 3, "epochs": 2}


# ------------------------------------------------------------------------------------------ limits
def test_spec_file_over_a_megabyte_is_refused_before_parsing(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("notes: '" + "x" * (MAX_SPEC_BYTES + 10) + "'\n")
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="over the limit of 1,000,000") as e:
        read_yaml(f)
    assert time.perf_counter() - t0 < 0.5 and "big.yaml" in str(e.value)


@pytest.mark.parametrize("template,fragment", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "range()"),
    ("{{ premise * 100000000 }}", "repeated string"),
    ("{{ premise|center(1000000000) }}", "center"),
    ("{{ '%1000000000s' % premise }}", "format string"),
    ("{{ '{:1000000000}'.format(premise) }}", "format string"),
    ("{{ 2 ** 100000000 }}", "exponent"),
    ("{% for i in range(9000) %}{{ premise }}{% endfor %}", "rendered text"),
    ("{{ lipsum(n=10000000) }}", "'lipsum' is undefined"),
    ("{{ range(9000)|join(premise * 4000) }}", "filter 'join'"),
    ("{{ (premise * 4000).join(range(9000)|map('string')) }}", "'join'"),
])
def test_template_budget_fails_fast(template, fragment):
    row = {"premise": "p" * 20}
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as e:
        render(template, row, file="t.yaml", field="input.text")
    assert time.perf_counter() - t0 < 1.0
    assert fragment in str(e.value) and "t.yaml" in str(e.value) and "input.text" in str(e.value)


def test_rendered_text_over_the_limit_is_an_error_but_ordinary_text_is_not():
    assert render("{{ premise }}", {"premise": "a" * MAX_RENDER_CHARS}) == "a" * MAX_RENDER_CHARS
    with pytest.raises(SpecError, match="rendered text would hold 100,001"):
        render("{{ premise }}!", {"premise": "a" * MAX_RENDER_CHARS})
    assert render("{{ premise * 3 }} {% for i in range(3) %}{{ i }}{% endfor %}", {"premise": "ab"}) == "ababab 012"
    assert render("{{ words|join(', ') }} {{ '-'.join(words) }} {{ words|join }}", {"words": ["a", "b"]}) == "a, b a-b ab"


def test_allow_merge_leaves_existing_configs_and_run_ids_alone(registry, tmp_path):
    """The new field must not enter the dump of a task that does not use it: the dump is hashed into
    run ids, and the committed results would all look stale."""
    assert all("allow_merge" not in t.model_dump(mode="json")["label"] for t in registry.tasks.values())
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "m.yaml").write_text(
        "dataset: {path: a/b}\ntype: classification\ninput: {text: '{{ a }}'}\n"
        "label: {column: y, names: [a, b], map: {x: 0, z: 0, w: 1}, allow_merge: true}\n")
    dumped = load_registry([tmp_path]).tasks["m"].model_dump(mode="json")
    assert dumped["label"]["allow_merge"] is True
    from benchmark.spec.schema import TaskSpec

    assert TaskSpec.model_validate(dumped).label.allow_merge is True  # round-trips
