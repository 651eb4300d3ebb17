"""``afbench speed EXPERIMENT --only GLOB``: inference speed of finished runs as they serve, no retraining.

Every selected finished run whose weights are in its folder (any kind; the others are named and skipped) is rebuilt with what it evaluated active
(``prune.load_trained``: its fusion, static mixing, merged adapter or LoRA), every weight frozen as
``runner/serve.py`` serves it (``cpu_kernels.serving``; files written before 2026-12-07 lack ``"weights":
"frozen"``: their runs computed every linear layer with ``F.linear``), and timed on its own dev
split as ``afbench prune`` times a pruned fusion (``prune.speed``): examples/s at the run's eval batch size, batches
sorted by length, and the median ms of batch 1 over the first dev rows; the median of ``--rounds`` rounds whose run
order alternates, so a machine that drifts slows every run alike. The measurement, with the harness's provenance
and drift guard, goes to ``results/<experiment>/inference_speed.json`` (``records.SPEED``); the composition
table (``report/composition.py``) prints it per row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from benchmark.analysis.prune import load_trained, speed
from benchmark.errors import BenchError, CheckpointError
from benchmark.modeling.checkpoint import WEIGHTS
from benchmark.modeling.cpu_kernels import serving
from benchmark.modeling.model import Fuse
from benchmark.paths import write_atomic
from benchmark.perf.harness import Harness, median
from benchmark.perf.meta import provenance
from benchmark.plan.build import data_drift
from benchmark.plan.run import Plan
from benchmark.records import SPEED, is_finished
from benchmark.runner.borrowed import borrowed
from benchmark.spec.registry import Registry
from benchmark.training.recipe import dev_split


def run_speed(reg: Registry, plan: Plan, exp_dir: Path, data_dir, *, only: list[str], device: str, rounds: int,
              threads: int | None = None, argv: list[str] | None = None) -> Path:
    if rounds < 1:
        raise BenchError(f"--rounds {rounds} times nothing", field="--rounds", fix="give --rounds 1 or more (default 3)")
    named = plan.matching(only)
    matched = [r for r in named if is_finished(exp_dir / r.id)]
    chosen = [r for r in matched if (exp_dir / r.id / WEIGHTS).is_file() and r.task in reg.tasks]  # not MT-A's
    if not chosen:
        raise BenchError(f"no finished run of '{plan.experiment.name}' whose weights are on disk matches {only} "
                         f"({len(matched)} finished without weights)", field="--only",
                         fix=f"use globs over the finished ids afbench status {plan.experiment.name} lists, e.g. "
                             "'rte__*__s42__*', of runs trained on this machine (git keeps only stage-1 weights)")
    for line in data_drift(reg, chosen, data_dir):
        print(line, file=sys.stderr)
    skipped = [r.id for r in named if r not in chosen]
    if skipped:
        print(f"not timed (unfinished, no weights on disk, or a multi-task run): {', '.join(skipped)}", flush=True)
    dev_device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    h = Harness("speed", device, argv=argv)
    where = borrowed(plan, exp_dir.parent)  # dependencies finished under a lender (dependencies_from)
    loaded = []
    for run in chosen:  # every model first (and one untimed pass each), then the rounds: loading is not timed
        print(f"loading {run.id} ...", flush=True)
        try:
            model, tok, compute, setup = load_trained(reg, run, exp_dir / run.id, dev_device,
                                                      lambda rid: where.get(rid, exp_dir / rid))
        except CheckpointError as e:  # a dependency's weights (MT-A's encoder) or its modules.json missing
            print(f"not timed: {run.id}: {e.message}", flush=True)
            continue
        serving(model)  # as runner/serve.py serves it: eval, every weight frozen (prepacked oneDNN layers)
        dev = dev_split(reg, data_dir, run, reg.tasks[run.task], tok)
        speed(model, dev, run.task, tok.pad_token_id, run.method.train.eval_batch_size, dev_device, compute)
        loaded.append((run, model, dev, tok.pad_token_id, compute, setup))
    if not loaded:
        raise BenchError(f"none of the {len(chosen)} run(s) matched could be loaded (see the lines above)",
                         field="--only", fix="train the missing dependencies on this machine, or time other runs")
    timed: dict[str, list[dict]] = {run.id: [] for run, *_ in loaded}
    for r in range(rounds):  # the run order flips every round
        for run, model, dev, pad, compute, _ in loaded if r % 2 == 0 else loaded[::-1]:
            print(f"round {r + 1}/{rounds}: {run.id} ...", flush=True)
            timed[run.id].append(speed(model, dev, run.task, pad, run.method.train.eval_batch_size, dev_device,
                                       compute))
    runs = {run.id: {"task": run.task, "label": run.label, "seed": run.seed, "dev_rows": len(dev),
                     "eval_batch_size": run.method.train.eval_batch_size, "precision": compute.precision,
                     **{m: median(timed[run.id], m) for m in ("examples_per_second", "latency_ms_batch1")},
                     "rounds": timed[run.id],
                     "active": "fusion" if isinstance(setup, Fuse) else setup or "no adapter"}
            for run, _, dev, _, compute, setup in loaded}
    raw = {"experiment": plan.experiment.name, "rounds": rounds, "runs": runs, "weights": "frozen",
           "static_mixing": "stacked",
           "provenance": provenance(device, argv), "drift_guard": h.finish().as_dict()}
    path = exp_dir / SPEED
    write_atomic(path, json.dumps(raw, indent=1, sort_keys=True) + "\n")
    print(h.finish().line())
    return path
