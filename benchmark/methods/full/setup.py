"""A Full run adds nothing to the encoder and trains all of it (the recipe adds the head)."""

from __future__ import annotations

from benchmark.modeling.model import Modules
from benchmark.training.recipe import Setup


def setup(model, run, ctx) -> Setup:
    return Setup(trains=Modules(encoder=True))
