"""Per-example predictions (issue 33): every trained run writes ``predictions.parquet`` whose accuracy is its
recorded dev accuracy and whose sha256 its record keeps; ``afbench predict`` recomputes them from stored
weights only where they reproduce the record; every committed predictions file is checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from benchmark import predictions, records
from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.hashing import file_sha256
from benchmark.records import RESULT, add_to_run, load_run
from conftest import MIRROR, ROOT, needs_mirror, tiny_experiment, write_experiments


def check(folder: Path) -> dict:
    """The run's predictions, checked against its record: hash, row count, and accuracy per task exactly."""
    rec = load_run(folder / RESULT)
    cols = predictions.read(folder, rec.predictions)  # raises on a hash or row-count mismatch
    assert rec.predictions.sha256 == file_sha256(folder / predictions.FILE)
    want = {t: v.best_metric for t, v in rec.per_task.items()} if rec.per_task else {rec.task: rec.best_metric}
    assert set(cols["task"]) == set(want)
    for t, metric in want.items():
        assert predictions.accuracy(cols, t) == metric, (folder.name, t)  # exactly, not approximately
        n = sum(1 for x in cols["task"] if x == t)
        rows = [r for x, r in zip(cols["task"], cols["row"]) if x == t]
        assert sorted(rows) == list(range(n))  # every evaluated row once
    return cols


