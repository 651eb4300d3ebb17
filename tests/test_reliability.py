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
from benchmark.errors import PathOutsideRoot, SpecError
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
    from benchmark.paths import under
    from benchmark.report.build import publish
    from benchmark.runner import slurm
    from benchmark.runner.lock import experiment_lock
    from benchmark.runner.results import write_json_atomic

    root = tmp_path / "a" / "b" / "results"
    root.mkdir(parents=True)
    before = _files(tmp_path)
    with pytest.raises(PathOutsideRoot):  # results/<experiment>, the lock and plan.json under it
        under(root, evil)
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
    with experiment_lock(under(root, "ok"), log=lambda _: None):
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


# ----------------------------------------------------------------------------- 2. orphaned workers
def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat[2]) == pgid and stat[0] != b"Z":
            out.append(int(d.name))
    return out


@needs_mirror
@pytest.mark.slow
def test_kill_9_of_a_jobs_2_driver_leaves_no_worker_and_a_rerun_trains_each_run_once(tmp_path):
    args = _experiment(tmp_path, "orphans", """
        backbones: [tiny-bert]
        seeds: [1, 2, 3]
        groups: [{tasks: [rte, cb], methods: [head, st_a]}]
        caps: {max_train_rows: 600, max_eval_rows: 16, max_epochs: 2, max_length: 32}
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "orphans", "--jobs", "2", *args]
    # its own session: the driver and everything it starts share one process group, found after the kill
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    folder = tmp_path / "r" / "orphans"
    deadline = time.time() + 300
    lock = {}
    while time.time() < deadline and proc.poll() is None:
        done = list(folder.glob("[!.]*/result.json"))  # run folders only, not a worker's .tmp- folder
        try:
            lock = json.loads((folder / ".lock").read_text())
        except (OSError, ValueError):  # not written yet, or being replaced
            lock = {}
        # some finished, two in the workers' hands: the lock names both (it lists the running workers only)
        if len(done) >= 2 and list(folder.glob(".tmp-*")) and len(lock.get("workers", [])) == 2:
            break
        time.sleep(0.05)
    assert len(lock.get("workers", [])) == 2, lock  # the lock names the pool's workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(10)
    assert _group_alive(proc.pid) == [], "a process of the killed driver outlived it"
    first = {p.parent.name: p.read_bytes() for p in folder.glob("[!.]*/result.json")}
    assert 0 < len(first) < 12, "the kill should land mid-grid"
    from benchmark.runner.lock import holder_alive

    assert holder_alive(lock) is False  # driver and workers dead: a stale lock, taken over
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over a stale lock" in rerun.stdout
    after = {p.parent.name: p.read_bytes() for p in folder.glob("*/result.json")}
    assert len(after) == 12 and all(json.loads(b)["status"] == "finished" for b in after.values())
    assert {rid: after[rid] for rid in first} == first, "a finished result changed"
    assert not list(folder.glob("*/last_failure.json")) and not list(folder.glob(".tmp-*"))
    assert not (folder / ".lock").exists()


def test_a_lock_is_live_while_a_recorded_worker_lives(tmp_path):
    from benchmark.runner.lock import LockHeld, experiment_lock, holder_alive, read_lock, record_workers

    exp = tmp_path / "exp"
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with experiment_lock(exp, log=lambda _: None) as me:
            record_workers(exp, me, [worker.pid])
            holder = read_lock(exp)
            assert holder["workers"] == [worker.pid]
        dead_driver = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                     capture_output=True, text=True).stdout.strip()
        (exp / ".lock").write_text(json.dumps({**holder, "pid": int(dead_driver)}))  # a driver killed with -9
        assert holder_alive(read_lock(exp)) is True
        with pytest.raises(LockHeld, match=f"worker\\(s\\) {worker.pid} still alive"):
            with experiment_lock(exp, log=lambda _: None):
                pass
    finally:
        worker.kill()
        worker.wait()
    assert holder_alive(read_lock(exp)) is False  # now stale: taken over
    with experiment_lock(exp, log=lambda _: None):
        pass


def test_a_pool_worker_kills_itself_when_its_driver_is_gone_without_the_kernels_help(tmp_path):
    """The watchdog (``die_with_driver``) alone, as on a system without prctl: a grandchild whose driver
    (its parent) exits must die within a few seconds."""
    script = textwrap.dedent(f"""
        import ctypes, os, sys, time
        from benchmark.runner.execute import die_with_driver
        def no_libc(*a, **k):
            raise OSError("no libc here")
        ctypes.CDLL = no_libc  # no prctl: only the watchdog thread is left
        driver = os.getpid()
        pid = os.fork()
        if pid == 0:
            die_with_driver(driver)
            open({str(tmp_path / 'child')!r}, 'w').write(str(os.getpid()))
            time.sleep(60)
            os._exit(0)
        while not os.path.exists({str(tmp_path / 'child')!r}):
            time.sleep(0.05)
        os._exit(0)  # the driver ends; its worker must follow
    """)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                   check=True, timeout=60)
    from benchmark.runner.lock import pid_alive

    child = int((tmp_path / "child").read_text())
    deadline = time.time() + 5
    while pid_alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child)


# ----------------------------------------------------------------------------- 3. template budgets
BOMBS = [  # (template, what the paragraph says); each used to hang, or allocate gigabytes, before a check
    ("{% set s = premise * 4000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", "steps"),
    ("{{ '%*s' % (10**9, premise) }}", "width or precision"),
    ("{{ '%.*f' % (10**9, 1.0) }}", "width or precision"),
    ("{{ '%*s'|format(10**9, premise) }}", "width or precision"),
    ("{{ '{:{}}'.format(premise, 10**9) }}", "width or precision"),
    ("{{ '{:>{w}}'.format(premise, w=10**9) }}", "width or precision"),
    ("{{ '{:{}}'.format(premise, '1000000000') }}", "width or precision"),
    ("{% set a = [0] * 90000 %}{% set b = [a] * 90000 %}{{ b|length }}", "repeated string or list"),
    ("{% set a = [premise * 4000] %}{{ (a * 90000)|length }}", "repeated string or list"),
    ("{{ ((((2**64)**64)**64)**64)**64 }}", "bits"),
    ("{% set x = 2**60 %}{{ " + "*".join(["x"] * 70) + " }}", "bits"),
    ("{{ premise.center(10**9) }}", "center"),
    ("{{ premise|ljust(10**9) if false else premise.ljust(10**9) }}", "ljust"),
    ("{{ (5).to_bytes(10**9, 'big') }}", "to_bytes"),
    ("{% set s = premise * 4000 %}{% set t = s ~ s ~ s ~ s %}{{ (t ~ t ~ t ~ t)|length }}", "joined with '~'"),
    ("{% set s = premise * 4000 %}{% set b %}{% for i in range(10000) %}{{ s }}{% endfor %}{% endset %}{{ b|length }}",
     "printed over"),
    ("{% set b %}{% for i in range(10000) %}" + "x" * 5000 + "{% endfor %}{% endset %}{{ b|length }}", "printed over"),
    ("{% for i in range(10000) %}{% for c in premise * 20 %}{% endfor %}{% endfor %}", "steps"),
    ("{% set s = premise * 400 %}{{ s.replace('', s)|length }}", "result of 'replace'"),  # one C call, no steps
    ("{% set s = premise * 400 %}{{ s|replace('', s)|length }}", "result of the filter 'replace'"),
]


@pytest.mark.parametrize("template,fragment", BOMBS)
def test_template_work_is_bounded_before_it_is_done(template, fragment):
    from benchmark.spec.templates import render

    t0 = time.perf_counter()
    with pytest.raises(SpecError) as e:
        render(template, {"premise": "p" * 20}, file="t.yaml", field="input.text")
    assert time.perf_counter() - t0 < 1.0
    assert fragment in str(e.value) and "t.yaml" in str(e.value) and "input.text" in str(e.value), str(e.value)


def test_ordinary_templates_still_render():
    from benchmark.spec.templates import render, template_columns

    row = {"premise": "A b.", "n": 3, "words": ["x", "y"]}
    assert render("{% for w in words %}{{ w|upper }} {% endfor %}{{ premise ~ '!' }} {{ '%5s' % n }}", row) \
        == "X Y A b.! 3".replace(" 3", "     3")
    assert render("[{{ '{:>{w}}'.format(premise, w=6) }}|{{ '%*d' % (3, n) }}]", row) == "[  A b.|  3]"
    assert render("{% set x %}{{ premise }}{% endset %}[{{ x }}] {{ 2 ** 10 * 3 }}", row) == "[A b.] 3072"
    assert template_columns("{% for w in words %}{{ w }}{% endfor %} {{ row['a b'] }} lit") == {"words", "a b"}


@needs_mirror
def test_validate_answers_a_template_bomb_with_one_paragraph(tmp_path, capsys):
    (tmp_path / "tasks").mkdir()
    bomb = "{% set s = sentence1 * 40 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}{{ sentence1 }}"
    (tmp_path / "tasks" / "rte_bomb.yaml").write_text(f"include: rte.yaml\ninput: {{text: {json.dumps(bomb)}}}\n")
    t0 = time.perf_counter()
    assert main(["validate", str(tmp_path / "tasks" / "rte_bomb.yaml")]) == 2
    assert time.perf_counter() - t0 < 20
    out = capsys.readouterr()
    text = out.out + out.err
    assert "rte_bomb.yaml" in text and "steps" in text and "Traceback" not in text


# ----------------------------------------------------------------------------- 4-5. storage and reports
def _read_only(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Make every write under ``folder`` fail as on a read-only (or full) file system. Tests may run as
    root, where permission bits prove nothing, so the OS calls that write are patched instead."""
    folder = folder.resolve()

    def guard(real, *path_args):
        def fake(*args, **kwargs):
            for a in (args[i] for i in path_args if i < len(args)):
                if isinstance(a, str | os.PathLike) and Path(os.path.abspath(a)).is_relative_to(folder):
                    flags = args[1] if real is os_open and len(args) > 1 else os.O_WRONLY
                    if real is not os_open or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                        raise OSError(code, os.strerror(code), os.fspath(a))
            return real(*args, **kwargs)
        return fake

    os_open = os.open
    monkeypatch.setattr(os, "open", guard(os.open, 0))
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, 0))
    monkeypatch.setattr(os, "replace", guard(os.replace, 0, 1))
    monkeypatch.setattr(os, "rename", guard(os.rename, 0, 1))
    monkeypatch.setattr(os, "unlink", guard(os.unlink, 0))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny experiment with both runs finished."""
    tmp = tmp_path_factory.mktemp("finished")
    args = _experiment(tmp, "tiny_ro")
    assert main(["run", "tiny_ro", *args]) == 0
    return tmp, args


@needs_mirror
def test_run_with_nothing_to_write_works_on_a_read_only_results_folder(finished, monkeypatch, capsys):
    tmp, args = finished
    before = {p: p.read_bytes() for p in (tmp / "r").rglob("*") if p.is_file()}
    capsys.readouterr()
    _read_only(monkeypatch, tmp / "r")
    assert main(["run", "tiny_ro", *args]) == 0
    out = capsys.readouterr().out
    assert "note: nothing to write (2 runs already finished)" in out and "read-only" in out
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (tmp / "r").rglob("*") if p.is_file()} == before


@needs_mirror
def test_run_that_must_write_on_a_read_only_folder_is_one_paragraph(tmp_path, monkeypatch, capsys):
    args = _experiment(tmp_path, "tiny_ro2")
    (tmp_path / "r" / "tiny_ro2").mkdir(parents=True)
    _read_only(monkeypatch, tmp_path / "r")
    assert main(["run", "tiny_ro2", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read-only" in err and ".lock" in err and "Traceback" not in err


@needs_mirror
@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full")])
def test_report_into_a_read_only_or_full_folder_keeps_the_previous_set(finished, tmp_path, monkeypatch, capsys,
                                                                        code, words):
    tmp, args = finished
    out = ["--out-dir", str(tmp_path / "rep")]
    assert main(["report", "tiny_ro", *args, *out]) == 0
    before = {str(p.relative_to(tmp_path / "rep")): p.read_bytes() for p in (tmp_path / "rep").rglob("*") if p.is_file()}
    assert {"tiny_ro.md", "tiny_ro.html", "tiny_ro.tex"} <= set(before)  # (+ the LaTeX table fragments)
    capsys.readouterr()
    _read_only(monkeypatch, tmp_path / "rep", code)
    assert main(["report", "tiny_ro", *args, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    assert "the reports there before are intact" in err and "--out-dir" in err and "--results-dir" not in err
    monkeypatch.undo()
    assert {str(p.relative_to(tmp_path / "rep")): p.read_bytes() for p in (tmp_path / "rep").rglob("*") if p.is_file()} == before  # nothing half-written


@needs_mirror
@pytest.mark.parametrize("when", ["writing", "moving"])
def test_sigterm_mid_report_leaves_one_complete_set(finished, tmp_path, when):
    """A real process gets SIGTERM while it writes the staged files (the previous set must stay) or while it
    moves them into place (the signal waits until all are moved: the new set)."""
    tmp, args = finished
    out = tmp_path / "rep"
    assert main(["report", "tiny_ro", *args, "--out-dir", str(out)]) == 0
    old = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # the next report differs: one of the two runs is no longer finished
    copy = tmp_path / "r"
    import shutil

    shutil.copytree(tmp / "r", copy)
    next(copy.glob("tiny_ro/*/result.json")).unlink()
    hook = {"writing": "build.write_atomic = lambda *a, _w=build.write_atomic, **k: (_w(*a, **k), kill())[0]",
            # the first move of a staged file into the reports folder
            "moving": f"os.replace = lambda s, d, _r=os.replace: (os.path.dirname(d) == {str(out)!r} and kill(), "
                      "_r(s, d))[1]"}[when]
    script = textwrap.dedent(f"""
        import os, signal, sys
        from benchmark.report import build
        from benchmark.cli import main
        def kill():
            os.kill(os.getpid(), signal.SIGTERM)
        {hook}
        main(["report", "tiny_ro", "--specs", {args[1]!r}, "--results-dir", {str(copy)!r}, "--out-dir", {str(out)!r}])
        print("NOT KILLED")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGTERM, proc.stdout + proc.stderr
    now = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file() and not str(p.relative_to(out)).startswith(".")}
    assert set(now) == set(old)
    if when == "writing":
        assert now == old, "an interrupted report must leave the previous set"
    else:
        # every report file of the new set, not a mix (table fragments that did not change may be equal)
        assert all(now[k] != old[k] for k in old if "/" not in k), "all of the new set, not a mix"
        assert not list(out.glob(".staging-*"))
    assert main(["report", "tiny_ro", *args, "--out-dir", str(out)]) == 0  # cleans what a kill left
    assert not list(out.glob(".staging-*"))


