"""Data-aware checks of a task spec: do its templates and labels fit the actual columns and values?

Run by ``afbench validate`` for every task whose data can be read without a download (mirror or
local files). Beyond the column names, every template is rendered on a sample of rows of each split
(the first ``HEAD_ROWS`` and ``RANDOM_ROWS`` more at random), so a missing nested key
(``{{ ctx.hnt }}``), an index out of range (``{{ options[3] }}``) or an empty render is reported at
validate time with its split and row, not halfway through a grid. Tasks that only live on the Hub are
not downloaded; their status says which of the three Hub cases holds (mirror missing, Hub offline
mode, Hub unreachable).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from benchmark.data import hub
from benchmark.data.encode import labels_of, render_row_at
from benchmark.data.sources import locate, read_rows
from benchmark.errors import DataUnavailable, HubUnreachable, SpecError
from benchmark.spec.schema import TaskSpec
from benchmark.spec.templates import template_columns

HEAD_ROWS = 100
RANDOM_ROWS = 100


@dataclass
class DataCheck:
    """The outcome of checking one task against its data: a status line and whether data is missing."""

    status: str
    missing: str | None = None  # the paragraph of the first split that is not there (DataUnavailable)
    hub_down: bool = False  # missing because the Hugging Face Hub is unreachable


def sample_indices(n: int) -> list[int]:
    """The first HEAD_ROWS rows and RANDOM_ROWS more drawn from the rest (fixed seed), in file order."""
    head = list(range(min(n, HEAD_ROWS)))
    rest = range(len(head), n)
    extra = random.Random(0).sample(rest, min(RANDOM_ROWS, len(rest)))
    return head + sorted(extra)


def check_renders(task: TaskSpec, rows: list[dict], split: str, task_file: str) -> int:
    """Render every template on the sampled rows; raise at the first row that fails or renders empty."""
    idx = sample_indices(len(rows))
    for i in idx:
        rendered = render_row_at(task, rows[i], split, i, task_file)
        fields = [("input.text", rendered.get("text")), ("input.text_pair", rendered.get("text_pair"))]
        fields += [(f"input.choices[{k}]", c) for k, c in enumerate(rendered.get("choices") or [])]
        for fld, text in fields:
            if text is not None and not text.strip():
                row = repr(rows[i])
                raise SpecError(
                    f"split '{split}', row {i}: the template {task.templates[fld]!r} renders empty text "
                    f"(row: {row if len(row) <= 200 else row[:200] + '...}'})",
                    file=task_file, field=fld,
                    fix="check the column holds text for every row, or give a fallback: '{{ x or \"(none)\" }}'",
                )
    return len(idx)


def check_task_data(task: TaskSpec, task_file: str, root: Path | None = None) -> DataCheck:
    """Raise a SpecError/DataError on a mismatch; return the status (and any missing data) otherwise."""
    checked, rendered, warnings = [], 0, []
    for split in (task.splits.train, task.splits.eval):
        try:
            src = locate(task, split, root, task_file=task_file)
        except DataUnavailable as e:
            return DataCheck(f"MISSING: {e.render()}", missing=e.render(), hub_down=isinstance(e, HubUnreachable))
        if src.kind == "hub":
            continue  # validate never downloads
        rows = read_rows(task, split, root, task_file=task_file)  # DataError if empty or malformed
        cols = list(dict.fromkeys(k for r in rows for k in r))  # any row's keys (JSONL rows may differ)
        for fld, src_t in task.templates.items():
            missing = sorted(template_columns(src_t) - set(cols))
            if missing:
                raise SpecError(
                    f"the template {src_t!r} reads column(s) {missing} that split '{split}' does not have "
                    f"(columns: {cols})",
                    file=task_file, field=fld,
                    fix="use the dataset's column names; row['NAME'] reads a column whose name has spaces",
                )
        if task.label.column not in cols:
            raise SpecError(
                f"label column '{task.label.column}' is not in split '{split}' (columns: {cols})",
                file=task_file, field="label.column", fix="name the column that holds the gold label",
            )
        classes = set(labels_of(task, rows, split, task_file))
        if len(classes) < 2:  # every row the same gold label: a constant prediction scores 100%
            (only,) = classes
            name = task.label.names[only] if task.label.names else f"choice {only}"
            warnings.append(f"WARNING: split '{split}' has one label class ('{name}', of {task.num_labels}): "
                            "any model scores 100% by always predicting it; check label.column and the split")
        rendered += check_renders(task, rows, split, task_file)
        checked.append(f"{split} ({len(rows)} rows)")
    if not checked:  # every split is read from the Hub (locate found its dataset)
        ref = f"{task.dataset.path} ({task.dataset.name or 'default'})"
        if hub.offline_mode():
            return DataCheck(f"not checked against data: Hub offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set), "
                             f"{ref} is read from the Hugging Face cache at run time")
        return DataCheck(f"not checked against data: {ref} is read from the Hugging Face Hub at run time (validate "
                         "does not download)")
    return DataCheck("; ".join(["data ok: " + ", ".join(checked), f"templates rendered on {rendered} sampled rows",
                                *warnings]))
