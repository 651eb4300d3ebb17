"""A Head run adds nothing to the encoder: the recipe adds the head and trains it alone."""

from __future__ import annotations

from benchmark.training.recipe import Setup


def setup(model, run, ctx) -> Setup:
    return Setup()
