"""The report's data model: Tables 1/3/4 (mean ± std over seeds, paper value, difference),
Table 2 arrows, the paper's findings checked against ours, and seed-noise markers.

Filled once from ``aggregate.Collected`` and rendered by every template (Markdown, HTML, LaTeX).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from scipy import stats

from benchmark import methods
from benchmark.report import published
from benchmark.report.aggregate import Cell, Collected
from benchmark.report.baseline import Majority
from benchmark.report.published import ARROW_THRESHOLD, arrow  # the thresholds live with the paper's numbers
from benchmark.report.stats import (  # noqa: F401 - p_text, welch_p: the reporter's names for them
    EQUIVALENCE_MARGIN,
    SIGNIFICANCE,
    Family,
    holm,
    p_text,
    p_with_holm,
    tost,
    welch_p,
)


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
# The paper's findings are checked only where a verdict can mean something: with fewer seeds than this
# on either side, seed noise cannot be told from an effect, and the verdict is "not enough seeds".
MIN_SEEDS = 3
# The paper reports Fusion's largest gains over ST-A on its smallest targets; its four targets under
# 5,000 training examples (Table 1: MRPC 3,668, SICK 4,439, RTE 2,490, CB 250) are the ones it singles
# out. The cut-off is our reading of that finding; the paper prints no number for it.
SMALL_TASK_TRAIN_SIZE = 5000


FINDINGS_NOTE = (
    f"Verdicts need ≥ {MIN_SEEDS} seeds per side. Every p-value of this table is one test of a family: Holm's "
    f"adjustment over all of them (per backbone) is printed beside the raw p, and \"beyond seed noise\" means a "
    f"Holm-adjusted p < {SIGNIFICANCE} (marked †). A per-task claim \"holds in direction\" when the mean gain "
    f"exceeds {ARROW_THRESHOLD} and most tasks gain more than {ARROW_THRESHOLD}; the tasks whose gain is beyond "
    f"seed noise (Welch's t-test over seeds) are named. An \"on average\" claim holds when the mean gain over the "
    f"tasks exceeds {ARROW_THRESHOLD} and is beyond seed noise: Welch's test between the per-seed means over "
    f"those tasks; \"within seed noise\" otherwise. \"On par\" is an equivalence claim: two one-sided Welch tests "
    f"(TOST) at a margin of ±{EQUIVALENCE_MARGIN:.1f} point on the per-seed means, with their 90% interval; it "
    f"holds when the interval lies inside the margin (Holm-adjusted p < {SIGNIFICANCE}), does not hold when the "
    f"interval lies outside it, and is \"not shown\" otherwise (no difference detected is not parity).")


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


@dataclass
class CellView:
    mean: float | None
    std: float | None
    n: int
    reason: str = ""
    paper: float | None = None
    paper_std: float | None = None
    marker: str = ""  # "†": differs from its baseline beyond seed noise (Holm-adjusted Welch p < 0.05)
    p_value: float | None = None
    p_adjusted: float | None = None  # Holm over the backbone's pairwise tests (``pairwise_tests``)
    note: str = ""  # a mark after the cell, e.g. "‡" (within one dev row of the majority baseline)

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper

    @property
    def text(self) -> str:
        if self.mean is None:
            return f"— ({self.reason})" if self.reason else "—"
        s = fmt(self.mean) + (f" ± {fmt(self.std)}" if self.std is not None else "")
        return s + self.marker + self.note

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
    majority: Majority | None = None  # the constant classifier's dev accuracy (``baseline``)

    @property
    def majority_text(self) -> str:
        return fmt(self.majority.accuracy) if self.majority and self.majority.accuracy is not None else "—"


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
    legend: str = ""  # what a cell holds and what † means (also one of the notes)
    majority_note: str = ""  # the majority baseline: what it is, ‡, tasks without one (also one of the notes)
    table_backbone: str | None = None  # the backbone the paper ran this table on (its YAML's ``backbone``)

    @property
    def has_majority(self) -> bool:
        return any(r.majority and r.majority.accuracy is not None for r in self.rows)

    @property
    def comparable(self) -> bool:
        return self.paper_backbone == self.table_backbone and self.backbone == self.paper_backbone

    @property
    def has_paper(self) -> bool:
        """Any published value to show (a backbone without a paper counterpart has none: no empty columns)."""
        return any(c.paper is not None for r in self.rows for c in r.cells)

    @property
    def heading_note(self) -> str:
        if self.comparable:
            return ""
        return f"(stands in for {self.paper_backbone})" if self.paper_backbone else "(no paper counterpart)"


@dataclass
class Table2Row:
    task: str
    ours: list[str | None]  # up / down / same or None
    deltas: list[float | None]
    paper: list[str | None]  # the arrow printed in the paper's Table 2 (None: not a paper task/backbone)
    p_values: list[float | None]
    derived: list[str | None] = field(default_factory=list)  # the arrow the paper's Table 1 numbers give
    p_adjusted: list[float | None] = field(default_factory=list)  # Holm over the backbone's pairwise tests

    def p_shown(self, j: int) -> str:
        """"p = 0.004, Holm 0.071" (empty without a test)."""
        p = self.p_values[j]
        return "" if p is None else p_with_holm(p, self.p_adjusted[j] if self.p_adjusted else None)

    def paper_differs(self, j: int) -> bool:
        return self.paper[j] is not None and self.derived[j] is not None and self.paper[j] != self.derived[j]


@dataclass
class Table2View:
    backbone: str
    columns: list[str]
    keys: list[str]
    rows: list[Table2Row]
    improved_ours: list[str]  # "k/n" over our tasks
    improved_paper: list[str]  # "k/n" of the paper's printed arrows over the same tasks ("—": none)
    agreement: list[str]  # per column "k/n"
    rank_correlation: str = ""
    notes: list[str] = field(default_factory=list)
    family_size: int = 0  # Welch tests in the backbone's pairwise family (Holm's m)


@dataclass
class Finding:
    claim: str
    paper: str
    ours: str
    verdict: str  # holds / does not hold / within seed noise / not enough seeds


def is_paper_task(reg, task: str) -> bool:
    """A task the paper ran (its spec says where it sits in Table 1)."""
    spec = reg.tasks.get(task)
    return bool(spec and spec.paper.order)


def compares_with_table1(reg, backbone: str, paper: dict) -> bool:
    """The backbone is the paper's Table 1/2 backbone or declares that it stands in for it."""
    pb = reg.backbones[backbone].paper_backbone if backbone in reg.backbones else None
    return pb is not None and pb == published.table1_backbone(paper)


