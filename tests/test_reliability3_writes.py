"""Reliability and security, round 3 (issue 37), the write-safety items: every path written or renamed
stays under its root whatever a record says (2), no write through a symlinked run folder (3), records of a
newer schema are never retrained over (5), and the smaller lock and report items of 15."""

from __future__ import annotations

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
from conftest import MIRROR, ROOT, needs_mirror, tiny_experiment, write_experiments


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


def _args(tmp_path: Path, name: str, text: str) -> list[str]:
    write_experiments(tmp_path / "specs", **{name: text})
    return ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]


HEAD = tiny_experiment(tasks=("rte",), methods=("head",), fusion=False)


def _scheme1_record(tmp_path: Path, name: str, **changes) -> tuple[Path, dict]:
    """A scheme-1 result.json (as an older version wrote it, no id_scheme) of the plan's one run, crafted from
    the plan's own config without training; ``changes``: keys a hostile record sets."""
    from benchmark.plan.build import build_plan
    from benchmark.spec import load_registry

    reg = load_registry([tmp_path / "specs"])
    (run,) = build_plan(reg, reg.experiments[name], data_root=MIRROR).runs
    cfg = run.config(reg, reg.experiments[name])
    for k in ("task_caps", "selection", "compute", "data"):  # what scheme-1 results did not store
        cfg.pop(k, None)
    cfg["method"]["train"].pop("batching", None)
    old_id = f"{run.task}__{run.label}__{run.backbone}__s1__0123abcd"
    folder = tmp_path / "r" / name / old_id
    folder.mkdir(parents=True)
    record = {"status": "finished", "run_id": old_id, "experiment": name, "task": run.task, "tasks": [run.task],
              "label": run.label, "backbone": run.backbone, "seed": 1, "deps": [], "config": cfg,
              "best_metric": 50.0, **changes}
    (folder / "result.json").write_text(json.dumps(record))
    return folder, record


# ----------------------------------------------------------------------------- 2. migrate and crafted records
@needs_mirror
@pytest.mark.parametrize("key,evil", [("task", "../../../escaped"), ("task", "ABS"),  # ABS: an absolute path
                                      ("label", "x/../../y"), ("backbone", "..")])
