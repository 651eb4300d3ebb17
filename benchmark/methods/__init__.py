"""The method kinds: one declaration per kind, read by the spec schema, the planner, the recipes and the reporter.

A kind says what it trains, what it depends on, how its runs are labelled and which report columns and
comparisons it feeds. Nothing else in the package names a kind by string to decide behaviour. The paper's
seven are declared here; every other method is a package (``<name>/config.py`` registers its kind, see
``registry.py``) found by ``registry.discover()`` at the end of this module, so every reader sees them all.

This module and the packages' ``config.py`` import nothing above layer 0: every layer may read them.
"""

from __future__ import annotations

from benchmark.methods import registry
from benchmark.methods.kinds import (  # noqa: F401  (the registry's API, read as methods.X)
    KINDS,
    MODULES,
    TABLES,
    Claim,
    Column,
    Comparison,
    MethodKind,
    comparisons,
    fusion_columns,
    get,
    layout,
    reference_column,
    register,
    report_order,
    significance_pairs,
    table2_key,
    unregister,
)


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
# Method packages (benchmark/methods/<name>/, and the user's under AFBENCH_METHODS) register their kinds when
# ``registry.discover()`` imports their config.py, at the end of this module: LoRA and (IA)^3.

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


# The method packages, after the paper's seven (their ``after`` anchors) and the claims (a package may add some).
registry.discover()
