"""The ``mt_a:`` section (the schedule of its task-sampling temperature) and the MT-A kind (layer 0: no torch).
The section is one of the paper's: it dumps as null while unset (``late=False``)."""

from __future__ import annotations

from benchmark.methods import Column, MethodKind, register
from benchmark.methods.params import Strict
from benchmark.methods.registry import section


class MtaParams(Strict):
    alpha_start: float = 1.0
    alpha_end: float = 0.2


section("mt_a", MtaParams, late=False)  # its adapters are priced by its ``adapter`` section

register(MethodKind(
    "mt_a", frozenset({"head", "adapter", "encoder"}), needs=("adapter",), multitask=True,
    label_rf="adapter.reduction_factor",
    columns={"table1": (Column("mt_a_rf16", "mt_a", "MT-A"),)}))
