"""Where a task's rows come from: the Hugging Face Hub, the offline mirror, or local files.

* Hub (default): ``datasets.load_dataset(path, name, split=...)``.
* Mirror: when ``AFBENCH_DATA_DIR`` (or ``--data-dir``) is set, the layout
  ``<dir>/<path with / as __>/<name or default>/<split>.parquet`` is read instead; nothing touches
  the network.
* Local files: a task with ``data_files`` reads CSV / TSV / JSONL / Parquet files it names.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from benchmark.errors import DataError
from benchmark.spec.schema import TaskSpec


def data_dir(explicit: str | Path | None = None) -> Path | None:
    d = explicit or os.environ.get("AFBENCH_DATA_DIR")
    return Path(d) if d else None


def mirror_path(root: Path, task: TaskSpec, split: str) -> Path:
    assert task.dataset is not None
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
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


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
        if not p.exists():
            raise DataError(
                f"task '{task.name}', split '{split}': the local file {p} does not exist",
                file=task_file, field=f"data_files.{split}",
                fix=(task.notes.strip() or "put the file there or correct the path (relative to the spec file)"),
            )
        return SplitSource("local", str(p))
    assert task.dataset is not None
    if root is not None:
        p = mirror_path(root, task, split)
        if not p.exists():
            hint = ""
            missing = list(p.parent.parent.glob("MISSING.md")) + list(p.parent.glob("MISSING.md"))
            if missing:
                hint = f" {missing[0]} explains what the mirror lacks."
            raise DataError(
                f"task '{task.name}', split '{split}': not in the offline mirror (looked for {p}).{hint}",
                file=task_file, field=f"splits ({split})",
                fix="unset AFBENCH_DATA_DIR to read it from the Hugging Face Hub, or add the Parquet file to the mirror",
            )
        return SplitSource("mirror", str(p))
    ref = f"{task.dataset.path}:{task.dataset.name or 'default'}:{split}"
    return SplitSource("hub", ref)


def _read_local(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    raise DataError(f"unsupported file type {suffix!r} for {path}", fix="use .csv, .tsv, .jsonl, .json or .parquet")


def read_rows(task: TaskSpec, split: str, root: Path | None = None, *, task_file: str = "") -> list[dict]:
    """All rows of a split as plain dicts (column -> value)."""
    src = locate(task, split, root, task_file=task_file)
    if src.kind in ("mirror", "local"):
        return _read_local(Path(src.location))
    import datasets

    assert task.dataset is not None
    try:
        ds = datasets.load_dataset(task.dataset.path, task.dataset.name, split=split)
    except Exception as e:  # noqa: BLE001 - report any Hub failure as a clear data error
        raise DataError(
            f"task '{task.name}', split '{split}': loading {task.dataset.path} ({task.dataset.name or 'default'}) "
            f"from the Hugging Face Hub failed: {type(e).__name__}: {str(e)[:300]}",
            file=task_file, field="dataset",
            fix="check the network and the dataset id, or set AFBENCH_DATA_DIR to an offline mirror",
        ) from None
    return ds.to_list()


def subsample(n: int, cap: int | None, seed: int) -> list[int]:
    """Deterministic row indices: all rows, or ``cap`` of them chosen by ``seed`` (kept in file order)."""
    if cap is None or cap >= n:
        return list(range(n))
    import random

    return sorted(random.Random(seed).sample(range(n), cap))


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
