"""Head's registry entry (layer 0): it trains the head only and has no YAML section of its own."""

from __future__ import annotations

from benchmark.methods import Column, MethodKind, register

register(MethodKind(
    "head", frozenset({"head"}),
    columns={"table1": (Column("head", "head", "Head"),), "table4": (Column("head", "head", "Head"),)}))
