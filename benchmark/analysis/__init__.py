"""Analyses of trained runs: what a finished run's stored weights show when loaded again and probed, beyond
the numbers its record holds (which ``report/`` reads without loading a model).

* ``afbench prune``: the pruned fusion after training, dev accuracy and inference speed per k adapters kept
  (``prune.py``; the pruning maths is ``modeling/prune.py``).

A model comes back from its run folder through ``runner.export.build_model``, the one rebuild that ``afbench
export`` and ``afbench predict`` use too; timings go through ``perf.harness`` (drift guard, provenance).
"""