def task_order(reg, tasks: list[str]) -> list[str]:
    def key(t):
        spec = reg.tasks.get(t)
        order = spec.paper.order if spec and spec.paper.order else 999
        return (order, t)

    return sorted(tasks, key=key)


def group_of(reg, task: str) -> str:
    spec = reg.tasks.get(task)
    return (spec.paper.group or "") if spec else ""


def variants(col: Collected, backbone: str) -> dict[str, str]:
    """Columns of method specs that are not a paper column (another spec of a kind, e.g. ST-A with shuffled
    batches) -> the paper column of their kind, which they are tested against (†)."""
    known = {c.label for t in methods.TABLES for c in methods.layout(t)}
    out = {}
    for label in sorted(col.columns(backbone) - known):
        kind = methods.KINDS.get(col.kind_of(label) or "")
        base = kind.columns.get("table1") if kind else None
        out[label] = base[0].label if base else ""
    return out


def variant_heading(label: str) -> str:
    """A variant column's heading: ``fusion_st_a_rf16@s42`` -> "F. w/ ST-A (adapters s42)"."""
    base, _, adapters = label.partition("@")
    if not adapters:
        return label
    heading = next((c.heading for c in methods.layout("table1") if c.label == base), base)
    return f"{heading} ({'own-seed adapters' if adapters == 'matched' else f'adapters {adapters}'})"


