"""``afbench perf --mode roofline``: how close to this machine's limit a training step runs.

1. The GEMM peak: the best of ``torch.mm`` and, on the CPU, oneDNN's linear (``harness.gemm_libraries``) over square shapes (n = 1024, 2048) and MiniLM's FFN shapes at
   batch 32 x 128 ([4096, 384] x [384, 1536] and back), in float32 and, where the device has it
   natively, bf16 (on CUDA also 4096 and 8192 squares, TF32 off for float32).
2. FLOPs per training step of each setup, counted analytically from the shapes (``benchmark/plan/flops.py``, the FLOP model the cost estimate uses too; the count
   is checked against ``torch.utils.flop_counter.FlopCounterMode`` in the tests): ours (fast fusion)
   and the reference (AdapterHub's fusion applies K and V to every adapter output).
3. Steps/s of ST-A, Houlsby, Full and Fusion N (ours and, with ``--reference-python``, AdapterHub),
   alternating rounds, median round. Achieved fraction = (FLOPs / step time) / GEMM peak of the dtype the
   matmuls ran in; "ceiling" = the steps/s at 100 % of that peak.
4. Where inductor has a compiler: the ST-A step compiled (``training_steps.ours(compiled=True)``), fp32, one
   round after each alternating one's worth, as its own row beside eager (issue 40: >= 60 % of the fp32 peak).

``reports/perf_roofline.md`` + the raw rounds in ``perf_roofline.json``.
"""

from __future__ import annotations

import statistics

import torch

from benchmark.modeling.compiled import compiler_missing
from benchmark.perf import harness
from benchmark.perf.harness import Harness, median
from benchmark.perf.inference_steps import profile_table
from benchmark.perf.meta import Target
from benchmark.perf.training_steps import WARMUP, ours, reference
from benchmark.plan.flops import Shape, step_flops

CPU_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 384, 1536), (4096, 1536, 384))
CUDA_SHAPES = ((2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192))


