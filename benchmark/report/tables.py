"""The report's data model: Tables 1/3/4 (mean ± std over seeds, paper value, difference),
Table 2 arrows, the paper's findings checked against ours, and seed-noise markers.

Filled once from ``aggregate.Collected`` and rendered by every template (Markdown, HTML, LaTeX).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scipy import stats

from benchmark import methods
from benchmark.report import published
from benchmark.report.aggregate import Cell, Collected
from benchmark.report.baseline import Majority
from benchmark.report.inference import (
    ASO_DT,
    ASO_REPLICATES,
    BOOTSTRAP_SEED,
    compare,
    compare_over_tasks,
    equivalence_half_width,
    equivalence_reachable,
    minimal_detectable_effect,
    per_seed_over_tasks,
    seeds_needed,
)
from benchmark.report.paired import (
    CONFIRMATORY,
    EXPLORATORY,
    FAMILIES_NOTE,
    SENSITIVITY,
    Pairing,
    Tested,
    Tests,
    pair,
    test_text,
)
from benchmark.report.published import ARROW_THRESHOLD, arrow  # the thresholds live with the paper's numbers
from benchmark.report.stats import (
    EQUIVALENCE_MARGIN,
    SIGNIFICANCE,
    Equivalence,
    p_value,
    tost,
)

# Columns, Table 2 comparisons and † pairs come from the method kinds (benchmark/methods: ``methods.layout``,
# ``methods.comparisons``, ``methods.significance_pairs``): a new kind's columns appear without an edit here.
TITLES = {"table1": "Table 1: all methods", "table3": "Table 3: ST-A reduction factors",
          "table4": "Table 4: RoBERTa-base"}
# The LaTeX Tables 1/3/4 are set unscaled on landscape pages (no text below 8 pt), at most this many method
# columns to a tabular: a wider table is split into parts (``TableView.parts``).
TEX_PART_COLUMNS = 5
ARROWS = {"up": "↗", "down": "↘", "same": "→"}
# The paper's findings are checked only where a verdict can mean something: with fewer seeds than this
# on either side, seed noise cannot be told from an effect, and the verdict is "not enough seeds".
MIN_SEEDS = 3
# The paper reports Fusion's largest gains over ST-A on its smallest targets; its four targets under
# 5,000 training examples (Table 1: MRPC 3,668, SICK 4,439, RTE 2,490, CB 250) are the ones it singles
# out. The cut-off is our reading of that finding; the paper prints no number for it.
SMALL_TASK_TRAIN_SIZE = 5000


FINDINGS_NOTE = (
    f"Verdicts need ≥ {MIN_SEEDS} paired seeds (A and B run with the same seed). Each comparison: Δ, its 95% CI and "
    f"P(A > B) from the paired bootstrap, then the paired t-test's p and its Holm value within the confirmatory "
    f"family (the tests this table's claims consist of; a per-task test that is not part of a claim keeps its "
    f"exploratory value, named beside it). \"Beyond seed noise\" = Holm-adjusted p < {SIGNIFICANCE} in its family "
    f"(marked †). A per-task claim holds on the tasks whose gain is beyond seed noise; \"in direction only\" = "
    f"most tasks gain more than {ARROW_THRESHOLD} but none beyond seed noise. An \"on average\" claim is tested "
    f"on the mean over tasks (bootstrap stratified by task, equal task weights; paired t over the per-seed means "
    f"over tasks). \"On par\" is an equivalence claim: two one-sided paired t-tests (TOST) at a margin of "
    f"±{EQUIVALENCE_MARGIN:.1f} point (the paper states no tolerance; one accuracy point is our reading of \"on par\") on the per-seed means, with their 90% interval; where the number of seeds "
    f"cannot show equivalence at that margin at all (the 90% interval at a zero difference, given the observed SD of "
    f"the paired differences, is wider than the margin), the TOST is not run, is in no family, and the verdict "
    f"says so. Power: the minimal detectable effect "
    f"(MDE) of the paired design at 80% power, two-sided α = {SIGNIFICANCE} before Holm, given the observed SD of "
    f"the paired differences, and the seeds the paper's own effect over the same tasks would need. " + FAMILIES_NOTE)


ASO_NOTE = (
    "ASO ε_min: Almost Stochastic Order (Dror et al. 2019), a second, seed-level view beside the bootstrap: the "
    "upper bound, at 95% confidence, of how far A's distribution of per-seed dev accuracies violates being "
    "stochastically larger than B's (0: A above B on every quantile; 1: below on every quantile); below 0.5 reads "
    f"\"A is almost stochastically larger\". Computed as deepsig's aso ({ASO_REPLICATES:,} bootstrap draws of each "
    f"side's seeds, seed {BOOTSTRAP_SEED}, dt = {ASO_DT}); not adjusted for multiple comparisons and in no family.")


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
    marker: str = ""  # "†": differs from its baseline beyond seed noise (Holm-adjusted paired p < 0.05)
    test: Tested | None = None  # against its baseline (``backbone_tests``)
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

    def parts(self, most: int = TEX_PART_COLUMNS) -> list[list[int]]:
        """The column indices split into as few parts of at most ``most`` columns as there can be, as even as
        possible, the first parts the larger (9 columns: 5 + 4): the LaTeX table is set unscaled, one
        tabular per part."""
        n = len(self.columns)
        k = max(1, math.ceil(n / most))
        sizes = [n // k + (i < n % k) for i in range(k)]
        starts = [sum(sizes[:i]) for i in range(k)]
        return [list(range(s, s + z)) for s, z in zip(starts, sizes, strict=True) if z]

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
    tests: list[Tested | None]  # the paired comparison behind each cell (``backbone_tests``)
    derived: list[str | None] = field(default_factory=list)  # the arrow the paper's Table 1 numbers give

    def mark(self, j: int) -> str:
        """"†" where the cell's test is beyond seed noise in its family."""
        return "†" if self.tests[j] is not None and self.tests[j].significant else ""

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
    stats: list[StatRow] = field(default_factory=list)  # one per (task, comparison): Δ, CI, P(A > B), tests
    families: str = ""  # "confirmatory 11 tests, exploratory 16 tests"