def test_migrate_refuses_a_record_whose_names_would_leave_the_root(tmp_path, capsys, key, evil):
    args = _args(tmp_path, "fx", HEAD)
    evil = str(tmp_path / "escaped-abs") if evil == "ABS" else evil  # outside the results root, inside the snapshot
    folder, _ = _scheme1_record(tmp_path, "fx", **{key: evil})
    before = {p: p.read_bytes() if p.is_file() else None for p in _files(tmp_path)}
    capsys.readouterr()
    assert main(["migrate", "fx", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"'{key}'" in err and "not a plain name" in err and "result.json" in err and "Fix:" in err
    after = {p: p.read_bytes() if p.is_file() else None for p in _files(tmp_path)}
    assert after == before, "nothing renamed or rewritten, inside the root or out of it"
    assert not (tmp_path / "escaped-abs").exists()


@needs_mirror
def test_migrate_still_renames_a_plain_record(tmp_path, capsys):
    args = _args(tmp_path, "fx", HEAD)
    folder, _ = _scheme1_record(tmp_path, "fx")
    assert main(["migrate", "fx", *args]) == 0
    (moved,) = [p for p in (tmp_path / "r" / "fx").iterdir() if p.is_dir()]
    assert moved.parent == folder.parent and moved.name != folder.name
    assert json.loads((moved / "result.json").read_text())["migrated_from"] == folder.name


# ----------------------------------------------------------------------------- 3. symlinked run folders
DIVERGE = tiny_experiment(tasks=("rte",), methods=("head",), fusion=False, rows=128).replace(
    "caps:", "overrides: {head: {lr: 1.0e+6}}\ncaps:")  # fails (diverges) within its first epoch


def _run_id(tmp_path: Path, name: str) -> str:
    from benchmark.plan.build import build_plan
    from benchmark.spec import load_registry

    reg = load_registry([tmp_path / "specs"])
    (run,) = build_plan(reg, reg.experiments[name], data_root=MIRROR).runs
    return run.id


@needs_mirror
@pytest.mark.parametrize("target", ["user_folder", "finished_run"])
def test_a_failing_run_never_writes_through_a_symlinked_run_folder(tmp_path, capsys, target):
    """The run folder is a link (inside the root) to a folder of the user's holding a file named result.json,
    or to another experiment's finished result: the failing run must leave what the link points at as it was
    (a failure is written into a folder of its own that replaces the link, or not at all over a finished one)."""
    args = _args(tmp_path, "fx", DIVERGE)
    rid = _run_id(tmp_path, "fx")
    pointed = tmp_path / "r" / ("mine" if target == "user_folder" else f"other/{rid}")
    pointed.mkdir(parents=True)
    if target == "user_folder":
        (pointed / "result.json").write_text("my own notes, not a run record\n")
    else:
        (pointed / "result.json").write_text(json.dumps({
            "schema": 2, "status": "finished", "run_id": rid, "experiment": "fx", "task": "rte", "label": "head",
            "backbone": "tiny-bert", "seed": 1, "best_metric": 61.0}))
    link = tmp_path / "r" / "fx" / rid
    link.parent.mkdir(parents=True)
    link.symlink_to(pointed)
    before = {p: p.read_bytes() for p in _files(pointed)}
    assert main(["run", "fx", "--force", *args]) == 1
    assert "diverged" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in _files(pointed)} == before, "nothing written through the link"
    if target == "user_folder":  # the link is replaced by a folder holding the failed result
        assert not link.is_symlink() and json.loads((link / "result.json").read_text())["status"] == "failed"
    else:  # the finished result it points at is kept, and still read as this run's
        assert link.is_symlink() and json.loads((link / "result.json").read_text())["best_metric"] == 61.0
    assert not list(link.parent.glob(".tmp-*")) and not list(link.parent.glob(".trash-*"))


# ----------------------------------------------------------------------------- 5. records of a newer schema
@needs_mirror
@pytest.mark.parametrize("status", ["archived", "finished"])  # one this version cannot parse, one it could
def test_a_result_of_a_newer_schema_is_listed_and_never_retrained_over(tmp_path, capsys, status):
    args = _args(tmp_path, "fx", HEAD)
    rid = _run_id(tmp_path, "fx")
    folder = tmp_path / "r" / "fx" / rid
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "schema": 99, "status": status, "run_id": rid, "experiment": "fx", "task": "rte", "label": "head",
        "backbone": "tiny-bert", "seed": 1, "best_metric": 70.0, "a_key_of_the_future": {"x": 1}}))
    before = {p: p.read_bytes() for p in _files(folder)}
    capsys.readouterr()
    assert main(["status", "fx", *args]) == 0
    out = capsys.readouterr().out
    assert "newer schema: upgrade afbench" in out and "1 newer" in out and "finished" not in out.split("\n", 1)[1]
    assert main(["plan", "fx", *args]) == 0
    out = capsys.readouterr().out
    assert "1 runs: 1 newer" in out and "newer schema: upgrade afbench" in out and "never retrained over" in out
    for force in ([], ["--force"]):
        assert main(["run", "fx", *force, *args]) == 1
        out = capsys.readouterr().out
        assert f"{rid}: newer schema: upgrade afbench" in out and "not retrained" in out and "0 trained" in out
        assert {p: p.read_bytes() for p in _files(folder)} == before, "no backup needed: nothing was touched"


# ----------------------------------------------------------------------------- 15. locks and reports
@pytest.mark.parametrize("content", [b"", b"\xff\xfe not utf-8"])
@pytest.mark.parametrize("mtime_offset", [3600 * 24 * 365, -3600])
def test_an_unwritten_or_damaged_lock_is_stale_once_old_or_from_the_future(tmp_path, content, mtime_offset):
    """A lock that holds no holder (empty, or bytes that are not UTF-8) is 'being written' only for a grace
    period after its mtime: one dated in the future is not held forever."""
    from benchmark.runner.lock import LOCK, experiment_lock

    exp = tmp_path / "r" / "fx"
    exp.mkdir(parents=True)
    (exp / LOCK).write_bytes(content)
    t = time.time() + mtime_offset
    os.utime(exp / LOCK, (t, t))
    with experiment_lock(exp, log=lambda _: None) as me:
        assert json.loads((exp / LOCK).read_text())["pid"] == me["pid"] == os.getpid()
    assert not (exp / LOCK).exists()


