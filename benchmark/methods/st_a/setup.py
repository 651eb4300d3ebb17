"""What an ST-A run (Pfeiffer or Houlsby) adds: one adapter named after the task, trained with the head."""

from __future__ import annotations

from benchmark.modeling.model import Modules
from benchmark.training.recipe import Setup


def setup(model, run, ctx) -> Setup:
    model.add_adapter(run.task, run.method.adapter)
    model.set_active(run.task)
    return Setup(trains=Modules(adapters=[run.task]))