@dataclass
class StatRow:
    """One comparison of Table 2 as printed in its statistics table (strings, every template alike)."""

    task: str
    comparison: str
    delta: str
    ci: str  # 95% CI, "seed-level" where only per-seed accuracies are used
    p_better: str
    t_p: str  # paired t-test p (the paper's style of test)
    holm: str  # Holm-adjusted within its family, the family named
    aso: str = "—"  # Almost Stochastic Order's eps_min of A over B on the per-seed accuracies (seed level)


@dataclass
class Finding:
    claim: str
    paper: str
    ours: str
    verdict: str  # holds / does not hold / within seed noise / not enough seeds
    power: str = ""  # the MDE at 80% power and the seeds the paper's effect would need


def is_paper_task(reg, task: str) -> bool:
    """A task the paper ran (its spec says where it sits in Table 1)."""
    spec = reg.tasks.get(task)
    return bool(spec and spec.paper.order)


def compares_with_table1(reg, backbone: str, paper: dict) -> bool:
    """The backbone is the paper's Table 1/2 backbone or declares that it stands in for it."""
    pb = reg.backbones[backbone].paper_backbone if backbone in reg.backbones else None
    return pb is not None and pb == published.table1_backbone(paper)


def task_order(reg, tasks: list[str]) -> list[str]:
    """The paper's Table 1 order (a task spec's ``paper.order``), then the other tasks by name."""
    return sorted(tasks, key=lambda t: ((reg.tasks[t].paper.order if t in reg.tasks else None) or 999, t))


def variants(col: Collected, backbone: str) -> dict[str, str]:
    """Columns of method specs that are not a paper column (another spec of a kind, e.g. ST-A with shuffled
    batches) -> the paper column of their kind, which they are tested against (†)."""
    known = {c.label for t in methods.TABLES for c in methods.layout(t)}
    out = {}
    for label in sorted(col.columns(backbone) - known):
        base = methods.reference_column(col.kind_of(label) or "")  # the kind's first Table 1 column
        out[label] = base.label if base else ""
    return out


def variant_heading(label: str) -> str:
    """A variant column's heading: ``fusion_st_a_rf16@s42`` -> "F. w/ ST-A (adapters s42)"."""
    base, _, adapters = label.partition("@")
    if not adapters:
        return label
    heading = next((c.heading for c in methods.layout("table1") if c.label == base), base)
    return f"{heading} ({'own-seed adapters' if adapters == 'matched' else f'adapters {adapters}'})"