# ----------------------------------------------------------------------------- 6. smaller items
@needs_mirror
@pytest.mark.parametrize("bad", ["NaN", "Infinity"])
def test_a_finished_result_with_a_non_finite_metric_is_corrupt_said_by_status_and_retrained(finished, tmp_path,
                                                                                            capsys, bad):
    import shutil

    tmp, args = finished
    root = tmp_path / "r"
    shutil.copytree(tmp / "r", root)
    args = [args[0], args[1], "--results-dir", str(root)]
    f = next(root.glob("tiny_ro/*/result.json"))
    f.write_text(f.read_text().replace('"best_metric": ', f'"best_metric": {bad}, "was": ', 1))
    from benchmark.records import read_result_file

    r = read_result_file(f.parent)
    assert r.state == "corrupt" and bad.lower()[:3] in r.reason.lower() and "finite" in r.reason
    capsys.readouterr()
    assert main(["status", "tiny_ro", *args]) == 0
    out = capsys.readouterr().out
    assert "corrupt: finished but 'best_metric' is" in out and "1 corrupt" in out
    assert main(["report", "tiny_ro", *args, "--out-dir", str(tmp_path / "rep")]) == 0  # no crash, named
    assert "corrupt result" in capsys.readouterr().out
    assert main(["run", "tiny_ro", *args]) == 0
    assert "1 already finished, 1 to run" in capsys.readouterr().out
    assert read_result_file(f.parent).finished


