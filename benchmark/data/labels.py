"""Gold labels of a task's rows as class ids, through its ``label`` spec: pure Python, no torch, so the
reporter (majority baselines) and ``afbench validate`` read labels without loading the training stack."""

from __future__ import annotations

from collections import Counter

from benchmark.errors import DataError
from benchmark.spec.schema import TaskSpec


def label_id(task: TaskSpec, raw) -> int | None:
    """Class / choice id of a raw label value, or None if the mapping does not cover it.

    ``label.map`` matches by type: a text value only a text key, an integer only an integer key
    (``"1"`` never finds ``1``); a boolean or a float never matches (``True == 1 == 1.0`` in Python).
    Without a map, an integer 0..K-1 is its own id and a text equal to one of ``label.names`` is that name's."""
    m = task.label.map
    if m is not None:
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            return None
        return m.get(raw)  # a dict lookup: 1 finds the key 1, never "1"
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int) and 0 <= raw < task.num_labels:
        return raw
    names = task.label.names or []
    return names.index(raw) if isinstance(raw, str) and raw in names else None


def labels_of(task: TaskSpec, rows: list[dict], split: str, task_file: str = "") -> list[int]:
    col = task.label.column
    if rows and col not in rows[0]:
        raise DataError(
            f"task '{task.name}', split '{split}': no label column '{col}' (columns: {sorted(rows[0])})",
            file=task_file, field="label.column", fix="name the column that holds the gold label",
        )
    ids = [label_id(task, row[col]) for row in rows]
    bad = Counter(repr(rows[i][col]) for i, v in enumerate(ids) if v is None)
    if bad:
        shown = ", ".join(f"{k} ({n} rows)" for k, n in bad.most_common(5))
        kinds = sorted({type(rows[i][col]).__name__ for i, v in enumerate(ids) if v is None})
        keys = sorted({type(k).__name__ for k in (task.label.map or {})})
        typed = (f"; label.map matches by type and its keys are {'/'.join(keys)} while these values are "
                 f"{'/'.join(kinds)} (quote a key for a text label, '\"1\": 0'; booleans and floats never match)"
                 if task.label.map and set(kinds) - set(keys) else "")
        declared = "the declared mapping" if task.label.map is not None else (
            f"the class ids 0..{task.num_labels - 1}" + (f" and label.names {task.label.names}" if task.label.names
                                                         else ""))
        raise DataError(
            f"task '{task.name}', split '{split}': label values outside {declared}: {shown}{typed}",
            file=task_file, field="label.map" if task.label.map is not None or not task.label.names else "label.names",
            fix="add these values to label.map (raw value -> class id)"
                + ("" if task.label.map is not None or not task.label.names else
                   " or name the classes as the data spells them in label.names")
                + ", or use a split that has gold labels",
        )
    return ids
