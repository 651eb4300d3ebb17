"""Issue #37 (reliability round 3): bounded readers and complete validation before work.

Readers are bounded (only regular files, a size cap, YAML aliases counted before expansion, includes resolved
once and at most a few levels deep) and a broken spec blocks only what needs it; override values, seeds and
names are validated as fully as the YAML blocks they stand for, before any run trains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from conftest import ROOT, needs_mirror

TINY = """
    backbones: [tiny-bert]
    seeds: [1]
    groups: [{tasks: [rte, cb], methods: [head]}]
    caps: {max_train_rows: 16, max_eval_rows: 8, max_epochs: 1, max_length: 32}
"""


def _specs(tmp_path: Path, **experiments: str) -> list[str]:
    folder = tmp_path / "specs" / "experiments"
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in {"good": TINY, **experiments}.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(body))
    return ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]


def _one_paragraph(err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


# ----------------------------------------------------------------------------- 6. specs that hang every command
def _billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, c in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{c}: &{c} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_expansion_and_blocks_only_itself(tmp_path, capsys):
    args = _specs(tmp_path, bomb=_billion_laughs())
    assert len((tmp_path / "specs" / "experiments" / "bomb.yaml").read_bytes()) < 800
    t = time.monotonic()
    assert main(["plan", "good", *args]) == 0
    assert time.monotonic() - t < 10
    cap = capsys.readouterr()
    assert "2 runs" in cap.out and "bomb.yaml" in cap.err and "YAML alias" in cap.err
    assert main(["validate", str(tmp_path / "specs" / "experiments" / "bomb.yaml"), "--no-data"]) == 2
    _one_paragraph(capsys.readouterr().err, "bomb.yaml", "over 100,000 values", "YAML alias *name counted")


def test_a_recursive_alias_is_refused(tmp_path, capsys):
    args = _specs(tmp_path, loop="a: &x [1, *x]\n")
    assert main(["validate", args[1], "--no-data"]) == 2
    _one_paragraph(capsys.readouterr().err, "loop.yaml", "aliases")


def test_small_aliases_still_work(tmp_path, capsys):
    body = textwrap.dedent(TINY).replace("caps: {", "caps: &c {") + "task_caps: {rte: *c}\n"
    args = _specs(tmp_path, aliased=body)
    assert main(["plan", "aliased", *args]) == 0, capsys.readouterr().err


def _include_fan(tasks: Path, depth: int, fan: int = 10) -> None:
    for i in range(depth):
        (tasks / f"_d{i}.yaml").write_text("include: [" + ", ".join([f"_d{i + 1}.yaml"] * fan) + f"]\nnotes: d{i}\n")
    (tasks / f"_d{depth}.yaml").write_text("notes: leaf\n")


def test_an_include_fan_out_is_resolved_once_per_file_and_its_depth_is_capped(tmp_path, capsys):
    from benchmark.spec.loader import MAX_INCLUDE_DEPTH, load_with_includes

    tasks = tmp_path / "specs" / "tasks"
    tasks.mkdir(parents=True)
    spec = tasks / "fan.yaml"
    spec.write_text((ROOT / "specs" / "tasks" / "rte.yaml").read_text().replace(
        "include: _defaults.yaml", "include: [_defaults.yaml, _d0.yaml]"))
    _include_fan(tasks, MAX_INCLUDE_DEPTH - 1)  # 10^7 paths through 8 files
    t = time.monotonic()
    assert load_with_includes(spec)["notes"] == "d0" and main(["validate", str(spec), "--no-data"]) == 0
    assert time.monotonic() - t < 10
    _include_fan(tasks, MAX_INCLUDE_DEPTH)  # one level more
    assert main(["validate", str(spec), "--no-data"]) == 2
    _one_paragraph(capsys.readouterr().err, "fan.yaml", "includes nest over 8 levels deep")


# ----------------------------------------------------------------------------- 7. only regular files, bounded
def test_read_regular_refuses_devices_fifos_folders_and_large_files(tmp_path):
    from benchmark.paths import read_regular

    (tmp_path / "ok").write_bytes(b"x" * 10)
    assert read_regular(tmp_path / "ok", 10) == b"x" * 10
    os.mkfifo(tmp_path / "fifo")
    for path, why in (("/dev/zero", "character device"), (tmp_path / "fifo", "FIFO"), (tmp_path, "folder")):
        with pytest.raises(OSError, match=why):
            read_regular(path, 10)
    with pytest.raises(OSError, match="over the limit of 9"):
        read_regular(tmp_path / "ok", 9)


def test_include_of_a_device_or_fifo_and_a_result_json_linked_to_one_are_one_paragraph(tmp_path):
    """Real processes with a timeout: a FIFO that blocked the reader would hang the test, not fail it."""
    args = _specs(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    tasks = tmp_path / "specs" / "tasks"
    tasks.mkdir()
    rte = (ROOT / "specs" / "tasks" / "rte.yaml").read_text()
    for name, target in (("zero", "/dev/zero"), ("fifo", tmp_path / "fifo")):
        (tasks / f"{name}.yaml").write_text(rte.replace("include: _defaults.yaml",
                                                        f"include: [_defaults.yaml, {target}]"))
    runs = tmp_path / "r" / "good"
    for name, target in (("a_zero", "/dev/zero"), ("b_fifo", tmp_path / "fifo")):
        (runs / name).mkdir(parents=True)
        (runs / name / "result.json").symlink_to(target)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = {}
    for cmd in (["validate", str(tasks), "--no-data"], ["plan", "good", *args], ["status", "good", *args]):
        t = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "benchmark.cli", *cmd], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
        assert time.monotonic() - t < 60 and "Traceback" not in p.stderr and "MemoryError" not in p.stderr
        out[cmd[0]] = (p.returncode, p.stdout + p.stderr)
    rc, text = out["validate"]
    assert rc == 2 and "is not a regular file" in text and "at field 'include'" in text, text
    rc, text = out["plan"]
    assert rc == 0 and "a_zero/result.json" in text and "b_fifo/result.json" in text, text
    assert "not a regular file but a character device" in text and "not a regular file but a FIFO" in text
    assert out["status"][0] == 0 and "2 pending" in out["status"][1]


def test_load_run_and_load_plan_name_a_non_regular_file(tmp_path):
    from benchmark.records import RecordError, load_plan, load_run

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").symlink_to("/dev/zero")
    (tmp_path / "plan.json").symlink_to("/dev/zero")
    for load, path in ((load_run, tmp_path / "run" / "result.json"), (load_plan, tmp_path / "plan.json")):
        with pytest.raises(RecordError, match="not a regular file but a character device"):
            load(path)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RecordError, match="nested too deeply"):
        load_plan(tmp_path / "deep.json")


# ----------------------------------------------------------------------------- 9. a lock that is not UTF-8
def test_the_lock_is_read_as_bytes_with_a_note(tmp_path):
    import hashlib

    from benchmark.runner.provenance import environment

    lock = tmp_path / "requirements.lock"
    raw = b"# caf\xe9\npydantic==0.0.1\n"  # Latin-1, not UTF-8
    lock.write_bytes(raw)
    env = environment(lock)
    assert env["lock_sha256"] == hashlib.sha256(raw).hexdigest() and env["matches_lock"] is False
    assert "not UTF-8 text" in env["lock_note"] and "pydantic" in env["drift"][0]
    lock.unlink()
    os.mkfifo(lock)
    assert "not a regular file but a FIFO" in environment(lock)["lock_note"]
    assert "lock_note" not in environment(tmp_path / "missing.lock")  # a plain pip install: no lock, no note


@needs_mirror
def test_runs_train_and_are_recorded_under_a_non_utf8_lock(tmp_path, monkeypatch, capsys):
    from benchmark.runner import provenance

    lock = tmp_path / "requirements.lock"
    lock.write_bytes(b"torch==0.0\n\xff\xfe\n")
    monkeypatch.setattr(provenance, "LOCK_FILE", lock)
    args = _specs(tmp_path)
    assert main(["run", "good", *args]) == 0, capsys.readouterr().err
    results = [json.loads(p.read_text()) for p in (tmp_path / "r" / "good").glob("*/result.json")]
    assert len(results) == 2 and {r["status"] for r in results} == {"finished"}
    assert all("not UTF-8 text" in r["environment"]["lock_note"] for r in results)


# ----------------------------------------------------------------------------- 11. one experiment's mistake
@pytest.mark.parametrize("mistake", ["dependencies_from: [no_such_experiment]", "overrides: {head: {lrr: 0.1}}",
                                     "overrides: {no_such_method: {lr: 0.1}}", "overrides: {head: {lr: -1}}"])
def test_a_reference_error_in_one_experiment_blocks_only_that_one(tmp_path, capsys, mistake):
    args = _specs(tmp_path, bad=TINY + f"    {mistake}\n")
    assert main(["plan", "good", *args]) == 0
    cap = capsys.readouterr()
    assert "2 runs" in cap.out and cap.err.count("warning: skipped") == 1 and "bad.yaml" in cap.err, cap.err
    assert main(["list", "--specs", args[1]]) == 0
    cap = capsys.readouterr()
    assert "good" in cap.out and "bad" not in cap.out.split() and "bad.yaml" in cap.err
    assert main(["plan", "bad", *args]) == 2
    err = capsys.readouterr().err
    assert "warning" not in err and err.count("Error in") == 1 and "bad.yaml" in err and "Traceback" not in err
    assert main(["validate", args[1], "--no-data"]) == 2  # validate stays strict


# ----------------------------------------------------------------------------- 12. override values
@pytest.mark.parametrize("value, field, words", [
    ("lr: -1", "lr", "greater than 0"), ("batch_size: 0", "batch_size", "greater than or equal to 1"),
    ("epochs: abc", "epochs", "valid integer"), ("lr: .inf", "lr", "finite number"),
    ("lr: .nan", "lr", "finite number"), ("warmup_ratio: 1.5", "warmup_ratio", "less than 1")])
def test_override_values_are_checked_by_the_methods_own_model(tmp_path, capsys, value, field, words):
    args = _specs(tmp_path, bad=TINY + f"    overrides: {{head: {{{value}}}}}\n")
    assert main(["validate", str(tmp_path / "specs" / "experiments" / "bad.yaml"), "--no-data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"field 'overrides.head.{field}'" in err and words in err, err
    assert main(["plan", "bad", *args]) == 2
    _one_paragraph(capsys.readouterr().err, "bad.yaml", f"overrides.head.{field}")


def test_infinite_values_are_refused_in_every_spec_block(tmp_path, capsys):
    method = tmp_path / "specs" / "methods" / "inf_head.yaml"
    method.parent.mkdir(parents=True)
    method.write_text("method: head\ntrain: {lr: .inf}\n")
    assert main(["validate", str(method), "--no-data"]) == 2
    _one_paragraph(capsys.readouterr().err, "inf_head.yaml", "train.lr", "finite number")
    args = _specs(tmp_path, ok=TINY + "    overrides: {head: {lr: 1.0e-3, epochs: 2, patience: null}}\n")
    assert main(["plan", "ok", *args]) == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------- 13. seeds
@pytest.mark.parametrize("seeds, words", [("[100000000000000000000000]", "less than 4294967296"),
                                          ("[-1]", "greater than or equal to 0"),
                                          ("[" + ",".join(["7"] * 150_000) + "]", "over 100,000 values (scalars, lists and mappings"),
                                          ("[" + ", ".join(map(str, range(1000))) + "]", "at most 100 items")])
def test_seeds_are_bounded_in_count_and_size(tmp_path, capsys, seeds, words):
    args = _specs(tmp_path, bad=TINY.replace("seeds: [1]", f"seeds: {seeds}"))
    t = time.monotonic()
    assert main(["plan", "good", *args]) == 0  # the others plan
    assert main(["plan", "bad", *args]) == 2
    assert time.monotonic() - t < 60  # 150,000 seeds: 300 KB of YAML, parsed once per command
    _one_paragraph(capsys.readouterr().err, "bad.yaml", words)


def test_adapter_and_data_seeds_are_bounded_too(tmp_path, capsys):
    args = _specs(tmp_path, bad=TINY + "    fusion: {adapter_seed: 99999999999}\n")
    assert main(["plan", "bad", *args]) == 2
    err = capsys.readouterr().err
    _one_paragraph(err, "field 'fusion.adapter_seed'", "less than 4294967296")
    args = _specs(tmp_path, bad=TINY.replace("max_length: 32}", "max_length: 32, data_seed: -3}"))
    assert main(["plan", "bad", *args]) == 2
    _one_paragraph(capsys.readouterr().err, "field 'caps.data_seed'")


# ----------------------------------------------------------------------------- 14. long names
@needs_mirror
def test_the_longest_valid_names_train_and_a_longer_one_is_one_paragraph(tmp_path, capsys):
    from benchmark.spec.registry import MAX_NAME

    specs = tmp_path / "specs"
    names = {kind: (kind[0] + "_" * MAX_NAME)[:MAX_NAME] for kind in ("task", "method", "backbone", "experiment")}
    for kind, source in (("task", "rte"), ("method", "st_a"), ("backbone", "tiny-bert")):
        (specs / f"{kind}s").mkdir(parents=True)
        (specs / f"{kind}s" / f"{names[kind]}.yaml").write_text((ROOT / "specs" / f"{kind}s" / f"{source}.yaml")
                                                                .read_text())
    body = (f"backbones: [{names['backbone']}]\nseeds: [4294967295]\n"
            f"groups: [{{tasks: [{names['task']}], methods: [{names['method']}]}}]\n"
            "caps: {max_train_rows: 16, max_eval_rows: 8, max_epochs: 1, max_length: 32}\n")
    (specs / "experiments").mkdir()
    (specs / "experiments" / f"{names['experiment']}.yaml").write_text(body)
    args = ["--specs", str(specs), "--results-dir", str(tmp_path / "r")]
    assert main(["run", names["experiment"], *args]) == 0, capsys.readouterr().err
    (run,) = (tmp_path / "r" / names["experiment"]).glob("*/result.json")
    assert json.loads(run.read_text())["status"] == "finished" and len(run.parent.name) > 220
    longer = specs / "tasks" / f"{names['task']}x.yaml"
    longer.write_text((ROOT / "specs" / "tasks" / "rte.yaml").read_text())
    assert main(["validate", str(longer), "--no-data"]) == 2
    _one_paragraph(capsys.readouterr().err, "at most 64 characters")


def test_every_committed_spec_and_run_id_fits_the_bounds(registry):
    from benchmark.spec.registry import MAX_NAME

    assert all(len(n) <= MAX_NAME for kind in ("task", "method", "backbone", "experiment")
               for n in registry.table(kind))
    ids = [p.name for p in (ROOT / "results").glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    assert ids and all(len(f".tmp-{i}-4194304") <= 255 for i in ids)


# ----------------------------------------------------------------------------- 15. smaller
def test_a_best_metric_outside_0_100_is_a_corrupt_result(tmp_path):
    from benchmark.records import read_result_file

    src = next((ROOT / "results" / "minilm_table1").glob("rte__st_a_rf16__*/result.json"))
    for value, ok in ((1e308, False), (-0.5, False), (100.5, False), (100.0, True), (0.0, True), (71.5, True)):
        run = tmp_path / str(value) / src.parent.name
        run.mkdir(parents=True)
        data = json.loads(src.read_text())
        data["best_metric"] = value
        (run / "result.json").write_text(json.dumps(data))
        r = read_result_file(run)
        assert r.ok == ok, (value, r.reason)
        if not ok:
            assert "not a finite accuracy in 0..100" in r.reason and repr(value) in r.reason


def test_a_task_with_one_label_class_validates_with_a_warning(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for split in ("train", "validation"):
        (tasks / f"{split}.csv").write_text("sentence,label\n" + "".join(f"text {i},1\n" for i in range(20)))
    (tasks / "one_class.yaml").write_text(
        "data_files: {train: train.csv, validation: validation.csv}\ntype: classification\n"
        "input: {text: '{{ sentence }}'}\nlabel: {column: label, names: [negative, positive], map: {'0': 0, '1': 1}}\n")
    assert main(["validate", str(tasks / "one_class.yaml")]) == 0
    out = capsys.readouterr().out
    assert "WARNING: split 'train' has one label class ('positive', of 2)" in out, out
    assert "WARNING: split 'validation' has one label class" in out
    (tasks / "train.csv").write_text("sentence,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(20)))
    assert main(["validate", str(tasks / "one_class.yaml")]) == 0
    out = capsys.readouterr().out
    assert "split 'train' has one" not in out and "split 'validation' has one" in out


def test_an_adapterhub_weights_file_that_holds_a_list_is_a_clear_error(tiny_bert, tmp_path):
    import torch

    from benchmark.errors import CheckpointError
    from benchmark.modeling.checkpoint import load_adapterhub
    from benchmark.modeling.model import AdapterModel

    _, make = tiny_bert
    cfg = {"name": "x", "config": {"architecture": "bottleneck", "reduction_factor": 16, "original_ln_before": True,
                                   "mh_adapter": False, "output_adapter": True, "non_linearity": "relu"}}
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    for bad, what in (([torch.zeros(2)], "holds a list"), ({"a": [torch.zeros(2)]}, "holds a dict")):
        torch.save(bad, tmp_path / "pytorch_adapter.bin")
        with pytest.raises(CheckpointError, match=what):
            load_adapterhub(AdapterModel(make()), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read the adapter config"):
        load_adapterhub(AdapterModel(make()), tmp_path)