def run_roofline(args) -> int:
    bb, device, ns = harness.command_line(args)
    cuda = device.startswith("cuda")
    configs = [("ST-A", 0, "st_a"), ("Houlsby", 0, "houlsby"), ("Full", 0, "full")] + \
              [(f"Fusion N={n}", n, "fusion") for n in ns]
    precisions = harness.precisions(args, device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    seconds = getattr(args, "gemm_seconds", None) or 0.3
    shapes = CUDA_SHAPES if cuda else CPU_SHAPES
    h = Harness.of(args, "roofline", device)
    print("GEMM peak ...", flush=True)
    peak = {p: harness.gemm_peak(torch.float32 if p == "fp32" else torch.bfloat16, device, shapes, seconds) for p in precisions}
    shape = Shape.of(bb.config(), args.batch_size, args.length)
    flops = {impl: {name: step_flops(shape, kind, n=n, rf=16, impl=impl).total for name, n, kind in configs}
             for impl in ("ours", "reference")}
    common = dict(batch_size=args.batch_size, length=args.length, warmup=WARMUP, steps=args.steps, device=device)
    rounds = h.rounds_per_precision(
        args.rounds, precisions, lambda p: ours(bb, configs, **common, pooling="mean", precision=p),
        lambda p: reference(h, args, bb, [list(c) for c in configs], device, ("mean",),
                            precision=p if p == "bf16" else None)["mean"])
    why_not = compiler_missing(torch.device(device))
    compiled = []  # seconds per compiled ST-A step (fp32), one per round
    for r in range(args.rounds if why_not is None else 0):
        print(f"compiled ST-A, round {r + 1}/{args.rounds} ...", flush=True)
        compiled.append(ours(bb, configs[:1], **common, pooling="mean", precision="fp32", compiled=True)["ST-A"])
    profile: dict = {}  # where ours' ST-A step spends its time, eager and compiled (what bounds its fraction of the peak)
    if device == "cpu":
        ours(bb, configs[:1], **common, pooling="mean", precision="fp32", profile=profile)
        if compiled:
            got: dict = {}
            ours(bb, configs[:1], **common, pooling="mean", precision="fp32", compiled=True, profile=got)
            profile["ST-A, compiled"] = got["ST-A"]
    lines, targets = roofline_report(args, bb, configs, peak, flops, rounds, h.ref_version, precisions,
                                     compiled, why_not, profile)
    raw = {"mode": "roofline", "backbone": bb.label, "batch_size": args.batch_size, "length": args.length,
           "gemm_peak_gflops": peak, "flops_per_step": flops, "precisions": precisions,
           "warmup_steps": WARMUP,
           "timed_steps_per_round": args.steps, "unit": "seconds per training step (mean of the timed steps)",
           "rounds": rounds, "compiled_st_a_fp32_seconds": compiled, "compiled_missing": why_not,
           "st_a_step_profile_ms": profile}
    h.write(lines, raw, targets, args.out)
    return 0


def _best_library(peak: dict) -> str:
    """Which GEMM gave the peak (reports of before the oneDNN measurement have no ``library``: torch.mm)."""
    best = max(peak["per_shape"], key=peak["per_shape"].get)
    return peak.get("library", {}).get(best, "torch.mm")


def roofline_report(args, bb, configs, peak, flops, rounds, ref_version, precisions, compiled=(),
                    why_not: str | None = None, profile: dict | None = None) -> tuple[list[str], list[Target]]:
    lines = ["# Roofline: training steps against this machine's GEMM peak", "",
             f"{bb.label}, batch {args.batch_size}, length {args.length}, mean-pooling head, default fast CPU kernels; "
             f"{args.steps} timed steps after {WARMUP} warm-up per setup, {args.rounds} alternating rounds (median "
             f"round). Reference: adapters {ref_version or 'not run'}. Command: `afbench perf --mode roofline "
             "--reference-python <reference env python>`.", "",
             "GEMM peak (best GFLOP/s of `torch.mm` and, on the CPU, oneDNN's linear over "
             + ", ".join(peak[precisions[0]]["per_shape"]) + "): "
             + "; ".join(f"{p} {peak[p]['gflops']:.0f} ({_best_library(peak[p])})" for p in precisions) + ".", "",
             "FLOPs per step are counted from the shapes (`benchmark/plan/flops.py`: matrix products, forward and the "
             "backward autograd really computes — no weight gradients for frozen weights, no input gradients below "
             "the lowest trained module); achieved = FLOPs / median step time; ceiling = steps/s at 100 % of the "
             "peak of the dtype the matmuls ran in.", ""]
    for p in precisions:
        pk = peak[p]["gflops"]
        lines += [f"## {p}", "",
                  "| setup | GFLOP/step ours | ours steps/s | ours GFLOP/s | ours % of peak | ceiling steps/s "
                  "| GFLOP/step reference | reference steps/s | reference % of peak | ours / reference |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, *_ in configs:
            fo, fr = flops["ours"][name] / 1e9, flops["reference"][name] / 1e9
            so, sr = median(rounds, f"ours_{p}", name), median(rounds, f"reference_{p}", name)
            ours_cells = (f"{1 / so:.3f} | {fo / so:.3g} | {100 * fo / so / pk:.0f} %" if so else "- | - | -")
            ref_cells = (f"{1 / sr:.3f} | {100 * fr / sr / pk:.0f} %" if sr else "not run | -")
            ratio = f"{sr / so:.2f}x" if so and sr else "-"
            lines.append(f"| {name} | {fo:.3g} | {ours_cells} | {pk / fo:.3g} | {fr:.3g} | {ref_cells} | {ratio} |")
            if name == "ST-A" and p == "fp32" and compiled:
                sc = statistics.median(compiled)
                lines.append(f"| ST-A, compiled | {fo:.3g} | {1 / sc:.3f} | {fo / sc:.3g} | {100 * fo / sc / pk:.0f} % | "
                             f"{pk / fo:.3g} | - | - | - | " + (f"{so / sc:.2f}x eager |" if so else "- |"))
        lines.append("")
    if compiled or why_not:
        lines += ["\"ST-A, compiled\": the same step with its forward and loss through `torch.compile` (inductor, static "
                  "shapes, the stock CPU kernels, as `compute.compile` trains), one compilation per round in the warm-up; "
                  f"median of {len(compiled)} rounds after the alternating ones; the last column is its speed-up over "
                  "ours eager." if compiled else f"No compiled row: {why_not}.", ""]
    if profile:
        lines += ["Where ours' ST-A step (fp32) spends its time, eager and, where it ran, compiled: torch.profiler's self "
                  "CPU time per operator, ms per step over two steps (attention: the batched matmuls and softmax of the "
                  "dropout math path, or SDPA; linear: the GEMMs, which the compiled step calls as extern kernels; "
                  "dropout masks: the fast kernels' random integers and their comparison, or the stock `bernoulli_`; "
                  "other: everything else, the compiled step's fused kernels included).", "",
                  *profile_table(profile, "setup"), ""]
    st = median(rounds, "ours_fp32", "ST-A")
    frac = flops["ours"]["ST-A"] / 1e9 / st / peak["fp32"]["gflops"] if st else None
    cfrac = flops["ours"]["ST-A"] / 1e9 / statistics.median(compiled) / peak["fp32"]["gflops"] if compiled else None
    return lines, [Target("ST-A in fp32 at >= 70 % of the fp32 GEMM peak (the issue's quiet-machine estimate was "
                          "~72 %; informational)", None if frac is None else frac >= 0.7, f"{100 * frac:.0f} %" if frac else ""),
                   Target("compiled ST-A step in fp32 at >= 60 % of the fp32 GEMM peak",
                          None if cfrac is None else cfrac >= 0.6, f"{100 * cfrac:.0f} %" if cfrac else why_not or "")]
