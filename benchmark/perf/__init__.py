"""``afbench perf`` / ``nox -s perf``: how fast we train and infer, ours vs AdapterHub ``adapters`` 1.3.0, and
how close to the machine's limit. Names only: ``MODES`` maps each ``--mode`` to its module (``run_<mode>``);
ARCHITECTURE.md, "perf", says what each measures and what ``harness.py`` shares.
"""

import importlib
import sys

MODES = {"steps": "training_steps", "epochs": "epochs", "roofline": "roofline", "inference": "inference",
         "compiled": "compiled"}


def run_perf(args) -> int:
    """``afbench perf --mode ...``: the mode's ``run_<mode>(args)``; a failed reference side is one message."""
    from benchmark.perf.harness import ReferenceFailed

    mode = getattr(args, "mode", "steps")
    try:
        return getattr(importlib.import_module(f"benchmark.perf.{MODES[mode]}"), f"run_{mode}")(args)
    except ReferenceFailed as e:  # its own output says why
        print(e, file=sys.stderr)
        return 1
