"""``afbench perf`` / ``nox -s perf``: training steps per second of ST-A and Fusion (N adapters) on
MiniLM-L6 (batch 32, length 128), ours and AdapterHub ``adapters`` 1.3.0 in one run; writes
``reports/perf.md``. CPU float32; on a GPU, ours also runs with bf16 autocast.

Both sides time the same step: forward, cross-entropy through the same two-layer head on the [CLS]
vector, backward and AdamW over the trained parameters only (the adapter for ST-A; fusion + head for
Fusion, whose adapters are frozen), on identical random token ids. Ours runs three times: with the
defaults of ``afbench run`` (fast CPU kernels, ``benchmark/modeling/cpu_kernels.py``; the last layer
at position 0 only, ``benchmark/modeling/first_token.py``), with the full last layer, and stock
(torch kernels, full last layer), so the table shows what each part and the fusion algebra contribute.

Timings on a shared 2-core machine drift by 10-20 % over minutes, so the three sides run in
alternating rounds (ours three ways, then the reference; ``--rounds``) and the table reports the median
round, with the lowest and highest per-round ratio to the reference beside it.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from benchmark.modeling.backbone import load_encoder, model_path
from benchmark.modeling.compute import DEFAULT, Compute
from benchmark.modeling.cpu_kernels import set_cpu_kernels
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.perf.steps import Head, make_batch, time_steps
from benchmark.spec import load_registry
from benchmark.spec.schema import AdapterParams, FusionParams

TARGETS = "Fusion N=16 >= 4x the reference; Fusion N=16 step <= 1.6x a single-adapter step; ST-A >= 1.2x the reference"


def ours(spec, configs, batch_size, length, warmup, steps, device="cpu", bf16=False,
         compute: Compute = DEFAULT) -> dict[str, float]:
    out = {}
    for name, n in configs:
        torch.manual_seed(0)
        model = AdapterModel(load_encoder(spec))
        names = [f"a{i}" for i in range(max(n, 1))]
        for a in names:
            model.add_adapter(a, AdapterParams(reduction_factor=16))
        if n == 0:
            model.set_active(names[0])
            sel = Modules(adapters=names)
        else:
            model.add_fusion("f", names, FusionParams())
            model.set_active(Fuse("f"))
            sel = Modules(fusions=["f"])
        model.train_only(sel)
        trained = [p for p in model.parameters() if p.requires_grad]
        head = Head(model.hidden_size)
        compute.apply(model)
        set_cpu_kernels(head, compute.cpu_kernels)
        model.to(device).train()
        head.to(device).train()
        opt = torch.optim.AdamW(trained + list(head.parameters()), lr=1e-4, fused=device.startswith("cuda"))
        batch = make_batch(model.config.vocab_size, batch_size, length, device=device)
        ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))

        def step():
            with ctx():
                h = model.encode(batch["input_ids"], batch["attention_mask"], first_token_only=True)  # Head reads [:, 0]
                loss = torch.nn.functional.cross_entropy(head(h).float(), batch["labels"])
                if n:
                    loss = loss + 0.01 * model.fusion_regularization("f")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[name] = time_steps(step, warmup, steps, device)
    return out


def reference(args, configs) -> tuple[dict[str, float], str]:
    """One round of the AdapterHub side, in its own environment."""
    cfg = {"configs": configs, "batch": args.batch_size, "length": args.length, "warmup": 1, "steps": args.steps}
    proc = subprocess.run([args.reference_python, str(Path(__file__).with_name("reference.py")),
                           model_path(load_registry().backbones["minilm-l6"]), json.dumps(cfg)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the reference side failed:\n{proc.stdout}{proc.stderr}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return got["results"], got["adapters_version"]


def _median(rounds: list[dict[str, float]], name: str) -> float:
    return statistics.median(r[name] for r in rounds)


def run_perf(args) -> int:
    spec = load_registry().backbones["minilm-l6"]
    ns = [int(x) for x in args.adapters.split(",")]
    configs = [("ST-A", 0)] + [(f"Fusion N={n}", n) for n in ns]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(batch_size=args.batch_size, length=args.length, warmup=1, steps=args.steps)
    fast, full, stock, ref, ref_version = [], [], [], [], None
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: ours on {device} (default, full last layer, stock) ...", flush=True)
        fast.append(ours(spec, configs, device=device, **common))
        full.append(ours(spec, configs, device=device, compute=Compute(last_layer="full"), **common))
        stock.append(ours(spec, configs, device=device, compute=Compute("stock", "full"), **common))
        if args.reference_python:
            print(f"round {r + 1}/{args.rounds}: the reference (adapters 1.3.0) ...", flush=True)
            try:
                got, ref_version = reference(args, configs)
            except RuntimeError as e:
                print(e, file=sys.stderr)
                return 1
            ref.append(got)
    bf16 = ours(spec, configs, device=device, bf16=True, **common) if device.startswith("cuda") else None
    lines = [
        "# Training-step throughput: ours vs AdapterHub",
        "",
        f"MiniLM-L6 (all-MiniLM-L6-v2), batch {args.batch_size}, length {args.length}, float32 on {device} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"{args.steps} timed steps after 1 warm-up, {args.rounds} alternating rounds (median round shown). "
        f"Reference: adapters {ref_version or 'not run'}. Both sides train the same two-layer head on the [CLS] "
        "vector. Ours = the defaults of `afbench run`: fast CPU kernels (dropout masks from 32-bit random "
        "integers, frozen linear layers on oneDNN; `benchmark/modeling/cpu_kernels.py`) and the last layer "
        "computed at position 0 only, the one row the head reads (`benchmark/modeling/first_token.py`); both "
        "compute the same loss and gradients. \"full last layer\" = fast kernels, every position; \"stock\" = "
        "torch's dropout, SDPA and linear as shipped and every position.",
        "",
        f"Command: `nox -s perf` (= `afbench perf --reference-python <reference env python>`). Targets: {TARGETS}.",
        "",
        "| setup | ours steps/s | ours seq/s | ours, full last layer, steps/s | ours, stock, steps/s "
        "| reference steps/s | ours / reference | per-round range | ours vs one adapter (time) |"
        + (" ours bf16 steps/s |" if bf16 else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if bf16 else ""),
    ]
    single = _median(fast, "ST-A")
    for name, _ in configs:
        mine = _median(fast, name)
        row = (f"| {name} | {1 / mine:.3f} | {args.batch_size / mine:.1f} | {1 / _median(full, name):.3f} "
               f"| {1 / _median(stock, name):.3f} | ")
        if ref:
            r = _median(ref, name)
            per_round = [x[name] / y[name] for x, y in zip(ref, fast)]
            row += f"{1 / r:.3f} | {r / mine:.2f}x | {min(per_round):.2f}-{max(per_round):.2f}x | "
        else:
            row += "not run | | | "
        row += f"{mine / single:.2f}x |"
        if bf16:
            row += f" {1 / bf16[name]:.3f} |"
        lines.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0
