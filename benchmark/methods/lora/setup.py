"""What a LoRA run adds to the model (one LoRA per target linear layer, named after the task) and trains."""

from __future__ import annotations

from benchmark.modeling.model import Modules
from benchmark.training.recipe import Setup


def setup(model, run, ctx) -> Setup:
    model.add_adapter(run.task, run.method.lora)
    model.set_active(run.task)
    return Setup(trains=Modules(adapters=[run.task]))
