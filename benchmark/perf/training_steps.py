"""``afbench perf --mode steps`` (the default; ``nox -s perf``): how fast we train, ours vs AdapterHub ``adapters`` 1.3.0.

Training steps per second of ST-A and Fusion (N adapters), batch 32, length 128, on identical random token
ids; writes ``reports/perf.md`` and the raw per-round timings ``reports/perf.json``. Both sides time the same
step: forward, cross-entropy through the same two-layer head, backward and AdamW over the trained parameters
only (the adapter for ST-A; fusion + head for Fusion, whose adapters are frozen). The headline table is the
configuration the committed MiniLM runs train: the head reads the masked **mean** of the last layer
(``specs/backbones/minilm-l6.yaml``), so every position of the last layer is computed, with the default fast
CPU kernels (``benchmark/modeling/cpu_kernels.py``); beside it ours with stock kernels. A second, separately
labelled table is the first-token setup (a [CLS] head, the last layer computed at position 0 only:
``benchmark/modeling/first_token.py``), which is what BERT/RoBERTa runs as in the paper use and no committed
MiniLM run does.

Timings on a shared machine drift by 10-20 % over minutes, so the sides run in alternating rounds
(``--rounds``; the order of ours and the reference flips every round), tables show the median
round, and each ratio to the reference is given both as the ratio of the medians and per round
(median, lowest, highest of the per-round ratios).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from benchmark.modeling.compute import DEFAULT, Compute, bf16_unsupported
from benchmark.modeling.cpu_kernels import set_cpu_kernels
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.perf.backbones import PerfBackbone
from benchmark.perf.harness import Harness, command_line, median, memory_lines, precisions
from benchmark.perf.inference_steps import profile_ms
from benchmark.perf.meta import REPORTS, Target, machine
from benchmark.perf.steps import Head, make_batch, peak_mib, setup_kind, time_steps
from benchmark.spec.schema import AdapterParams, FusionParams

TARGETS = "Fusion N=16 >= 5x the reference; Fusion N=16 step <= 1.6x a single-adapter step; ST-A >= 1.5x the reference"
WARMUP = 1


def build_setup(bb: PerfBackbone, config, compute: Compute = DEFAULT):
    """(AdapterModel with the setup active and only its trained modules trainable, trained parameters)."""
    _, n, kind = config[0], config[1], setup_kind(config)
    torch.manual_seed(0)
    model = AdapterModel(bb.make())
    names = [f"a{i}" for i in range(max(n, 1))]
    if kind == "full":
        sel = Modules(encoder=True)
    else:
        for a in names:
            model.add_adapter(a, AdapterParams(type="houlsby" if kind == "houlsby" else "pfeiffer", reduction_factor=16))
        if kind == "fusion":
            model.add_fusion("f", names, FusionParams())
            model.set_active(Fuse("f"))
            sel = Modules(fusions=["f"])
        else:
            model.set_active(names[0])
            sel = Modules(adapters=names[:1])
    model.train_only(sel)
    compute.apply(model)
    return model, [p for p in model.parameters() if p.requires_grad]


def ours(bb: PerfBackbone, configs, batch_size, length, warmup, steps, device="cpu", compute: Compute = DEFAULT,
         pooling: str = "mean", precision: str | None = None, memory: dict | None = None, compiled: bool = False,
         profile: dict | None = None) -> dict[str, float]:
    """Seconds per training step of each (name, N[, kind]) setup; N = 0 is ST-A. ``precision`` picks the
    autocast (``compute.py``; default: float32 on every device); ``memory``, when given, receives each setup's
    peak memory in MiB (CUDA: max allocated; CPU: the process's peak RSS so far).
    ``compiled``: the forward and loss through ``torch.compile`` (inductor, static shapes) on the stock kernels,
    as ``compute.compile`` runs them (``modeling/compiled.py``); the warm-up steps include the compilation.
    ``profile``, when given, receives each setup's ``inference_steps.profile_ms`` of two more steps."""
    out = {}
    if compiled:
        compute = Compute("stock", compute.last_layer)
    prec = Compute(compute.cpu_kernels, compute.last_layer, precision or "fp32")
    dev = torch.device(device)
    prec.check(dev)
    for config in configs:
        name = config[0]
        model, trained = build_setup(bb, config, compute)
        head = Head(model.hidden_size, pooling=pooling)
        set_cpu_kernels(head, compute.cpu_kernels)
        model.to(device).train()
        head.to(device).train()
        opt = torch.optim.AdamW(trained + list(head.parameters()), lr=1e-4, fused=device.startswith("cuda"))
        batch = make_batch(model.config.vocab_size, batch_size, length, device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(dev)

        def task_loss(model=model, head=head, batch=batch):
            h = model.encode(batch["input_ids"], batch["attention_mask"], first_token_only=pooling == "cls")
            return torch.nn.functional.cross_entropy(head(h, batch["attention_mask"]).float(), batch["labels"])

        forward = torch.compile(task_loss, dynamic=False) if compiled else task_loss

        def step():
            with prec.autocast(dev):
                loss = forward()
            if setup_kind(config) == "fusion":
                loss = loss + 0.01 * model.fusion_regularization("f")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[name] = time_steps(step, warmup, steps, device)
        if profile is not None:
            profile[name] = profile_ms(step, reps=2)
        if memory is not None:
            memory[name] = peak_mib(device)
    return out


def reference(h: Harness, args, bb: PerfBackbone, configs, device: str, poolings=("mean", "cls"),
              precision: str | None = None, memory: bool = False, steps: int | None = None) -> dict:
    """One round of the AdapterHub side (``reference.py``): {pooling: {setup: seconds}} (``memory``:
    {"seconds", "peak_mib"} per setup). ``precision`` "bf16": its forward under bf16 autocast."""
    cfg = {"configs": configs, "batch": args.batch_size, "length": args.length, "warmup": WARMUP,
           "steps": args.steps if steps is None else steps, "device": device, "poolings": list(poolings),
           "precision": precision, "memory": memory}
    return h.reference("reference.py", bb.reference, cfg)


def per_round_ratios(ref: list[dict[str, float]], mine: list[dict[str, float]], name: str) -> list[float]:
    """Speed-up of ours over the reference in each round (reference seconds / our seconds)."""
    return [r[name] / m[name] for r, m in zip(ref, mine)]


def _ratio_cells(ref: list[dict], mine: list[dict], name: str) -> str:
    """'x.xx | a.aa (lo-hi)': ratio of the medians, then median (range) of the per-round ratios."""
    if not ref:
        return "not run | not run | not run"
    rr = per_round_ratios(ref, mine, name)
    return (f"{1 / median(ref, name):.3f} | {median(ref, name) / median(mine, name):.2f}x | "
            f"{statistics.median(rr):.2f}x ({min(rr):.2f}-{max(rr):.2f}x)")


def run_steps(args) -> int:
    bb, device, ns = command_line(args)
    configs = [("ST-A", 0)] + [(f"Fusion N={n}", n) for n in ns]
    common = dict(batch_size=args.batch_size, length=args.length, warmup=WARMUP, steps=args.steps, device=device)
    # name -> how ours runs; on CUDA the CPU kernels do not apply, bf16 autocast does
    first_token = not getattr(args, "no_first_token", False)
    precision = getattr(args, "precision", None) or "auto"
    variants = {"ours": dict(pooling="mean")}  # float32
    if first_token:
        variants["ours_first_token"] = dict(pooling="cls", compute=Compute("fast", "first_token"))
    if not device.startswith("cuda"):
        variants["ours_stock"] = dict(pooling="mean", compute=Compute("stock", "full"))
    precs = precisions(args, device)
    bf16 = "bf16" in precs
    if bf16:  # ours and the reference under the same autocast
        variants["ours_bf16"] = dict(pooling="mean", precision="bf16")
    h = Harness.of(args, "steps", device)

    def run_ours(r, got):
        for v, kw in variants.items():
            print(f"round {r + 1}/{args.rounds}: {v} on {device} ...", flush=True)
            got[v] = ours(bb, configs, **common, **kw)

    def run_ref(r, got):
        print(f"round {r + 1}/{args.rounds}: the reference (adapters 1.3.0) ...", flush=True)
        for pooling, sec in reference(h, args, bb, configs, device, ("mean", "cls") if first_token else ("mean",)).items():
            got[f"reference_{pooling}"] = sec
        if bf16:
            print(f"round {r + 1}/{args.rounds}: the reference under bf16 autocast ...", flush=True)
            got["reference_bf16"] = reference(h, args, bb, configs, device, ("mean",), precision="bf16")["mean"]

    rounds = h.rounds(args.rounds, run_ours, run_ref)
    memory = {} if getattr(args, "no_memory", False) else h.memory(
        "training_steps", precs, configs, {"backbone": bb.name, "batch": args.batch_size, "length": args.length,
                                                "device": device},
        lambda c, p: reference(h, args, bb, [list(c)], device, ("mean",), precision=p, memory=True,
                               steps=1)["mean"][c[0]]["peak_mib"])
    lines = steps_report(args, bb, configs, device, rounds, h.ref_version)
    more, targets = bf16_section(configs, device, rounds, memory,
                                 bf16_unsupported(torch.device(device)) if precision != "fp32" else "not asked for")
    raw = {"mode": "steps", "backbone": bb.label, "device": device, "machine": machine(device),
           "torch": torch.__version__,
           "batch_size": args.batch_size, "length": args.length, "warmup_steps": WARMUP,
           "timed_steps_per_round": args.steps, "unit": "seconds per training step (mean of the timed steps)",
           "rounds": rounds, "peak_memory_mib": memory}
    h.write(lines + more, raw, targets, args.out)
    return 0


def steps_report(args, bb: PerfBackbone, configs, device, rounds, ref_version) -> list[str]:
    col = lambda key: [r[key] for r in rounds if key in r]  # noqa: E731
    mine, ref_mean, ref_cls, first = col("ours"), col("reference_mean"), col("reference_cls"), col("ours_first_token")
    alt = "ours_bf16" if device.startswith("cuda") else "ours_stock"
    alt_label = "ours, bf16 autocast, steps/s" if alt == "ours_bf16" else "ours, stock kernels, steps/s"
    raw_name = Path(args.out or REPORTS["steps"]).with_suffix(".json").name
    lines = [
        "# Training-step throughput: ours vs AdapterHub",
        "",
        f"{bb.label}, batch {args.batch_size}, length {args.length}, float32 on {device} ({machine(device)}), "
        f"{args.steps} timed steps after {WARMUP} warm-up per setup and round, {args.rounds} alternating rounds "
        f"(median round shown; the raw per-round seconds per step are in `{raw_name}`). "
        f"Reference: adapters {ref_version or 'not run'}; both sides train the same two-layer head, Pfeiffer "
        "adapters rf 16, fusion over N of them.",
        "",
        f"Command: `nox -s perf` (= `afbench perf --reference-python <reference env python>`). Targets: {TARGETS}.",
        "",
        "## As the committed runs train (headline)" if bb.pooling == "mean" else
        "## Mean-pooling head (every position of the last layer computed)",
        "",
        ("The head reads the masked mean of the last layer, as every committed MiniLM run does "
         "(`pooling: mean`), so" if bb.pooling == "mean" else
         "The head reads the masked mean of the last layer (BERT runs as in the paper read [CLS]: second "
         "table), so") + " the whole last layer is computed; ours uses the defaults of `afbench run` "
        "(fast CPU kernels: dropout masks from 32-bit random integers, frozen linear layers on oneDNN). "
        "The reference trains the same mean-pooling head. \"ours / reference\" is the ratio of the median "
        "rounds; \"per round\" is the median (lowest-highest) of the ratios within each round.",
        "",
        f"| setup | ours steps/s | ours seq/s | {alt_label} | reference steps/s | ours / reference "
        "| per round | ours vs one adapter (time) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    single = median(mine, "ST-A")
    for name, _ in configs:
        m = median(mine, name)
        alt_cell = f"{1 / median(col(alt), name):.3f}" if col(alt) else "not run"
        lines.append(f"| {name} | {1 / m:.3f} | {args.batch_size / m:.1f} | {alt_cell} | "
                     f"{_ratio_cells(ref_mean, mine, name)} | {m / single:.2f}x |")
    if not first:
        return lines + ["", "First-token setup not run (`--no-first-token`)."]
    lines += [
        "",
        "## First-token setup ([CLS] head; not what the committed MiniLM runs use)" if bb.pooling == "mean" else
        "## First-token setup ([CLS] head, as BERT runs in the paper)",
        "",
        "The head reads position 0 only, as BERT/RoBERTa runs in the paper do; ours then computes the last "
        "layer at position 0 only (`--last-layer first_token`, the default, `benchmark/modeling/first_token.py`; "
        "same loss and gradients). The reference computes every position either way and trains the same "
        "[CLS] head.",
        "",
        "| setup | ours, first token, steps/s | reference, [CLS] head, steps/s | ours / reference | per round |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, _ in configs:
        lines.append(f"| {name} | {1 / median(first, name):.3f} | {_ratio_cells(ref_cls, first, name)} |")
    return lines


# ------------------------------------------------------------------ bf16 and memory
def bf16_section(configs, device, rounds, memory: dict, why_not: str | None) -> tuple[list[str], list[Target]]:
    col = lambda key: [r[key] for r in rounds if key in r]  # noqa: E731
    mine, m16, ref, ref16 = col("ours"), col("ours_bf16"), col("reference_mean"), col("reference_bf16")
    lines = ["", "## bf16 (autocast) and peak memory", ""]
    if not m16:
        lines += [f"bf16 not measured: {why_not}.", ""]
    else:
        lines += ["Both sides under `torch.autocast(dtype=torch.bfloat16)` around the forward (the loss in float32), "
                  "float32 master weights and AdamW; ours with `--precision bf16` (frozen oneDNN linear layers in "
                  "bf16 from a cached copy, `benchmark/modeling/cpu_kernels.py`). Ratios of the median rounds.", "",
                  "| setup | ours fp32 steps/s | ours bf16 steps/s | bf16 / fp32 | reference bf16 steps/s "
                  "| ours bf16 / reference bf16 | ours bf16 / reference fp32 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, *_ in configs:
            a, b = median(mine, name), median(m16, name)
            rb = f"{1 / median(ref16, name):.3f}" if ref16 else "not run"
            vs16 = f"{median(ref16, name) / b:.2f}x" if ref16 else "not run"
            vs32 = f"{median(ref, name) / b:.2f}x" if ref else "not run"
            lines.append(f"| {name} | {1 / a:.3f} | {1 / b:.3f} | {a / b:.2f}x | {rb} | {vs16} | {vs32} |")
    lines += memory_lines(memory, [c[0] for c in configs], device, "one warm-up + one step per setup, each in a "
                          "fresh process")
    n16 = next((n for n, *_ in configs if n.endswith("N=16")), None)
    targets = []
    if n16:  # the fp32 targets of the headline table (TARGETS)
        x = median(ref, n16) / median(mine, n16) if ref else None
        targets.append(Target("Fusion N=16 >= 5x the reference (fp32)", None if x is None else x >= 5,
                              f"{x:.2f}x" if x else ""))
        y = median(mine, n16) / median(mine, "ST-A")
        targets.append(Target("Fusion N=16 step <= 1.6x a single-adapter step (fp32)", y <= 1.6, f"{y:.2f}x"))
    if ref:
        z = median(ref, "ST-A") / median(mine, "ST-A")
        targets.append(Target("ST-A >= 1.5x the reference (fp32)", z >= 1.5, f"{z:.2f}x"))
    if n16 and m16:
        x_ref32 = median(ref, n16) / median(m16, n16) if ref else None
        x_ref16 = median(ref16, n16) / median(m16, n16) if ref16 else None
        targets += [Target("Fusion N=16 in bf16 >= 8x AdapterHub's fp32", None if x_ref32 is None else x_ref32 >= 8,
                          f"{x_ref32:.2f}x" if x_ref32 else ""),
                   Target("Fusion N=16 in bf16 ahead of AdapterHub under the same autocast",
                          None if x_ref16 is None else x_ref16 > 1, f"{x_ref16:.2f}x" if x_ref16 else "")]
    if m16:
        st = median(mine, "ST-A") / median(m16, "ST-A")
        targets.append(Target("ST-A step in bf16 >= 1.5x fp32 (the epoch target is `--mode epochs --precision bf16`)",
                              st >= 1.5, f"{st:.2f}x"))
    return lines, targets


def _memory_child(cfg: dict) -> None:
    """One warm-up + one step of one setup in this fresh process; prints its peak memory in MiB."""
    from benchmark.perf.backbones import perf_backbone

    mem: dict[str, float] = {}
    ours(perf_backbone(cfg["backbone"]), [tuple(cfg["config"])], cfg["batch"], cfg["length"], 1, 1,
         device=cfg["device"], precision=cfg["precision"], memory=mem)
    print(json.dumps(next(iter(mem.values()))))


if __name__ == "__main__":
    _memory_child(json.loads(sys.argv[1]))
