"""The typed, versioned records (benchmark/records.py): every committed result loads (older schemas upgraded in
memory, the files untouched), unknown keys are kept, a file that cannot be a record is refused with why."""

from __future__ import annotations

import hashlib
import json

import pytest

from benchmark import records
from benchmark.records import (
    SCHEMA,
    PlanRecord,
    PlanRun,
    RecordError,
    RunRecord,
    load_plan,
    load_run,
    parse_run,
    read_result_file,
    scan_experiment,
    write_plan,
    write_run,
)
from conftest import ROOT

COMMITTED = sorted((ROOT / "results").glob("*/*/result.json"))


def _record(**extra) -> RunRecord:
    base = dict(schema=SCHEMA, status="finished", run_id="cb__head__tiny-bert__s1__abcd1234", experiment="smoke",
                task="cb", tasks=["cb"], label="head", backbone="tiny-bert", seed=1, best_metric=50.0, best_epoch=1)
    return RunRecord(**{**base, **extra})


def test_every_committed_result_and_plan_loads_and_is_not_rewritten():
    assert len(COMMITTED) > 100
    before = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in COMMITTED}
    for f in COMMITTED:
        r = read_result_file(f.parent)
        assert r.ok, (f, r.reason)
        rec = r.record
        assert rec.schema_ == SCHEMA and rec.run_id == f.parent.name
        stored = json.loads(f.read_text())
        kept = rec.dump()
        # every key of the file comes back with its value (the ones this version does not declare as extras)
        assert all(kept[k] == v for k, v in stored.items() if k != "schema" and v == v), f
    for plan in sorted((ROOT / "results").glob("*/plan.json")):
        p = load_plan(plan)
        assert p.runs and all(r.columns for r in p.runs)  # a schema-1 plan: each run fills its label's column
    assert before == {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in COMMITTED}


def test_a_schema_1_result_reads_with_the_values_its_readers_assumed(tmp_path):
    old = {k: v for k, v in _record().dump().items() if k != "schema"} | {"schema": 1}
    for k in ("batching", "selection", "role", "id_scheme", "wall_seconds"):
        old.pop(k, None)
    folder = tmp_path / old["run_id"]
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps(old))
    rec = load_run(folder / "result.json")
    assert (rec.schema_, rec.batching, rec.selection, rec.role, rec.id_scheme, rec.wall_seconds) == \
        (SCHEMA, "shuffled", "dev", "grid", 1, 0.0)
    assert json.loads((folder / "result.json").read_text()) == old  # upgraded in memory only


def test_unknown_keys_of_older_and_newer_files_are_kept(tmp_path):
    rec = _record(schema=SCHEMA + 1, new_measurement={"x": 1}, train_examples_per_second=12.5)
    path = tmp_path / rec.run_id / "result.json"
    write_run(path, rec)
    back = read_result_file(path.parent)  # a newer afbench's result: never read as one, never retrained over
    assert back.state == "newer" and back.record is None and "newer schema: upgrade afbench" in back.reason
    back = parse_run(json.loads(path.read_text()))  # the model itself keeps what it does not declare
    assert back.extra("new_measurement") == {"x": 1} and back.extra("train_examples_per_second") == 12.5
    assert json.loads(path.read_text())["new_measurement"] == {"x": 1}
    assert list(json.loads(path.read_text()))[0] == "schema"


def test_nested_payloads_are_typed_and_keep_a_newer_writers_keys(tmp_path):
    rec = _record(params={"trained": 10, "total": 100, "trainde": 3}, history=[{"epoch": 1, "dev_accuracy": 50}],
                  per_task={"cb": {"best_metric": 50.0, "history": [50.0], "data": {"train_rows": 1, "train_rows_total": 2,
                                                                                  "eval_rows": 3, "eval_rows_total": 4}}})
    assert rec.params.trained == 10 and rec.per_task["cb"].data.eval_rows_total == 4
    assert isinstance(rec.history[0].dev_accuracy, int)  # an int stays an int: the file writes back unchanged
    assert records.undeclared(rec) == ["params.trainde"]  # kept, and named: our own writer must never do this
    path = tmp_path / rec.run_id / "result.json"
    write_run(path, rec)
    assert json.loads(path.read_text())["params"] == {"trained": 10, "total": 100, "trainde": 3}
    with pytest.raises(ValueError):
        _record(memory={"peak_rss_bytes": "a lot"})


def test_committed_results_use_only_declared_payload_keys():
    for f in COMMITTED:
        assert records.undeclared(load_run(f)) == [], f


def test_the_runner_writes_the_current_schema_and_refuses_a_wrongly_typed_field(tmp_path):
    path = tmp_path / "r" / "result.json"
    write_run(path, _record().dump())
    assert json.loads(path.read_text())["schema"] == SCHEMA == 2
    with pytest.raises(ValueError):
        write_run(path, _record().dump() | {"best_epoch": "first"})
    assert json.loads(path.read_text())["best_epoch"] == 1  # nothing written


@pytest.mark.parametrize(("change", "field", "why"), [
    ({"schema": "two"}, "schema", "'schema' is 'two', expected a positive integer"),
    ({"history": "none"}, "history", "'history': Input should be a valid list"),
    ({"seed": True}, "seed", "'seed' is bool, expected int"),
])
def test_a_file_that_cannot_be_a_record_is_refused_with_why(tmp_path, change, field, why):
    rec = _record()
    folder = tmp_path / "smoke" / rec.run_id
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(rec.dump() | change))
    r = read_result_file(folder)
    assert r.state == "corrupt" and why in r.reason and not r.finished
    with pytest.raises(RecordError) as e:
        load_run(folder / "result.json")
    text = e.value.render()
    assert str(folder / "result.json") in text and f"at field '{field}'" in text and "Fix:" in text
    assert "treated as not finished" in scan_experiment(tmp_path, "smoke").problems()[0]


def test_plan_records_round_trip_and_older_plans_read_their_label_as_column(tmp_path):
    rec = PlanRecord(schema=SCHEMA, experiment="e", runs=[
        PlanRun(id="a", task="rte", label="st_a_rf16", kind="st_a", columns=["st_a_rf16"], backbone="b", seed=1)])
    write_plan(tmp_path / "plan.json", rec)
    assert load_plan(tmp_path / "plan.json") == rec
    old = {"experiment": "e", "runs": [{"id": "a", "task": "rte", "tasks": [], "label": "head", "backbone": "b",
                                        "seed": 1, "role": "grid"}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    p = load_plan(tmp_path / "old.json")
    assert p.runs[0].columns == ["head"] and p.runs[0].kind is None and p.schema_ == SCHEMA
    (tmp_path / "bad.json").write_text(json.dumps({"runs": {}}))
    with pytest.raises(RecordError, match="has no 'runs' list"):
        load_plan(tmp_path / "bad.json")


def test_the_record_module_sits_at_the_bottom_layer():
    """No torch: the reporter and `afbench status` read records without the training stack."""
    src = (ROOT / "benchmark" / "records.py").read_text()
    assert "import torch" not in src and records.RESULT == "result.json"
