"""The report's comparisons as the design has them (``shared/design/inference.md``): A against B on one task,
paired by seed, the pairing read from the records (each finished run's ``seed``; a fusion run's ``deps``
say whose adapters it read), and every test in exactly one named family.

``pair`` builds one task's design from a report cell's runs; ``Tests`` holds one backbone's comparisons
(``inference.compare`` / ``compare_over_tasks``), their family and Holm value;
``text`` / ``test_text`` print them the same way wherever they appear.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from benchmark import predictions
from benchmark.errors import BenchError
from benchmark.report.aggregate import Collected
from benchmark.report.inference import BOOTSTRAP_SEED, REPLICATES, Comparison, Paired
from benchmark.report.stats import SIGNIFICANCE, holm, p_text, p_value

CONFIRMATORY, EXPLORATORY, SENSITIVITY = "confirmatory", "exploratory", "sensitivity"
FAMILIES_NOTE = (
    "Each test is in one family, Holm-adjusted within it and printed with that family's value wherever it "
    f"appears: {CONFIRMATORY} = the tests the paper's findings consist of (a per-task claim: its per-task tests; "
    f"an \"on average\" claim: the test of the average; an equivalence claim: its TOST, where the seeds can show equivalence at all); {EXPLORATORY} = Table 2's "
    f"comparisons not already {CONFIRMATORY}; {SENSITIVITY} = shared-adapter columns and other variants "
    "(95% CIs only, no test, no significance mark). Δ: mean over paired seeds of A - B (points); 95% CI: "
    f"percentile interval of the paired bootstrap ({REPLICATES:,} replicates, seed {BOOTSTRAP_SEED}): "
    "two-level (seeds, then dev rows, paired by row) where every paired run stored its per-example predictions, "
    "else seed-level and marked so (runs resampled by seed; with 3 seeds a seed-level interval takes few "
    "distinct values and is narrower than the t interval); P(A > B): the "
    "probability that A beats B on a new seed, ties half; \"paired t\": the paired t-test over seeds, the paper's "
    "style of test, whose p the families adjust.")


@dataclass(frozen=True)
class Pairing:
    design: Paired
    notes: tuple[str, ...] = ()  # e.g. a fusion column whose runs read another seed's adapters


def pair(col: Collected, backbone: str, task: str, a: str, b: str) -> Pairing | None:
    """Column ``a`` against column ``b`` on ``task``, paired by each run's own recorded seed; None without a
    seed both sides ran. A run whose ``deps`` were trained with another seed than its own (shared adapters)
    still pairs by its own seed, and the pairing says so. Row level where each paired run's predictions file is
    present, matches its record and reproduces the recorded accuracy exactly, on the same dev rows."""
    by_id = {r.run_id: r for r in col.results}
    sides, rows, notes = [], [], []
    for label in (a, b):
        cell = col.cells.get((backbone, task, label))
        acc, foreign, correct = {}, {}, {}  # seed -> accuracy / the seeds its deps ran / (row ids, correctness)
        for rid, value in zip(cell.run_ids, cell.values, strict=True) if cell else ():
            rec = by_id[rid]
            acc[rec.seed] = value
            dep_seeds = sorted({by_id[d].seed for d in rec.deps if d in by_id})
            if dep_seeds and dep_seeds != [rec.seed]:
                foreign[rec.seed] = dep_seeds
            if not (col.folder and rec.predictions):
                continue
            try:
                cols = predictions.read(col.folder / rid, rec.predictions)
            except BenchError:
                continue
            mine = sorted((r, ok) for t, r, ok in zip(cols["task"], cols["row"], cols["correct"], strict=True)
                          if t == task)
            if mine and predictions.accuracy(cols, task) == value:
                correct[rec.seed] = (tuple(r for r, _ in mine), np.array([ok for _, ok in mine], dtype=float))
        if foreign:
            read = sorted({s for ds in foreign.values() for s in ds})
            notes.append(f"{label}: the runs of seed(s) {', '.join(map(str, sorted(foreign)))} read the adapters of "
                         f"seed(s) {', '.join(map(str, read))} (shared adapters); paired by each run's own seed")
        sides.append(acc)
        rows.append(correct)
    common = set(sides[0]) & set(sides[1])
    if common and all(common <= set(r) for r in rows) and len({r[s][0] for r in rows for s in common}) == 1:
        design = Paired.from_rows({s: rows[0][s][1] for s in common}, {s: rows[1][s][1] for s in common})
    else:  # a run without predictions, or other dev rows (another cap): the seed level is what pairs
        design = Paired.from_accuracies(*sides)
    return Pairing(design, tuple(notes)) if design.seeds else None


@dataclass(frozen=True)
class Tested:
    comparison: Comparison
    family: str
    p: float | None  # the raw p the family adjusts (paired t; TOST p for an equivalence test); None: no test
    adjusted: float | None = None  # Holm within the family (``Tests``); None before that or without a test
    notes: tuple[str, ...] = ()

    @property
    def significant(self) -> bool:
        return self.family != SENSITIVITY and self.adjusted is not None and self.adjusted < SIGNIFICANCE

    @property
    def ci(self) -> str:
        c = self.comparison
        return f"{c.low:+.2f} to {c.high:+.2f}" + (" seed-level" if c.level == "seeds" else "")

    def text(self, *, test: bool = True) -> str:
        """"+10.11 (95% CI +6.20 to +13.90 seed-level, P(A > B) 0.97; paired t p = 0.020, Holm 0.22
        confirmatory)"; a sensitivity comparison has no test part."""
        c = self.comparison
        shown = test_text(self) if test else ""
        return f"{c.delta:+.2f} (95% CI {self.ci}, P(A > B) {c.p_better:.2f}" + (f"; {shown}" if shown else "") + ")"


def test_text(t: Tested | None) -> str:
    """"paired t p = 0.020, Holm 0.22 confirmatory" († where the adjusted value is below the level); empty for a
    sensitivity comparison or without a test."""
    if t is None or t.family == SENSITIVITY or t.p is None:
        return ""
    return f"{p_text(t.p)}, Holm {p_value(t.adjusted)} {t.family}" + ("†" if t.significant else "")


class Tests(dict):
    """One backbone's comparisons, key -> ``Tested``, built at once from the unadjusted tests (each key has one
    family): Holm within each family, so a test is printed with its family's value wherever it appears."""

    def __init__(self, raw: dict[object, Tested]):
        adjusted = {}
        for family in {x.family for x in raw.values()}:
            keys = [k for k, x in raw.items() if x.family == family]
            adjusted.update(zip(keys, holm([raw[k].p for k in keys]), strict=True))  # a None p stays None
        super().__init__({k: replace(x, adjusted=adjusted[k]) for k, x in raw.items()})

    def size(self, family: str) -> int:
        """The tests of ``family`` (comparisons with a p)."""
        return sum(1 for x in self.values() if x.family == family and x.p is not None)

    def notes(self) -> list[str]:
        """The pairing notes (shared adapters), once each."""
        return list(dict.fromkeys(n for x in self.values() for n in x.notes))
