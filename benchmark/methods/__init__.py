"""The method kinds: one declaration per kind, read by the spec schema, the planner, the recipes and the reporter.

A kind says what it trains, what it depends on, how its runs are labelled and which report columns and
comparisons it feeds. Nothing else in the package names a kind by string to decide behaviour. Every method,
the paper's seven included, is a package (``<name>/config.py`` registers its kinds, see ``registry.py``) found
by ``registry.discover()`` at the end of this module, so every reader sees them all. This module holds what
is about the paper as a whole: the order of its columns (``PAPER``) and its findings (``CLAIMS``).

This module and the packages' ``config.py`` import nothing above layer 0: every layer may read them.
"""

from __future__ import annotations

from benchmark.methods import registry
from benchmark.methods.kinds import (  # noqa: F401  (the registry's API, read as methods.X)
    KINDS,
    TABLES,
    Claim,
    Column,
    Comparison,
    MethodKind,
    comparisons,
    fusion_columns,
    layout,
    reference_column,
    register,
    significance_pairs,
    table2_key,
    unregister,
)

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


# The paper's method packages, in the order of its Table 1 columns (Head, Full, ST-A, MT-A, the two fusions; ST-A
# Houlsby, registered by st_a, is placed last by its ``after``), then every other package by folder name.
PAPER = ("head", "full", "st_a", "mt_a", "fusion")
registry.discover(first=PAPER)