def adapter_seed_sensitivity(col: Collected, backbone: str, tests: Tests) -> list[str]:
    """Where a fusion column also exists over other adapters (a ``label@...`` variant): per task, how the
    seed std and the paired comparison with the fusion column's baseline (its † pair) move between the two.
    Sensitivity, not a test: 95% CIs and P(A > B), no p-value."""
    pairs, out = methods.significance_pairs(), []
    for label in sorted(col.columns(backbone)):
        base, _, adapters = label.partition("@")
        if not adapters or base not in col.columns(backbone) or base not in pairs:
            continue
        ref = pairs[base]
        parts = []
        for t in sorted({t for b, t, c in col.cells if b == backbone and c == label}):
            own, other = col.cells.get((backbone, t, base)), col.cells.get((backbone, t, label))
            if not (own and other and own.values and other.values):
                continue
            ci = lambda x: x.text(test=False) if x else "—"  # noqa: E731
            parts.append(f"{t}: mean {fmt(own.mean)} vs {fmt(other.mean)}, std {fmt(own.std)} vs {fmt(other.std)}, "
                         f"vs {ref} {ci(tests.get((t, base, ref)))} vs {ci(tests.get((t, label, ref)))}")
        if parts:
            out.append(f"Adapter-seed sensitivity ({SENSITIVITY}: CIs, no test), "
                       f"{variant_heading(base + '@x').split(' (')[0]}: the main column vs {variant_heading(label)} "
                       "(its seeds share one set of adapters, so its std leaves out adapter noise and its CIs are "
                       "too narrow): " + "; ".join(parts) + ".")
    return out


# The paper's findings, and every other comparison a backbone's tables print, in three steps: compute each test
# once (unadjusted ``Tested`` records by key; a finding's own in its ``ClaimCheck``), adjust (``backbone_tests``:
# Holm within each family, once over all of them), render (``findings``: a row and a verdict per claim, read from
# the adjusted ``Tests``).
PER_TASK_CLAIMS = ("small_tasks", "most_tasks")


@dataclass(frozen=True)
class ClaimCheck:
    """One of the paper's findings this backbone can check: the claim, the paper tasks it covers (both of its
    columns paired on each), the confirmatory tests it consists of and, for an on-par claim, the TOST over the
    per-seed means (whose interval the finding prints)."""
    claim: methods.Claim
    tasks: list[str]
    tests: dict[tuple, Tested]  # key -> the unadjusted test
    eq: Equivalence | None = None


def _pairs(col: Collected, backbone: str, a: str, b: str, tasks: list[str]) -> dict[str, Pairing]:
    """Column ``a`` against ``b`` on each of ``tasks`` where both have a paired seed."""
    return {t: pr for t in tasks if (pr := pair(col, backbone, t, a, b))}


def _per_task_tests(family: str, a: str, b: str, prs: dict[str, Pairing]) -> dict[tuple, Tested]:
    """Key (task, a, b) -> the unadjusted test: the paired t's p, none for a sensitivity comparison (CIs only)."""
    return {(t, a, b): Tested(c, family, None if family == SENSITIVITY else c.paired_t_p, notes=pr.notes)
            for t, pr in prs.items() if (c := compare(pr.design))}


def _claim_check(claim: methods.Claim, prs: dict[str, Pairing]) -> ClaimCheck:
    """A claim's tests: one per task (a per-task claim), or one over the tasks: the mean's paired t ("on average")
    or the TOST of the per-seed means ("on par")."""
    a, b = claim.ours, claim.baseline
    if claim.test in PER_TASK_CLAIMS:
        return ClaimCheck(claim, list(prs), _per_task_tests(CONFIRMATORY, a, b, prs))
    designs = {t: pr.design for t, pr in prs.items()}
    over, notes = compare_over_tasks(designs), tuple(n for pr in prs.values() for n in pr.notes)
    if claim.test == "on_par":  # a TOST that cannot pass at these seeds and this spread is not run: no p, no family
        eq = tost(per_seed_over_tasks(designs))
        runnable = eq is not None and over is not None and over.sd_diff is not None and \
            equivalence_reachable(over.sd_diff, over.n, EQUIVALENCE_MARGIN)
        key, p = ("tost", a, b), (eq.p if runnable else None)
    else:
        eq, key, p = None, ("mean", a, b), (over.paired_t_p if over else None)
    return ClaimCheck(claim, list(prs), {key: Tested(over, CONFIRMATORY, p, notes=notes)} if over else {}, eq)