def test_the_divergence_rule():
    import math

    from benchmark.training.loop import diverged

    assert diverged(8e6, 0.7, 2) and not diverged(0.69, 0.7, 2)
    assert not diverged(0.5, 0.01, 2)  # 50x a tiny first loss, but below ln 2: not an explosion
    assert diverged(math.log(3) + 1, 0.1, 3) and not diverged(math.log(3) - 0.01, 0.01, 3)


@needs_mirror
def test_a_diverged_run_is_failed_not_retrained_without_force_and_listed_in_the_report(tmp_path, capsys):
    args = _experiment(tmp_path, "tiny_div", TINY.replace("caps:", "overrides: {head: {lr: 1.0e+6}}\n    caps:")
                       .replace("max_train_rows: 16", "max_train_rows: 128"))  # several steps per epoch
    assert main(["run", "tiny_div", *args]) == 1
    res = [json.loads(p.read_text()) for p in (tmp_path / "r" / "tiny_div").glob("*/result.json")]
    assert len(res) == 2 and all(r["status"] == "failed" and r["diverged"] is True for r in res)
    assert all("diverged" in r["error"] or "NonFiniteLoss" in r["error"] for r in res)
    capsys.readouterr()
    assert main(["run", "tiny_div", *args]) == 1
    out = capsys.readouterr().out
    assert "diverged before" in out and "pass --force to retry" in out and "0 trained" in out
    assert main(["report", "tiny_div", *args, "--out-dir", str(tmp_path / "rep")]) in (0, 2)
    text = capsys.readouterr()
    assert "diverged" in text.out + text.err
    assert main(["run", "tiny_div", "--force", *args]) == 1
    assert "0 already finished, 2 to run" in capsys.readouterr().out