def right(model, rows: list[dict], chosen: list[int]) -> list[bool]:
    """Per row, whether the label (class or option id) ``chosen`` for it is the row's gold one: what a served
    model's answers must give for ``correct`` (the file holds no label, gold or predicted)."""
    from benchmark.data.labels import label_id

    gold = [label_id(model.task, r[model.task.label.column]) for r in rows]
    assert None not in gold
    return [c == g for c, g in zip(chosen, gold, strict=True)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny grid (head and Fusion w/ ST-A on RTE and CB, their two stage-1 adapters), 3 epochs so the kept
    epoch need not be the last."""
    tmp = tmp_path_factory.mktemp("pred")
    specs = write_experiments(tmp / "specs", tiny_pred=tiny_experiment(epochs=3, eval_rows=20))
    args = ["--specs", str(specs), "--results-dir", str(tmp / "r")]
    assert main(["run", "tiny_pred", *args]) == 0
    return tmp / "r" / "tiny_pred", args


@needs_mirror
def test_every_trained_run_writes_predictions_that_reproduce_its_record(tiny):
    exp, _ = tiny
    folders = [p.parent for p in exp.glob("*/result.json")]
    assert len(folders) == 6
    for folder in folders:
        cols = check(folder)
        rec = load_run(folder / RESULT)
        assert rec.predictions.rows == rec.data.eval_rows == len(cols["row"]) == 20
        assert records.undeclared(rec) == []  # what the runner writes, its record models declare
        assert all(s is not None for s in cols["source_row"])  # the row in the split file as loaded
        assert all(i is not None for i in cols["id"])  # RTE and CB carry an idx column
        assert set(cols["split"]) == {"validation"}
    # the kept epoch's predictions, not the last epoch's: dev accuracy of the kept epoch is the record's
    for folder in folders:
        rec = load_run(folder / RESULT)
        assert rec.best_metric == rec.history[rec.best_epoch - 1].dev_accuracy


@needs_mirror
def test_a_served_run_labels_its_dev_rows_as_its_predictions_file_does(tiny):
    """``serve.load(folder)`` (issue 40's library call) reads only the run folder: fed the raw dev rows, each run
    (Head, ST-A, Fusion w/ ST-A) labels right exactly the rows its predictions.parquet marks correct."""
    from benchmark.data.sources import read_rows
    from benchmark.runner.serve import load

    exp, _ = tiny
    for folder in sorted(p.parent for p in exp.glob("*/result.json")):
        cols = check(folder)
        model = load(folder)
        raw = read_rows(model.task, model.task.splits.eval, MIRROR)
        rows = [raw[i] for i in cols["source_row"]]
        names = model.predict(rows)
        assert right(model, rows, [model.task.label.names.index(n) for n in names]) == cols["correct"], folder.name
        assert model.logits(rows[:3]).shape == (3, len(model.task.label.names))
    # the tiny runs predict one class each; a committed MiniLM ST-A run (weights in git) predicts both of CB's
    folder = next((ROOT / "results" / "minilm_table1").glob("cb__st_a_rf16__minilm-l6__s42__*"))
    cols = check(folder)
    model = load(folder)
    raw = read_rows(model.task, model.task.splits.eval, MIRROR)
    rows = [raw[i] for i in cols["source_row"]]
    names = model.predict(rows)
    assert right(model, rows, [model.task.label.names.index(n) for n in names]) == cols["correct"]
    assert len(set(names)) > 1 and 0 < sum(cols["correct"]) < len(rows)
    from benchmark.modeling.compute import bf16_unsupported

    if bf16_unsupported(torch.device("cpu")) is None:  # bf16 autocast on request: the same function, rounded
        low = load(folder, precision="bf16")
        rows = [raw[i] for i in cols["source_row"][:8]]
        assert low.compute.precision == "bf16"
        torch.testing.assert_close(low.logits(rows), model.logits(rows), atol=0.1, rtol=0.05)
    with pytest.raises(BenchError, match="no rows"):
        model.predict([])
    with pytest.raises(BenchError, match="not finished"):
        load(exp / "no_such_run")


def test_a_served_run_refuses_weights_that_are_not_its_own(tmp_path):
    """``serve.load`` checks the weights against the record's hash (as ``afbench predict`` does) and that an
    ``mt_a_folder`` holds the MT-A run the fusion read, each refusal one paragraph naming the folder."""
    from benchmark.errors import CheckpointError
    from benchmark.runner.serve import load

    src = next((ROOT / "results" / "minilm_table1").glob("cb__st_a_rf16__minilm-l6__s42__*"))
    folder = tmp_path / src.name
    shutil.copytree(src, folder)
    data = bytearray((folder / "weights.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one tensor
    (folder / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs") as e:
        load(folder)
    assert e.value.file == str(folder)
    fusion = next((ROOT / "results" / "minilm_table1").glob("cb__fusion_mt_a__minilm-l6__s42__*"))
    with pytest.raises(CheckpointError, match="weights are missing"):  # git keeps no Fusion w/ MT-A weights
        load(fusion)


@needs_mirror
def test_predict_rewrites_a_deleted_file_exactly(tiny, tmp_path, capsys):
    exp, args = tiny
    copy = tmp_path / "r" / exp.name
    shutil.copytree(exp, copy)
    args = [a if a != str(exp.parent) else str(copy.parent) for a in args]
    runs = sorted(p.parent for p in copy.glob("*/result.json"))
    before = {f.name: ((f / predictions.FILE).read_bytes(), (f / RESULT).read_text()) for f in runs}
    for f in runs:
        (f / predictions.FILE).unlink()
    assert main(["predict", exp.name, *args]) == 0
    out = capsys.readouterr().out
    assert "6 run(s) written, 0 refused" in out
    for f in runs:  # the same bytes, and result.json unchanged (its entry was already there)
        assert (f / predictions.FILE).read_bytes() == before[f.name][0]
        assert (f / RESULT).read_text() == before[f.name][1]
        check(f)
    # a run whose record has no predictions entry (trained before them) gets one, nothing else changes
    f = runs[0]
    data = json.loads((f / RESULT).read_text())
    entry = data.pop("predictions")
    (f / RESULT).write_text(json.dumps(data, indent=2) + "\n")
    (f / predictions.FILE).unlink()
    assert main(["predict", exp.name, "--only", f.name, *args]) == 0
    assert (f / RESULT).read_text() == json.dumps({**data, "predictions": entry}, indent=2) + "\n"
    assert main(["predict", exp.name, *args]) == 0  # present and valid: skipped
    assert "predictions present and match the record; skipped" in capsys.readouterr().out


@needs_mirror
def test_commands_on_finished_runs_find_runs_trained_under_other_choices(tmp_path, capsys):
    """A run trained with a training flag (here ``--batching shuffled``, part of its id) is found by predict and
    export with no flag: they plan the experiment as its results recorded it (``plan.build.recorded``), and no
    longer take the training flags."""
    specs = write_experiments(tmp_path / "specs", tiny_flag=tiny_experiment(tasks=("rte",), methods=("head",), fusion=False,
                                                                               eval_rows=20))
    args = ["--specs", str(specs), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_flag", *args, "--batching", "shuffled"]) == 0
    folder = next((tmp_path / "r" / "tiny_flag").glob("rte__head__*/result.json")).parent
    assert load_run(folder / RESULT).config["method"]["train"]["batching"] == "shuffled"
    (folder / predictions.FILE).unlink()
    capsys.readouterr()
    assert main(["predict", "tiny_flag", *args]) == 0
    assert "1 run(s) written, 0 refused" in capsys.readouterr().out
    check(folder)
    assert main(["export", "tiny_flag", *args, "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / folder.name).is_dir()
    with pytest.raises(SystemExit):  # the flag is gone from the commands on finished runs
        main(["predict", "tiny_flag", *args, "--batching", "shuffled"])
    # the recorded choice plans the whole grid under it, and the spec's own choice too: only runs on disk are
    # named, so the never-trained grouped twin of this run is neither timed nor listed as unfinished
    capsys.readouterr()
    assert main(["speed", "tiny_flag", *args, "--only", "rte__head__*", "--rounds", "1"]) == 0
    out, err = capsys.readouterr()
    assert f"loading {folder.name}" in out and "not timed" not in out and "warning" not in err
    # they plan from the recorded data: where the data here differs (one dev row changed), speed says so
    import pyarrow as pa

    data, glue = tmp_path / "data", tmp_path / "data" / "nyu-mll__glue"
    glue.mkdir(parents=True)
    for d in [*MIRROR.iterdir(), *(MIRROR / "nyu-mll__glue").iterdir()]:
        if d.parent == MIRROR and d.name != glue.name or d.parent.name == glue.name and d.name != "rte":
            (data / d.relative_to(MIRROR)).symlink_to(d)
    shutil.copytree(MIRROR / "nyu-mll__glue" / "rte", glue / "rte")
    dev = pq.read_table(data / "nyu-mll__glue" / "rte" / "validation.parquet").to_pydict()
    dev["sentence1"][0] += " Changed."
    pq.write_table(pa.Table.from_pydict(dev), data / "nyu-mll__glue" / "rte" / "validation.parquet")
    assert main(["speed", "tiny_flag", *args, "--only", "rte__head__*", "--rounds", "1", "--data-dir", str(data)]) == 0
    err = capsys.readouterr().err
    assert "warning: task 'rte', split 'validation': its runs evaluated sha256:" in err and "other rows" in err
    assert "--data-dir" in err and err.count("warning") == 1


@needs_mirror
def test_predict_refuses_a_run_whose_recomputed_accuracy_differs(tiny, tmp_path, capsys):
    exp, args = tiny
    copy = tmp_path / "r" / exp.name
    shutil.copytree(exp, copy)
    args = [a if a != str(exp.parent) else str(copy.parent) for a in args]
    f = next(p.parent for p in copy.glob("*__head__*/result.json"))
    data = json.loads((f / RESULT).read_text())
    data["best_metric"] += 5.0  # the record says something the weights do not give
    data.pop("predictions")
    (f / RESULT).write_text(json.dumps(data, indent=2) + "\n")
    (f / predictions.FILE).unlink()
    text = (f / RESULT).read_text()
    assert main(["predict", exp.name, "--only", f.name, *args]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("refused"))
    assert f.name in line and f"recorded {data['best_metric']!r}" in line and "recomputed" in line
    assert not (f / predictions.FILE).exists() and (f / RESULT).read_text() == text  # nothing written


MT = """backbones: [tiny-bert]
seeds: [1]
groups: [{tasks: [rte, socialiqa], methods: [mt_a, fusion_mt_a]}]
fusion: {sources: [rte, socialiqa]}
mt_a: {tasks: [rte, socialiqa]}
caps: {max_train_rows: 16, max_eval_rows: 12, max_epochs: 2, max_length: 32}
"""


@needs_mirror
def test_mt_a_and_multiple_choice_predictions_reproduce(tmp_path, capsys):
    """MT-A: one file with a task column, each task's accuracy its per_task metric; multiple choice
    (SocialIQA): the chosen option; Fusion w/ MT-A rebuilt over the MT-A run's encoder by afbench predict."""
    args = ["--specs", str(write_experiments(tmp_path / "specs", tiny_pred_mt=MT)), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_pred_mt", *args]) == 0
    runs = sorted(p.parent for p in (tmp_path / "r" / "tiny_pred_mt").glob("*/result.json"))
    mt = next(f for f in runs if "__mt_a_" in f.name)
    cols = check(mt)
    assert sorted(set(cols["task"])) == ["rte", "socialiqa"] and len(cols["row"]) == 24
    assert set(cols["correct"]) == {True, False}
    assert pq.read_schema(mt / predictions.FILE).names == list(predictions.COLUMNS)  # no label, gold or predicted
    # served (serve.load): MT-A per task, Fusion w/ MT-A over its MT-A run's encoder, SocialIQA's options
    from benchmark.data.sources import read_rows
    from benchmark.runner.serve import load

    for f in runs:
        c = check(f)
        for t in sorted(set(c["task"])):
            model = load(f, task=t)
            raw = read_rows(model.task, model.task.splits.eval, MIRROR)
            mine = [(i, y) for x, i, y in zip(c["task"], c["source_row"], c["correct"], strict=True) if x == t]
            rows = [raw[i] for i, _ in mine]  # SocialIQA: the chosen option of three
            assert right(model, rows, model.logits(rows).argmax(-1).tolist()) == [y for _, y in mine], (f.name, t)
    with pytest.raises(BenchError, match="say which task"):
        load(mt)
    fusion = next(f for f in runs if "__fusion_mt_a__" in f.name)
    with pytest.raises(BenchError, match="not multi__mt_a"):  # mt_a_folder must hold the MT-A run it fused on
        load(fusion, mt_a_folder=fusion)
    before = {f: (f / predictions.FILE).read_bytes() for f in runs}
    for f in runs:
        check(f)
        (f / predictions.FILE).unlink()
    assert main(["predict", "tiny_pred_mt", *args]) == 0
    assert f"{len(runs)} run(s) written, 0 refused" in capsys.readouterr().out
    assert all((f / predictions.FILE).read_bytes() == before[f] for f in runs)


def test_a_record_and_its_predictions_must_agree(tmp_path):
    """The reader refuses a file whose bytes differ from the recorded hash or row count."""
    cols = {"task": ["rte"] * 3, "split": ["validation"] * 3, "row": [0, 1, 2], "source_row": [5, 9, 11],
            "id": ["5", "9", None], "correct": [True, False, True]}
    entry = predictions.write(tmp_path, cols)
    assert entry["rows"] == 3 and predictions.read(tmp_path, entry)["id"] == ["5", "9", None]
    assert predictions.accuracy(cols, "rte") == 100.0 * (2 / 3)
    assert predictions.to_bytes(cols) == (tmp_path / predictions.FILE).read_bytes()  # deterministic bytes
    with pytest.raises(predictions.PredictionsError, match="sha256"):
        predictions.read(tmp_path, {**entry, "sha256": "0" * 64})
    with pytest.raises(predictions.PredictionsError, match="rows"):
        predictions.read(tmp_path, {**entry, "rows": 4})
    with pytest.raises(predictions.PredictionsError, match="records no predictions"):
        predictions.read(tmp_path, None)


def test_a_file_with_labels_reads_and_migrates_to_correct(tmp_path):
    """A file written before 2026-12-07 (``pred``, and ``gold`` in place of ``correct``) reads with ``correct``
    derived; ``afbench migrate``'s pass rewrites it and its record's hash, and a stop between the record and the
    file leaves a state that still reads and that a rerun finishes. A file of 2026-12-07 (``pred`` beside
    ``correct``: a binary task's labels follow from the two) migrates the same way."""
    import pyarrow as pa

    from benchmark.runner.migrate import upgrade_predictions

    src = next((ROOT / "results").glob("*/*/" + RESULT))
    run = tmp_path / "exp" / src.parent.name
    run.mkdir(parents=True)
    shutil.copy(src, run / RESULT)
    old = {"task": ["rte"] * 3, "split": ["validation"] * 3, "row": [0, 1, 2], "source_row": [5, 9, 11],
           "id": ["5", "9", None], "pred": [1, 0, 1], "gold": [1, 1, 1]}
    pq.write_table(pa.Table.from_pydict(old), run / predictions.FILE)
    legacy = {"file": predictions.FILE, "sha256": file_sha256(run / predictions.FILE), "rows": 3}
    add_to_run(run / RESULT, {"predictions": legacy})
    assert predictions.is_legacy(run) and predictions.read(run, legacy)["correct"] == [True, False, True]
    assert predictions.accuracy(predictions.read(run, legacy), "rte") == 100.0 * (2 / 3)
    # a stop after the record was rewritten, before the file: the legacy file reads against its upgrade's hash
    new = {"file": predictions.FILE, "sha256": __import__("hashlib").sha256(predictions.to_bytes(
        {**{k: v for k, v in old.items() if k != "gold"}, "correct": [True, False, True]})).hexdigest(), "rows": 3}
    add_to_run(run / RESULT, {"predictions": new})
    assert predictions.read(run, new)["correct"] == [True, False, True]
    assert upgrade_predictions(tmp_path / "exp", dry_run=True) == [run.name] and predictions.is_legacy(run)
    assert upgrade_predictions(tmp_path / "exp") == [run.name] and not predictions.is_legacy(run)
    rec = load_run(run / RESULT)
    assert rec.predictions.model_dump() == new and file_sha256(run / predictions.FILE) == new["sha256"]
    assert upgrade_predictions(tmp_path / "exp") == []  # nothing left to do
    # a legacy file that matches neither hash is refused, not rewritten
    pq.write_table(pa.Table.from_pydict({**old, "pred": [0, 0, 0]}), run / predictions.FILE)
    with pytest.raises(predictions.PredictionsError, match="sha256"):
        predictions.read(run, new)
    lines = []
    assert upgrade_predictions(tmp_path / "exp", dry_run=True, log=lines.append) == []  # not counted in a dry run
    assert upgrade_predictions(tmp_path / "exp", log=lines.append) == [] and "left as they are" in lines[0]
    # other columns beside gold, or the old columns with other types: refused as one PredictionsError
    pq.write_table(pa.Table.from_pydict({**old, "secret": ["x"] * 3}), run / predictions.FILE)
    with pytest.raises(predictions.PredictionsError, match="sha256"):
        predictions.read(run, new)
    pq.write_table(pa.Table.from_pydict({**old, "pred": ["a", "b", "c"]}), run / predictions.FILE)
    with pytest.raises(predictions.PredictionsError, match="not a readable predictions file"):
        predictions.read(run, new)
    mid = {**{k: v for k, v in old.items() if k != "gold"}, "correct": [True, False, True]}  # 2026-12-07's columns
    # a migrate of 2026-12-07 stopped between its writes: a pred + gold file, the record holding its upgrade then
    pq.write_table(pa.Table.from_pydict(old), run / predictions.FILE)
    then = __import__("hashlib").sha256(predictions.to_bytes(mid, predictions.LEGACY[1])).hexdigest()
    add_to_run(run / RESULT, {"predictions": {**new, "sha256": then}})
    assert predictions.read(run, {**new, "sha256": then})["correct"] == [True, False, True]
    assert upgrade_predictions(tmp_path / "exp") == [run.name] and load_run(run / RESULT).predictions.model_dump() == new
    pq.write_table(pa.Table.from_pydict(mid), run / predictions.FILE)
    add_to_run(run / RESULT, {"predictions": {**new, "sha256": file_sha256(run / predictions.FILE)}})
    assert predictions.is_legacy(run) and upgrade_predictions(tmp_path / "exp") == [run.name]
    assert pq.read_schema(run / predictions.FILE).names == list(predictions.COLUMNS)
    assert load_run(run / RESULT).predictions.model_dump() == new


def test_adding_predictions_keeps_a_committed_result_as_it_was(tmp_path):
    """A schema-1 committed result gets only the new key: schema, key order and every value unchanged."""
    src = next((ROOT / "results").glob("*/*/" + RESULT))
    f = tmp_path / src.parent.name / RESULT
    f.parent.mkdir()
    shutil.copy(src, f)
    entry = {"file": predictions.FILE, "sha256": "0" * 64, "rows": 3}
    add_to_run(f, {"predictions": entry})
    assert f.read_text() == json.dumps({**json.loads(src.read_text()), "predictions": entry}, indent=2) + "\n"
    assert f.read_text().startswith(src.read_text()[:-3])  # the old text, then the new key
    assert load_run(f).predictions.model_dump() == entry


def test_every_committed_predictions_file_reproduces_its_record():
    """Every results/**/predictions.parquet: its record names it with this hash, and its accuracy is the
    recorded dev accuracy exactly (through the reader, and again straight from the parquet file with pyarrow),
    over exactly the dev rows the record counts; every record with a predictions entry has the file."""
    files = sorted((ROOT / "results").glob("*/*/" + predictions.FILE))
    entries = [p.parent for p in (ROOT / "results").glob("*/*/" + RESULT)
               if load_run(p).predictions is not None]
    assert sorted(set(entries)) == sorted(f.parent for f in files), "a predictions file without its record entry, or back"
    if (ROOT / "results" / "minilm_table1").is_dir():
        assert len(files) >= 33, len(files)  # the 33 ST-A rf 16 runs of minilm_table1 at least: none is no pass
    for f in files:
        check(f.parent)
        rec = load_run(f.parent / RESULT)
        table = pq.read_table(f).to_pydict()
        want = {t: v.best_metric for t, v in rec.per_task.items()} if rec.per_task else {rec.task: rec.best_metric}
        for t, metric in want.items():
            assert "gold" not in table, f  # committed files hold no copy of the dev labels (afbench migrate)
            mine = [(ok, sp) for x, ok, sp in zip(table["task"], table["correct"], table["split"], strict=True) if x == t]
            assert 100.0 * (sum(ok for ok, _ in mine) / len(mine)) == metric, (f.parent.name, t)
            assert len({sp for _, sp in mine}) == 1, (f.parent.name, t)  # one dev split, no test rows mixed in
            if not rec.per_task and rec.data is not None and rec.data.eval_rows is not None:
                assert len(mine) == rec.data.eval_rows, (f.parent.name, len(mine), rec.data.eval_rows)