def claim_checks(col: Collected, backbone: str, paper: dict, reg) -> list[ClaimCheck]:
    """The paper's findings this backbone can check, each with the paper tasks it covers on which both of its
    columns have a paired seed and the tests it consists of (none unless the backbone is, or stands in for, the
    paper's Table 1 backbone)."""
    if not compares_with_table1(reg, backbone, paper):
        return []
    cols, out = col.columns(backbone), []
    tasks = [t for t in col.tasks(backbone) if is_paper_task(reg, t)]
    for claim in methods.CLAIMS:  # the paper's findings, as the registry declares them
        if not {claim.ours, claim.baseline} <= cols:
            continue
        ts = [t for t in tasks if claim.test != "small_tasks"
              or (reg.tasks[t].paper.train_size or math.inf) < SMALL_TASK_TRAIN_SIZE]
        if prs := _pairs(col, backbone, claim.ours, claim.baseline, ts):
            out.append(_claim_check(claim, prs))
    return out


def backbone_tests(col: Collected, backbone: str, checks: list[ClaimCheck]) -> Tests:
    """Every comparison the backbone's tables print, each in one family (the first it is computed for): the tests
    the paper's findings consist of (confirmatory, from ``checks``), Table 2's other comparisons (exploratory),
    variants and shared-adapter columns against their kind's column and their † baseline (sensitivity: CIs
    only); then adjusted. Paired by seed from the records."""
    have, tasks, pairs = col.columns(backbone), col.tasks(backbone), methods.significance_pairs()
    wanted = [(EXPLORATORY, c.ours, c.baseline) for c in methods.comparisons() if {c.ours, c.baseline} <= have]
    for label, base in variants(col, backbone).items():
        if base in have:
            wanted.append((SENSITIVITY, label, base))
        kind_base = label.partition("@")[0]
        if "@" in label and pairs.get(kind_base) in have:
            wanted.append((SENSITIVITY, label, pairs[kind_base]))
    computed: dict[tuple, Tested] = {}
    for check in checks:  # two claims on one pair share their per-task tests: the first one's is kept
        for key, x in check.tests.items():
            computed.setdefault(key, x)
    for family, a, b in wanted:
        todo = [t for t in tasks if (t, a, b) not in computed]
        computed |= _per_task_tests(family, a, b, _pairs(col, backbone, a, b, todo))
    return Tests(computed)  # Holm within each family, once over all of them


MAJORITY_MARK = "‡"


def cell_view(col: Collected, backbone: str, task: str, label: str, majority: dict[str, Majority],
              paper: dict | None = None) -> CellView:
    """A column's cell on ``task`` beside ``paper``'s published mean and std; ‡ at the task's majority baseline."""
    c, paper = col.cells.get((backbone, task, label), Cell()), paper or {}
    m = majority.get(task)
    return CellView(c.mean, c.std, c.n, c.reason(col.no_data.get(task)), paper.get("mean"), paper.get("std"),
                    note=MAJORITY_MARK if m is not None and m.near(c.mean) else "")


def mean_cell(cells: list[CellView]) -> CellView:
    """A Mean row's cell: the mean of the task means there are, and the paper's over the same tasks if it has each."""
    have = [c for c in cells if c.mean is not None]
    pvals = [c.paper for c in have if c.paper is not None]
    reason = "" if len(have) == len(cells) else (f"over {len(have)}/{len(cells)} tasks" if have else "no data")
    return CellView(sum(c.mean for c in have) / len(have) if have else None, None, len(have), reason,
                    sum(pvals) / len(pvals) if pvals and len(pvals) == len(have) else None)


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


