"""``afbench perf --mode inference``: what fusion costs at inference, ours vs AdapterHub.

Per setup (ST-A, Fusion N = 2..16), forward only under ``torch.no_grad`` (why not ``inference_mode``: see
``inference_steps``; the report measures it on one layer): latency of batch 1 (median
of ``--reps`` calls) and throughput at ``--infer-batch`` (default 64) rows of ``--length`` tokens, in float32
and, where the device has it natively, bf16 autocast (the reference under the same autocast), alternating
rounds, median round; then peak memory of each side, setup and precision in a fresh process (CUDA: max
allocated; CPU: peak resident set). ``reports/perf_inference.md`` + ``perf_inference.json``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from benchmark.modeling.compute import Compute, bf16_unsupported
from benchmark.modeling.cpu_kernels import set_cpu_kernels
from benchmark.perf.backbones import PerfBackbone, perf_backbone
from benchmark.perf.inference_steps import linear_context_check, time_inference
from benchmark.perf.meta import Target, default_out, provenance, provenance_lines, target_lines, write_report
from benchmark.perf.steps import Head, peak_mib
from benchmark.perf.training_steps import build_setup


def ours(bb: PerfBackbone, configs, *, length: int, batch: int, reps: int, device: str, precision: str) -> dict:
    """{setup: {latency_ms, examples_per_second, peak_mib}} of our model (fast CPU kernels, eval mode)."""
    out = {}
    dev = torch.device(device)
    Compute(precision=precision).check(dev)
    for config in configs:
        model, _ = build_setup(bb, tuple(config))
        head = Head(model.hidden_size, pooling="mean")
        set_cpu_kernels(head, "fast")
        model.to(device).eval()
        head.to(device).eval()
        for p in list(model.parameters()) + list(head.parameters()):
            p.requires_grad_(False)  # inference: every linear layer is frozen (the oneDNN path on the CPU)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(dev)

        def forward(ids, mask):
            return head(model.encode(ids, mask), mask)

        res = time_inference(forward, model.config.vocab_size, length, batch, reps, device, precision)
        out[config[0]] = {**res, "peak_mib": peak_mib(device)}
    return out


def reference(args, bb: PerfBackbone, configs, device: str, precision: str, reps: int) -> tuple[dict, str]:
    cfg = {"configs": [list(c[:2]) for c in configs], "length": args.length, "batch": args.infer_batch,
           "reps": reps, "device": device, "precision": precision}
    proc = subprocess.run([args.reference_python, str(Path(__file__).with_name("reference_inference.py")),
                           json.dumps(bb.reference), json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the reference side failed:\n{proc.stdout}{proc.stderr}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return got["results"], got["adapters_version"]


def run_inference(args) -> int:
    bb = perf_backbone(getattr(args, "backbone", "minilm-l6"))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ns = [int(x) for x in args.adapters.split(",") if x]
    configs = [("ST-A", 0, "st_a")] + [(f"Fusion N={n}", n, "fusion") for n in ns]
    why_not = bf16_unsupported(torch.device(device))
    want = getattr(args, "precision", "auto") or "auto"
    if want == "bf16" and why_not:
        print(f"bf16 asked for, but {why_not}", file=sys.stderr)
        return 2
    precisions = ["fp32"] + (["bf16"] if want != "fp32" and why_not is None else [])
    kw = dict(length=args.length, batch=args.infer_batch, reps=args.reps, device=device)
    rounds, ref_version = [], None
    for r in range(args.rounds):
        got: dict[str, dict] = {}

        def run_ours():
            for p in precisions:
                print(f"round {r + 1}/{args.rounds}: ours {p} ...", flush=True)
                got[f"ours_{p}"] = ours(bb, configs, precision=p, **kw)

        def run_ref():
            nonlocal ref_version
            for p in precisions:
                print(f"round {r + 1}/{args.rounds}: the reference {p} ...", flush=True)
                got[f"reference_{p}"], ref_version = reference(args, bb, configs, device, p, args.reps)

        sides = [run_ours] + ([run_ref] if args.reference_python else [])
        try:
            for side in sides if r % 2 == 0 else sides[::-1]:
                side()
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        rounds.append(got)
    memory = {} if getattr(args, "no_memory", False) else memory_pass(args, bb, configs, device, precisions)
    check = context_check(bb, args, ns, device, precisions)
    prov = provenance(device, getattr(args, "argv", None))
    lines = inference_report(args, bb, device, configs, precisions, rounds, memory, ref_version, prov, check)
    raw = {"mode": "inference", "backbone": bb.label, "length": args.length, "throughput_batch": args.infer_batch,
           "reps": args.reps, "precisions": precisions, "reference": f"adapters {ref_version}" if ref_version else None,
           "grad_context": "torch.no_grad", "rounds": rounds, "peak_memory_mib": memory,
           "linear_context_check": check, "provenance": prov}
    write_report(Path(args.out or default_out("inference")), lines, raw)
    return 0


def context_check(bb: PerfBackbone, args, ns: list[int], device: str, precisions: list[str]) -> dict:
    """One ``nn.Linear`` on the input shape AdapterHub's fusion projects (rows, tokens, adapters, width; not
    contiguous), under ``no_grad`` and ``inference_mode``: why the timings use ``no_grad``."""
    width = bb.config().hidden_size
    shape = (min(args.infer_batch, 8), args.length, max(ns, default=2), width)
    return {"shape": list(shape), "ms": linear_context_check(shape, precisions, device)}


def memory_pass(args, bb: PerfBackbone, configs, device: str, precisions: list[str]) -> dict:
    """Peak memory per side, precision and setup, each in a fresh process (one warm-up + 1 call of each batch)."""
    out: dict[str, dict[str, float]] = {}
    for p in precisions:
        for config in configs:
            cfg = {"backbone": bb.name, "config": list(config), "length": args.length, "batch": args.infer_batch,
                   "device": device, "precision": p}
            proc = subprocess.run([sys.executable, "-m", "benchmark.perf.inference", json.dumps(cfg)],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                out.setdefault(f"ours_{p}", {})[config[0]] = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                print(proc.stderr[-2000:], file=sys.stderr)
            if args.reference_python:
                try:
                    res, _ = reference(args, bb, [config], device, p, 1)
                    out.setdefault(f"reference_{p}", {})[config[0]] = res[config[0]]["peak_mib"]
                except RuntimeError as e:
                    print(e, file=sys.stderr)
    return out


def inference_report(args, bb, device, configs, precisions, rounds, memory, ref_version, prov,
                     check: dict | None = None) -> list[str]:
    def med(key, name, field):
        vals = [r[key][name][field] for r in rounds if key in r]
        return statistics.median(vals) if vals else None

    lines = ["# Inference: latency and throughput of ST-A and Fusion, ours vs AdapterHub", "",
             f"{bb.label}, {args.length} tokens per row, mean-pooling head, eval mode under `torch.no_grad` "
             "(what transformers' pipelines and our evaluation use; see the note below); "
             f"latency: median of {args.reps} batch-1 calls; throughput: {args.reps} calls at batch {args.infer_batch}; "
             f"{args.rounds} alternating rounds (median round). Reference: adapters {ref_version or 'not run'}. "
             "Command: `afbench perf --mode inference --reference-python <reference env python>`.", "",
             *provenance_lines(prov), ""]
    targets = []
    for p in precisions:
        lines += [f"## {p}" + (" (autocast, both sides)" if p == "bf16" else ""), "",
                  "| setup | ours batch-1 ms | reference batch-1 ms | latency ratio | ours ex/s | reference ex/s "
                  "| throughput ratio | ours vs ST-A (ex/s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        base = med(f"ours_{p}", "ST-A", "examples_per_second")
        for name, *_ in configs:
            ol, rl = med(f"ours_{p}", name, "latency_ms"), med(f"reference_{p}", name, "latency_ms")
            ot, rt = med(f"ours_{p}", name, "examples_per_second"), med(f"reference_{p}", name, "examples_per_second")
            lines.append(f"| {name} | {ol:.2f} | " + (f"{rl:.2f} | {rl / ol:.2f}x" if rl else "not run | -")
                         + f" | {ot:.1f} | " + (f"{rt:.1f} | {ot / rt:.2f}x" if rt else "not run | -")
                         + f" | {ot / base:.2f}x |")
        big = [c[0] for c in configs if c[0].endswith("N=16")]
        if big:
            ot, rt = med(f"ours_{p}", big[0], "examples_per_second"), med(f"reference_{p}", big[0], "examples_per_second")
            targets.append(Target(f"Fusion N=16 inference throughput ({p}) ahead of AdapterHub's",
                                  None if rt is None else ot > rt, f"{ot / rt:.2f}x" if rt else ""))
        lines.append("")
    if memory:
        keys = sorted(memory)
        lines += ["Peak memory, MiB (each side, setup and precision in a fresh process; "
                  + ("CUDA: max allocated" if device.startswith("cuda") else
                     "CPU: peak resident set, interpreter and libraries included") + "):", "",
                  "| setup | " + " | ".join(k.replace("_", " ") for k in keys) + " |", "|---|" + "---:|" * len(keys)]
        for name, *_ in configs:
            lines.append(f"| {name} | " + " | ".join(f"{memory[k][name]:.0f}" if name in memory[k] else "-"
                                                    for k in keys) + " |")
        lines.append("")
    if check:
        ms = check["ms"]
        lines += ["Why `torch.no_grad` and not `torch.inference_mode`: one `nn.Linear` on a non-contiguous input "
                  f"of shape {tuple(check['shape'])} (rows, tokens, adapters, width: what AdapterHub's fusion "
                  "projects), median ms:", "",
                  "| context | " + " | ".join(precisions) + " |", "|---|" + "---:|" * len(precisions),
                  *(f"| `torch.{c}` | " + " | ".join(f"{ms[c][p]:.1f}" for p in precisions) + " |" for c in ms), "",
                  "Under `inference_mode` with bf16 autocast, PyTorch's `matmul` does not fold such an input "
                  "into one GEMM (the autocast weight does not require grad there) and copies the weight per "
                  "row instead. AdapterHub's fusion projects inputs laid out like this in every layer. "
                  "Both sides are timed under `no_grad`, so neither pays it.", ""]
    return lines + target_lines(targets)


def _memory_child(cfg: dict) -> None:
    got = ours(perf_backbone(cfg["backbone"]), [tuple(cfg["config"])], length=cfg["length"], batch=cfg["batch"],
               reps=1, device=cfg["device"], precision=cfg["precision"])
    print(json.dumps(next(iter(got.values()))["peak_mib"]))


if __name__ == "__main__":
    _memory_child(json.loads(sys.argv[1]))
