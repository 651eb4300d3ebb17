"""Per-example predictions of a run: ``predictions.parquet`` beside its ``result.json``.

One row per evaluated row of the kept model (the selected epoch; a pruned fusion: the pruned model), one
file per run (MT-A: every task's rows, told apart by ``task``). Columns:

  task        the task
  split       the evaluated split as the task names it (the dev split)
  row         the row's index in the evaluated split after caps and selection (0 .. n-1, in the order
              the run's EncodedSplit holds them)
  source_row  its index in the split file as loaded (file order; differs from ``row`` under a row cap)
  id          the dataset's own id column (``idx`` or ``id``) as text, or null where it has none
  correct     whether the model's label (multiple choice: its chosen option) is the gold one

Neither the gold label nor the predicted one is stored: together with ``correct`` either gives back the dev
split's labels (for a binary task, gold = pred if correct, else the other class), and the dataset stays in
the mirror, not in the repository. ``correct`` is all a paired test needs; the labels a run gives are what
``runner/serve.py`` computes from its weights. Files written before 2026-12-07 held ``pred`` and ``gold``, and
files of 2026-12-07 ``pred`` and ``correct`` (``LEGACY``); ``read`` reads both as today's columns, and
``afbench migrate`` rewrites such a file (``upgrade``) and its record's hash.

``accuracy`` recomputes a task's metric exactly as the training loop computes it (100 x correct / rows, one
division), so it equals the recorded ``best_metric`` bit for bit.

Layer 0 (beside ``records``): pyarrow, no torch.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.hashing import file_sha256
from benchmark.paths import write_atomic
from benchmark.records import RESULT, PredictionsEntry, add_to_run

FILE = "predictions.parquet"
ID_COLUMNS = ("idx", "id")  # a dataset's own row id, the first of these it has
COLUMNS = ("task", "split", "row", "source_row", "id", "correct")
LEGACY = (COLUMNS[:-1] + ("pred", "gold"), COLUMNS[:-1] + ("pred", "correct"))  # before / on 2026-12-07


class PredictionsError(BenchError):
    """A predictions file that is missing, altered or unreadable."""


def _schema(names):
    """The arrow schema of a file with columns ``names`` (today's, or a ``LEGACY`` file's)."""
    import pyarrow as pa

    types = {"task": pa.string(), "split": pa.string(), "row": pa.int32(), "source_row": pa.int64(),
             "id": pa.string(), "pred": pa.int32(), "gold": pa.int32(), "correct": pa.bool_()}
    return pa.schema([(n, types[n]) for n in names])


def to_bytes(columns: dict[str, list], names=COLUMNS) -> bytes:
    """The parquet file of ``columns`` (every one of ``names``, equal lengths): deterministic bytes (no
    timestamps in parquet metadata), so the same predictions always have the same sha256."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict({c: columns[c] for c in names}, schema=_schema(names))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _entry(data: bytes, rows: int) -> dict:
    """The record's ``predictions`` entry of a file holding ``data``."""
    return {"file": FILE, "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


def write(folder: Path, columns: dict[str, list], *, root: Path | None = None) -> dict:
    """Write ``folder/predictions.parquet`` atomically; returns the record's ``predictions`` entry."""
    data = to_bytes(columns)
    write_atomic(Path(folder) / FILE, data, root=root)
    return _entry(data, len(columns["row"]))


def read(folder: Path, entry: PredictionsEntry | dict | None) -> dict[str, list]:
    """The columns of ``folder/predictions.parquet``, checked against the record's entry (sha256, rows; a
    ``RunRecord.predictions``, or the dict ``write`` returned). A legacy file (``is_legacy``) reads as
    today's columns (``correct`` derived from its gold labels where it held them), and passes the hash check also when the record holds the hash of
    its upgrade (an ``afbench migrate`` stopped between its two writes, see ``upgrade``)."""
    import pyarrow.parquet as pq

    if entry is None:
        raise PredictionsError("the result records no predictions", file=str(Path(folder) / "result.json"),
                               field="predictions", fix=f"write them: afbench predict <experiment> --only '{Path(folder).name}'")
    if isinstance(entry, dict):
        entry = PredictionsEntry.model_validate(entry)
    fix = f"recompute it: delete it and run afbench predict <experiment> --only '{Path(folder).name}'"
    if (entry.file or FILE) != FILE:  # a record names no other file: it is read only beside result.json
        raise PredictionsError(f"the result names the predictions file {entry.file!r}, not {FILE!r}",
                               file=str(Path(folder) / "result.json"), field="predictions.file", fix=fix)
    path = Path(folder) / FILE
    if not path.is_file():
        raise PredictionsError("the predictions file the result records is missing", file=str(path), fix=fix)
    altered = PredictionsError("the predictions file differs from the sha256 its result.json records",
                               file=str(path), field="predictions.sha256", fix=fix)
    same, legacy = file_sha256(path) == entry.sha256, is_legacy(folder)
    if not same and not legacy:
        raise altered
    try:
        table = pq.read_table(path)
        cols = table.cast(_schema(table.schema.names)).to_pydict()  # a legacy file's wrong types fail here
        if legacy:
            pred, gold = cols.pop("pred"), cols.pop("gold", None)
            cols["correct"] = cols["correct"] if gold is None else [p == g for p, g in zip(pred, gold, strict=True)]
            forms = [] if same else [to_bytes(cols)] + ([to_bytes({**cols, "pred": pred}, LEGACY[1])] if gold else [])
            upgraded = {hashlib.sha256(b).hexdigest() for b in forms}  # 2nd: an upgrade of before 2026-12-08 stopped
    except Exception as e:  # noqa: BLE001 - pyarrow's own errors, a legacy file's wrong types
        raise PredictionsError(f"not a readable predictions file ({e})", file=str(path), fix=fix) from None
    if legacy and not same and entry.sha256 not in upgraded:
        raise altered
    if len(cols.get("row", [])) != entry.rows:
        raise PredictionsError(f"{len(cols.get('row', []))} rows, the result records {entry.rows}",
                               file=str(path), field="predictions.rows", fix=fix)
    return cols


def is_legacy(folder: Path) -> bool:
    """Whether ``folder``'s file has exactly the columns of a file written before 2026-12-08 (``LEGACY``: with
    ``pred``, and ``gold`` in place of ``correct`` before 2026-12-07); an unreadable file is not (``read`` names
    what is wrong with it)."""
    import pyarrow.parquet as pq

    try:
        return tuple(pq.read_schema(Path(folder) / FILE).names) in LEGACY
    except Exception:  # noqa: BLE001 - pyarrow's own errors, a missing file
        return False


def upgrade(folder: Path, entry: PredictionsEntry | dict | None, *, root: Path | None = None) -> None:
    """Rewrite a legacy file (``is_legacy``) in today's columns, checked against its record ``entry`` first, and
    the record's hash. The record is written first: a stop between the two writes leaves a legacy file that
    ``read`` checks against its upgrade's hash, and a rerun finishes it."""
    cols = read(folder, entry)
    data = to_bytes(cols)
    add_to_run(Path(folder) / RESULT, {"predictions": _entry(data, len(cols["row"]))}, root=root)
    write_atomic(Path(folder) / FILE, data, root=root)


def accuracy(columns: dict[str, list], task: str | None = None) -> float:
    """Accuracy in percent over the rows of ``task`` (None: all rows), as the training loop computes it."""
    hits = [ok for t, ok in zip(columns["task"], columns["correct"], strict=True) if task is None or t == task]
    if not hits:
        raise PredictionsError(f"no predictions for task '{task}'", field="task")
    return 100.0 * (sum(hits) / len(hits))