def build_table(key: str, col: Collected, backbone: str, paper: dict, reg, majority: dict[str, Majority],
                tests: Tests) -> TableView | None:
    """``majority``: task -> its majority baseline (``baseline.majority_baselines``); ``tests``: the backbone's
    comparisons (``backbone_tests``)."""
    # (our column label, the paper's key, heading)
    cols = [(c.label, c.paper_key, c.heading) for c in methods.layout(key) if c.label in col.columns(backbone)]
    pairs = methods.significance_pairs()
    extra = variants(col, backbone) if key == "table1" else {}  # other specs of a kind: never silently dropped
    cols += [(label, label, variant_heading(label)) for label in extra]
    pairs.update({label: base for label, base in extra.items() if base})
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
            pv = ptable.get("rows", {}).get(t, {}).get(pkey, {}) if is_paper_task(reg, t) else {}
            v = cell_view(col, backbone, t, label, majority, pv)
            base = pairs.get(label)
            v.test = tests.get((t, label, base)) if base else None
            if v.test is not None and v.test.significant:  # a sensitivity comparison is never marked
                v.marker = "†"
            views.append(v)
        group = reg.tasks[t].paper.group if t in reg.tasks else None
        rows.append(RowView(t, group or "", views, majority.get(t)))
    mean_row = [mean_cell([r.cells[j] for r in rows]) for j in range(len(cols))]
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
              + "; n = number of seeds. † = differs from its baseline (F. w/ ST-A vs ST-A, F. w/ MT-A vs MT-A) "
              + "beyond seed noise: paired t-test over seeds (paired by each run's recorded seed), Holm-adjusted "
              + f"p < {SIGNIFICANCE} within its family ({families_text(tests)}; Δ, 95% CI and P(A > B) in Table 2's "
              + "statistics)" + ("; variants are sensitivity comparisons, never marked." if extra else "."))
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
    if "heldout" in protocols:
        notes += heldout_ties(col, backbone, rows, cols)
    if key == "table1":
        notes += adapter_seed_sensitivity(col, backbone, tests)
        notes += tests.notes()
    for label, base in extra.items():
        j = [c[0] for c in cols].index(label)
        ps = ", ".join(f"{r.task} {r.cells[j].test.text()}" for r in rows if r.cells[j].test is not None)
        what = (f"{col.kind_of(label)} over other adapters than the main column ({variant_heading(label)})"
                if "@" in label else f"another spec of method kind {col.kind_of(label)}")
        notes.append(f"{label}: {what}" + (f", compared with {base} ({SENSITIVITY}: CIs, no test): {ps}." if ps
                                           else "."))
    return TableView(key, TITLES[key], backbone, pb, [c[2] for c in cols], [c[0] for c in cols], rows, mean_row,
                     notes, legend, floor, table_backbone=paper.get(key, {}).get("backbone"))


def heldout_ties(col: Collected, backbone: str, rows: list[RowView], cols) -> list[str]:
    """One note on held-out ties: how the kept epoch is chosen on a tie, per task how many runs tie at their
    maximum held-out accuracy, and what the records show keeping the last tied epoch instead would do to each cell
    (every tied epoch's dev accuracy is in the run's history); what a larger slice would do they cannot show."""
    by_id = {r.run_id: r for r in col.results}
    parts, smallest = [], []
    for r in rows:
        runs, tied, differ, moved, slice_rows, counted = 0, 0, 0, [], set(), set()
        for label, _, heading in cols:
            cell = col.cells.get((backbone, r.task, label))
            if not cell or not cell.run_ids:
                continue
            last = []
            for rid, value in zip(cell.run_ids, cell.values, strict=True):
                rec = by_id[rid]
                hist = [h for h in rec.history if h.heldout_accuracy is not None]
                if rec.selection != "heldout" or not hist or rec.per_task:  # MT-A: one choice over its mixture
                    last.append(value)
                    continue
                slice_rows.add(rec.data.heldout_rows if rec.data else None)
                top = max(h.heldout_accuracy for h in hist)
                at = [h for h in hist if h.heldout_accuracy == top]
                if rid not in counted:  # a run in two columns (a shared-adapter column's seed 42) counts once
                    counted.add(rid)
                    runs, tied = runs + 1, tied + (len(at) > 1)
                    differ += len({h.dev_accuracy for h in at}) > 1
                last.append(at[-1].dev_accuracy)
            if any(abs(a - b) > 1e-9 for a, b in zip(last, cell.values, strict=True)):
                new = sum(last) / len(last)
                moved.append(f"{heading} {cell.mean:.2f} → {new:.2f}" if f"{new:.2f}" != f"{cell.mean:.2f}"
                             else f"{heading} {cell.mean:.2f} (its runs move, the mean does not)")
        smallest += [(x, r.task) for x in slice_rows if x]
        if tied:
            size = "/".join(str(x) for x in sorted(x for x in slice_rows if x))
            parts.append(f"{r.task} ({size}-row slice): {tied} of {runs} runs tie, {differ} with different dev "
                         "accuracies among the tied epochs; keeping the last tied epoch would move "
                         + (", ".join(moved) if moved else "no cell"))
    if not parts:
        return []
    return ["Held-out ties: the kept epoch is the first that reaches the highest held-out accuracy (the training loop "
            "keeps an epoch only on a strict improvement, so a later epoch that equals it does not replace it). Per "
            "task, the runs of this table that tie at their maximum, and what the records show another choice among "
            "the tied epochs would do (MT-A left out: it chooses one epoch for its whole mixture): " + "; ".join(parts)
            + f". Whether a larger held-out slice (the smallest here: {min(smallest)[1]}'s {min(smallest)[0]} rows) "
            "would change a cell the records cannot show: the slice is carved from the task's training "
            "rows, so a larger one trains on fewer rows and needs new runs; the records bound only the choice among "
            "the tied epochs, as above."]


