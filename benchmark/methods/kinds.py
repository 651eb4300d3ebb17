"""The method kinds' declarations and the registry of kinds (``register``): what the spec schema, the planner, the
recipes and the reporter read. Imports nothing from the package (layer 0); ``benchmark.methods`` re-exports it.
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
    depends_on: str | None = None  # "stage1": one stage-1 run per fused source (ST-A, or fusion.source_method's); "mt_a": the joint MT-A run
    label_rf: str | None = None  # "<section>.<field>": the reduction factor the run label carries (``_rf16``)
    columns: dict[str, tuple[Column, ...]] = field(default_factory=dict)  # table -> columns
    comparisons: tuple[Comparison, ...] = ()
    after: str | None = None  # report columns right after those of this kind (default: in registration order)

    @property
    def fusion(self) -> bool:
        return "fusion" in self.trains

    def label(self, method) -> str:
        """The run label, e.g. ``st_a_rf16``; ``method`` is a resolved MethodSpec."""
        if self.label_rf is not None:
            section, name = self.label_rf.split(".")
            rf = getattr(getattr(method, section, None), name, None)
            if rf is not None:
                return f"{method.name}_rf{rf}"
        return method.name


KINDS: dict[str, MethodKind] = {}


def register(kind: MethodKind) -> MethodKind:
    if kind.label_rf is not None and kind.label_rf.count(".") != 1:
        raise ValueError(f"method kind {kind.name!r}: label_rf {kind.label_rf!r} must name a section field as "
                         "'section.field' (e.g. 'adapter.reduction_factor'), the reduction factor its run label carries")
    unknown = set(kind.trains) - set(MODULES)
    if unknown:
        raise ValueError(f"method kind {kind.name!r} trains unknown modules {sorted(unknown)}; known: {MODULES}")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests that add a hypothetical one clean up with this)."""
    KINDS.pop(name, None)


def report_order() -> list[MethodKind]:
    """Kinds in registration order, each kind with ``after`` moved right behind its anchor (and the anchor's
    earlier followers); a kind registered before its anchor (method packages load by folder name) is placed once
    its anchor is."""
    out = [k for k in KINDS.values() if k.after not in KINDS]
    waiting = [k for k in KINDS.values() if k.after in KINDS]
    while waiting:
        placed = {o.name for o in out}
        ready = [k for k in waiting if k.after in placed]
        if not ready:  # anchors in a circle: after each other's last
            ready = waiting[:1]
            out.append(ready[0])
        else:
            for k in ready:
                at = max(i for i, o in enumerate(out) if k.after in (o.name, o.after))
                out.insert(at + 1, k)
        waiting = [k for k in waiting if k not in ready]
    return out


def layout(table: str) -> list[Column]:
    """The columns of a paper table, in registration order (a kind's ``after`` moves it behind another)."""
    return [c for k in report_order() for c in k.columns.get(table, ())]


def comparisons() -> list[Comparison]:
    return [c for k in KINDS.values() for c in k.comparisons]


def significance_pairs() -> dict[str, str]:
    """Column label -> the baseline label its † marker is tested against."""
    return {c.ours: c.baseline for c in comparisons() if c.significance}


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
