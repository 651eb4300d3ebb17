"""Damaged or foreign result.json files: named by file, never counted as finished, never a crash."""

from __future__ import annotations

import pytest

from benchmark.cli import main
from benchmark.plan.build import build_plan
from benchmark.records import is_finished, read_result, read_result_file, scan_experiment
from benchmark.runner.results import write_json_atomic
from conftest import MIRROR


def good(run_id: str, experiment: str = "smoke", **extra) -> dict:
    return {"schema": 1, "status": "finished", "run_id": run_id, "experiment": experiment, "task": "cb",
            "tasks": ["cb"], "label": "head", "role": "grid", "backbone": "tiny-bert", "seed": 1,
            "best_metric": 50.0, "best_epoch": 1, **extra}


BROKEN = {
    "truncated": ('{"schema": 1, "status": "finished", "run_id": "x', "not readable JSON"),
    "empty object": ("{}", "missing 'status', 'run_id'"),
    "status only": ('{"status": "finished"}', "missing 'run_id'"),
    "a list": ("[1, 2]", "expected a JSON object, found list"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_result_is_corrupt_and_not_finished(tmp_path, case):
    text, why = BROKEN[case]
    run = tmp_path / "cb__head__tiny-bert__s1__abcd1234"
    run.mkdir()
    (run / "result.json").write_text(text)
    r = read_result_file(run)
    assert r.state == "corrupt" and why in r.reason
    assert not r.finished and not is_finished(run) and read_result(run) is None


def test_shape_checks(tmp_path):
    rid = "cb__head__tiny-bert__s1__abcd1234"
    cases = {
        "finished but 'best_metric' is missing": good(rid, best_metric=None),
        "'seed' is str": good(rid, seed="1"),
        "'status' is 'done'": good(rid, status="done"),
        "does not match its folder": good("cb__head__tiny-bert__s1__other"),
        "'per_task' has no numeric best_metric for rte": good(rid, per_task={"rte": {"best_metric": None}}),
    }
    for why, data in cases.items():
        write_json_atomic(tmp_path / rid / "result.json", data)
        r = read_result_file(tmp_path / rid)
        assert r.state == "corrupt" and why in r.reason, (why, r.reason)
    write_json_atomic(tmp_path / rid / "result.json", good(rid))
    assert is_finished(tmp_path / rid)
    write_json_atomic(tmp_path / rid / "result.json", good(rid, status="failed", best_metric=None, error="boom"))
    assert read_result_file(tmp_path / rid).ok and not is_finished(tmp_path / rid)
    assert read_result_file(tmp_path / "nothing").state == "missing"


def test_scan_names_corrupt_and_foreign_files(tmp_path):
    exp = tmp_path / "smoke"
    write_json_atomic(exp / "a" / "result.json", good("a"))
    write_json_atomic(exp / "b" / "result.json", good("b", experiment="quick"))
    (exp / "c").mkdir()
    (exp / "c" / "result.json").write_text("{}")
    (exp / "d").mkdir()  # a run in progress: no result yet, not a problem
    scan = scan_experiment(tmp_path, "smoke")
    assert [r.run_id for r in scan.results] == ["a"]
    assert [r.path.parent.name for r in scan.corrupt] == ["c"] and [r.path.parent.name for r in scan.foreign] == ["b"]
    lines = scan.problems()
    assert lines[0].startswith("corrupt result smoke/c/result.json: missing 'status'")
    assert "smoke/b/result.json belongs to experiment 'quick'" in lines[1]
    assert str(tmp_path) not in " ".join(lines)  # relative to the results root: no machine paths


def test_plan_shows_corrupt_results_by_file_and_not_as_finished(registry, tmp_path, capsys):
    plan = build_plan(registry, registry.experiments["smoke"], data_root=MIRROR)
    first, second = plan.runs[0].id, plan.runs[1].id
    (tmp_path / "smoke" / first).mkdir(parents=True)
    (tmp_path / "smoke" / first / "result.json").write_text('{"status": "finished"}')
    write_json_atomic(tmp_path / "smoke" / second / "result.json", good(second) | {
        "label": plan.runs[1].label, "task": plan.runs[1].task})
    assert main(["plan", "smoke", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: corrupt result smoke/{first}/result.json: missing 'run_id'" in out
    assert f"{len(plan.runs)} runs: 1 corrupt, 1 finished, {len(plan.runs) - 2} pending" in out
    header = out.splitlines()[0].split()
    assert header[:8] == ["#", "task", "method", "backbone", "seed", "deps", "role", "status"]


def test_report_survives_wrong_shapes(registry, tmp_path, capsys):
    """`{}`, `{"status": "finished"}` and a truncated file beside a good result: named, left out."""
    plan = build_plan(registry, registry.experiments["smoke"], data_root=MIRROR)
    runs = [r for r in plan.runs if r.task and not r.implied][:4]
    for r, text in zip(runs[1:], ["{}", '{"status": "finished"}', '{"status": "fini'], strict=True):
        (tmp_path / "smoke" / r.id).mkdir(parents=True)
        (tmp_path / "smoke" / r.id / "result.json").write_text(text)
    r0 = runs[0]
    write_json_atomic(tmp_path / "smoke" / r0.id / "result.json",
                      good(r0.id, task=r0.task, tasks=[r0.task], label=r0.label, backbone=r0.backbone, seed=r0.seed))
    out = tmp_path / "reports"
    assert main(["report", "smoke", "--results-dir", str(tmp_path), "--out-dir", str(out)]) == 0
    md = (out / "smoke.md").read_text()
    assert "1 finished, 0 failed; 3 result file(s) left out" in md
    for r in runs[1:]:
        assert f"corrupt result smoke/{r.id}/result.json" in md
    assert f"| {r0.task} |" in md
