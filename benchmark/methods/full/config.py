"""Full fine-tuning's registry entry (layer 0): it trains the encoder and the head; no YAML section of its own."""

from __future__ import annotations

from benchmark.methods import Column, MethodKind, register

register(MethodKind(
    "full", frozenset({"head", "encoder"}),
    columns={"table1": (Column("full", "full", "Full"),), "table4": (Column("full", "full", "Full"),)}))
