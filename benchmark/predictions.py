"""Per-example predictions of a run: ``predictions.parquet`` beside its ``result.json``.

One row per evaluated row of the kept model (the selected epoch; a pruned fusion: the pruned model), one
file per run (MT-A: every task's rows, told apart by ``task``). Columns:

  task        the task
  split       the evaluated split as the task names it (the dev split)
  row         the row's index in the evaluated split after caps and selection (0 .. n-1, in the order
              the run's EncodedSplit holds them)
  source_row  its index in the split file as loaded (file order; differs from ``row`` under a row cap)
  id          the dataset's own id column (``idx`` or ``id``) as text, or null where it has none
  pred, gold  the predicted and the gold label id (multiple choice: the chosen and the right option)

The record keeps ``predictions: {file, sha256, rows}``; ``read`` checks the hash, and ``accuracy``
recomputes a task's metric exactly as the training loop computes it (100 x correct / rows, one division),
so it equals the recorded ``best_metric`` bit for bit.

Layer 0 (beside ``records``): pyarrow, no torch.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.hashing import file_sha256
from benchmark.paths import write_atomic
from benchmark.records import PredictionsEntry

FILE = "predictions.parquet"
ID_COLUMNS = ("idx", "id")  # a dataset's own row id, the first of these it has
COLUMNS = ("task", "split", "row", "source_row", "id", "pred", "gold")


class PredictionsError(BenchError):
    """A predictions file that is missing, altered or unreadable."""


def _schema():
    import pyarrow as pa

    return pa.schema([("task", pa.string()), ("split", pa.string()), ("row", pa.int32()),
                      ("source_row", pa.int64()), ("id", pa.string()), ("pred", pa.int32()), ("gold", pa.int32())])


def to_bytes(columns: dict[str, list]) -> bytes:
    """The parquet file of ``columns`` (every name of COLUMNS, equal lengths): deterministic bytes (no
    timestamps in parquet metadata), so the same predictions always have the same sha256."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict({c: columns[c] for c in COLUMNS}, schema=_schema())
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write(folder: Path, columns: dict[str, list], *, root: Path | None = None) -> dict:
    """Write ``folder/predictions.parquet`` atomically; returns the record's ``predictions`` entry."""
    data = to_bytes(columns)
    write_atomic(Path(folder) / FILE, data, root=root)
    return {"file": FILE, "sha256": hashlib.sha256(data).hexdigest(), "rows": len(columns["row"])}


def read(folder: Path, entry: PredictionsEntry | dict | None) -> dict[str, list]:
    """The columns of ``folder/predictions.parquet``, checked against the record's entry (sha256, rows; a
    ``RunRecord.predictions``, or the dict ``write`` returned)."""
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
    if file_sha256(path) != entry.sha256:
        raise PredictionsError("the predictions file differs from the sha256 its result.json records",
                               file=str(path), field="predictions.sha256", fix=fix)
    try:
        cols = pq.read_table(path).to_pydict()
    except Exception as e:  # noqa: BLE001 - pyarrow's own errors
        raise PredictionsError(f"not a readable parquet file ({e})", file=str(path), fix=fix) from None
    if len(cols.get("row", [])) != entry.rows:
        raise PredictionsError(f"{len(cols.get('row', []))} rows, the result records {entry.rows}",
                               file=str(path), field="predictions.rows", fix=fix)
    return cols


def accuracy(columns: dict[str, list], task: str | None = None) -> float:
    """Accuracy in percent over the rows of ``task`` (None: all rows), as the training loop computes it."""
    pairs = [(p, g) for t, p, g in zip(columns["task"], columns["pred"], columns["gold"]) if task is None or t == task]
    if not pairs:
        raise PredictionsError(f"no predictions for task '{task}'", field="task")
    return 100.0 * (sum(p == g for p, g in pairs) / len(pairs))
