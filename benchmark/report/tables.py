"""The report's data model: Tables 1/3/4 (mean ± std over seeds, paper value, difference),
Table 2 arrows, the paper's findings checked against ours, and seed-noise markers.

Filled once from ``aggregate.Collected`` and rendered by every template (Markdown, HTML, LaTeX).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from scipy import stats

from benchmark import methods
from benchmark.report.aggregate import Cell, Collected


# Columns, Table 2 comparisons and † pairs come from the method kinds (benchmark/methods): a new kind's
# columns appear without an edit here.
def layout(table: str) -> list[tuple[str, str, str]]:
    """(our column label, the paper's key, heading) of a table."""
    return [(c.label, c.paper_key, c.heading) for c in methods.layout(table)]


def comparisons() -> list[tuple[str, str, str, str]]:
    """Table 2: (key, fusion column, baseline column, heading)."""
    return [(c.key, c.ours, c.baseline, c.heading) for c in methods.comparisons()]


TITLES = {"table1": "Table 1: all methods", "table3": "Table 3: ST-A reduction factors",
          "table4": "Table 4: RoBERTa-base"}
ARROWS = {"up": "↗", "down": "↘", "same": "→"}
SIGNIFICANCE = 0.05


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def arrow(delta: float) -> str:
    """The paper's Table 2 thresholds: > 0.3 up, < -0.3 down, otherwise the same."""
    return "up" if delta > 0.3 else "down" if delta < -0.3 else "same"


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Welch's t-test over seeds; None when it cannot be computed (fewer than 2 seeds, no variance)."""
    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():  # near-identical samples: scipy warns and may return nan
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return None if p is None or math.isnan(p) else float(p)


@dataclass
class CellView:
    mean: float | None
    std: float | None
    n: int
    reason: str = ""
    paper: float | None = None
    paper_std: float | None = None
    marker: str = ""  # "†": differs from its baseline beyond seed noise (Welch p < 0.05)
    p_value: float | None = None

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper

    @property
    def text(self) -> str:
        if self.mean is None:
            return f"— ({self.reason})" if self.reason else "—"
        s = fmt(self.mean) + (f" ± {fmt(self.std)}" if self.std is not None else "")
        return s + self.marker

    @property
    def paper_text(self) -> str:
        if self.paper is None:
            return "—"
        return fmt(self.paper) + (f" ± {fmt(self.paper_std)}" if self.paper_std is not None else "")

    @property
    def delta_text(self) -> str:
        return "—" if self.delta is None else f"{self.delta:+.2f}"


@dataclass
class RowView:
    task: str
    group: str
    cells: list[CellView]


@dataclass
class TableView:
    key: str
    title: str
    backbone: str
    paper_backbone: str | None
    columns: list[str]
    labels: list[str]
    rows: list[RowView]
    mean_row: list[CellView]
    notes: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        return self.paper_backbone == {"table4": "roberta-base"}.get(self.key, "bert-base-uncased") and \
            self.backbone == self.paper_backbone


@dataclass
class Table2Row:
    task: str
    ours: list[str | None]  # up / down / same or None
    deltas: list[float | None]
    paper: list[str | None]
    p_values: list[float | None]


@dataclass
class Table2View:
    backbone: str
    columns: list[str]
    keys: list[str]
    rows: list[Table2Row]
    improved_ours: list[str]
    improved_paper: list[str]
    agreement: list[str]  # per column "k/n"
    rank_correlation: str = ""


@dataclass
class Finding:
    claim: str
    paper: str
    ours: str
    verdict: str  # holds / does not hold / within seed noise / not testable


def task_order(reg, tasks: list[str]) -> list[str]:
    def key(t):
        spec = reg.tasks.get(t)
        order = spec.paper.order if spec and spec.paper.order else 999
        return (order, t)

    return sorted(tasks, key=key)


def group_of(reg, task: str) -> str:
    spec = reg.tasks.get(task)
    return (spec.paper.group or "") if spec else ""


def build_table(key: str, col: Collected, backbone: str, paper: dict, reg) -> TableView | None:
    cols = [c for c in layout(key) if c[0] in col.columns(backbone)]
    pairs = methods.significance_pairs()
    if not cols or (key == "table3" and len(cols) < 2):
        return None
    pb = (reg.backbones[backbone].paper_backbone if backbone in reg.backbones else None)
    ptable = paper.get(key, {}) if pb == paper.get(key, {}).get("backbone") else {}
    tasks = task_order(reg, [t for t in col.tasks(backbone)
                             if any(col.cells.get((backbone, t, c[0]), Cell()).expected for c in cols)
                             or t in col.no_data])
    rows = []
    for t in tasks:
        views = []
        for label, pkey, _ in cols:
            c = col.cells.get((backbone, t, label), Cell())
            pv = ptable.get("rows", {}).get(t, {}).get(pkey, {})
            v = CellView(c.mean, c.std, c.n, c.reason(col.no_data.get(t)), pv.get("mean"), pv.get("std"))
            base = pairs.get(label)
            if base and c.values and (backbone, t, base) in col.cells:
                v.p_value = welch_p(c.values, col.cells[(backbone, t, base)].values)
                if v.p_value is not None and v.p_value < SIGNIFICANCE:
                    v.marker = "†"
            views.append(v)
        rows.append(RowView(t, group_of(reg, t), views))
    mean_row = []
    for j in range(len(cols)):
        have = [r.cells[j] for r in rows if r.cells[j].mean is not None]
        m = sum(c.mean for c in have) / len(have) if have else None
        pvals = [r.cells[j].paper for r in rows if r.cells[j].mean is not None and r.cells[j].paper is not None]
        pm = sum(pvals) / len(pvals) if pvals and len(pvals) == len(have) else None
        reason = "" if len(have) == len(rows) else (f"over {len(have)}/{len(rows)} tasks" if have else "no data")
        mean_row.append(CellView(m, None, len(have), reason, pm))
    notes = []
    if pb != backbone:
        notes.append(f"Backbone {backbone} stands in for the paper's {pb or 'backbone'}: the paper's numbers are "
                     "shown for orientation, not as a target; differences are expected.")
    if ptable:
        notes.append("Paper mean: the mean of the published values over the same tasks as ours.")
    notes.append("Cells: mean ± sample std (ddof = 1) of the best-epoch dev accuracy over seeds; "
                 "n = number of seeds. † = differs from its baseline (F. w/ ST-A vs ST-A, F. w/ MT-A vs MT-A) "
                 f"beyond seed noise (Welch's t-test, p < {SIGNIFICANCE}).")
    return TableView(key, TITLES[key], backbone, pb, [c[2] for c in cols], [c[0] for c in cols], rows, mean_row,
                     notes)


def build_table2(col: Collected, backbone: str, paper: dict, reg) -> Table2View | None:
    comps = [c for c in comparisons() if {c[1], c[2]} <= col.columns(backbone)]
    if not comps:
        return None
    p2 = paper.get("table2", {})
    tasks = task_order(reg, [t for t in col.tasks(backbone) if any(
        col.cells.get((backbone, t, c[1]), Cell()).values and col.cells.get((backbone, t, c[2]), Cell()).values
        for c in comps)])
    rows = []
    for t in tasks:
        ours, deltas, pap, ps = [], [], [], []
        for key, f, b, _ in comps:
            cf, cb = col.cells.get((backbone, t, f), Cell()), col.cells.get((backbone, t, b), Cell())
            if cf.values and cb.values:
                d = cf.mean - cb.mean
                ours.append(arrow(d))
                deltas.append(d)
                ps.append(welch_p(cf.values, cb.values))
            else:
                ours.append(None)
                deltas.append(None)
                ps.append(None)
            pap.append(p2.get("rows", {}).get(t, {}).get(key))
        rows.append(Table2Row(t, ours, deltas, pap, ps))
    improved, improved_p, agree = [], [], []
    for j, (key, *_rest) in enumerate(comps):
        have = [r for r in rows if r.ours[j] is not None]
        improved.append(f"{sum(r.ours[j] == 'up' for r in have)}/{len(have)}")
        improved_p.append(p2.get("improved", {}).get(key, "—"))
        both = [r for r in have if r.paper[j] is not None]
        agree.append(f"{sum(r.ours[j] == r.paper[j] for r in both)}/{len(both)}")
    view = Table2View(backbone, [c[3] for c in comps], [c[0] for c in comps], rows, improved, improved_p, agree)
    view.rank_correlation = rank_correlation(col, backbone, paper, reg)
    return view


def rank_correlation(col: Collected, backbone: str, paper: dict, reg) -> str:
    """Spearman correlation of per-task Fusion w/ ST-A gains over ST-A, ours vs the paper's Table 1."""
    t1 = paper.get("table1", {}).get("rows", {})
    ours, theirs = [], []
    for t in col.tasks(backbone):
        f, s = col.cells.get((backbone, t, "fusion_st_a_rf16")), col.cells.get((backbone, t, "st_a_rf16"))
        if f and s and f.values and s.values and t in t1 and "fusion_st_a" in t1[t] and "st_a" in t1[t]:
            ours.append(f.mean - s.mean)
            theirs.append(t1[t]["fusion_st_a"]["mean"] - t1[t]["st_a"]["mean"])
    if len(ours) < 3:
        return f"Rank correlation of per-task Fusion gains: not computed ({len(ours)} task(s) with both; needs 3)."
    rho = stats.spearmanr(ours, theirs).statistic
    return (f"Spearman rank correlation of per-task gains of F. w/ ST-A over ST-A, ours vs the paper: "
            f"rho = {rho:+.2f} over {len(ours)} tasks.")


def findings(col: Collected, backbone: str, paper: dict, reg) -> list[Finding]:
    out = []
    t1 = paper.get("table1", {}).get("rows", {})
    cols = col.columns(backbone)

    def gains(f, b, tasks):
        res = []
        for t in tasks:
            cf, cb = col.cells.get((backbone, t, f)), col.cells.get((backbone, t, b))
            if cf and cb and cf.values and cb.values:
                res.append((t, cf.mean - cb.mean, welch_p(cf.values, cb.values)))
        return res

    def describe(gs):
        return "; ".join(f"{t} {d:+.2f}" + (f" (p={p:.2f})" if p is not None else "") for t, d, p in gs)

    def verdict(gs):
        mean = sum(d for _, d, _ in gs) / len(gs)
        sig = [g for g in gs if g[2] is not None and g[2] < SIGNIFICANCE]
        if mean > 0.3 and sum(d > 0.3 for _, d, _ in gs) > len(gs) / 2:
            return "holds" if sig else "holds in direction, within seed noise"
        if mean < -0.3:
            return "does not hold (Fusion is worse)" + ("" if sig else ", within seed noise")
        return "does not hold (no clear difference)"

    if {"fusion_st_a_rf16", "st_a_rf16"} <= cols:
        small = [t for t in col.tasks(backbone) if t in reg.tasks and (reg.tasks[t].paper.train_size or 1e9) < 5000]
        gs = gains("fusion_st_a_rf16", "st_a_rf16", small)
        if gs:
            pg = [(t, t1[t]["fusion_st_a"]["mean"] - t1[t]["st_a"]["mean"]) for t, _, _ in gs if t in t1]
            out.append(Finding(
                "Fusion w/ ST-A improves over ST-A on tasks with < 5k training examples",
                "; ".join(f"{t} {d:+.2f}" for t, d in pg), describe(gs), verdict(gs)))
        gs_all = gains("fusion_st_a_rf16", "st_a_rf16", col.tasks(backbone))
        if gs_all:
            mean = sum(d for _, d, _ in gs_all) / len(gs_all)
            out.append(Finding("Fusion w/ ST-A improves over ST-A on average",
                               "Mean 77.33 vs 76.05 (+1.28) over 16 tasks",
                               f"mean gain {mean:+.2f} over {len(gs_all)} tasks",
                               "holds" if mean > 0.3 else "does not hold"))
    if {"fusion_mt_a", "mt_a_rf16"} <= cols:
        gs = gains("fusion_mt_a", "mt_a_rf16", col.tasks(backbone))
        if gs:
            up = sum(d > 0.3 for _, d, _ in gs)
            out.append(Finding("Fusion w/ MT-A improves over MT-A on most tasks", "14/16 improved",
                               f"{up}/{len(gs)} improved; {describe(gs)}",
                               "holds" if up > len(gs) / 2 else "does not hold"))
    if {"st_a_rf16", "full"} <= cols:
        gs = gains("st_a_rf16", "full", col.tasks(backbone))
        if gs:
            mean = sum(d for _, d, _ in gs) / len(gs)
            out.append(Finding("ST-A is on par with full fine-tuning on average", "Mean 76.05 vs 75.51 (+0.54)",
                               f"mean difference {mean:+.2f} over {len(gs)} tasks",
                               "holds" if mean > -1.0 else "does not hold"))
    return out
