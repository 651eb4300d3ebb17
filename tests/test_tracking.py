"""Experiment tracking, opt-in (issue 39): ``afbench run --track NAME`` / ``tracking:`` logs each run's config,
run id, per-epoch numbers and final record to the real backends, offline; the values read back from each
backend's local store equal result.json's. ``nox -s tracking`` installs every backend; ``nox -s tests``
skips the tests of a backend that is not installed. Never part of a run id; a failing tracker is one line."""

from __future__ import annotations

import importlib.util
import json
import socket
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.parity.roundtrip import EXPERIMENT, write_specs
from benchmark.plan.build import build_plan
from benchmark.spec import load_registry


def _needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (pip install '.[track]', or nox -s tracking)")


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> Path:
    return write_specs(tmp_path_factory.mktemp("track") / "specs", rows=16, epochs=2, methods=("st_a",))


def _run(specs: Path, results: Path, capsys, *extra: str) -> tuple[list[dict], str]:
    assert main(["run", EXPERIMENT, "--specs", str(specs), "--results-dir", str(results), *extra]) == 0
    out = capsys.readouterr().out
    found = [json.loads(p.read_text()) for p in sorted((results / EXPERIMENT).glob("*/result.json"))]
    assert len(found) == 2 and all(r["status"] == "finished" and len(r["history"]) == 2 for r in found), out
    return found, out


def test_tracking_never_enters_run_ids(specs, tmp_path):
    exp = specs / "experiments" / f"{EXPERIMENT}.yaml"
    plain = exp.read_text()
    reg = load_registry([specs])
    ids = [r.id for r in build_plan(reg, reg.get("experiment", EXPERIMENT)).runs]
    try:
        exp.write_text(plain + f"tracking: {{backends: [tensorboard, mlflow], dir: {tmp_path}, "
                               "mlflow_uri: 'http://127.0.0.1:9'}\n")
        reg = load_registry([specs])
        plan = build_plan(reg, reg.get("experiment", EXPERIMENT))
        assert plan.experiment.tracking.backends == ["tensorboard", "mlflow"]
        assert [r.id for r in plan.runs] == ids
        assert "tracking" not in json.dumps([r.identity(reg) for r in plan.runs])
    finally:
        exp.write_text(plain)


def test_an_unknown_tracker_is_one_paragraph(specs, tmp_path, capsys):
    assert main(["run", EXPERIMENT, "--specs", str(specs), "--results-dir", str(tmp_path), "--track", "neptune"]) == 2
    err = capsys.readouterr().err
    assert "--track" in err and "'neptune'" in err and "tensorboard, mlflow, wandb, trackio" in err
    assert "Traceback" not in err and not (tmp_path / EXPERIMENT).exists()


def test_a_missing_package_or_an_unreachable_server_is_one_line_and_the_runs_finish(specs, tmp_path, capsys,
                                                                                    monkeypatch):
    """Whether or not the backends are installed: mlflow made unimportable, then a server nobody answers."""
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError, as when not installed
    found, out = _run(specs, tmp_path / "a", capsys, "--track", "mlflow")
    lines = [x for x in out.splitlines() if "tracking:" in x]
    assert len(lines) == 2 and all("MLflow is off for" in x and "pip install 'adapterfusion-bench[track-mlflow]'" in x
                                   for x in lines), out
    assert {r["run_id"] for r in found} == {x.split("off for ")[1].split(":")[0] for x in lines}
    monkeypatch.undo()
    exp = specs / "experiments" / f"{EXPERIMENT}.yaml"
    plain = exp.read_text()
    with socket.socket() as s:  # a port that was just free: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exp.write_text(plain + f"tracking: {{backends: [mlflow], mlflow_uri: 'http://127.0.0.1:{port}'}}\n")
    try:
        t0 = time.monotonic()
        found, out = _run(specs, tmp_path / "b", capsys)
        assert time.monotonic() - t0 < 120
    finally:
        exp.write_text(plain)
    lines = [x for x in out.splitlines() if "tracking:" in x]
    assert len(lines) == 2 and all("MLflow is off for" in x for x in lines), out
    assert all(("ConnectionRefusedError" in x) or ("not installed" in x) for x in lines), lines


def _history(results: list[dict], key: str) -> dict[str, list[float]]:
    return {r["run_id"]: [h[key] for h in r["history"]] for r in results}