def test_100000_nested_brackets_are_one_paragraph(tmp_path, capsys):
    f = tmp_path / "tasks" / "deep.yaml"
    f.parent.mkdir()
    f.write_text("x: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert main(["validate", str(f), "--no-data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "deep.yaml" in err and "nests" in err and "Traceback" not in err


@needs_mirror
def test_force_works_repeatedly_on_a_symlinked_run_folder(finished, tmp_path, capsys):
    import shutil

    tmp, args = finished
    root = tmp_path / "r"
    shutil.copytree(tmp / "r", root)
    args = [args[0], args[1], "--results-dir", str(root)]
    run = next(root.glob("tiny_ro/*/result.json")).parent
    elsewhere = tmp_path / "other_disk" / run.name
    elsewhere.parent.mkdir()
    shutil.move(run, elsewhere)
    run.symlink_to(elsewhere)
    for _ in range(3):
        assert main(["run", "tiny_ro", "--force", *args]) == 0, capsys.readouterr().err
        assert json.loads((run / "result.json").read_text())["status"] == "finished"
        assert not list(run.parent.glob(".trash-*")) and not list(run.parent.glob(".tmp-*"))


def test_label_map_matches_by_type(registry):
    from benchmark.data.encode import label_id

    ints = registry.tasks["rte"].model_copy(deep=True)
    ints.label.map = {0: 0, 1: 1}
    assert [label_id(ints, v) for v in (0, 1, True, False, 1.0, "1", None)] == [0, 1, None, None, None, None, None]
    texts = registry.tasks["rte"].model_copy(deep=True)
    texts.label.map = {"0": 0, "1": 1}
    assert [label_id(texts, v) for v in ("0", "1", 1, True, 1.0)] == [0, 1, None, None, None]


def test_a_closed_pipe_is_a_quiet_exit(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "list"], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # like `afbench list | head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and err == ""


@needs_mirror
def test_weights_are_written_with_the_same_mode_as_every_other_file(finished):
    tmp, _ = finished
    run = next((tmp / "r" / "tiny_ro").glob("*/weights.safetensors")).parent
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert len(set(modes.values())) == 1 and modes["weights.safetensors"] & 0o044, modes


@needs_mirror
def test_a_broken_spec_file_blocks_only_what_needs_it(tmp_path, capsys):
    args = _experiment(tmp_path, "good_exp")
    specs = tmp_path / "specs"
    (specs / "tasks").mkdir()
    (specs / "tasks" / "broken_task.yaml").write_text("input: {text: [\n")  # not YAML
    (specs / "experiments" / "needs_broken.yaml").write_text(
        textwrap.dedent(TINY).replace("[rte, cb]", "[rte, broken_task]"))
    (specs / "experiments" / "broken_exp.yaml").write_text("groups: {{{\n")
    assert main(["list", "--specs", str(specs)]) == 0
    cap = capsys.readouterr()
    assert "good_exp" in cap.out and "needs_broken" not in cap.out
    lines = cap.err.strip().splitlines()
    assert len(lines) == 2 and "broken_task.yaml" in lines[0] + lines[1] and "broken_exp.yaml" in cap.err
    assert main(["plan", "good_exp", *args]) == 0
    assert "2 runs" in capsys.readouterr().out
    assert main(["plan", "needs_broken", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "broken_task.yaml" in err and "not valid YAML" in err
    assert main(["validate", str(specs), "--no-data"]) == 2  # validate stays strict


# every writer is the one writer: tests/test_writers.py


def test_perf_prune_export_cache_and_tokenizer_writers_fail_as_one_paragraph_and_leave_the_old_file(
        tmp_path, monkeypatch, capsys, registry):
    """On a read-only folder each writer raises one StorageError (the cache: one line, it only costs the
    cache); the file that was there is left as it was and no temp file is left behind."""
    from benchmark.analysis import prune
    from benchmark.data import encode
    from benchmark.errors import StorageError
    from benchmark.modeling import tokenizer_files
    from benchmark.perf.meta import write_report
    from benchmark.runner.export import _Writer

    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "perf.md").write_text("old\n")
    exporter = _Writer(ro, "run1")  # its temp folder exists before the disk turns read-only
    _read_only(monkeypatch, ro)
    with pytest.raises(StorageError, match="read-only"):
        write_report(ro / "perf.md", ["# new"], {"rounds": []}, quiet=True)
    with pytest.raises(StorageError, match="read-only"):
        prune.figure(ro / "prune_x_rte.png", "rte", [1, 2], 2,
                     {k: {"mean_dev_accuracy": 50.0, "examples_per_second": None} for k in (1, 2)},
                     [{"k": {"1": {"dev_accuracy": 50.0}, "2": {"dev_accuracy": 50.0}}}])
    with pytest.raises(StorageError, match="read-only"):
        exporter.json("export.json", {"a": 1})
    import torch

    with pytest.raises(StorageError, match="read-only"):
        exporter.tensors("adapter/pytorch_adapter.bin", {"w": torch.zeros(2)})
    with pytest.raises(StorageError, match="read-only"):
        tokenizer_files.train_tokenizer(registry.backbones["tiny-bert"].tokenizer, ro / "tok.json")
    encode.write_cache(ro / "tokenized" / "x.pt", {"examples": [], "rows_total": 0})
    assert "could not write the tokenized cache" in capsys.readouterr().out
    monkeypatch.undo()
    assert (ro / "perf.md").read_text() == "old\n"
    assert sorted(p.name for p in ro.rglob("*")) == [f".run1.afbench-export-tmp{os.getpid()}", "perf.md"]


def test_the_writers_still_write(tmp_path, registry):
    from benchmark.data import encode
    from benchmark.modeling import tokenizer_files
    from benchmark.perf.meta import write_report

    write_report(tmp_path / "p" / "perf.md", ["# t"], {"rounds": [1]}, quiet=True)
    assert (tmp_path / "p" / "perf.md").read_text() == "# t\n" and json.loads((tmp_path / "p" / "perf.json").read_text())
    encode.write_cache(tmp_path / "c" / "x.pt", {"examples": [1], "rows_total": 1})
    assert encode.read_cache(tmp_path / "c" / "x.pt")["examples"] == [1]
    tspec = registry.backbones["tiny-bert"].tokenizer
    out = tokenizer_files.train_tokenizer(tspec, tmp_path / "tok.json")
    from tokenizers import Tokenizer

    # the bytes Tokenizer.save(path, pretty=True) wrote before (training itself is not bit-reproducible)
    assert Tokenizer.from_file(str(out)).to_str(pretty=True).encode("utf-8") == out.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["perf.json", "perf.md", "tok.json", "x.pt"]


def test_broken_spec_files_are_listed_by_kind_and_name_and_the_cli_does_not_match_strings(tmp_path, capsys):
    """Registry.skipped names each broken file by kind and name; the CLI leaves out only the warning of the
    spec a command names (its own paragraph is the error), matched by kind and name, not by text: a broken
    *task* file that shares the asked experiment's name is still warned about."""
    from types import SimpleNamespace

    from benchmark.cli import _registry
    from benchmark.spec import load_registry

    specs = tmp_path / "specs"
    for folder, name in (("tasks", "same"), ("experiments", "asked"), ("experiments", "other")):
        (specs / folder).mkdir(parents=True, exist_ok=True)
        (specs / folder / f"{name}.yaml").write_text("input: {text: [\n")  # not YAML
    reg = load_registry([specs], strict=False, warn=lambda line: None)
    assert sorted((s.kind, s.name) for s in reg.skipped) == [("experiment", "asked"), ("experiment", "other"),
                                                             ("task", "same")]
    assert all(s.file.is_file() and "not valid YAML" in s.error.render() for s in reg.skipped)
    capsys.readouterr()
    _registry(SimpleNamespace(specs=[str(specs)], experiment="asked"))
    err = capsys.readouterr().err
    assert "asked.yaml" not in err and "other.yaml" in err and "same.yaml" in err
    _registry(SimpleNamespace(specs=[str(specs)], experiment="same"))  # an experiment named like the task
    err = capsys.readouterr().err
    assert err.count("warning: skipped") == 3
    _registry(SimpleNamespace(specs=[str(specs)], task="same"))
    err = capsys.readouterr().err
    assert "same.yaml" not in err and err.count("warning: skipped") == 2
