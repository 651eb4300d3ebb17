"""How a model computes — never what: the switches between faster and stock code paths for one function,
and the floating-point precision of the forward and backward.

``cpu_kernels`` and ``last_layer`` change only float rounding and which random numbers dropout draws;
``precision`` changes the rounding of every matmul (bf16 keeps 8 bits of mantissa), so it is part of a
run's id when it is not ``auto``; ``compile`` (torch.compile with inductor, ``compiled.py``) changes kernels,
dropout's random stream and padding, so it is part of the id when on. A run records them (result.json) to be
repeatable bit for bit.

Precision:

* ``auto`` (the default, what every committed run trained with): bf16 autocast on CUDA, float32 on the CPU.
* ``fp32``: float32 everywhere.
* ``bf16``: ``torch.autocast(dtype=bfloat16)`` on the CPU and on CUDA. Parameters stay float32 (the
  trainable adapters, fusion layers and heads keep float32 master weights and AdamW state); matmuls run
  in bf16, LayerNorm, softmax-with-loss and the loss itself in float32 (``F.cross_entropy(logits.float())``,
  metrics from argmax). Frozen linear layers under the fast CPU kernels compute in bf16 from a bf16 copy
  of their frozen weights (``cpu_kernels.CpuLinear``), made once, not per step. A device without native
  bf16 (CPU: no ``avx512_bf16``/``amx_bf16``/ARM ``bf16``; CUDA: compute capability < 8.0) is refused
  (``BenchError``) rather than run slowly in emulation.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.errors import BenchError
from benchmark.modeling.compiled import attach, compiler_missing
from benchmark.modeling.cpu_kernels import KERNELS, set_cpu_kernels
from benchmark.modeling.first_token import LAST_LAYER, set_last_layer
from benchmark.spec.schema import DEFAULT_COMPUTE, PRECISIONS

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo: x86 flags, ARM "Features"


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 CPU flags this machine has (Linux: from /proc/cpuinfo; elsewhere none found)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text() if sys.platform.startswith("linux") else ""
        except OSError:
            cpuinfo = ""
    found = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found |= set(value.split())
    return [f for f in CPU_BF16_FLAGS if f in found]


def bf16_unsupported(device: torch.device) -> str | None:
    """Why ``device`` cannot run bf16 natively, or None when it can."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch sees no GPU"
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            return f"the GPU {torch.cuda.get_device_name(device)} has no native bf16 (compute capability < 8.0)"
        return None
    if device.type == "cpu":
        if not torch.backends.mkldnn.is_available():
            return "this torch build has no oneDNN (mkldnn), which bf16 on the CPU needs"
        if not cpu_bf16_flags():
            return ("this CPU has no native bf16 instructions (none of avx512_bf16, amx_bf16, bf16 in /proc/cpuinfo); "
                    "bf16 would be emulated and slower than float32")
        return None
    return f"bf16 is not supported on device type '{device.type}'"


@dataclass(frozen=True)
class Compute:
    cpu_kernels: str = DEFAULT_COMPUTE.cpu_kernels  # "fast" | "stock": benchmark/modeling/cpu_kernels.py (CPU)
    last_layer: str = DEFAULT_COMPUTE.last_layer  # "first_token" | "full": benchmark/modeling/first_token.py
    precision: str = DEFAULT_COMPUTE.precision  # "auto" | "fp32" | "bf16": see the module docstring
    compile: bool = DEFAULT_COMPUTE.compile  # torch.compile (inductor): benchmark/modeling/compiled.py

    def __post_init__(self):
        for name, allowed in (("cpu_kernels", KERNELS), ("last_layer", LAST_LAYER), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.compile and self.cpu_kernels == "fast":
            raise ValueError("compile runs the stock CPU kernels (dynamo cannot trace the fast ones), got cpu_kernels='fast'")

    @classmethod
    def of(cls, spec) -> Compute:
        """From a resolved ``spec.schema.ComputeSpec`` (precision None, as older results stored it: auto)."""
        return cls(spec.cpu_kernels, spec.last_layer, getattr(spec, "precision", None) or "auto",
                   bool(getattr(spec, "compile", False)))

    def apply(self, model, pad_id: int | None = None) -> None:
        """Switch a whole AdapterModel (after its modules are added: kernels wrap every linear layer); with
        ``compile`` its forward runs compiled from now on, batches padded with ``pad_id`` (compiled.py)."""
        set_last_layer(model, self.last_layer)
        set_cpu_kernels(model, self.cpu_kernels)
        if self.compile:
            attach(model, pad_id)

    def dtype(self, device: torch.device) -> torch.dtype:
        """The dtype matmuls run in on ``device``."""
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return torch.float32

    def check(self, device: torch.device) -> None:
        """Refuse bf16 on a device without native bf16, and compile where inductor has no compiler (one
        paragraph, before anything trains)."""
        missing = compiler_missing(device) if self.compile else None
        if missing:
            raise BenchError(f"compile is on, but torch.compile cannot run on {device}: {missing}", field="compile",
                             fix="install a C++ compiler (gcc/g++) for the CPU, triton for CUDA, or turn compile "
                                 "off (drop --compile / compute.compile)")
        why = bf16_unsupported(device) if self.precision == "bf16" else None
        if why:
            raise BenchError(f"precision bf16 was asked for on {device}, but {why}", field="precision",
                             fix="use --precision fp32 (or auto), or run on a device with native bf16 "
                                 "(a CPU with avx512_bf16/AMX, a GPU of compute capability 8.0 or newer)")

    def autocast(self, device: torch.device):
        """The context every forward of a run (training and evaluation) runs under."""
        if self.dtype(device) == torch.bfloat16 and device.type in ("cpu", "cuda"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        if device.type in ("cpu", "cuda"):
            return torch.autocast(device.type, enabled=False)
        return contextlib.nullcontext()

    def record(self, device: torch.device) -> dict[str, str]:
        return {"cpu_kernels": self.cpu_kernels if device.type == "cpu" else "stock", "last_layer": self.last_layer,
                "precision": self.precision, "matmul_dtype": str(self.dtype(device)).removeprefix("torch.")}
        # a compiled run also stores ``compile`` (backend, graphs, recompiles, shapes): compiled.Compiled.record


DEFAULT = Compute.of(DEFAULT_COMPUTE)  # what `afbench run` uses unless told otherwise (spec/schema.py)
