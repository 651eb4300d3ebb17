"""What a (IA)^3 run adds to the model (one vector per target linear layer, named after the task) and trains."""

from __future__ import annotations

from benchmark.modeling.model import Modules
from benchmark.training.recipe import Setup


def setup(model, run, ctx) -> Setup:
    model.add_adapter(run.task, run.method.ia3)
    model.set_active(run.task)
    return Setup(trains=Modules(adapters=[run.task]))
