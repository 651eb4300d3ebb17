"""Where a task's rows come from: the Hugging Face Hub, the offline mirror, or local files.

* Hub (default): ``datasets.load_dataset(path, name, split=...)``.
* Mirror: when ``AFBENCH_DATA_DIR`` (or ``--data-dir``) is set, the layout
  ``<dir>/<path with / as __>/<name or default>/<split>.parquet`` is read instead; nothing touches
  the network.
* Local files: a task with ``data_files`` reads CSV / TSV / JSONL / Parquet files it names.

Data that is simply not there (a missing file, a split the mirror lacks, an unreachable Hub) raises
``DataUnavailable``, which a plan turns into a skipped task; anything else wrong with the data (a
directory where a file should be, a short CSV row, an empty split) is a plain ``DataError``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from benchmark.data import hub
from benchmark.errors import DataError, DataUnavailable, HubUnreachable
from benchmark.hashing import file_sha256
from benchmark.spec.schema import TaskSpec


def data_dir(given: str | Path | None = None) -> Path | None:
    """The offline mirror's folder as the caller gave it (the CLI: --data-dir, else $AFBENCH_DATA_DIR; this
    module reads no environment variable); None: no mirror, the Hub's data."""
    return Path(given) if given else None


def mirror_path(root: Path, task: TaskSpec, split: str) -> Path:
    return root / task.dataset.path.replace("/", "__") / (task.dataset.name or "default") / f"{split}.parquet"


@dataclass
class SplitSource:
    """Where one split is read from, and a fingerprint of it for cache keys."""

    kind: str  # "mirror" | "local" | "hub"
    location: str

    def fingerprint(self) -> str:
        """The file's content hash (the same on every machine, whatever the path); the Hub id otherwise."""
        if self.kind in ("mirror", "local"):
            st = os.stat(self.location)
            return "sha256:" + _file_digest(self.location, st.st_size, st.st_mtime_ns)
        return f"hub:{self.location}"


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: re-hash a changed file
    return file_sha256(path)[:16]


def fingerprint(task: TaskSpec, split: str, root: Path | None = None) -> str:
    """What identifies a split's rows in a run id (``plan/identity.py``): the content hash of its mirrored or
    local file, or its Hub id, which needs no network; "unavailable" when a file is not there."""
    root = data_dir(root)
    if task.data_files is None and root is None:
        return f"hub:{task.dataset.path}:{task.dataset.name or 'default'}:{split}"
    try:
        return locate(task, split, root).fingerprint()
    except (DataError, OSError):
        return "unavailable"


def task_fingerprints(task: TaskSpec, root: Path | None = None) -> dict[str, str]:
    """Fingerprints of a task's train and eval splits (what its runs' ids hash of the data)."""
    return {split: fingerprint(task, split, root) for split in dict.fromkeys((task.splits.train, task.splits.eval))}


def locate(task: TaskSpec, split: str, root: Path | None = None, *, task_file: str = "") -> SplitSource:
    root = data_dir(root)
    if task.data_files is not None:
        if split not in task.data_files:
            raise DataError(
                f"task '{task.name}' has no file for split '{split}' (data_files has {sorted(task.data_files)})",
                file=task_file, field="data_files",
                fix=f"add '{split}: FILE' under data_files or change splits.train / splits.eval",
            )
        p = Path(task.data_files[split])
        if p.is_dir():
            raise DataError(
                f"task '{task.name}', split '{split}': {p} is a directory, not a data file",
                file=task_file, field=f"data_files.{split}",
                fix="name one .csv / .tsv / .jsonl / .json / .parquet file per split (relative to the spec file)",
            )
        if not p.exists():
            raise DataUnavailable(
                f"task '{task.name}', split '{split}': the local file {p} does not exist",
                file=task_file, field=f"data_files.{split}",
                fix=(task.notes.strip() or "put the file there or correct the path (relative to the spec file)"),
            )
        return SplitSource("local", str(p))
    assert task.dataset is not None
    if root is not None:
        p = mirror_path(root, task, split)
        if not p.exists():
            note = next((m for m in (p.parent.parent / "MISSING.md", p.parent / "MISSING.md") if m.exists()), None)
            hint = f" {note} explains what the mirror lacks." if note else ""
            raise DataUnavailable(
                f"task '{task.name}', split '{split}': not in the offline mirror (looked for {p}).{hint}",
                file=task_file, field=f"splits ({split})",
                fix="unset AFBENCH_DATA_DIR to read it from the Hugging Face Hub, or add the Parquet file to the mirror",
            )
        return SplitSource("mirror", str(p))
    ref = f"{task.dataset.path}:{task.dataset.name or 'default'}:{split}"
    why = hub.unreachable_reason()
    if why:
        raise HubUnreachable(f"task '{task.name}', split '{split}': {why}", file=task_file, field="dataset",
                              fix=hub.UNREACHABLE_FIX)
    return SplitSource("hub", ref)


