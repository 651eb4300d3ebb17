"""``afbench perf --mode compiled``: the numerics of the compiled path (``compute.compile``) against eager; no timings.

One small real task (default RTE), one method (default ST-A), a few seeds (default 3), trained twice through the
real runner (``afbench run`` in a child process, into a scratch results folder): eager with the stock CPU kernels
(what the compiled path computes with, so only compilation differs) and ``--compile``. Then, for every trained
run, the dev logits of its stored weights computed both ways (same weights, same batches; the compiled side
padded to its power-of-two buckets): the maximum absolute logit difference and the rows whose argmax differs.
And per seed the dev accuracy each path reached (trained eagerly vs trained compiled: different dropout masks,
so seed-level noise, not float rounding, separates them), with the mean and the largest difference.

The caps are those of the ``quick`` experiment's targets (300 training rows, 3 epochs, length 128, ST-A at
lr 1e-3). The compiled side adds inductor's first compile of each (mode, shape) graph (about a minute each for
tiny-bert on a busy 2-core machine, more for MiniLM; later seeds reuse inductor's on-disk cache).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmark.errors import BenchError
from benchmark.modeling.backbone import load_tokenizer
from benchmark.modeling.compiled import compiler_missing
from benchmark.modeling.compute import Compute
from benchmark.paths import write_atomic
from benchmark.perf.harness import Harness
from benchmark.perf.meta import Target
from benchmark.plan.build import Options, build_plan
from benchmark.runner.export import activate, build_model
from benchmark.spec import load_registry
from benchmark.training.loop import scored_batches
from benchmark.training.recipe import dev_split

EXPERIMENT = "compiled_numerics"
BACKBONES = {"minilm-l6": "minilm-l6", "bert-tiny-random": "tiny-bert"}  # perf's --backbone -> the backbone spec
# compiled and eager logits of the same weights: float rounding of other kernels (fp32)
LOGIT_TOLERANCE = 1e-4
# dev accuracy of compiled vs eager training, mean over the seeds: within this many points (seed noise of
# 300-row RTE runs is several points; this says the compiled path trains as well, not identically)
ACCURACY_TOLERANCE = 2.0


def experiment_yaml(task: str, method: str, backbone: str, seeds: list[int], rows: int, epochs: int,
                    eval_rows: int) -> str:
    return "\n".join([
        f"description: compiled vs eager numerics (afbench perf --mode compiled) on {task}",
        f"backbones: [{backbone}]", f"seeds: [{', '.join(map(str, seeds))}]",
        f"groups: [{{tasks: [{task}], methods: [{method}]}}]",
        f"caps: {{max_train_rows: {rows}, max_eval_rows: {eval_rows}, max_epochs: {epochs}, max_length: 128}}",
        f"overrides: {{{method}: {{lr: 1.0e-3}}}}",
        "device: cpu", ""])


def _train(specs: Path, results: Path, data_dir: Path | None, flags: list[str]) -> None:
    cmd = [sys.executable, "-m", "benchmark.cli", "run", EXPERIMENT, "--specs", str(specs), "--results-dir",
           str(results), *(["--data-dir", str(data_dir)] if data_dir else []), *flags]
    print("$", " ".join(cmd[2:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise BenchError(f"training for the compiled-numerics benchmark failed ({' '.join(flags)})",
                         fix="see the run's output above; afbench run with the same flags reproduces it")


def compare_run(run, reg, results: Path, data_dir) -> dict:
    """One trained run's dev logits, eager vs compiled, from its stored weights."""
    tok = load_tokenizer(reg.backbones[run.backbone])
    task = reg.tasks[run.task]
    split = dev_split(reg, data_dir, run, task, tok)
    bs = run.method.train.eval_batch_size
    got = {}
    for name in ("eager", "compiled"):
        model = build_model(run, reg, lambda rid: results / EXPERIMENT / rid, tok)
        activate(model, run.task)
        Compute("stock", run.compute.last_layer, "fp32", compile=name == "compiled").apply(model, tok.pad_token_id)
        # logits [rows, classes] in loop.predict's batches, eager or compiled as the model is, back in row order
        scored = list(scored_batches(model, split, run.task, tok.pad_token_id, bs, torch.device("cpu")))
        rows = [i for idx, _, _ in scored for i in idx]
        got[name] = torch.cat([logits for _, logits, _ in scored])[torch.tensor(rows).argsort()]
    diff = (got["eager"] - got["compiled"]).abs()
    flips = int((got["eager"].argmax(-1) != got["compiled"].argmax(-1)).sum())
    return {"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "max_abs_logit": float(got["eager"].abs().max()), "argmax_flips": flips, "rows": len(rows)}


def run_compiled(args) -> int:
    why = compiler_missing(torch.device("cpu"))
    if why:
        raise BenchError(f"perf --mode compiled needs torch.compile on the CPU, but {why}", field="--mode",
                         fix="install gcc/g++, or pick another mode")
    if args.backbone not in BACKBONES:
        raise BenchError(f"perf --mode compiled trains through the runner, on a backbone spec; --backbone "
                         f"{args.backbone} has none", field="--backbone", fix=f"use one of {', '.join(BACKBONES)}")
    from benchmark.data.sources import data_dir as resolve_data_dir

    data_dir = resolve_data_dir(getattr(args, "data_dir", None))
    h = Harness.of(args, "compiled")
    backbone = BACKBONES[args.backbone]
    seeds = [42 + i for i in range(args.seeds)]
    task, method, rows = args.tasks.split(",")[0], "st_a", args.train_rows
    work = Path(args.work_dir) if getattr(args, "work_dir", None) else Path(tempfile.mkdtemp(prefix="afbench-compiled-"))
    specs, results = work / "specs", work / "results"
    write_atomic(specs / "experiments" / f"{EXPERIMENT}.yaml",
                 experiment_yaml(task, method, backbone, seeds, rows, args.epochs, 500))
    _train(specs, results, data_dir, ["--cpu-kernels", "stock"])
    _train(specs, results, data_dir, ["--compile"])

    reg = load_registry([specs])
    exp = reg.get("experiment", EXPERIMENT)
    per_seed = []
    for compiled in (False, True):
        plan = build_plan(reg, exp, options=Options(cpu_kernels="stock", compile=compiled or None), data_root=data_dir)
        for run in plan.runs:
            rec = json.loads((results / EXPERIMENT / run.id / "result.json").read_text())
            per_seed.append({"seed": run.seed, "trained": "compiled" if compiled else "eager", "run_id": run.id,
                             "dev_accuracy": rec["best_metric"], "best_epoch": rec["best_epoch"],
                             "compile": rec.get("compile"), **compare_run(run, reg, results, data_dir)})
    acc = {side: {r["seed"]: r["dev_accuracy"] for r in per_seed if r["trained"] == side}
           for side in ("eager", "compiled")}
    deltas = [acc["compiled"][s] - acc["eager"][s] for s in seeds]
    max_logit = max(r["max_abs_logit_diff"] for r in per_seed)
    flips = sum(r["argmax_flips"] for r in per_seed)
    mean_delta = statistics.mean(deltas)
    recompiles = [r["compile"]["recompiles"] for r in per_seed if r["compile"]]
    lines = [f"# Compiled path: numerics against eager ({task}, {method}, {backbone}, {len(seeds)} seeds)", "",
             "No timings: what `compute.compile` (torch.compile, inductor) changes in the numbers. Eager runs use the "
             "stock CPU kernels, the ones the compiled path computes with. The drift guard below concerns timings, "
             "of which this report has none: these numbers do not depend on how busy the machine was.", "",
             f"Setup: {rows} training rows, {args.epochs} epochs, length 128, dev {per_seed[0]['rows']} rows, fp32, "
             f"lr 1e-3, grouped batches (compiled: padded to power-of-two lengths).", "",
             "| seed | dev acc eager | dev acc compiled | diff | max abs logit diff (eager-trained / compiled-trained "
             "weights) | argmax flips | recompiles |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in seeds:
        e = next(r for r in per_seed if r["seed"] == s and r["trained"] == "eager")
        c = next(r for r in per_seed if r["seed"] == s and r["trained"] == "compiled")
        lines.append(f"| {s} | {e['dev_accuracy']:.2f} | {c['dev_accuracy']:.2f} | {c['dev_accuracy'] - e['dev_accuracy']:+.2f} "
                     f"| {e['max_abs_logit_diff']:.2e} / {c['max_abs_logit_diff']:.2e} | "
                     f"{e['argmax_flips'] + c['argmax_flips']} | {c['compile']['recompiles']} "
                     f"({c['compile']['graphs']} graphs) |")
    lines += ["", f"Mean dev accuracy: eager {statistics.mean(acc['eager'].values()):.2f}, compiled "
                  f"{statistics.mean(acc['compiled'].values()):.2f} (mean difference {mean_delta:+.2f} points, "
                  f"largest {max(deltas, key=abs):+.2f}). Max abs logit difference over all runs and rows: "
                  f"{max_logit:.2e}; argmax flips: {flips}."]
    targets = [Target(f"same weights, compiled vs eager dev logits: max abs difference <= {LOGIT_TOLERANCE:g}",
                      max_logit <= LOGIT_TOLERANCE, f"{max_logit:.2e}"),
               Target(f"dev accuracy of compiled training within {ACCURACY_TOLERANCE:g} points of eager's "
                      f"(mean over {len(seeds)} seeds)", abs(mean_delta) <= ACCURACY_TOLERANCE, f"{mean_delta:+.2f}"),
               Target("recompiles bounded: at most one graph per (mode, bucketed shape)",
                      all(r["compile"]["graphs"] == len(r["compile"]["shapes"]) for r in per_seed if r["compile"]),
                      f"recompiles per run {recompiles}")]
    raw = {"task": task, "method": method, "backbone": backbone, "seeds": seeds, "rows": rows, "epochs": args.epochs,
           "runs": per_seed, "mean_accuracy_difference": mean_delta, "max_abs_logit_diff": max_logit,
           "argmax_flips": flips}
    h.write(lines, raw, targets, out=args.out)
    return 0
