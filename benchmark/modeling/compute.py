"""How a model computes — never what: the switches between faster and stock code paths for one function.

Each changes only float rounding and which random numbers dropout draws, so a run records them
(``cpu_kernels`` and ``last_layer`` in result.json) to be repeatable bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.modeling.cpu_kernels import KERNELS, set_cpu_kernels
from benchmark.modeling.first_token import LAST_LAYER, set_last_layer
from benchmark.spec.schema import DEFAULT_COMPUTE


@dataclass(frozen=True)
class Compute:
    cpu_kernels: str = DEFAULT_COMPUTE.cpu_kernels  # "fast" | "stock": benchmark/modeling/cpu_kernels.py (CPU)
    last_layer: str = DEFAULT_COMPUTE.last_layer  # "first_token" | "full": benchmark/modeling/first_token.py

    def __post_init__(self):
        if self.cpu_kernels not in KERNELS:
            raise ValueError(f"cpu_kernels must be one of {KERNELS}, got {self.cpu_kernels!r}")
        if self.last_layer not in LAST_LAYER:
            raise ValueError(f"last_layer must be one of {LAST_LAYER}, got {self.last_layer!r}")

    @classmethod
    def of(cls, spec) -> Compute:
        """From a resolved ``spec.schema.ComputeSpec`` (both fields set)."""
        return cls(spec.cpu_kernels, spec.last_layer)

    def apply(self, model) -> None:
        """Switch a whole AdapterModel (after its modules are added: kernels wrap every linear layer)."""
        set_last_layer(model, self.last_layer)
        set_cpu_kernels(model, self.cpu_kernels)

    def record(self, device: torch.device) -> dict[str, str]:
        return {"cpu_kernels": self.cpu_kernels if device.type == "cpu" else "stock", "last_layer": self.last_layer}


DEFAULT = Compute.of(DEFAULT_COMPUTE)  # what `afbench run` uses unless told otherwise (spec/schema.py)
