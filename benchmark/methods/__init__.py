"""The method kinds: one declaration per kind, read by the spec schema, the planner, the recipes and the reporter.

A kind says what it trains, what it depends on, how its runs are labelled and which report columns and
comparisons it feeds. Nothing else in the package names a kind by string to decide behaviour; adding a
kind is one ``register(MethodKind(...))``, one recipe function (``benchmark/training/recipe.py``) and one
method YAML in ``specs/methods/``.

This module imports nothing from the package: every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What a method can train (the model API of benchmark/modeling/model.py selects modules by these names).
MODULES = ("head", "adapter", "fusion", "encoder")
TABLES = ("table1", "table3", "table4")


@dataclass(frozen=True)
class Column:
    """One report column: results labelled ``label`` under the paper's key ``paper_key`` in one table."""

    label: str  # the run label (see MethodKind.label)
    paper_key: str  # key of the column in the paper YAML's table rows
    heading: str
    title: str = ""  # the method's name in figure titles and prose (default: ``heading``)

    @property
    def name(self) -> str:
        return self.title or self.heading


@dataclass(frozen=True)
class Comparison:
    """A Table 2 comparison: the runs labelled ``ours`` against those labelled ``baseline``."""

    key: str  # key in the paper YAML's table2 rows (vs Full: not printed there, derived from its Table 1)
    ours: str
    baseline: str
    heading: str
    significance: bool = False  # mark the ``ours`` cell with † when it differs beyond seed noise
    rank_correlation: bool = False  # the report correlates these per-task gains with the paper's (Spearman)


@dataclass(frozen=True)
class Claim:
    """One of the paper's findings that the report checks on our numbers (``report/tables.findings``):
    ``text`` about the runs labelled ``ours`` against those labelled ``baseline``; ``test`` says how:
    "small_tasks" (gains on tasks with few training rows, most of them up), "on_average" (mean gain beyond
    seed noise), "most_tasks" (up on most tasks, with the paper's Table 2 count), "on_par" (TOST equivalence)."""

    text: str  # "{small}" is replaced by the small-task threshold
    ours: str
    baseline: str
    test: str
    per_task: bool = False  # on_average: also list each task's gain


@dataclass(frozen=True)
class MethodKind:
    name: str
    trains: frozenset[str]  # subset of MODULES
    needs: tuple[str, ...] = ()  # spec sections the method YAML must have: "adapter", "fusion", "mt_a"
    adapter_type: str | None = None  # the adapter type the method requires, if any
    multitask: bool = False  # one run over many tasks (MT-A), not one run per task
    depends_on: str | None = None  # "stage1": one ST-A run per fused source; "mt_a": the joint MT-A run
    label_rf: str | None = None  # "adapter" | "source": which reduction factor the run label carries
    columns: dict[str, tuple[Column, ...]] = field(default_factory=dict)  # table -> columns
    comparisons: tuple[Comparison, ...] = ()
    after: str | None = None  # report columns right after those of this kind (default: in registration order)

    @property
    def fusion(self) -> bool:
        return "fusion" in self.trains

    def label(self, method) -> str:
        """The run label, e.g. ``st_a_rf16``; ``method`` is a resolved MethodSpec."""
        if self.label_rf == "adapter" and method.adapter is not None:
            return f"{method.name}_rf{method.adapter.reduction_factor}"
        if self.label_rf == "source" and method.fusion is not None:
            return f"{method.name}_rf{method.fusion.source_reduction_factor}"
        return method.name


KINDS: dict[str, MethodKind] = {}


