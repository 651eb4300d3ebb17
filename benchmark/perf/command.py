"""``afbench perf --mode ...``: which module measures what."""

from __future__ import annotations

import importlib
import sys

MODES = {"steps": "training_steps", "epochs": "epochs", "roofline": "roofline", "inference": "inference"}


def run_perf(args) -> int:
    from benchmark.perf.harness import ReferenceFailed

    mode = getattr(args, "mode", "steps")
    module = importlib.import_module(f"benchmark.perf.{MODES[mode]}")
    try:
        return getattr(module, f"run_{mode}")(args)
    except ReferenceFailed as e:  # the reference side's own output says why
        print(e, file=sys.stderr)
        return 1
