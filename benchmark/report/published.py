"""The published numbers as the reporter reads them: Table 1 cells and means, per-task gains, and
the Table 2 arrows both as printed and as re-derived from the Table 1 numbers.

Every paper figure a report shows comes from the paper YAML (``benchmark/paper/``, or ``--paper`` /
``$AFBENCH_PAPER_FILE``), never from code, so a corrected transcription changes every report.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from benchmark import methods
from benchmark.errors import BenchError

BUNDLED = "benchmark/paper/adapterfusion_eacl2021.yaml"

# The paper's Table 2 legend: an arrow up for a gain above 0.3 accuracy points, down for a loss below
# -0.3, sideways otherwise (also recorded as `table2.thresholds` in the paper YAML).
ARROW_THRESHOLD = 0.3

# A Table 2 comparison's two columns of the paper's Table 1 come from the method registry
# (``methods.comparisons()``: its run labels, and each label's Table 1 ``paper_key``). The paper prints
# four of them as Table 2's columns (``table2.columns`` in the YAML); against Full it draws only
# Figure 3, so the arrows there are derived from its Table 1 numbers by the same thresholds.
def paper_key(label: str) -> str:
    """The paper's Table 1 column of the runs labelled ``label``."""
    return next(c.paper_key for c in methods.layout("table1") if c.label == label)


def paper_columns(pair: methods.Comparison | methods.Claim | str) -> tuple[str, str]:
    """(fusion column, baseline column) of the paper's Table 1 for a Table 2 comparison (or its key) or a claim."""
    if isinstance(pair, str):
        pair = next(c for c in methods.comparisons() if c.key == pair)
    return paper_key(pair.ours), paper_key(pair.baseline)


MEAN_ROW = "Mean"  # the row of Table 1 that holds the published means over all 16 tasks


def arrow(delta: float) -> str:
    """The paper's Table 2 thresholds: > 0.3 up, < -0.3 down, otherwise the same."""
    return "up" if delta > ARROW_THRESHOLD else "down" if delta < -ARROW_THRESHOLD else "same"


def load(path: str | None = None) -> tuple[dict, str]:
    """(paper numbers, where they came from, as a report may show it: no machine paths)."""
    bundled_text = resources.files("benchmark.paper").joinpath("adapterfusion_eacl2021.yaml").read_text()
    if not path:  # the CLI passes --paper, else $AFBENCH_PAPER_FILE
        return _parse(bundled_text, BUNDLED), f"bundled copy ({BUNDLED})"
    f = Path(path)
    if not f.is_file():
        raise BenchError(f"paper numbers file {f} does not exist", field="--paper",
                         fix="point --paper / AFBENCH_PAPER_FILE at adapterfusion_eacl2021.yaml")
    data = _parse(f.read_text(encoding="utf-8"), str(f))
    if data == yaml.safe_load(bundled_text):
        return data, f"bundled copy ({BUNDLED})"
    try:
        shown = str(f.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = f"{f.name} (outside the project, from --paper / AFBENCH_PAPER_FILE)"
    return data, shown


def _parse(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BenchError(f"paper numbers file is not valid YAML ({e})", file=where,
                         fix="restore it from benchmark/paper/adapterfusion_eacl2021.yaml") from None
    if not isinstance(data, dict) or not isinstance(data.get("table1"), dict):
        raise BenchError("paper numbers file has no 'table1' mapping", file=where, field="table1",
                         fix="restore it from benchmark/paper/adapterfusion_eacl2021.yaml")
    return data


def table1_backbone(paper: dict) -> str | None:
    return paper.get("table1", {}).get("backbone")


def tables_for(paper: dict, paper_backbone: str | None) -> list[str]:
    """The paper tables a backbone's results fill: those the paper ran on its ``paper_backbone``; a backbone
    without one the paper has a table for fills Table 1's (and every other table on Table 1's backbone)."""
    own = [k for k in methods.TABLES if paper.get(k, {}).get("backbone") == paper_backbone]
    return own or [k for k in methods.TABLES if paper.get(k, {}).get("backbone") == table1_backbone(paper)]


def table1_rows(paper: dict) -> dict[str, dict]:
    """task -> column -> {mean, std}, without the mean row."""
    return {t: r for t, r in paper.get("table1", {}).get("rows", {}).items() if t != MEAN_ROW}


def value(paper: dict, task: str, column: str) -> float | None:
    return paper.get("table1", {}).get("rows", {}).get(task, {}).get(column, {}).get("mean")


def mean(paper: dict, column: str) -> float | None:
    """The published mean over all tasks (Table 1's last row)."""
    return value(paper, MEAN_ROW, column)


def gain(paper: dict, task: str, fusion: str, base: str) -> float | None:
    f, b = value(paper, task, fusion), value(paper, task, base)
    return None if f is None or b is None else f - b


def is_printed(paper: dict, comparison: str) -> bool:
    """Whether the paper's Table 2 has this comparison as a column (else: derive it from Table 1)."""
    return comparison in (paper.get("table2", {}).get("columns") or [])


def paper_arrow(paper: dict, task: str, comparison: str) -> str | None:
    """The arrow to compare ours with: printed in Table 2, or derived from Table 1 where Table 2 has none."""
    if is_printed(paper, comparison):
        return printed_arrow(paper, task, comparison)
    return derived_arrow(paper, task, comparison) if task in table1_rows(paper) else None


def printed_arrow(paper: dict, task: str, comparison: str) -> str | None:
    return paper.get("table2", {}).get("rows", {}).get(task, {}).get(comparison)


def derived_arrow(paper: dict, task: str, comparison: str) -> str | None:
    """The arrow the paper's own Table 1 numbers give, by its Table 2 thresholds."""
    d = gain(paper, task, *paper_columns(comparison))
    return None if d is None else arrow(d)


def printed_improved(paper: dict, comparison: str) -> str:
    return str(paper.get("table2", {}).get("improved", {}).get(comparison, "—"))


def derived_improved(paper: dict, comparison: str) -> str:
    arrows = [derived_arrow(paper, t, comparison) for t in paper.get("table2", {}).get("rows", {})]
    arrows = [a for a in arrows if a is not None]
    return f"{sum(a == 'up' for a in arrows)}/{len(arrows)}" if arrows else "—"


def disagreements(paper: dict, comparison: str) -> list[tuple[str, str, str, float]]:
    """(task, printed arrow, derived arrow, Table 1 gain) where Table 2 and Table 1 disagree."""
    out = []
    for t in paper.get("table2", {}).get("rows", {}):
        p, d = printed_arrow(paper, t, comparison), derived_arrow(paper, t, comparison)
        if p is not None and d is not None and p != d:
            out.append((t, p, d, gain(paper, t, *paper_columns(comparison))))
    return out
