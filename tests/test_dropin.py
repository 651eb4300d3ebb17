"""Drop-in tasks on any data (issue 14): columns with any name through ``row``, specs outside specs/
(include fallback, kind from keys), the README example as written, validate rendering a sample of
rows, and a fast honest failure when the Hub is unreachable."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import SpecError
from benchmark.spec import load_registry
from benchmark.spec.templates import render, template_columns
from conftest import ROOT

README = ROOT / "README.md"


# ------------------------------------------------------------------------------------- templates
def test_templates_read_any_column_through_row():
    row = {"Observation Text": "blue", "ctx": {"hint": "copper"}, "claim": "c", "row": "own column"}
    assert render("{{ row['Observation Text'] }} / {{ row['ctx']['hint'] }} / {{ ctx.hint }} / {{ claim }}", row) \
        == "blue / copper / copper / c"
    assert render("{{ row['row'] }}", row) == "own column"  # a column called row stays reachable
    assert template_columns("{{ row['Observation Text'] }} {{ claim }} {{ row.ctx }}") == \
        {"Observation Text", "claim", "ctx"}
    assert template_columns("{{ row.get('Optional Note', '') }}") == set()  # optional, not a column 'get'
    assert render("{{ row.get('Optional Note', '-') }}", row) == "-"


@pytest.mark.parametrize("template", ['{{ "Observation Text" }}', "a constant", "{{ range(3)|join(',') }}"])
def test_template_reading_no_column_is_an_error_at_load(tmp_path, capsys, template):
    (tmp_path / "t.yaml").write_text(textwrap.dedent(f"""
        dataset: {{path: x/y}}
        type: classification
        input: {{text: '{template.replace("'", "''")}'}}
        label: {{column: y, names: [a, b]}}
    """))
    assert main(["validate", str(tmp_path), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "t.yaml" in err and "input.text" in err and "reads no column" in err and "row['" in err


def test_constant_answer_choices_are_allowed_when_the_question_varies(tmp_path):
    mc = ("dataset: {path: x/y}\ntype: multiple_choice\nlabel: {column: y}\n"
          "input: {text: '{{ question }}', choices: ['yes', 'no']}\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "yn.yaml").write_text(mc)
    assert load_registry([tmp_path]).tasks["yn"].input.choices == ["yes", "no"]
    (tmp_path / "tasks" / "yn.yaml").write_text(mc.replace("'{{ question }}'", "'Which?'"))
    with pytest.raises(SpecError, match="input.text.*reads no column"):
        load_registry([tmp_path])


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


NESTED = [{"q": f"question {i}", "ctx": {"hint": f"hint {i}"}, "options": ["a", "b", "c", "d"], "answer": i % 4}
          for i in range(300)]


@pytest.mark.parametrize("template,breaker,fragment", [
    ("{{ ctx.hint }}", lambda r: r.update(ctx={"hnt": "typo"}), "has no attribute 'hint'"),
    ("{{ options[3] }}", lambda r: r.update(options=["a", "b", "c"]), "no element 3"),
    ("{{ q }}", lambda r: r.update(q="  "), "renders empty text"),
    ("{{ row['ctx']['hint'] }}", lambda r: r.update(ctx={}), "no attribute 'hint'"),
])
@pytest.mark.parametrize("where", ["head", "random"])  # in the first 100 rows, or only in the random 100
def test_validate_renders_a_sample_and_names_the_failing_row(tmp_path, capsys, template, breaker, fragment,
                                                             where):
    from benchmark.data import checks

    sampled = checks.sample_indices(len(NESTED))
    bad_row = 7 if where == "head" else sampled[150]
    assert bad_row >= 100 or where == "head"
    rows = [json.loads(json.dumps(r)) for r in NESTED]
    breaker(rows[bad_row])
    _write_rows(tmp_path / "train.jsonl", rows)
    _write_rows(tmp_path / "dev.jsonl", NESTED[:20])
    spec = tmp_path / "nested.yaml"
    spec.write_text(textwrap.dedent(f"""
        data_files: {{train: train.jsonl, validation: dev.jsonl}}
        type: multiple_choice
        input: {{text: "{template}", choices: ["{{{{ options[0] }}}}", "{{{{ options[1] }}}}"]}}
        label: {{column: answer, map: {{0: 0, 1: 1, 2: 0, 3: 1}}, allow_merge: true}}
    """))
    code = main(["validate", str(spec), "--specs", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"split 'train', row {bad_row}" in err and fragment in err and "nested.yaml" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sample_is_first_rows_plus_random_rest():
    from benchmark.data.checks import sample_indices

    idx = sample_indices(1000)
    assert idx[:100] == list(range(100)) and len(idx) == 200 and len(set(idx)) == 200 and max(idx) >= 100
    assert sample_indices(1000) == idx and sample_indices(30) == list(range(30))


# ------------------------------------------------------------------- specs outside specs/ and README
def test_include_falls_back_to_shared_defaults_and_kind_comes_from_keys(tmp_path):
    d = tmp_path / "elsewhere"  # not under tasks/, no kind: key
    d.mkdir()
    (d / "train.csv").write_text("a,y\nx,0\nz,1\n")
    (d / "mytask.yaml").write_text(textwrap.dedent("""
        include: _defaults.yaml
        data_files: {train: train.csv, validation: train.csv}
        type: classification
        input: {text: "{{ a }}"}
        label: {column: y, names: [n, p], map: {"0": 0, "1": 1}}
    """))
    (d / "mymethod.yaml").write_text("include: _adapter_defaults.yaml\nmethod: st_a\nadapter: {type: pfeiffer}\n")
    (d / "mybackbone.yaml").write_text("source: hub\nmodel_id: my-org/my-bert\n")
    (d / "myexp.yaml").write_text("backbones: [tiny-bert]\nseeds: [1]\ngroups: [{tasks: [mytask], methods: [mymethod]}]\n")
    reg = load_registry([d])
    t = reg.tasks["mytask"]
    assert t.max_length == 128 and t.splits.eval == "validation"  # from specs/tasks/_defaults.yaml
    assert reg.methods["mymethod"].adapter.reduction_factor == 16 and reg.methods["mymethod"].train.patience == 3
    assert "myexp" in reg.experiments and reg.backbones["mybackbone"].model_id == "my-org/my-bert"


def test_include_of_unknown_bare_name_still_says_where_it_looked(tmp_path):
    (tmp_path / "t.yaml").write_text("include: _nope.yaml\n" + "dataset: {path: a/b}\ntype: classification\n"
                                     "input: {text: '{{ a }}'}\nlabel: {column: y, names: [a, b]}\n")
    with pytest.raises(SpecError, match="_nope.yaml.*does not exist"):
        load_registry([tmp_path])


def readme_blocks() -> tuple[str, str]:
    text = README.read_text()
    section = text[text.index("### Adding a task"):]
    csv_block = re.search(r"```csv\n(.*?)```", section, re.S).group(1)
    yaml_block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return csv_block, yaml_block


def test_readme_adding_a_task_example_validates_as_written(tmp_path, capsys):
    csv_block, yaml_block = readme_blocks()
    assert "Observation Text" in csv_block.splitlines()[0]  # the header has spaces
    d = tmp_path / "mine"
    (d / "my_data").mkdir(parents=True)
    for split in ("train", "dev"):
        (d / "my_data" / f"{split}.csv").write_text(csv_block)
    (d / "mine.yaml").write_text(yaml_block)
    assert main(["validate", str(d / "mine.yaml"), "--specs", str(d)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "mine" in out and "data ok" in out
    assert main(["data", "mine", "--specs", str(d)]) == 0
    out = capsys.readouterr().out
    assert "text: 'The sample turned blue after heating.'" in out and "yes: 1, no: 1" in out


def test_missing_data_exits_2_for_data_and_is_counted_by_a_folder_validate(tmp_path, capsys):
    """`afbench data` on a task whose split is missing fails; `validate` of a folder passes but its summary
    line counts the tasks without data (naming the file makes it an error, as before)."""
    _, yaml_block = readme_blocks()
    d = tmp_path / "mine"
    (d / "my_data").mkdir(parents=True)
    (d / "my_data" / "train.csv").write_text(readme_blocks()[0])  # dev.csv is not there
    (d / "mine.yaml").write_text(yaml_block)
    assert main(["data", "mine", "--specs", str(d)]) == 2
    captured = capsys.readouterr()
    assert "validation: MISSING" in captured.out and "split(s) validation missing" in captured.err
    assert main(["validate", str(d), "--specs", str(d)]) == 0
    assert "data MISSING for 1 task(s): mine (their runs are skipped" in capsys.readouterr().out
    assert main(["validate", str(d / "mine.yaml"), "--specs", str(d)]) == 2


def test_yaml_booleans_in_names_get_a_quoting_hint(tmp_path, capsys):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "b.yaml").write_text("dataset: {path: a/b}\ntype: classification\n"
                                               "input: {text: '{{ a }}'}\nlabel: {column: y, names: [yes, no]}\n")
    assert main(["validate", str(tmp_path), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "label.names.0" in err and "quote it" in err


# --------------------------------------------------------------------------------------- the Hub
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: a connect is refused at once
    return port


def _no_hub_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AFBENCH_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", PYTHONPATH=str(ROOT),
               AFBENCH_CACHE_DIR=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    return env


def test_unreachable_hub_gives_up_in_seconds_with_one_paragraph(tmp_path):
    env = _no_hub_env(tmp_path)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "smoke", "--results-dir", str(tmp_path / "res")],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    took = time.perf_counter() - t0
    out = p.stdout + p.stderr
    assert took < 30, (took, out[-2000:])
    assert "Traceback" not in out
    assert out.count("the Hugging Face Hub is unreachable (http://127.0.0.1:") == 1, out  # one paragraph
    assert "AFBENCH_DATA_DIR" in out and "HF_HUB_OFFLINE=1" in out
    assert "no run of this experiment can start: task rte:" in out and "task cb:" in out and "task socialiqa:" in out
    assert not list((tmp_path / "res").rglob("result.json")), "runs that never started are not failed results"
    assert p.returncode == 2


def test_validate_words_the_three_hub_cases(tmp_path):
    env = _no_hub_env(tmp_path)
    cmd = [sys.executable, "-m", "benchmark.cli", "validate", str(ROOT / "specs" / "tasks" / "rte.yaml")]
    down = subprocess.run([*cmd, str(ROOT / "specs" / "tasks" / "cb.yaml")], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert "not available offline" not in down.stdout
    assert down.stdout.count("the Hugging Face Hub is unreachable (http://127.0.0.1:") == 1  # once in full
    assert "task rte" in down.stdout and "unreachable (as said for task cb)" in down.stdout
    assert down.returncode == 2  # asked about this task, and its data cannot be had
    offline = subprocess.run(cmd, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
    assert offline.returncode == 0 and "Hub offline mode" in offline.stdout
    from conftest import MIRROR

    if MIRROR is not None:
        mirror = subprocess.run(cmd, env={**env, "AFBENCH_DATA_DIR": str(MIRROR)}, capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
        assert mirror.returncode == 0 and "data ok: train (2490 rows)" in mirror.stdout


def test_hub_backbone_does_not_retry_when_the_hub_is_unreachable(tmp_path):
    env = _no_hub_env(tmp_path)
    code = ("from benchmark.spec import load_registry\n"
            "from benchmark.modeling.backbone import load_tokenizer\n"
            "from benchmark.cli import main\n"
            "import sys\n"
            "from benchmark.errors import BenchError\n"
            "try:\n"
            "    load_tokenizer(load_registry().backbones['bert-base-uncased'])\n"
            "except BenchError as e:\n"
            "    print(e.render()); sys.exit(3)\n")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert time.perf_counter() - t0 < 30
    assert p.returncode == 3, p.stdout + p.stderr
    assert "not in the Hugging Face cache" in p.stdout and "unreachable" in p.stdout and "HF_HUB_OFFLINE=1" in p.stdout


# ------------------------------------------------------------------------------ acceptance (issue 14)
@pytest.mark.slow
def test_dropin_tasks_outside_specs_validate_run_and_report(tmp_path, capsys):
    """A CSV with spaced headers and a JSONL with nested fields, specs in a folder outside specs/ with
    no kind: keys and include: _defaults.yaml; validate, run Head / ST-A / Fusion on tiny-bert, report."""
    d = tmp_path / "my_project"
    d.mkdir()
    words = ["red", "blue", "green", "cold", "hot", "wet", "dry", "loud"]
    lines = ["Observation Text,Claim Text,Gold Label"]
    for i in range(40):
        lines.append(f"\"The {words[i % 8]} sample, number {i}\",it is {words[(i + i % 2) % 8]},"
                     f"{'same' if i % 2 == 0 else 'different'}")
    (d / "obs.csv").write_text("\n".join(lines) + "\n")
    rows = [{"question": f"which is {words[i % 8]}?", "ctx": {"hint": f"think of {words[i % 8]}"},
             "options": [words[i % 8], words[(i + 3) % 8]], "answer": i % 2} for i in range(40)]
    for r in rows:
        if r["answer"] == 1:
            r["options"].reverse()
    (d / "quiz.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "observations.yaml").write_text(textwrap.dedent("""
        include: _defaults.yaml
        description: observations vs claims, columns with spaces
        data_files: {train: obs.csv, validation: obs.csv}
        type: classification
        input: {text: "{{ row['Observation Text'] }}", text_pair: "{{ row['Claim Text'] }}"}
        label: {column: Gold Label, names: [same, different], map: {same: 0, different: 1}}
    """))
    (d / "quiz.yaml").write_text(textwrap.dedent("""
        include: _defaults.yaml
        description: two-way quiz over nested JSON fields
        data_files: {train: quiz.jsonl, validation: quiz.jsonl}
        type: multiple_choice
        input:
          text: "{{ question }} ({{ row['ctx']['hint'] }})"
          choices: ["{{ options[0] }}", "{{ options[1] }}"]
        label: {column: answer}
    """))
    (d / "dropin.yaml").write_text(textwrap.dedent("""
        description: drop-in tasks, tiny model
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{tasks: [observations, quiz], methods: [head, st_a, fusion_st_a]}]
        caps: {max_train_rows: 32, max_eval_rows: 16, max_epochs: 1, max_length: 32}
        fusion: {sources: [observations, quiz]}
    """))
    assert main(["validate", str(d), "--specs", str(d)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "task observations" in out and "task quiz" in out and out.count("data ok") == 2
    res, rep = tmp_path / "results", tmp_path / "reports"
    assert main(["run", "dropin", "--specs", str(d), "--results-dir", str(res)]) == 0
    found = [json.loads(f.read_text()) for f in (res / "dropin").glob("*/result.json")]
    assert {(r["task"], r["method"]) for r in found if r["role"] == "grid"} == \
        {(t, m) for t in ("observations", "quiz") for m in ("head", "st_a", "fusion_st_a")}
    assert all(r["status"] == "finished" for r in found)
    # results may be committed: the drop-in task's data files are stored without this machine's path
    # (here outside the working directory: the folder and file name only; the content is in the run id)
    for r in found:
        for spec in r["config"]["tasks"].values():
            assert all(not Path(v).is_absolute() and len(Path(v).parts) == 2 for v in spec["data_files"].values())
        assert str(tmp_path) not in json.dumps(r)
    assert main(["report", "dropin", "--specs", str(d), "--results-dir", str(res), "--out-dir", str(rep)]) == 0
    assert (rep / "dropin.md").exists() and (rep / "dropin.html").exists()
    # the report claims nothing about the paper for tasks the paper never ran
    md = (rep / "dropin.md").read_text()
    assert "The paper's findings" not in md and not re.search(r"\bholds\b|does not hold", md)
    assert "| observations |" in md and "| quiz |" in md  # our own numbers are there
    assert "/tmp/" not in md and str(tmp_path) not in md  # and no machine path


def test_readme_first_experiment_plans_as_written(tmp_path, capsys):
    """The README's "Training it" experiment, next to its task, plans as written (the commands it names)."""
    text = README.read_text()
    csv_block, task_yaml = readme_blocks()
    section = text[text.index("### Training it"):]
    experiment_yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert re.search(r"afbench run mine`, then `afbench report mine", section)
    d = tmp_path / "specs"
    (d / "tasks" / "my_data").mkdir(parents=True)
    (d / "experiments").mkdir()
    for split in ("train", "dev"):
        (d / "tasks" / "my_data" / f"{split}.csv").write_text(csv_block)
    (d / "tasks" / "mine.yaml").write_text(task_yaml)
    (d / "experiments" / "mine.yaml").write_text(experiment_yaml)
    assert main(["plan", "mine", "--specs", str(d), "--results-dir", str(tmp_path / "results")]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert "mine__head__minilm-l6__s42" in out and "mine__st_a" in out