def register(kind: MethodKind) -> MethodKind:
    unknown = set(kind.trains) - set(MODULES)
    if unknown:
        raise ValueError(f"method kind {kind.name!r} trains unknown modules {sorted(unknown)}; known: {MODULES}")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests that add a hypothetical one clean up with this)."""
    KINDS.pop(name, None)


def get(name: str) -> MethodKind:
    return KINDS[name]


def _report_order() -> list[MethodKind]:
    """Kinds in registration order, each kind with ``after`` moved right behind its anchor (and the anchor's
    earlier followers)."""
    out = [k for k in KINDS.values() if k.after not in KINDS]
    for k in KINDS.values():
        if k.after in KINDS:
            at = max(i for i, o in enumerate(out) if k.after in (o.name, o.after))
            out.insert(at + 1, k)
    return out


def layout(table: str) -> list[Column]:
    """The columns of a paper table, in registration order (a kind's ``after`` moves it behind another)."""
    return [c for k in _report_order() for c in k.columns.get(table, ())]


def comparisons() -> list[Comparison]:
    return [c for k in KINDS.values() for c in k.comparisons]


def significance_pairs() -> dict[str, str]:
    """Column label -> the baseline label its † marker is tested against."""
    return {c.ours: c.baseline for c in comparisons() if c.significance}


def _rf_columns(prefix: str, heading: str, key: str, rfs=(2, 16, 64)) -> tuple[Column, ...]:
    return tuple(Column(f"{prefix}_rf{rf}", f"{key}_rf{rf}", f"{heading} rf {rf}") for rf in rfs)


# ----------------------------------------------------------------------------------- the paper's seven
register(MethodKind(
    "head", frozenset({"head"}),
    columns={"table1": (Column("head", "head", "Head"),), "table4": (Column("head", "head", "Head"),)}))
register(MethodKind(
    "full", frozenset({"head", "encoder"}),
    columns={"table1": (Column("full", "full", "Full"),), "table4": (Column("full", "full", "Full"),)}))
register(MethodKind(
    "st_a", frozenset({"head", "adapter"}), needs=("adapter",), label_rf="adapter",
    columns={"table1": (Column("st_a_rf16", "st_a", "ST-A"),),
             "table3": _rf_columns("st_a", "ST-A", "st_a"),
             "table4": _rf_columns("st_a", "ST-A", "st_a")}))
register(MethodKind(
    "mt_a", frozenset({"head", "adapter", "encoder"}), needs=("adapter",), multitask=True, label_rf="adapter",
    columns={"table1": (Column("mt_a_rf16", "mt_a", "MT-A"),)}))
register(MethodKind(
    "fusion_st_a", frozenset({"head", "fusion"}), needs=("fusion",), depends_on="stage1", label_rf="source",
    columns={"table1": (Column("fusion_st_a_rf16", "fusion_st_a", "F. w/ ST-A", "Fusion w/ ST-A"),),
             "table4": (Column("fusion_st_a_rf16", "fusion_st_a_rf16", "F. w/ ST-A", "Fusion w/ ST-A"),)},
    comparisons=(Comparison("fusion_st_a_vs_st_a", "fusion_st_a_rf16", "st_a_rf16", "F. w/ ST-A vs ST-A", True,
                            rank_correlation=True),
                 Comparison("fusion_st_a_vs_mt_a", "fusion_st_a_rf16", "mt_a_rf16", "F. w/ ST-A vs MT-A"),
                 Comparison("fusion_st_a_vs_full", "fusion_st_a_rf16", "full", "F. w/ ST-A vs Full"))))
register(MethodKind(
    "fusion_mt_a", frozenset({"head", "fusion"}), needs=("fusion",), depends_on="mt_a",
    columns={"table1": (Column("fusion_mt_a", "fusion_mt_a", "F. w/ MT-A", "Fusion w/ MT-A"),)},
    comparisons=(Comparison("fusion_mt_a_vs_st_a", "fusion_mt_a", "st_a_rf16", "F. w/ MT-A vs ST-A"),
                 Comparison("fusion_mt_a_vs_mt_a", "fusion_mt_a", "mt_a_rf16", "F. w/ MT-A vs MT-A", True),
                 Comparison("fusion_mt_a_vs_full", "fusion_mt_a", "full", "F. w/ MT-A vs Full"))))
register(MethodKind(
    "st_a_houlsby", frozenset({"head", "adapter"}), needs=("adapter",), adapter_type="houlsby", label_rf="adapter",
    columns={"table1": (Column("st_a_houlsby_rf16", "st_a_houlsby", "ST-A Houlsby"),),
             "table4": (Column("st_a_houlsby_rf16", "st_a_houlsby_rf16", "ST-A Houlsby"),)}))

# ----------------------------------------------------------------------------------- beyond the paper
# LoRA (Hu et al. 2022): a Table 1 column beside ST-A; its paper key has no value in the paper YAML, so the
# report shows it without a paper number or delta.
register(MethodKind(
    "lora", frozenset({"head", "adapter"}), needs=("lora",), after="st_a",
    columns={"table1": (Column("lora", "lora", "LoRA"),)}))

# (IA)^3 (Liu et al. 2022): learned rescaling vectors on key, value and the FFN intermediate (AdapterHub's
# IA3Config placement); a Table 1 column beside LoRA, without a paper value.
register(MethodKind(
    "ia3", frozenset({"head", "adapter"}), needs=("ia3",), after="lora",
    columns={"table1": (Column("ia3", "ia3", "(IA)^3"),)}))

# The stage-1 adapters that fusion over ST-A reads are runs of this kind.
STAGE1 = "st_a"
# Full fine-tuning: the reference of the paper's Figure 3 (relative difference to Full).
FULL = "full"

# The paper's findings the report checks, in the order it prints them (labels of the columns above).
CLAIMS: list[Claim] = [
    Claim("Fusion w/ ST-A improves over ST-A on tasks with < {small:,} training examples",
          "fusion_st_a_rf16", "st_a_rf16", "small_tasks"),
    Claim("Fusion w/ ST-A improves over ST-A on average", "fusion_st_a_rf16", "st_a_rf16", "on_average"),
    Claim("Fusion w/ ST-A outperforms full fine-tuning on average", "fusion_st_a_rf16", "full", "on_average",
          per_task=True),
    Claim("Fusion w/ MT-A improves over MT-A on most tasks", "fusion_mt_a", "mt_a_rf16", "most_tasks"),
    Claim("ST-A is on par with full fine-tuning on average", "st_a_rf16", "full", "on_par"),
]


def reference_column(kind: str, table: str = "table1") -> Column | None:
    """The first column of ``kind`` in ``table`` (e.g. ``reference_column(FULL)``), None if it has none."""
    cols = KINDS[kind].columns.get(table, ()) if kind in KINDS else ()
    return cols[0] if cols else None


def fusion_columns(table: str = "table1") -> list[Column]:
    """The columns of the kinds that train a fusion layer (attention heatmaps), in registration order."""
    return [c for k in KINDS.values() if k.fusion for c in k.columns.get(table, ())]


def table2_key(ours: str, baseline: str) -> str | None:
    """The Table 2 comparison of ``ours`` against ``baseline`` (column labels), if the registry has one."""
    return next((c.key for c in comparisons() if (c.ours, c.baseline) == (ours, baseline)), None)