def families_text(tests: Tests) -> str:
    """"confirmatory: 11 tests, exploratory: 16 tests" (the families this backbone has)."""
    sizes = [(f, tests.size(f)) for f in (CONFIRMATORY, EXPLORATORY)]
    return ", ".join(f"{f}: {n} test{'s' * (n != 1)}" for f, n in sizes if n) or "no tests"


def build_table2(col: Collected, backbone: str, paper: dict, reg, tests: Tests) -> Table2View | None:
    comps = [c for c in methods.comparisons() if {c.ours, c.baseline} <= col.columns(backbone)]
    if not comps:
        return None
    with_paper = compares_with_table1(reg, backbone, paper)
    tasks = task_order(reg, [t for t in col.tasks(backbone) if any(
        col.cells.get((backbone, t, c.ours), Cell()).values and col.cells.get((backbone, t, c.baseline), Cell()).values
        for c in comps)])
    rows, stat_rows = [], []
    for t in tasks:
        ours, deltas, pap, tested, der = [], [], [], [], []
        for comp in comps:
            x = tests.get((t, comp.ours, comp.baseline))
            tested.append(x)
            d = x.comparison.delta if x else None  # the mean over paired seeds (the arrow reads the same Δ)
            ours.append(None if d is None else arrow(d))
            deltas.append(d)
            if x:
                c = x.comparison
                stat_rows.append(StatRow(t, comp.heading, f"{c.delta:+.2f}", x.ci, f"{c.p_better:.2f}",
                                         p_value(x.p) if x.p is not None else "—",
                                         f"{p_value(x.adjusted)}{'†' if x.significant else ''} ({x.family})"
                                         if x.adjusted is not None else "—",
                                         f"{c.aso:.2f}" if c.aso is not None else "—"))
            shown = with_paper and is_paper_task(reg, t)
            pap.append(published.paper_arrow(paper, t, comp.key) if shown else None)
            # "(Table 1: ...)" marks a printed arrow that its Table 1 contradicts; a derived one cannot
            der.append(published.derived_arrow(paper, t, comp.key)
                       if shown and published.is_printed(paper, comp.key) else None)
        rows.append(Table2Row(t, ours, deltas, pap, tested, der))
    improved, improved_p, agree = [], [], []
    for j, _comp in enumerate(comps):
        have = [r for r in rows if r.ours[j] is not None]
        improved.append(f"{sum(r.ours[j] == 'up' for r in have)}/{len(have)}")
        both = [r for r in have if r.paper[j] is not None]
        # the paper's count over the same tasks as ours, so both sides of "ours / paper" share a denominator
        improved_p.append(f"{sum(r.paper[j] == 'up' for r in both)}/{len(both)}" if both else "—")
        agree.append(f"{sum(r.ours[j] == r.paper[j] for r in both)}/{len(both)}" if both else "—")
    view = Table2View(backbone, [c.heading for c in comps], [c.key for c in comps], rows, improved, improved_p, agree)
    view.stats, view.families = stat_rows, families_text(tests)
    view.rank_correlation = rank_correlation(col, backbone, paper, reg)
    view.notes = table2_notes(view, paper, with_paper) + [FAMILIES_NOTE] + ([ASO_NOTE] if stat_rows else [])
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
        pg = published.gain(paper, t, *published.paper_columns(comp)) if is_paper_task(reg, t) else None
        if f and s and f.values and s.values and pg is not None:
            ours.append(f.mean - s.mean)
            theirs.append(pg)
    if len(ours) < 3:
        return f"Rank correlation of per-task Fusion gains: not computed ({len(ours)} task(s) with both; needs 3)."
    rho = stats.spearmanr(ours, theirs).statistic
    return (f"Spearman rank correlation of per-task gains of F. w/ ST-A over ST-A, ours vs the paper: "
            f"rho = {rho:+.2f} over {len(ours)} tasks.")


