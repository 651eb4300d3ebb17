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
import sys

import torch

from benchmark.modeling.compute import Compute
from benchmark.modeling.cpu_kernels import serving, set_cpu_kernels
from benchmark.perf import harness
from benchmark.perf.backbones import PerfBackbone, perf_backbone
from benchmark.perf.harness import Harness, median, memory_lines
from benchmark.perf.inference_steps import (
    _autocast,
    linear_context_check,
    profile_ms,
    profile_table,
    time_inference,
)
from benchmark.perf.meta import Target
from benchmark.perf.steps import Head, peak_mib, random_ids
from benchmark.perf.training_steps import build_setup


def served(bb: PerfBackbone, config):
    """(forward(ids, mask) -> logits, model, head): our model with one setup active as it serves: eval mode,
    every weight frozen (the oneDNN path of the fast CPU kernels), mean-pooling head."""
    model, _ = build_setup(bb, tuple(config))
    head = Head(model.hidden_size, pooling="mean")
    set_cpu_kernels(head, "fast")
    serving(model, head)  # as runner/serve.py serves a finished run: eval, frozen, oneDNN linear layers
    return (lambda ids, mask: head(model.encode(ids, mask), mask)), model, head


def ours(bb: PerfBackbone, configs, *, length: int, batch: int, reps: int, device: str, precision: str) -> dict:
    """{setup: {latency_ms, examples_per_second, peak_mib}} of our model (fast CPU kernels, eval mode)."""
    out = {}
    dev = torch.device(device)
    Compute(precision=precision).check(dev)
    for config in configs:
        forward, model, head = served(bb, config)
        model.to(device)
        head.to(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(dev)
        res = time_inference(forward, model.config.vocab_size, length, batch, reps, device, precision)
        out[config[0]] = {**res, "peak_mib": peak_mib(device)}
    return out


def reference(h: Harness, args, bb: PerfBackbone, configs, device: str, precision: str, reps: int) -> dict:
    cfg = {"configs": [list(c[:2]) for c in configs], "length": args.length, "batch": args.infer_batch,
           "reps": reps, "device": device, "precision": precision}
    return h.reference("reference_inference.py", bb.reference, cfg)


def run_inference(args) -> int:
    bb, device, ns = harness.command_line(args)
    configs = [("ST-A", 0, "st_a")] + [(f"Fusion N={n}", n, "fusion") for n in ns]
    precisions = harness.precisions(args, device)
    kw = dict(length=args.length, batch=args.infer_batch, reps=args.reps, device=device)
    h = Harness.of(args, "inference", device)
    rounds = h.rounds_per_precision(args.rounds, precisions, lambda p: ours(bb, configs, precision=p, **kw),
                                    lambda p: reference(h, args, bb, configs, device, p, args.reps))
    memory = {} if getattr(args, "no_memory", False) else h.memory(
        "inference", precisions, configs, {"backbone": bb.name, "length": args.length, "batch": args.infer_batch,
                                           "device": device},
        lambda c, p: reference(h, args, bb, [c], device, p, 1)[c[0]]["peak_mib"])
    # one nn.Linear on the input shape AdapterHub's fusion projects (rows, tokens, adapters, width; not contiguous),
    # under no_grad and inference_mode: why the timings use no_grad
    shape = (min(args.infer_batch, 8), args.length, max(ns, default=2), bb.config().hidden_size)
    check = {"shape": list(shape), "ms": linear_context_check(shape, precisions, device)}
    # ms per forward of ours ST-A at the throughput batch in attention, linear layers and the rest, per precision
    # (CPU only: what bounds the ST-A ratio, since both sides call the same attention kernel)
    profile = {}
    if device == "cpu":
        forward, model, _ = served(bb, configs[0])
        ids, mask = random_ids(torch.Generator().manual_seed(1), model.config.vocab_size, args.infer_batch,
                               args.length, "cpu")
        for p in precisions:
            with torch.no_grad(), _autocast("cpu", p):
                profile[p] = profile_ms(lambda: forward(ids, mask))
    lines, targets = inference_report(args, bb, device, configs, precisions, rounds, memory, h.ref_version, check,
                                      profile)
    raw = {"st_a_profile_ms": profile, "mode": "inference", "backbone": bb.label, "length": args.length, "throughput_batch": args.infer_batch,
           "reps": args.reps, "precisions": precisions, "grad_context": "torch.no_grad", "rounds": rounds, "peak_memory_mib": memory,
           "linear_context_check": check}
    h.write(lines, raw, targets, args.out)
    return 0


ST_A_TARGET = 1.2  # ST-A inference, ours / AdapterHub, at batch 1 (latency) and the throughput batch


def inference_report(args, bb, device, configs, precisions, rounds, memory, ref_version, check: dict,
                     profile: dict) -> tuple[list[str], list[Target]]:
    lines = ["# Inference: latency and throughput of ST-A and Fusion, ours vs AdapterHub", "",
             f"{bb.label}, {args.length} tokens per row, mean-pooling head, eval mode under `torch.no_grad` "
             "(what transformers' pipelines and our evaluation use; see the note below); "
             f"latency: median of {args.reps} batch-1 calls; throughput: {args.reps} calls at batch {args.infer_batch}; "
             f"{args.rounds} alternating rounds (median round). Reference: adapters {ref_version or 'not run'}. "
             "Command: `afbench perf --mode inference --reference-python <reference env python>`.", ""]
    targets = []
    for p in precisions:
        lines += [f"## {p}" + (" (autocast, both sides)" if p == "bf16" else ""), "",
                  "| setup | ours batch-1 ms | reference batch-1 ms | latency ratio | ours ex/s | reference ex/s "
                  "| throughput ratio | ours vs ST-A (ex/s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        base = median(rounds, f"ours_{p}", "ST-A", "examples_per_second")
        for name, *_ in configs:
            ol, rl = median(rounds, f"ours_{p}", name, "latency_ms"), median(rounds, f"reference_{p}", name, "latency_ms")
            ot, rt = median(rounds, f"ours_{p}", name, "examples_per_second"), median(rounds, f"reference_{p}", name, "examples_per_second")
            lines.append(f"| {name} | {ol:.2f} | " + (f"{rl:.2f} | {rl / ol:.2f}x" if rl else "not run | -")
                         + f" | {ot:.1f} | " + (f"{rt:.1f} | {ot / rt:.2f}x" if rt else "not run | -")
                         + f" | {ot / base:.2f}x |")
            if name == "ST-A":  # latency: reference ms / ours; throughput: ours ex/s / reference
                for what, ratio in (("batch-1 latency", rl and rl / ol),
                                    (f"throughput at batch {args.infer_batch}", rt and ot / rt)):
                    targets.append(Target(f"ST-A inference {what} ({p}) >= {ST_A_TARGET}x AdapterHub's",
                                          None if not ratio else ratio >= ST_A_TARGET, f"{ratio:.3f}x" if ratio else ""))
        big = [c[0] for c in configs if c[0].endswith("N=16")]
        if big:
            ot, rt = median(rounds, f"ours_{p}", big[0], "examples_per_second"), median(rounds, f"reference_{p}", big[0], "examples_per_second")
            targets.append(Target(f"Fusion N=16 inference throughput ({p}) ahead of AdapterHub's",
                                  None if rt is None else ot > rt, f"{ot / rt:.2f}x" if rt else ""))
        lines.append("")
    if profile:
        lines += [f"Where ours ST-A forward spends its time at batch {args.infer_batch} (torch.profiler, self CPU time "
                  "per operator, ms per forward): attention is PyTorch's SDPA kernel, the one AdapterHub's BERT "
                  "calls too, so only the linear layers and the rest can widen the ST-A ratio.", "",
                  *profile_table(profile, "precision"), ""]
    if memory:
        lines += [*memory_lines(memory, [c[0] for c in configs], device, "each side, setup and precision in a fresh "
                                "process")[1:], ""]
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
    return lines, targets


def _memory_child(cfg: dict) -> None:
    got = ours(perf_backbone(cfg["backbone"]), [tuple(cfg["config"])], length=cfg["length"], batch=cfg["batch"],
               reps=1, device=cfg["device"], precision=cfg["precision"])
    print(json.dumps(next(iter(got.values()))["peak_mib"]))


if __name__ == "__main__":
    _memory_child(json.loads(sys.argv[1]))
