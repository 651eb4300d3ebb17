"""The compiled path (``compute.compile: true``, ``afbench run --compile``): a run's forward (training step and
evaluation) through ``torch.compile`` with the inductor backend. docs/perf.md, "Compiled path", says what it
changes against eager (kernels, the stock CPU kernels, dropout's masks, the refused temperature annealing).

Every batch is padded to a power-of-two length (``bucket_length``: at least ``MIN_BUCKET``, at most the model's
position limit), so the graphs are compiled for static shapes and their number stays bounded: per head and mode
(train/eval) one per length bucket and distinct batch size. Every graph handed to inductor is counted
(``Compiled.record``): ``graphs`` in all, ``recompiles`` those compiled after the first call, ``shapes`` the
(mode, batch shape) pairs seen, stored as ``compile`` in result.json. A run that would pass the recompile limit
fails (``fail_on_recompile_limit_hit``) instead of silently falling back to eager for the rest. Attention
capture (fusion attention, pruning) runs eager: it reads tensors back to Python mid-forward.
"""

from __future__ import annotations

import shutil

import torch
from torch.nn import functional as F

BACKEND = "inductor"
MIN_BUCKET = 8  # shortest padded length: below it the kernels are launch-bound anyway
RECOMPILE_LIMIT = 512  # graphs per run (dynamo's default of 8 is below heads x buckets x batch sizes x modes)


def compiler_missing(device: torch.device) -> str | None:
    """Why inductor cannot compile on ``device``, or None when it can (the CPU needs a C++ compiler)."""
    if device.type == "cpu":
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx
        names = [c for c in (cxx if isinstance(cxx, tuple) else (cxx,)) if c] or ["g++"]
        if not any(shutil.which(n) for n in names):
            return f"no C++ compiler found on PATH (inductor looks for {', '.join(names)})"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed (inductor generates Triton kernels on CUDA)"
        return None
    return f"torch.compile is not set up for device type '{device.type}' here"


def bucket_length(length: int, limit: int | None = None) -> int:
    """The padded length of a batch whose longest row has ``length`` tokens: the next power of two (at least
    ``MIN_BUCKET``), capped at ``limit`` (the model's position limit) but never below ``length``."""
    width = max(MIN_BUCKET, 1 << (length - 1).bit_length())  # the smallest power of two >= length
    return width if limit is None else min(width, max(limit, length))


def pad_batch(batch: dict, pad_id: int, limit: int | None = None) -> dict:
    """``batch`` ([B, L] or, multiple choice, [B, K, L] inputs) padded on its last axis to ``bucket_length(L)``;
    labels and anything else without a length axis unchanged."""
    length = batch["input_ids"].shape[-1]
    extra = bucket_length(length, limit) - length
    if extra == 0:
        return batch
    pad = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}  # what each padded key is padded with
    return {k: F.pad(v, (0, extra), value=pad[k]) if k in pad and v.shape[-1] == length else v
            for k, v in batch.items()}


def _forward(model, head: str, inputs: dict) -> torch.Tensor:
    return model(head=head, **inputs)


class Compiled:
    """One run's compiled forward over ``model`` (attached as ``model.compiled`` by ``attach``)."""

    def __init__(self, model, pad_id: int | None):
        import torch._dynamo

        torch._dynamo.reset()  # this run's graphs only (inductor's on-disk cache still serves identical ones)
        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, RECOMPILE_LIMIT)
        cfg.fail_on_recompile_limit_hit = True
        config = getattr(model, "config", None)
        self.pad_id = pad_id if pad_id is not None else (getattr(config, "pad_token_id", None) or 0)
        self.limit = getattr(config, "max_position_embeddings", None)
        self.graphs, self.recompiles, self.calls = 0, 0, 0
        self.shapes: set[tuple[str, tuple[int, ...]]] = set()
        self._fn = torch.compile(_forward, backend=self._backend, dynamic=False)

    def _backend(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.graphs += 1
        if self.calls > 1:
            self.recompiles += 1
        return compile_fx(gm, example_inputs)

    def pad(self, batch: dict) -> dict:
        return pad_batch(batch, self.pad_id, self.limit)

    def __call__(self, model, head: str, inputs: dict) -> torch.Tensor:
        self.calls += 1
        self.shapes.add(("train" if model.training else "eval", tuple(inputs["input_ids"].shape)))
        return self._fn(model, head, inputs)

    def record(self) -> dict:
        """What result.json stores as ``compile``."""
        return {"backend": BACKEND, "graphs": self.graphs, "recompiles": self.recompiles,
                "shapes": [f"{mode} {'x'.join(map(str, s))}" for mode, s in sorted(self.shapes)],
                "torch": torch.__version__}


def attach(model, pad_id: int | None) -> None:
    """Run ``model``'s forward compiled from now on (``training.loop`` looks for it; ``Compute.check`` has
    checked for a compiler)."""
    model.__dict__["compiled"] = Compiled(model, pad_id)  # not a module: no state-dict entry


def compiled_of(model) -> Compiled | None:
    return model.__dict__.get("compiled")
