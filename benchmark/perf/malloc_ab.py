"""``afbench perf --mode malloc``: does glibc malloc tuning (``benchmark/modeling/malloc.py``) speed up
a training step? Each variant runs in its own fresh process (malloc settings are per process and
must be in place before the first large allocation), in alternating order over rounds:

* ``off``: glibc's defaults;
* ``GLIBC_TUNABLES``: the environment setting the notes measured (set for the child process only);
* ``tune_malloc()``: the same thresholds set with ``mallopt`` at start-up, what the runner would call.

The step is the headline one of ``afbench perf``: MiniLM-L6, mean-pooling head (the full last layer),
the default fast CPU kernels. Usage as a child: ``python -m benchmark.perf.malloc_ab CONFIG_JSON``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = ("off", "GLIBC_TUNABLES", "tune_malloc()")


def _child_env(variant: str) -> dict[str, str]:
    from benchmark.modeling.malloc import TUNABLES

    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    root = str(Path(__file__).resolve().parents[2])  # the checkout holding `benchmark`
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if variant == "GLIBC_TUNABLES":
        env["GLIBC_TUNABLES"] = TUNABLES
    return env


def run_child(variant: str, cfg: dict) -> dict[str, float]:
    cfg = {**cfg, "variant": variant}
    proc = subprocess.run([sys.executable, "-m", "benchmark.perf.malloc_ab", json.dumps(cfg)],
                          capture_output=True, text=True, env=_child_env(variant))
    if proc.returncode != 0:
        raise RuntimeError(f"the '{variant}' process failed:\n{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_malloc(args) -> int:
    from benchmark.perf.meta import default_out, machine, write_report
    from benchmark.perf.training_steps import WARMUP

    ns = [int(x) for x in args.adapters.split(",") if x]
    configs = [["ST-A", 0]] + ([[f"Fusion N={max(ns)}", max(ns)]] if ns else [])
    cfg = {"configs": configs, "batch": args.batch_size, "length": args.length, "warmup": WARMUP,
           "steps": args.steps}
    rounds = []
    for r in range(args.rounds):
        got = {}
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for v in order:
            print(f"round {r + 1}/{args.rounds}: {v} ...", flush=True)
            try:
                got[v] = run_child(v, cfg)
            except RuntimeError as e:
                print(e, file=sys.stderr)
                return 1
        rounds.append(got)
    med = lambda v, name: statistics.median(x[v][name] for x in rounds)  # noqa: E731
    lines = [
        "# glibc malloc tuning: training steps/s with and without",
        "",
        f"MiniLM-L6, mean-pooling head (full last layer), fast CPU kernels, batch {args.batch_size}, length "
        f"{args.length}, float32 on cpu ({machine('cpu')}); {args.steps} timed steps after {WARMUP} warm-up, each "
        f"variant in a fresh process, {args.rounds} rounds in alternating order (median round; raw seconds per "
        "step in the JSON beside this file). `GLIBC_TUNABLES` = "
        "`glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296`; `tune_malloc()` = the "
        "same thresholds by `mallopt` at start-up (`benchmark/modeling/malloc.py`; trim threshold 2 GiB - 1, "
        "the largest a C int holds). Not switched on by default.",
        "",
        "| setup | off steps/s | GLIBC_TUNABLES steps/s | tune_malloc() steps/s | speed-up, tunables (per round) "
        "| speed-up, tune_malloc() (per round) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, _ in configs:
        cells = []
        for v in VARIANTS[1:]:
            rr = [x["off"][name] / x[v][name] for x in rounds]
            cells.append(f"{med('off', name) / med(v, name):.2f}x ({min(rr):.2f}-{max(rr):.2f}x)")
        lines.append(f"| {name} | {1 / med('off', name):.3f} | {1 / med('GLIBC_TUNABLES', name):.3f} "
                     f"| {1 / med('tune_malloc()', name):.3f} | {cells[0]} | {cells[1]} |")
    raw = {"mode": "malloc", "machine": machine("cpu"), "batch_size": args.batch_size, "length": args.length,
           "warmup_steps": WARMUP, "timed_steps_per_round": args.steps,
           "unit": "seconds per training step (mean of the timed steps)", "rounds": rounds}
    write_report(Path(args.out or default_out("malloc")), lines, raw)
    return 0


def child(cfg: dict) -> None:
    """Time the steps in this process (malloc already tuned, or not, before torch allocates)."""
    if cfg["variant"] == "tune_malloc()":
        from benchmark.modeling.malloc import tune_malloc

        if not tune_malloc():
            raise SystemExit("mallopt is not available (not glibc): nothing to compare")
    from benchmark.perf.backbones import perf_backbone
    from benchmark.perf.training_steps import ours

    got = ours(perf_backbone("minilm-l6"), [tuple(c) for c in cfg["configs"]], cfg["batch"], cfg["length"],
               cfg["warmup"], cfg["steps"], pooling="mean")
    print(json.dumps(got))


if __name__ == "__main__":
    child(json.loads(sys.argv[1]))