def adapter_seed_sensitivity(col: Collected, backbone: str) -> list[str]:
    """Where a fusion column also exists over other adapters (a ``label@...`` variant): per task, how the
    seed std and the Welch p against the fusion column's baseline (its † pair) move between the two."""
    pairs, out = methods.significance_pairs(), []
    for label in sorted(col.columns(backbone)):
        base, _, adapters = label.partition("@")
        if not adapters or base not in col.columns(backbone) or base not in pairs:
            continue
        ref = pairs[base]
        parts = []
        for t in sorted({t for b, t, c in col.cells if b == backbone and c == label}):
            own, other, baseline = (col.cells.get((backbone, t, c)) for c in (base, label, ref))
            if not (own and other and own.values and other.values):
                continue
            p_own = welch_p(own.values, baseline.values) if baseline and baseline.values else None
            p_other = welch_p(other.values, baseline.values) if baseline and baseline.values else None
            sd = lambda c: fmt(c.std) if c.std is not None else "—"  # noqa: E731
            pt = lambda p: p_text(p) if p is not None else "p —"  # noqa: E731
            parts.append(f"{t}: mean {fmt(own.mean)} vs {fmt(other.mean)}, std {sd(own)} vs {sd(other)}, "
                         f"vs {ref} {pt(p_own)} vs {pt(p_other)}")
        if parts:
            out.append(f"Adapter-seed sensitivity, {variant_heading(base + '@x').split(' (')[0]}: the main "
                       f"column vs {variant_heading(label)} (its seeds share one set of adapters, so its std "
                       "leaves out adapter noise and its p-values are optimistic): " + "; ".join(parts) + ".")
    return out


def pairwise_tests(col: Collected, backbone: str) -> dict[tuple[str, str, str], tuple[float, float]]:
    """One family per backbone: every pairwise Welch test the tables print (each Table 2 comparison on each
    task, and each Table 1 variant against its kind's column) -> (task, ours, baseline): (raw p, Holm p)."""
    have = col.columns(backbone)
    pairs = [(c[1], c[2]) for c in comparisons() if {c[1], c[2]} <= have]
    pairs += [(label, base) for label, base in variants(col, backbone).items() if base in have]
    pairs += [(label, base) for label, base in methods.significance_pairs().items() if {label, base} <= have]
    keys, raw = [], []
    for t in col.tasks(backbone):
        for f, b in dict.fromkeys(pairs):
            cf, cb = col.cells.get((backbone, t, f)), col.cells.get((backbone, t, b))
            p = welch_p(cf.values, cb.values) if cf and cb and cf.values and cb.values else None
            if p is not None:
                keys.append((t, f, b))
                raw.append(p)
    return {k: (p, a) for k, p, a in zip(keys, raw, holm(raw), strict=True)}


MAJORITY_MARK = "‡"


def shared_adapters(col: Collected, backbone: str, labels: list[tuple[str, str]]) -> str:
    """A legend sentence for fusion columns whose seeds all read one set of adapters: the finished grid runs
    of a (task, column) with ≥ 2 seeds whose ``deps`` lists are identical (read from result.json)."""
    parts = []
    by_id = {r.run_id: r for r in col.results}
    for label, heading in labels:
        deps: dict[str, list[tuple]] = {}
        for (b, t, c), cell in col.cells.items():  # the runs that fill this column (a run may fill two)
            if b == backbone and c == label:
                ds = [tuple(by_id[i].deps) for i in cell.run_ids if i in by_id]
                if any(ds):
                    deps[t] = ds
        shared = [t for t, ds in sorted(deps.items()) if len(ds) > 1 and len(set(ds)) == 1]
        separate = [t for t, ds in sorted(deps.items()) if len(ds) > 1 and len(set(ds)) > 1]
        if shared:
            parts.append(f"{heading}: the seeds of {', '.join(shared)} fuse one shared set of adapters (identical "
                         "dependencies in every seed's result.json), so its std is the noise of the fusion layer "
                         "alone, not of adapter training"
                         + (f"; {', '.join(separate)}: each seed fuses its own adapters" if separate else ""))
    return ("Shared adapters: " + ". ".join(parts) + ".") if parts else ""


