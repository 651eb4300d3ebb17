"""LoRA's YAML section (``lora:``), its registry entry and what its modules cost per token (layer 0: no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from benchmark.methods import Column, MethodKind, register
from benchmark.methods.params import LinearTarget, Strict
from benchmark.methods.registry import section


class LoRAParams(Strict):
    """LoRA (Hu et al. 2022), as HF PEFT computes it: W x + (alpha / rank) * B A dropout(x), B = 0 at init."""

    type: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[LinearTarget] = Field(
        default_factory=lambda: ["query", "value"], min_length=1,
        description="linear layers of every encoder layer to adapt, by the layout's names (layout.linear_targets)")


def flops(p: LoRAParams, shape, sources: int) -> float:
    """A: [in, r] and B: [r, out] on each adapted linear layer (the FFN's in/out: H x I)."""
    H, inter = shape.hidden, shape.intermediate
    return sum(2 * p.rank * (H + (inter if t in ("intermediate", "output") else H)) for t in p.targets)


section("lora", LoRAParams, flops)

# A Table 1 column beside ST-A; its paper key has no value in the paper YAML, so the report shows it without a
# paper number or delta.
register(MethodKind(
    "lora", frozenset({"head", "adapter"}), needs=("lora",), after="st_a",
    columns={"table1": (Column("lora", "lora", "LoRA"),)}))
