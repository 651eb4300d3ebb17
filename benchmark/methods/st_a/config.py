"""The ``adapter:`` section (bottleneck adapters), the ST-A and ST-A Houlsby kinds and what an adapter costs per
token (layer 0: no torch). The section is one of the paper's: it dumps as null while unset (``late=False``)."""

from __future__ import annotations

from typing import Literal

from benchmark.methods import Column, MethodKind, register
from benchmark.methods.params import ReductionFactor, Strict
from benchmark.methods.registry import section


class AdapterParams(Strict):
    type: Literal["pfeiffer", "houlsby"] = "pfeiffer"
    reduction_factor: ReductionFactor = 16
    non_linearity: Literal["relu", "swish", "gelu", "tanh"] | None = None  # None: pfeiffer relu, houlsby swish

    @property
    def activation(self) -> str:
        """The non-linearity the adapter computes: ``non_linearity``, or its type's default."""
        return self.non_linearity or ("relu" if self.type == "pfeiffer" else "swish")


def flops(p: AdapterParams, shape, sources: int) -> float:
    """down + up, 2 * 2Hr per token (Pfeiffer after the FFN; Houlsby a second one after attention)."""
    H = shape.hidden
    return 2 * 2 * H * (H // max(1, p.reduction_factor)) * (2 if p.type == "houlsby" else 1)


section("adapter", AdapterParams, flops, late=False)


# Tables 3 and 4: ST-A at three reduction factors
_RF_COLUMNS = tuple(Column(f"st_a_rf{rf}", f"st_a_rf{rf}", f"ST-A rf {rf}") for rf in (2, 16, 64))


register(MethodKind(
    "st_a", frozenset({"head", "adapter"}), needs=("adapter",), label_rf="adapter.reduction_factor",
    columns={"table1": (Column("st_a_rf16", "st_a", "ST-A"),),
             "table3": _RF_COLUMNS, "table4": _RF_COLUMNS}))
# The paper's last Table 1 column, after both fusions (the packages load in the paper's column order).
register(MethodKind(
    "st_a_houlsby", frozenset({"head", "adapter"}), needs=("adapter",), adapter_type="houlsby",
    label_rf="adapter.reduction_factor", after="fusion_mt_a",
    columns={"table1": (Column("st_a_houlsby_rf16", "st_a_houlsby", "ST-A Houlsby"),),
             "table4": (Column("st_a_houlsby_rf16", "st_a_houlsby_rf16", "ST-A Houlsby"),)}))