def majority_note(rows: list[RowView]) -> str:
    """The majority-baseline sentence under a table: what it is, which cells sit on it, which tasks lack it."""
    have = [r for r in rows if r.majority and r.majority.accuracy is not None]
    lacking = sorted({r.majority.why for r in rows if r.majority and r.majority.accuracy is None})
    missing = [r.task for r in rows if r.majority and r.majority.accuracy is None]
    if not have and not missing:
        return ""
    text = ("Majority baseline (column \"majority\"): the dev accuracy of a constant classifier predicting train's "
            "most frequent class (uniform chance, 100/K, for a K-way multiple-choice task), computed from the data "
            f"at report time; {MAJORITY_MARK} = a mean within one dev row of it or below it (no better than that "
            "constant).")
    if have:
        text += " " + "; ".join(f"{r.task} {fmt(r.majority.accuracy)} ({r.majority.how}, {r.majority.dev_rows} dev rows)"
                                for r in have) + "."
    if missing:
        text += f" Not computed for {', '.join(missing)}: {'; '.join(lacking)}."
    return text


def build_table(key: str, col: Collected, backbone: str, paper: dict, reg,
                majority: dict[str, Majority] | None = None) -> TableView | None:
    """``majority``: task -> its majority baseline (``baseline.majority_baselines``); None: no such column."""
    cols = [c for c in layout(key) if c[0] in col.columns(backbone)]
    pairs = methods.significance_pairs()
    extra = variants(col, backbone) if key == "table1" else {}  # other specs of a kind: never silently dropped
    if extra:
        cols += [(label, label, variant_heading(label)) for label in extra]
        pairs.update({label: base for label, base in extra.items() if base})
    if not cols or (key == "table3" and len(cols) < 2):
        return None
    pb = (reg.backbones[backbone].paper_backbone if backbone in reg.backbones else None)
    ptable = paper.get(key, {}) if pb == paper.get(key, {}).get("backbone") else {}
    tasks = task_order(reg, [t for t in col.tasks(backbone)
                             if any(col.cells.get((backbone, t, c[0]), Cell()).expected for c in cols)
                             or t in col.no_data])
    tests = pairwise_tests(col, backbone)
    rows = []
    for t in tasks:
        views = []
        for label, pkey, _ in cols:
            c = col.cells.get((backbone, t, label), Cell())
            pv = ptable.get("rows", {}).get(t, {}).get(pkey, {}) if is_paper_task(reg, t) else {}
            v = CellView(c.mean, c.std, c.n, c.reason(col.no_data.get(t)), pv.get("mean"), pv.get("std"))
            base = pairs.get(label)
            if base and (t, label, base) in tests:
                v.p_value, v.p_adjusted = tests[(t, label, base)]
                if v.p_adjusted < SIGNIFICANCE:
                    v.marker = "†"
            m = (majority or {}).get(t)
            if m is not None and m.near(v.mean):
                v.note = MAJORITY_MARK
            views.append(v)
        rows.append(RowView(t, group_of(reg, t), views, (majority or {}).get(t)))
    mean_row = []
    for j in range(len(cols)):
        have = [r.cells[j] for r in rows if r.cells[j].mean is not None]
        m = sum(c.mean for c in have) / len(have) if have else None
        pvals = [r.cells[j].paper for r in rows if r.cells[j].mean is not None and r.cells[j].paper is not None]
        pm = sum(pvals) / len(pvals) if pvals and len(pvals) == len(have) else None
        reason = "" if len(have) == len(rows) else (f"over {len(have)}/{len(rows)} tasks" if have else "no data")
        mean_row.append(CellView(m, None, len(have), reason, pm))
    notes = []
    if pb is None:
        notes.append(f"Backbone {backbone} has no counterpart in the paper, so no paper numbers are shown.")
    elif pb != backbone:
        notes.append(f"Backbone {backbone} stands in for the paper's {pb}: the paper's numbers are "
                     "shown for orientation, not as a target; differences are expected.")
    if ptable:
        notes.append("Paper mean: the mean of the published values over the same tasks as ours.")
    protocols = {r.selection for r in col.results if r.backbone == backbone}
    kept = {"dev": "the best-epoch dev accuracy (epoch chosen on dev, the paper's protocol: optimistic)",
            "heldout": "the dev accuracy of the epoch chosen on a held-out slice of train (dev never selects)"}
    legend = ("Cells: mean ± sample std (ddof = 1) over seeds of " + "; or ".join(kept[p] for p in sorted(protocols))
              + "; n = number of seeds. † = differs from its baseline (F. w/ ST-A vs ST-A, F. w/ MT-A vs MT-A"
              + (", a variant vs its kind's column" if extra else "")
              + f") beyond seed noise: Welch's t-test over seeds, Holm-adjusted p < {SIGNIFICANCE} over "
              + (f"the {len(tests)} pairwise tests of this backbone (Table 2's, one family)." if tests else
                 "this backbone's pairwise tests (none here: no pair has 2 seeds a side)."))
    shared = shared_adapters(col, backbone, [(c[0], c[2]) for c in cols])
    if shared:
        legend += " " + shared
    notes.append(legend)
    floor = majority_note(rows)
    if floor:
        notes.append(floor)
    if "dev" in protocols:  # how much picking the epoch on dev itself adds, per column
        gaps = []
        for (label, _, heading) in cols:
            cells = [col.cells.get((backbone, r.task, label)) for r in rows]
            d = [b - la for c in cells if c and len(c.last) == len(c.values) for b, la in zip(c.values, c.last)]
            if d:
                gaps.append(f"{heading} {sum(d) / len(d):+.2f}")
        if gaps:
            notes.append("Selecting the epoch on dev is optimistic: best-epoch minus last-epoch dev accuracy, mean "
                         "over tasks and seeds: " + ", ".join(gaps) + " points.")
    if key == "table1":
        notes += adapter_seed_sensitivity(col, backbone)
    for label, base in extra.items():
        j = [c[0] for c in cols].index(label)
        ps = ", ".join(f"{r.task} {p_with_holm(r.cells[j].p_value, r.cells[j].p_adjusted)}" for r in rows
                       if r.cells[j].p_value is not None)
        what = (f"{col.kind_of(label)} over other adapters than the main column ({variant_heading(label)})"
                if "@" in label else f"another spec of method kind {col.kind_of(label)}")
        notes.append(f"{label}: {what}" + (f", compared with {base}: Welch {ps}." if ps else "."))
    return TableView(key, TITLES[key], backbone, pb, [c[2] for c in cols], [c[0] for c in cols], rows, mean_row,
                     notes, legend, floor, table_backbone=paper.get(key, {}).get("backbone"))