def _read_csv(path: Path, delimiter: str, field: str) -> list[dict]:
    """CSV/TSV rows; a row with fewer or more fields than the header is an error naming its line."""
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        for row in reader:
            short = [k for k, v in row.items() if v is None]
            if short or None in row:
                what = (f"has no value for column(s) {short}" if short
                        else f"has {len(row[None])} field(s) more than the header's {len(reader.fieldnames)}")
                raise DataError(
                    f"line {reader.line_num} {what} (header: {reader.fieldnames})", file=str(path), field=field,
                    fix=f"give every row one field per column (quote values that contain '{delimiter}'); "
                        "an empty value is written as nothing between two delimiters",
                )
            rows.append(row)
    return rows


def _read_json_lines(path: Path, text: str, field: str) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"line {n} is not valid JSON ({e.msg}, column {e.colno})", file=str(path), field=field,
                            fix="write one JSON object per line (JSON Lines)") from None
    return rows


def _read_local(path: Path, field: str = "data_files") -> list[dict]:
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".jsonl", ".json", ".csv", ".tsv"):
        raise DataError(f"unsupported file type {suffix!r} for {path}", file=str(path), field=field,
                        fix="use .csv, .tsv, .jsonl, .json or .parquet")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            if suffix == ".json" and text.lstrip().startswith("["):
                try:
                    rows = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"not valid JSON ({e.msg}, line {e.lineno})", file=str(path), field=field,
                                    fix="write a JSON list of objects, or one object per line (.jsonl)") from None
            else:
                rows = _read_json_lines(path, text, field)
        else:
            rows = _read_csv(path, "\t" if suffix == ".tsv" else ",", field)
    except UnicodeDecodeError as e:
        raise DataError(f"the file is not UTF-8 text ({e.reason} at byte {e.start})", file=str(path), field=field,
                        fix="save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror or e})", file=str(path), field=field,
                        fix="check that it is a readable file") from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt Parquet file, a CSV quoting error, ...
        raise DataError(f"cannot parse the file ({type(e).__name__}: {str(e)[:200]})", file=str(path), field=field,
                        fix="check that the file is intact and its type matches its extension") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"row {bad} is a {type(rows[bad]).__name__}, not an object of column -> value",
                        file=str(path), field=field, fix="write each row as a JSON object")
    return rows


def _no_rows(task: TaskSpec, split: str, where: str, task_file: str, field: str) -> DataError:
    return DataError(
        f"task '{task.name}', split '{split}' has no rows ({where}); nothing can be trained or evaluated on it",
        file=task_file, field=field,
        fix="fill the split (a CSV needs rows under its header), or point splits.train / splits.eval elsewhere",
    )


def read_rows(task: TaskSpec, split: str, root: Path | None = None, *, task_file: str = "") -> list[dict]:
    """All rows of a split as plain dicts (column -> value)."""
    src = locate(task, split, root, task_file=task_file)
    if src.kind in ("mirror", "local"):
        field = f"data_files.{split}" if src.kind == "local" else f"splits ({split})"
        rows = _read_local(Path(src.location), field)
        if not rows:
            raise _no_rows(task, split, f"{src.location} is empty or holds only a header", task_file, field)
        return rows
    import datasets

    try:
        ds = datasets.load_dataset(task.dataset.path, task.dataset.name, split=split)
    except Exception as e:  # noqa: BLE001 - report any Hub failure as a clear data error
        raise DataError(
            f"task '{task.name}', split '{split}': loading {task.dataset.path} ({task.dataset.name or 'default'}) "
            f"from the Hugging Face Hub failed: {type(e).__name__}: {str(e)[:300]}",
            file=task_file, field="dataset",
            fix=("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, so only the Hugging Face cache is read: fill the "
                 "cache on a machine with a network, unset them, or set AFBENCH_DATA_DIR to an offline mirror")
            if hub.offline_mode() else
            "check the network and the dataset id, or set AFBENCH_DATA_DIR to an offline mirror",
        ) from None
    rows = ds.to_list()
    if not rows:
        raise _no_rows(task, split, f"the Hub split {src.location} is empty", task_file, "dataset")
    return rows


def subsample(n: int, cap: int | None, seed: int) -> list[int]:
    """Deterministic row indices: all rows, or ``cap`` of them chosen by ``seed`` (kept in file order)."""
    if cap is None or cap >= n:
        return list(range(n))
    import random

    return sorted(random.Random(seed).sample(range(n), cap))


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
