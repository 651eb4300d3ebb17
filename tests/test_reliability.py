"""Reliability and security, round 2 (issue 23): spec names and write paths that could escape their
root, pool workers that outlived a killed driver, read-only folders and interrupted reports."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import BenchError, PathOutsideRoot, SpecError
from benchmark.paths import under, write_atomic
from conftest import ROOT, needs_mirror

TINY = """
    backbones: [tiny-bert]
    seeds: [1]
    groups: [{tasks: [rte, cb], methods: [head]}]
    caps: {max_train_rows: 16, max_eval_rows: 8, max_epochs: 1, max_length: 32}
"""


def _experiment(tmp_path: Path, name: str, body: str = TINY, file: str | None = None) -> list[str]:
    specs = tmp_path / "specs" / "experiments"
    specs.mkdir(parents=True, exist_ok=True)
    (specs / f"{file or name}.yaml").write_text(textwrap.dedent(body))
    return ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


# ----------------------------------------------------------------------------- 1. names and paths
@pytest.mark.parametrize("name", ["../../escaped_exp", "/tmp/abs_exp", ".hidden", "a b", "x/y", ""])
def test_a_spec_name_that_is_not_a_plain_identifier_is_one_paragraph(tmp_path, capsys, name):
    args = _experiment(tmp_path, "evil", f"name: {json.dumps(name)}\n" + textwrap.dedent(TINY))
    before = _files(tmp_path.parent)
    assert main(["plan", "evil", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "evil.yaml" in err and "'name'" in err and "Fix:" in err
    assert _files(tmp_path.parent) == before


@pytest.mark.parametrize("kind,folder,body", [
    ("task", "tasks", "name: /tmp/abs_task\ninclude: rte.yaml\n"),
    ("method", "methods", "name: ../m\nmethod: head\n"),
    ("backbone", "backbones", "name: ../../b\nsource: random_init\n"),
])
def test_task_method_backbone_names_are_checked_too(tmp_path, kind, folder, body):
    from benchmark.spec import load_registry

    (tmp_path / folder).mkdir()
    (tmp_path / folder / "x.yaml").write_text(body)
    with pytest.raises(SpecError) as e:
        load_registry([tmp_path])
    assert e.value.field == "name" and "x.yaml" in str(e.value)


def test_a_name_must_be_its_files_stem(tmp_path):
    from benchmark.spec import load_registry

    args = _experiment(tmp_path, "probe_a", "name: probe_b\n" + textwrap.dedent(TINY))
    with pytest.raises(SpecError, match="its file is probe_a.yaml"):
        load_registry([Path(args[1])])


@pytest.mark.parametrize("bad", ["../../x", "/tmp/x", "..", "a/../../x", ""])
def test_under_refuses_every_path_that_leaves_its_root(tmp_path, bad):
    with pytest.raises(PathOutsideRoot):
        under(tmp_path / "root", bad)
    with pytest.raises(PathOutsideRoot):
        write_atomic(tmp_path / "root" / bad if bad and not bad.startswith("/") else Path(bad or "/"), "x",
                     root=tmp_path / "root")
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_a_symlink_out_of_the_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(PathOutsideRoot):
        write_atomic(tmp_path / "root" / "link" / "f.json", "{}", root=tmp_path / "root")
    assert not list((tmp_path / "outside").iterdir())


class _Named:
    """A spec object whose name a hostile spec chose (bypassing the loader's check): each writer must
    still refuse it on its own."""

    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize("evil", ["../../escaped", "/tmp/afbench-escaped-abs"])
def test_every_writer_refuses_a_traversing_name(tmp_path, evil, monkeypatch):
    from benchmark.report.build import publish
    from benchmark.runner import slurm
    from benchmark.runner.lock import experiment_lock
    from benchmark.runner.results import experiment_dir, write_json_atomic

    root = tmp_path / "a" / "b" / "results"
    root.mkdir(parents=True)
    before = _files(tmp_path)
    with pytest.raises(PathOutsideRoot):  # results/<experiment>, the lock and plan.json under it
        experiment_dir(root, evil)
    with pytest.raises(PathOutsideRoot):
        write_json_atomic(root / evil / "plan.json", {}, root=root)
    exp = root / "ok"
    with pytest.raises(PathOutsideRoot):  # run folders
        from benchmark.runner.execute import _recover

        _recover(exp, evil)
    with pytest.raises(PathOutsideRoot):  # reports and figures
        publish(tmp_path / "reports", {f"{evil}.md": "x"}, {}, None)
    with pytest.raises(PathOutsideRoot):
        publish(tmp_path / "reports", {"ok.md": "x"}, {f"{evil}_files/f.png": b"png"}, f"{evil}_files")
    from benchmark.plan.run import Plan
    from benchmark.runner.execute import run_plan
    from benchmark.spec import load_registry

    reg = load_registry()
    plan = Plan(reg.experiments["smoke"].model_copy(update={"name": evil}), [])
    for executor in ("local", "slurm"):  # the run folders, and Slurm's logs and pickles (results/<exp>/.slurm)
        with pytest.raises(PathOutsideRoot):
            run_plan(plan, reg, results_dir=root, data_dir=None, device="cpu", executor=executor, log=lambda _: None)
    assert slurm.jobs_file(root / "ok").is_relative_to(root / "ok")
    with experiment_lock(experiment_dir(root, "ok"), log=lambda _: None):
        pass
    after = _files(tmp_path) - before
    assert all(p.is_relative_to(root) or p.is_relative_to(tmp_path / "reports") for p in after), after
    assert not Path("/tmp/afbench-escaped-abs").exists() and not Path("/tmp/afbench-escaped-abs.md").exists()


@needs_mirror
@pytest.mark.parametrize("evil", ["../../escaped", "/tmp/afbench-escaped-abs"])
def test_the_tokenized_cache_refuses_a_traversing_task_name(tmp_path, evil, monkeypatch, registry, tiny_bert):
    from benchmark.data.encode import encode_split
    from conftest import MIRROR

    monkeypatch.setenv("AFBENCH_CACHE_DIR", str(tmp_path / "a" / "cache"))
    task = registry.tasks["rte"].model_copy(update={"name": evil})
    with pytest.raises(PathOutsideRoot):
        encode_split(task, "train", tiny_bert[0], root=MIRROR, max_rows=8)
    assert not _files(tmp_path) - _files(tmp_path / "a")
    assert not list(Path("/tmp").glob("afbench-escaped-abs*"))