def power_text(x: Tested, paper_effect: float | None) -> str:
    """"MDE 7.10 at n = 3 (SD of paired differences 2.40); the paper's +5.78 needs 5 seeds"."""
    c = x.comparison
    if c.sd_diff is None:
        return "—"
    text = f"MDE {minimal_detectable_effect(c.sd_diff, c.n):.2f} at n = {c.n} (SD of paired differences {c.sd_diff:.2f})"
    if paper_effect is not None:
        need = seeds_needed(paper_effect, c.sd_diff)
        text += f"; the paper's {paper_effect:+.2f} needs {need if need else 'over 1,000'} seeds"
    return text


def _published_means(paper: dict, fkey: str, bkey: str, tasks: list[str]) -> tuple[str, float | None]:
    """The paper's mean over all its tasks and over the same tasks as ours (text), and the latter (its effect)."""
    pf, pb = published.mean(paper, fkey), published.mean(paper, bkey)
    n = sum(1 for t in published.table1_rows(paper) if published.gain(paper, t, fkey, bkey) is not None)
    text = f"Mean {fmt(pf)} vs {fmt(pb)} ({pf - pb:+.2f}) over {n} tasks" if pf is not None and pb is not None \
        else "no published mean"
    same = [d for d in (published.gain(paper, t, fkey, bkey) for t in tasks) if d is not None]
    if same:
        text += f"; {sum(same) / len(same):+.2f} over our {len(same)} task(s)"
    return text, (sum(same) / len(same) if same else None)


def _too_few(n: int) -> str:
    return f"not enough seeds ({n} paired; a verdict needs ≥ {MIN_SEEDS})" if n < MIN_SEEDS else ""


def _per_task_verdict(got: list[tuple[str, Tested]]) -> str:
    """Which tasks gain beyond seed noise (Holm within the family), beside the direction and the CIs."""
    n = len(got)
    up = sum(x.comparison.delta > ARROW_THRESHOLD for _, x in got)
    sig = [t for t, x in got if x.significant and x.comparison.delta > 0]
    down = [t for t, x in got if x.significant and x.comparison.delta < 0]
    above = [t for t, x in got if x.comparison.low > 0]
    family, most = got[0][1].family, up > n / 2
    counted = f"{up} of {n} tasks gain > {ARROW_THRESHOLD}"
    noise = f"beyond seed noise on {', '.join(sig)}" + (" only" if len(sig) < n else "") if sig else \
        "within seed noise on every task"
    head = (f"holds in direction ({counted}); {noise}" if most and sig else
            f"in direction only ({counted}), {noise}" if most else
            f"does not hold on most tasks ({counted}); {noise}" if sig else f"does not hold ({counted})")
    return (head + (f"; lower beyond seed noise on {', '.join(down)}" if down else "")
            + f" (95% CI above 0 on {len(above)} of {n}" + (f": {', '.join(above)}" if above else "")
            + f"; beyond seed noise = {family} Holm p < {SIGNIFICANCE})")


def _average_verdict(x: Tested) -> str:
    c = x.comparison
    if abs(c.delta) <= ARROW_THRESHOLD:
        return "does not hold (no clear difference)"
    if x.p is None:
        return "no verdict (no paired t-test: fewer than 2 seeds common to every task, or no spread)"
    if x.significant:
        return (f"holds (beyond seed noise; 95% CI {x.ci})" if c.delta > 0 else
                f"does not hold: lower on average beyond seed noise (95% CI {x.ci})")
    ci = "excludes 0" if c.excludes_zero else "includes 0"
    return (f"within seed noise (the mean {'gain' if c.delta > 0 else 'loss'}'s 95% CI {x.ci} {ci}; "
            f"{x.family} Holm p ≥ {SIGNIFICANCE})")


