"""``afbench perf`` / ``nox -s perf``: how fast we train and infer, ours vs AdapterHub ``adapters`` 1.3.0, and
how close to the machine's limit. Names only; each mode lives in its own module:

* ``steps`` (default): training steps/s of ST-A and Fusion N, fp32 and bf16 (``training_steps.py``,
  ``reports/perf.md``); ``steps.py`` is the torch-only step both sides import, ``reference.py`` the
  AdapterHub side in its own environment.
* ``epochs``: seconds per epoch on real data under three paddings (``epochs.py``).
* ``roofline``: GEMM peak of this machine, analytic FLOPs per step (``flops.py``), achieved fraction
  (``roofline.py``, ``reports/perf_roofline.md``).
* ``inference``: latency (batch 1) and throughput (batch 64) of ST-A and Fusion N, fp32 and bf16, and
  peak memory (``inference.py``, ``reports/perf_inference.md``).
* ``compiled``: numerics of the compiled path (``compute.compile``) against eager on one real task over seeds:
  max logit difference and dev accuracy, no timings (``compiled.py``, ``reports/perf_compiled.md``).

``harness.py`` is what every mode (and ``afbench prune``, ``benchmark/analysis/prune.py``) measures with: the
reference subprocess, alternating rounds, medians, the memory pass, the drift guard (fp32 GEMM peak before and
after) and the report's provenance; ``meta.py`` is what every report carries (revision, date, CPU, versions,
command, targets met or missed); ``backbones.py`` builds the encoders, ``gpu_check.py`` is ``nox -s gpu``.
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
