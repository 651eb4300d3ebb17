"""The floor under every cell: per task, the dev accuracy of a constant classifier that predicts the
most frequent class of train (uniform chance, 100/K, for a K-way multiple-choice task).

Computed from the data at report time (the data layer's readers, the same files the runs read); a task
whose data is not on this machine gets a reason instead of a number, and the report says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmark.data.labels import labels_of
from benchmark.data.sources import locate, read_rows
from benchmark.errors import BenchError


@dataclass(frozen=True)
class Majority:
    task: str
    accuracy: float | None  # points on the dev split; None: not computed (``why``)
    dev_rows: int = 0
    how: str = ""  # "predicts 'not_entailment'" / "uniform chance, 1/4"
    why: str = ""

    def near(self, value: float | None) -> bool:
        """Within one dev row (100 / dev rows points) of the baseline or below it (a result no better than
        predicting one class)."""
        one_row = 100.0 / self.dev_rows if self.dev_rows else 0.0
        return self.accuracy is not None and value is not None and value <= self.accuracy + one_row + 1e-9


def _labels(task, split: str, root: Path | None, task_file: str) -> list[int]:
    src = locate(task, split, root, task_file=task_file)
    if src.kind == "mirror" or src.location.endswith(".parquet"):
        import pyarrow.parquet as pq  # only the label column: MNLI's train has 393k rows

        column = pq.read_table(src.location, columns=[task.label.column]).column(0).to_pylist()
        rows = [{task.label.column: v} for v in column]
    else:
        rows = read_rows(task, split, root, task_file=task_file)
    return labels_of(task, rows, split, task_file)


_CACHE: dict[tuple[str, str], Majority] = {}  # (task spec, data folder) -> baseline: one read per process


def _majority(task, root: Path | None, task_file: str) -> Majority:
    key = (task.model_dump_json(), str(root))
    if key not in _CACHE:
        _CACHE[key] = _compute(task, root, task_file)
    return _CACHE[key]


def _compute(task, root: Path | None, task_file: str) -> Majority:
    name = task.name
    if task.data_files is None and root is None:
        return Majority(name, None, why="no local data (--data-dir or AFBENCH_DATA_DIR: the mirror, to compute it)")
    try:
        dev = _labels(task, task.splits.eval, root, task_file)
        if task.type == "multiple_choice":
            k = task.num_labels
            return Majority(name, 100.0 / k, len(dev), f"uniform chance, 1/{k}")
        train = _labels(task, task.splits.train, root, task_file)
    except (BenchError, OSError) as e:
        return Majority(name, None, why=f"data not readable here: {getattr(e, 'message', str(e))[:160]}")
    if not train or not dev:
        return Majority(name, None, why="an empty split")
    top = Counter(train).most_common(1)[0][0]  # ties: the first class seen
    names = task.label.names or []
    shown = names[top] if top < len(names) else str(top)
    return Majority(name, 100.0 * sum(y == top for y in dev) / len(dev), len(dev), f"predicts '{shown}'")


def majority_baselines(reg, tasks: list[str], root: Path | None) -> dict[str, Majority]:
    """task -> its majority baseline (or why there is none), for the tasks the registry knows."""
    return {t: _majority(reg.tasks[t], root, reg.file_of("task", t)) for t in tasks if t in reg.tasks}