def build_table2(col: Collected, backbone: str, paper: dict, reg) -> Table2View | None:
    comps = [c for c in comparisons() if {c[1], c[2]} <= col.columns(backbone)]
    if not comps:
        return None
    with_paper = compares_with_table1(reg, backbone, paper)
    tasks = task_order(reg, [t for t in col.tasks(backbone) if any(
        col.cells.get((backbone, t, c[1]), Cell()).values and col.cells.get((backbone, t, c[2]), Cell()).values
        for c in comps)])
    tests = pairwise_tests(col, backbone)
    rows = []
    for t in tasks:
        ours, deltas, pap, ps, adj, der = [], [], [], [], [], []
        for key, f, b, _ in comps:
            cf, cb = col.cells.get((backbone, t, f), Cell()), col.cells.get((backbone, t, b), Cell())
            p, a = tests.get((t, f, b), (None, None))
            ps.append(p)
            adj.append(a)
            if cf.values and cb.values:
                d = cf.mean - cb.mean
                ours.append(arrow(d))
                deltas.append(d)
            else:
                ours.append(None)
                deltas.append(None)
            shown = with_paper and is_paper_task(reg, t)
            pap.append(published.paper_arrow(paper, t, key) if shown else None)
            # "(Table 1: ...)" marks a printed arrow that its Table 1 contradicts; a derived one cannot
            der.append(published.derived_arrow(paper, t, key) if shown and published.is_printed(paper, key) else None)
        rows.append(Table2Row(t, ours, deltas, pap, ps, der, adj))
    improved, improved_p, agree = [], [], []
    for j, _comp in enumerate(comps):
        have = [r for r in rows if r.ours[j] is not None]
        improved.append(f"{sum(r.ours[j] == 'up' for r in have)}/{len(have)}")
        both = [r for r in have if r.paper[j] is not None]
        # the paper's count over the same tasks as ours, so both sides of "ours / paper" share a denominator
        improved_p.append(f"{sum(r.paper[j] == 'up' for r in both)}/{len(both)}" if both else "—")
        agree.append(f"{sum(r.ours[j] == r.paper[j] for r in both)}/{len(both)}" if both else "—")
    view = Table2View(backbone, [c[3] for c in comps], [c[0] for c in comps], rows, improved, improved_p, agree)
    view.family_size = len(tests)
    view.rank_correlation = rank_correlation(col, backbone, paper, reg)
    view.notes = table2_notes(view, paper, with_paper)
    return view


