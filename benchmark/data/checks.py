"""Data-aware checks of a task spec: do its templates and labels fit the actual columns and values?

Run by ``afbench validate`` for every task whose data can be read offline (mirror or local files);
tasks that only live on the Hub are reported as 'not checked against data'.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.data.encode import labels_of
from benchmark.data.sources import locate, read_rows
from benchmark.errors import DataError, SpecError
from benchmark.spec.schema import TaskSpec
from benchmark.spec.templates import template_columns


def check_task_data(task: TaskSpec, task_file: str, root: Path | None = None) -> str:
    """Raise a SpecError/DataError on a mismatch; return a one-line status otherwise."""
    checked = []
    for split in (task.splits.train, task.splits.eval):
        try:
            if locate(task, split, root).kind == "hub":
                continue  # validate never touches the network
        except DataError:
            continue
        rows = read_rows(task, split, root, task_file=task_file)
        cols = list(rows[0]) if rows else []
        for fld, src in task.templates.items():
            missing = sorted(template_columns(src) - set(cols))
            if missing:
                raise SpecError(
                    f"the template {src!r} reads column(s) {missing} that split '{split}' does not have "
                    f"(columns: {cols})",
                    file=task_file, field=fld, fix="use the dataset's column names",
                )
        if task.label.column not in cols:
            raise SpecError(
                f"label column '{task.label.column}' is not in split '{split}' (columns: {cols})",
                file=task_file, field="label.column", fix="name the column that holds the gold label",
            )
        labels_of(task, rows, split, task_file)
        checked.append(f"{split} ({len(rows)} rows)")
    if not checked:
        return "not checked against data (not available offline)"
    return "data ok: " + ", ".join(checked)


__all__ = ["check_task_data", "DataError"]