def test_a_fresh_unwritten_lock_is_still_respected(tmp_path):
    from benchmark.runner.lock import LOCK, LockHeld, experiment_lock

    exp = tmp_path / "fx"
    exp.mkdir()
    (exp / LOCK).write_bytes(b"")
    with pytest.raises(LockHeld, match="still writing the lock"):
        with experiment_lock(exp, log=lambda _: None):
            pass


def test_pid_alive_is_one_helper_that_knows_the_dead_and_zombies():
    from benchmark.paths import pid_alive
    from benchmark.report import build
    from benchmark.runner import lock, status

    assert lock.pid_alive is pid_alive and status.pid_alive is pid_alive and build.pid_alive is pid_alive
    assert pid_alive(os.getpid()) and not any(pid_alive(p) for p in (0, -1, True, 2**40))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while pid_alive(child.pid) and time.time() < deadline:  # exits, stays a zombie until reaped: not alive
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    child.wait()


@needs_mirror
def test_a_lenders_force_waits_for_its_running_borrowers(tmp_path, capsys):
    from benchmark.runner.lock import experiment_lock

    args = _args(tmp_path, "lend", HEAD)
    write_experiments(tmp_path / "specs", borrow=HEAD + "dependencies_from: [lend]\n")
    with experiment_lock(tmp_path / "r" / "borrow", log=lambda _: None):  # a driver of the borrower runs
        capsys.readouterr()
        assert main(["run", "lend", "--force", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "experiment 'borrow', which reads the finished stage-1 runs of 'lend'" in err and "--force" in err
        assert not list((tmp_path / "r" / "lend").glob("*/result.json"))
    assert main(["run", "lend", "--force", *args]) == 0  # the borrower is done: the lender may retrain


def _publisher(out: Path, body: str) -> str:
    """A script that publishes report sets into ``out`` (``tag``: what every file of one set says)."""
    return textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from benchmark.report import build
        out = Path({str(out)!r})
        def publish(tag, name="x"):
            build.publish(out, {{f"{{name}}.{{e}}": tag for e in ("md", "html", "tex")}},
                          {{f"{{name}}_files/{{i}}.png": tag.encode() for i in range(3)}}, f"{{name}}_files")
    """) + textwrap.dedent(body)


def _tags(out: Path, name: str = "x") -> set[str]:
    files = [out / f"{name}.{e}" for e in ("md", "html", "tex")] + sorted((out / f"{name}_files").iterdir())
    return {f.read_text() for f in files}


def test_concurrent_reports_take_turns_and_leave_one_complete_set(tmp_path):
    out = tmp_path / "rep"
    script = _publisher(out, """
        import time
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together, once imported
        for i in range(40):
            publish(f"{sys.argv[1]}-{i}")
    """)
    env, start = dict(os.environ, PYTHONPATH=str(ROOT)), str(time.time() + 20)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k), start], cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, text=True) for k in range(4)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errs
    assert len(_tags(out)) == 1, "md, html, tex and figures of one report, not a mix"
    assert sorted(p.name for p in out.iterdir()) == ["x.html", "x.md", "x.tex", "x_files"]


def test_a_report_killed_9_while_moving_is_completed_by_the_next_report(tmp_path):
    out = tmp_path / "rep"
    script = _publisher(out, """
        publish("old")
        real = os.replace
        def replace(src, dst):  # killed after moving its figures and x.md, before x.html
            if str(dst) == str(out / "x.html"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        os.replace = replace
        publish("new")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _tags(out) == {"old", "new"}  # the mixed set the kill left
    subprocess.run([sys.executable, "-c", _publisher(out, 'publish("other", "y")')], cwd=ROOT, check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)  # another experiment's report
    assert _tags(out) == {"new"} and _tags(out, "y") == {"other"}
    assert not list(out.glob(".staging-*"))