def table2_notes(view: Table2View, paper: dict, with_paper: bool) -> list[str]:
    if not with_paper:
        return [f"No paper arrows: {view.backbone} has no counterpart in the paper's Table 2 "
                f"({published.table1_backbone(paper)})."]
    notes = ["Paper arrows are those printed in its Table 2; the paper's count is taken over the same tasks "
             "as ours. \"(Table 1: ...)\" = the arrow the paper's own Table 1 numbers give by the same "
             "thresholds, where it differs from the printed one."]
    for key, heading in zip(view.keys, view.columns, strict=True):
        if not published.is_printed(paper, key):
            notes.append(f"{heading}: not a column of the paper's Table 2 (the paper compares with Full in its "
                         f"Figure 3); the paper arrows here are derived from its Table 1 numbers, "
                         f"{published.derived_improved(paper, key)} improved over its tasks.")
            continue
        odd = published.disagreements(paper, key)
        n = len(paper.get("table2", {}).get("rows", {}))
        totals = (f"{heading}: the paper's totals over its {n} tasks are {published.printed_improved(paper, key)} "
                  f"improved as printed, {published.derived_improved(paper, key)} derived from its Table 1")
        if odd:
            totals += " (" + "; ".join(f"{t}: printed {ARROWS[pa]}, Table 1 gives {d:+.2f} ({ARROWS[da]})"
                                       for t, pa, da, d in odd) + ")"
        notes.append(totals + ".")
    return notes


def rank_correlation(col: Collected, backbone: str, paper: dict, reg) -> str:
    """Spearman correlation of per-task Fusion w/ ST-A gains over ST-A, ours vs the paper's Table 1."""
    if not compares_with_table1(reg, backbone, paper):
        return f"Rank correlation with the paper: not computed ({backbone} has no counterpart in the paper)."
    comp = next((c for c in methods.comparisons() if c.rank_correlation), None)
    if comp is None:
        return ""
    ours, theirs = [], []
    for t in col.tasks(backbone):
        f, s = col.cells.get((backbone, t, comp.ours)), col.cells.get((backbone, t, comp.baseline))
        pg = published.gain(paper, t, published.paper_key(comp.ours), published.paper_key(comp.baseline)) \
            if is_paper_task(reg, t) else None
        if f and s and f.values and s.values and pg is not None:
            ours.append(f.mean - s.mean)
            theirs.append(pg)
    if len(ours) < 3:
        return f"Rank correlation of per-task Fusion gains: not computed ({len(ours)} task(s) with both; needs 3)."
    rho = stats.spearmanr(ours, theirs).statistic
    return (f"Spearman rank correlation of per-task gains of F. w/ ST-A over ST-A, ours vs the paper: "
            f"rho = {rho:+.2f} over {len(ours)} tasks.")


@dataclass
class Gain:
    task: str
    delta: float  # fusion mean - baseline mean, accuracy points
    p: float | None  # Welch p over seeds
    seeds: tuple[int, int]  # seeds on the fusion side, on the baseline side
    p_adjusted: float | None = None  # Holm over the findings table's family


def findings(col: Collected, backbone: str, paper: dict, reg) -> list[Finding]:
    """The paper's findings checked on our numbers: only for paper tasks on a backbone that is (or stands
    in for) the paper's Table 1 backbone, and a verdict only with ``MIN_SEEDS`` seeds per side. Every
    p-value the table prints is one family (Holm): a first pass collects them, the second one prints."""
    if not compares_with_table1(reg, backbone, paper):
        return []
    family = Family(f"findings {backbone}")
    _findings(col, backbone, paper, reg, family)
    return _findings(col, backbone, paper, reg, family.close())