@_needs("tensorboard")
def test_tensorboard_event_files_hold_result_json_values(specs, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found, out = _run(specs, tmp_path, capsys, "--track", "tensorboard")
    assert "tracking:" not in out
    for r in found:  # <store>/tensorboard/<experiment>/<method>/<task>/<run id>
        folder = tmp_path / EXPERIMENT / ".tracking" / "tensorboard" / EXPERIMENT / r["label"] / r["task"] / r["run_id"]
        acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        for key in ("train_loss", "dev_accuracy"):
            events = acc.Scalars(key)
            assert [e.step for e in events] == [1, 2]
            assert [e.value for e in events] == pytest.approx([h[key] for h in r["history"]], rel=1e-6)
        assert acc.Scalars("final/best_metric")[0].value == pytest.approx(r["best_metric"], rel=1e-6)
        text = {t: acc.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in ("config/text_summary",
                                                                                   "result/text_summary")}
        assert r["run_id"] in text["config/text_summary"] and r["weights_sha256"] in text["result/text_summary"]


@_needs("mlflow")
def test_mlflow_local_store_holds_result_json_values(specs, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    found, out = _run(specs, tmp_path, capsys, "--track", "mlflow")
    assert "tracking:" not in out
    store = tmp_path / EXPERIMENT / ".tracking"
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = {x.data.tags["afbench.run_id"]: x for x in client.search_runs([exp.experiment_id])}
    assert set(runs) == {r["run_id"] for r in found}
    for r in found:
        run = runs[r["run_id"]]
        assert run.info.run_name == r["run_id"] and run.info.status == "FINISHED"
        assert (run.data.tags["afbench.method"], run.data.tags["afbench.task"]) == (r["label"], r["task"])
        for key in ("train_loss", "dev_accuracy"):
            hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [(m.step, m.value) for m in hist] == [(h["epoch"], pytest.approx(h[key])) for h in r["history"]]
        assert run.data.metrics["final_best_metric"] == pytest.approx(r["best_metric"])
        art = Path(client.download_artifacts(run.info.run_id, "result.json", str(tmp_path / "dl" / r["run_id"])))
        assert json.loads(art.read_text()) == r  # the final record, as result.json holds it
        assert str(store) in run.info.artifact_uri or (store / "mlflow").as_uri() in run.info.artifact_uri


def _wandb_records(path: Path):
    """The protobuf records of an offline run's ``run-*.wandb`` file (W&B's LevelDB-style log: a 7-byte file
    header, 32 KiB blocks, each chunk ``crc32 (4) | length (2) | type (1: full, 2: first, 3: middle, 4: last)``)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


@_needs("wandb")
def test_wandb_offline_run_folders_hold_result_json_values(specs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    found, out = _run(specs, tmp_path, capsys, "--track", "wandb")
    assert "tracking:" not in out
    folders = sorted((tmp_path / EXPERIMENT / ".tracking" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    logged = {}
    for f in folders:
        recs = list(_wandb_records(next(f.glob("run-*.wandb"))))
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        items = lambda xs: {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in xs}  # noqa: E731
        history = [h for r in recs if r.WhichOneof("record_type") == "history"
                   if "train_loss" in (h := items(r.history.item))]
        summary = {}
        for r in recs:
            if r.WhichOneof("record_type") == "summary":
                summary.update(items(r.summary.update))
        logged[run.display_name] = (run, history, summary)
    for r in found:
        run, history, summary = logged[r["run_id"]]
        assert (run.project, run.run_group, run.job_type) == (EXPERIMENT, r["label"], r["task"])
        assert [(h["epoch"], h["train_loss"], h["dev_accuracy"]) for h in history] == \
            [(h["epoch"], pytest.approx(h["train_loss"]), pytest.approx(h["dev_accuracy"])) for h in r["history"]]
        assert summary["best_metric"] == pytest.approx(r["best_metric"]) and summary["run_id"] == r["run_id"]


@_needs("trackio")
def test_trackio_local_store_holds_result_json_values(specs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # trackio reads it when first imported
    found, out = _run(specs, tmp_path, capsys, "--track", "trackio")
    assert "tracking:" not in out
    from trackio.sqlite_storage import SQLiteStorage

    assert list((tmp_path / "trackio").glob("*.db"))
    for r in found:
        logs = [x for x in SQLiteStorage.get_logs(EXPERIMENT, r["run_id"]) if "train_loss" in x]
        assert [(x["step"], x["train_loss"], x["dev_accuracy"]) for x in logs] == \
            [(h["epoch"], pytest.approx(h["train_loss"]), pytest.approx(h["dev_accuracy"])) for h in r["history"]]
        final = [x for x in SQLiteStorage.get_logs(EXPERIMENT, r["run_id"]) if "final/best_metric" in x]
        assert final and final[0]["final/best_metric"] == pytest.approx(r["best_metric"])