def _equivalence_verdict(x: Tested, eq: Equivalence | None) -> str:
    c, m = x.comparison, f"±{EQUIVALENCE_MARGIN:.1f}"
    if eq is None or c.sd_diff is None:
        return "no verdict (no TOST: fewer than 2 seeds common to every task, or no spread)"
    if x.significant:
        return f"holds (equivalent within {m} point)"
    if eq.high < -EQUIVALENCE_MARGIN or eq.low > EQUIVALENCE_MARGIN:
        return f"does not hold (the 90% interval lies outside {m} point)"
    if not equivalence_reachable(c.sd_diff, c.n, EQUIVALENCE_MARGIN):
        need = next((n for n in range(2, 1001) if equivalence_reachable(c.sd_diff, n, EQUIVALENCE_MARGIN)), None)
        half = equivalence_half_width(c.sd_diff, c.n)
        return (f"cannot be shown with {c.n} seeds: at the observed SD of paired differences ({c.sd_diff:.2f}) the "
                f"90% interval is ±{half:.2f} wide, more than the {m} point margin, even at a zero difference; "
                f"{need or 'over 1,000'} seeds would be needed")
    return f"not shown (the 90% interval reaches beyond {m} point: no difference detected, which is not parity)"


def findings(checks: list[ClaimCheck], tests: Tests, paper: dict) -> list[Finding]:
    """The paper's findings checked on our numbers (``claim_checks``: only for paper tasks on a backbone that is,
    or stands in for, the paper's Table 1 backbone), each read from the adjusted ``tests`` and printed with its
    family; a verdict only with ``MIN_SEEDS`` paired seeds."""
    out = []
    for check in checks:
        finding = _per_task_finding if check.claim.test in PER_TASK_CLAIMS else _over_tasks_finding
        out.append(finding(check.claim.text.format(small=SMALL_TASK_TRAIN_SIZE), check, tests, paper))
    return out


def _per_task_finding(text: str, check: ClaimCheck, tests: Tests, paper: dict) -> Finding:
    claim, got = check.claim, _tested_per_task(check, tests)
    gains = {t: published.gain(paper, t, *published.paper_columns(claim)) for t, _ in got}
    power = "; ".join(f"{t}: {power_text(x, gains[t])}" for t, x in got)
    verdict = _too_few(min(x.comparison.n for _, x in got)) or _per_task_verdict(got)
    if claim.test == "small_tasks":
        paper_text = "; ".join(f"{t} {d:+.2f}" for t, d in gains.items() if d is not None)
        return Finding(text, paper_text, _described(got), verdict, power)
    key = methods.table2_key(claim.ours, claim.baseline)
    printed = [p for p in (published.printed_arrow(paper, t, key) for t, _ in got) if p is not None]
    paper_text = f"{published.printed_improved(paper, key)} improved (Table 2)"
    if printed:
        paper_text += f"; {sum(p == 'up' for p in printed)}/{len(printed)} over our tasks"
    up = sum(x.comparison.delta > ARROW_THRESHOLD for _, x in got)
    return Finding(text, paper_text, f"{up}/{len(got)} improved; {_described(got)}", verdict, power)


def _over_tasks_finding(text: str, check: ClaimCheck, tests: Tests, paper: dict) -> Finding:
    """An "on average" claim (the mean's paired t) or an "on par" one (the TOST of the per-seed means)."""
    paper_text, effect = _published_means(paper, *published.paper_columns(check.claim), check.tasks)
    a, b, over = check.claim.ours, check.claim.baseline, f"over {len(check.tasks)} tasks"
    if check.claim.test == "on_par":
        x, eq = tests.get(("tost", a, b)), check.eq
        run = test_text(x) or "not run (the verdict says why)"
        shown = (f"; TOST at ±{EQUIVALENCE_MARGIN:.1f} point over per-seed means: 90% interval {eq.low:+.2f} to "
                 f"{eq.high:+.2f}, {run}" if eq else "")
        ours, verdict = f"mean difference {x.text(test=False)} {over}{shown}", _equivalence_verdict(x, eq)
    else:
        x = tests.get(("mean", a, b))
        ours, verdict = f"mean gain {x.text()} {over}", _average_verdict(x)
        if check.claim.per_task:
            ours += f"; {_described(_tested_per_task(check, tests))}"
    return Finding(text, paper_text, ours, _too_few(x.comparison.n) or verdict, power_text(x, effect))


def _tested_per_task(check: ClaimCheck, tests: Tests) -> list[tuple[str, Tested]]:
    """The claim's per-task comparisons as adjusted (a per-task claim's own; beside an average, Table 2's)."""
    a, b = check.claim.ours, check.claim.baseline
    return [(t, x) for t in check.tasks if (x := tests.get((t, a, b)))]


def _described(got: list[tuple[str, Tested]]) -> str:
    return "; ".join(f"{t} {x.text()}" for t, x in got)