def _findings(col: Collected, backbone: str, paper: dict, reg, family: Family) -> list[Finding]:
    out = []
    cols = col.columns(backbone)
    tasks = [t for t in col.tasks(backbone) if is_paper_task(reg, t)]

    def gains(f, b, tasks, printed=True):
        """Per-task gains; ``printed``: their p-values are shown, so they join the family."""
        res = []
        for t in tasks:
            cf, cb = col.cells.get((backbone, t, f)), col.cells.get((backbone, t, b))
            if cf and cb and cf.values and cb.values:
                g = Gain(t, cf.mean - cb.mean, welch_p(cf.values, cb.values), (cf.n, cb.n))
                if printed:
                    g.p_adjusted = family.add(g.p)
                res.append(g)
        return res

    def describe(gs):
        return "; ".join(f"{g.task} {g.delta:+.2f}" + (f" ({p_with_holm(g.p, g.p_adjusted)})" if g.p is not None
                                                        else "") for g in gs)

    def too_few(gs) -> str:
        few = [g for g in gs if min(g.seeds) < MIN_SEEDS]
        if not few:
            return ""
        seeds = sorted({g.seeds for g in few})
        return (f"not enough seeds ({', '.join(f'{a} vs {b}' for a, b in seeds)}; a verdict needs "
                f"≥ {MIN_SEEDS} per side)")

    def beyond_noise(gs, sign: int) -> str:  # which tasks moved that way beyond seed noise (Holm)
        sig = [g.task for g in gs if g.p_adjusted is not None and g.p_adjusted < SIGNIFICANCE
               and sign * g.delta > ARROW_THRESHOLD]
        return f"{len(sig)} of {len(gs)} tasks beyond seed noise: {', '.join(sig)}" if sig else "within seed noise"

    def holds_in_direction(gs) -> str:  # most tasks moved the claimed way; how many beyond noise
        up = sum(g.delta > ARROW_THRESHOLD for g in gs)
        return f"holds in direction: {up} of {len(gs)} tasks gain > {ARROW_THRESHOLD} ({beyond_noise(gs, +1)})"

    def verdict(gs):
        if few := too_few(gs):
            return few
        mean = sum(g.delta for g in gs) / len(gs)
        if mean > ARROW_THRESHOLD and sum(g.delta > ARROW_THRESHOLD for g in gs) > len(gs) / 2:
            return holds_in_direction(gs)
        if mean < -ARROW_THRESHOLD:
            return f"does not hold: Fusion is lower on average ({beyond_noise(gs, -1)})"
        return "does not hold (no clear difference)"

    def published_means(fkey, bkey, gs) -> str:
        """The paper's mean over all its tasks, and over the same tasks as ours."""
        pf, pb = published.mean(paper, fkey), published.mean(paper, bkey)
        n = sum(1 for t in published.table1_rows(paper) if published.gain(paper, t, fkey, bkey) is not None)
        text = f"Mean {fmt(pf)} vs {fmt(pb)} ({pf - pb:+.2f}) over {n} tasks" if pf is not None and pb is not None \
            else "no published mean"
        same = [d for d in (published.gain(paper, g.task, fkey, bkey) for g in gs) if d is not None]
        if same:
            text += f"; {sum(same) / len(same):+.2f} over our {len(same)} task(s)"
        return text

    def seed_means(key, ts) -> list[float]:
        """One value per seed: the mean over ``ts`` of that seed's cells (seeds present in every task)."""
        cells = [col.cells[(backbone, t, key)] for t in ts]
        common = set.intersection(*(set(c.seeds) for c in cells))
        return [statistics.fmean(c.values[c.seeds.index(s)] for c in cells) for s in sorted(common)]

    def on_average(claim, ours, base, judge, what="mean gain", per_task=False) -> None:
        """A claim about the mean difference ``ours - base`` over our paper tasks; ``judge(mean, p)``, where
        p is Welch's test between the per-seed means over those tasks (the noise of the average itself),
        Holm-adjusted within the findings table."""
        gs = gains(ours, base, tasks, printed=per_task)
        if not gs:
            return
        mean = sum(g.delta for g in gs) / len(gs)
        ts = [g.task for g in gs]
        p = welch_p(seed_means(ours, ts), seed_means(base, ts))
        adj = family.add(p)
        shown = f" (Welch {p_with_holm(p, adj)} over per-seed means)" if p is not None else ""
        out.append(Finding(claim, published_means(published.paper_key(ours), published.paper_key(base), gs),
                           f"{what} {mean:+.2f} over {len(gs)} tasks{shown}" + (f"; {describe(gs)}" if per_task else ""),
                           too_few(gs) or judge(mean, adj if p is not None else None)))

    def improves(mean, p) -> str:  # "X improves over Y on average": the mean gain, beyond seed noise
        if abs(mean) <= ARROW_THRESHOLD:
            return "does not hold (no clear difference)"
        if p is None:
            return "no verdict (no Welch test: too few seeds common to every task, or no variance)"
        if p >= SIGNIFICANCE:
            return (f"within seed noise (the mean {'gain' if mean > 0 else 'loss'} has Holm-adjusted "
                    f"p ≥ {SIGNIFICANCE})")
        return "holds (beyond seed noise)" if mean > 0 else "does not hold: Fusion is lower on average (beyond seed noise)"

    def on_par(claim, ours, base) -> None:
        """An equivalence claim: TOST at ±EQUIVALENCE_MARGIN on the per-seed means over our paper tasks."""
        gs = gains(ours, base, tasks, printed=False)
        if not gs:
            return
        mean = sum(g.delta for g in gs) / len(gs)
        ts = [g.task for g in gs]
        eq = tost(seed_means(ours, ts), seed_means(base, ts))
        adj = family.add(eq.p if eq else None)
        m = f"±{EQUIVALENCE_MARGIN:.1f}"
        if eq is None:
            shown, judged = "", "no verdict (no TOST: too few seeds common to every task, or no variance)"
        else:
            shown = (f" (TOST at {m} point over per-seed means: 90% interval {eq.low:+.2f} to {eq.high:+.2f}, "
                     f"{p_with_holm(eq.p, adj)})")
            if adj is not None and adj < SIGNIFICANCE:
                judged = f"holds (equivalent within {m} point)"
            elif eq.high < -EQUIVALENCE_MARGIN or eq.low > EQUIVALENCE_MARGIN:
                judged = f"does not hold (the 90% interval lies outside {m} point)"
            else:
                judged = (f"not shown (the 90% interval reaches beyond {m} point: no difference detected, "
                          "which is not parity)")
        out.append(Finding(claim, published_means(published.paper_key(ours), published.paper_key(base), gs),
                           f"mean difference {mean:+.2f} over {len(gs)} tasks{shown}", too_few(gs) or judged))

    for claim in methods.CLAIMS:  # the paper's findings, as the registry declares them
        ours, base = claim.ours, claim.baseline
        if not {ours, base} <= cols:
            continue
        text = claim.text.format(small=SMALL_TASK_TRAIN_SIZE)
        if claim.test == "small_tasks":
            small = [t for t in tasks if (reg.tasks[t].paper.train_size or math.inf) < SMALL_TASK_TRAIN_SIZE]
            gs = gains(ours, base, small)
            if gs:
                pg = [(g.task, published.gain(paper, g.task, published.paper_key(ours), published.paper_key(base)))
                      for g in gs]
                out.append(Finding(text, "; ".join(f"{t} {d:+.2f}" for t, d in pg if d is not None), describe(gs),
                                   verdict(gs)))
        elif claim.test == "on_average":
            on_average(text, ours, base, improves, per_task=claim.per_task)
        elif claim.test == "most_tasks":
            gs = gains(ours, base, tasks)
            key = methods.table2_key(ours, base)
            if gs and key:
                up = sum(g.delta > ARROW_THRESHOLD for g in gs)
                printed = [a for a in (published.printed_arrow(paper, g.task, key) for g in gs) if a is not None]
                paper_text = f"{published.printed_improved(paper, key)} improved (Table 2)"
                if printed:
                    paper_text += f"; {sum(a == 'up' for a in printed)}/{len(printed)} over our tasks"
                out.append(Finding(text, paper_text, f"{up}/{len(gs)} improved; {describe(gs)}",
                                   too_few(gs) or (holds_in_direction(gs) if up > len(gs) / 2 else "does not hold")))
        elif claim.test == "on_par":
            on_par(text, ours, base)
        else:
            raise ValueError(f"claim {claim.text!r}: unknown test {claim.test!r}")
    return out
