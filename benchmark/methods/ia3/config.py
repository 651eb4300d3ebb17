"""(IA)^3's YAML section (``ia3:``), its registry entry and what its modules cost per token (layer 0: no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from benchmark.methods import Column, MethodKind, register
from benchmark.methods.params import LinearTarget, Strict
from benchmark.methods.registry import section


class IA3Params(Strict):
    """(IA)^3 (Liu et al. 2022): a learned vector l [out] that rescales the output of each target linear layer,
    y = (W x + b) * l, l = 1 at init. The default targets are AdapterHub 1.3.0's ``IA3Config`` placement: key and
    value, and the FFN's ``intermediate`` (its output, before the activation; the paper and PEFT's default BERT
    map scale the input of the FFN's output projection instead, which AdapterHub cannot express)."""

    type: Literal["ia3"] = "ia3"
    targets: list[LinearTarget] = Field(
        default_factory=lambda: ["key", "value", "intermediate"], min_length=1,
        description="linear layers of every encoder layer whose output is rescaled (layout.linear_targets)")


def flops(p: IA3Params, shape, sources: int) -> float:
    """One multiply per output of each rescaled linear layer (elementwise: not a matrix product, priced as 1/out)."""
    H, inter = shape.hidden, shape.intermediate
    return sum(inter if t == "intermediate" else H for t in p.targets)


section("ia3", IA3Params, flops)

# Learned rescaling vectors on key, value and the FFN intermediate (AdapterHub's IA3Config placement); a Table 1
# column beside LoRA, without a paper value.
register(MethodKind(
    "ia3", frozenset({"head", "adapter"}), needs=("ia3",), after="lora",
    columns={"table1": (Column("ia3", "ia3", "(IA)^3"),)}))
