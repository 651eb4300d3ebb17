"""``afbench perf`` / ``nox -s perf``: training steps per second of ST-A and Fusion (N adapters) on
MiniLM-L6 (batch 32, length 128), ours and AdapterHub ``adapters`` 1.3.0 in one run; writes
``reports/perf.md``. CPU float32; on a GPU, ours also runs with bf16 autocast.

Both sides time the same step: forward, cross-entropy through the same two-layer head, backward and
AdamW over the trained parameters only (the adapter for ST-A; fusion + head for Fusion, whose
adapters are frozen), on identical random token ids.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from benchmark.modeling.backbone import load_encoder, model_path
from benchmark.modeling.model import AdapterModel, Fuse
from benchmark.perf.steps import Head, make_batch, time_steps
from benchmark.spec import load_registry
from benchmark.spec.schema import AdapterParams, FusionParams

TARGETS = "Fusion N=16 >= 4x the reference; Fusion N=16 step <= 1.6x a single-adapter step; ST-A >= 1.2x the reference"


def ours(spec, configs, batch_size, length, warmup, steps, device="cpu", bf16=False) -> dict[str, float]:
    out = {}
    for name, n in configs:
        torch.manual_seed(0)
        model = AdapterModel(load_encoder(spec))
        names = [f"a{i}" for i in range(max(n, 1))]
        for a in names:
            model.add_adapter(a, AdapterParams(reduction_factor=16))
        for p in model.parameters():
            p.requires_grad = False
        if n == 0:
            model.set_active(names[0])
            trained = [p for nm, p in model.named_parameters() if ".adapters." in nm]
        else:
            model.add_fusion("f", names, FusionParams())
            model.set_active(Fuse("f", names))
            trained = [p for nm, p in model.named_parameters() if ".fusions." in nm]
        for p in trained:
            p.requires_grad = True
        head = Head(model.hidden_size)
        model.to(device).train()
        head.to(device).train()
        opt = torch.optim.AdamW(trained + list(head.parameters()), lr=1e-4, fused=device.startswith("cuda"))
        batch = make_batch(model.config.vocab_size, batch_size, length, device=device)
        ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))

        def step():
            with ctx():
                model._ctx.attention_mask = batch["attention_mask"]
                h = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                loss = torch.nn.functional.cross_entropy(head(h).float(), batch["labels"])
                if n:
                    loss = loss + 0.01 * model.fusion_regularization("f")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[name] = time_steps(step, warmup, steps, device)
    return out


def run_perf(args) -> int:
    reg = load_registry()
    spec = reg.backbones["minilm-l6"]
    ns = [int(x) for x in args.adapters.split(",")]
    configs = [("ST-A", 0)] + [(f"Fusion N={n}", n) for n in ns]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(batch_size=args.batch_size, length=args.length, warmup=1, steps=args.steps)
    print(f"timing ours on {device} (float32) ...", flush=True)
    mine = ours(spec, configs, device=device, **common)
    mine_bf16 = ours(spec, configs, device=device, bf16=True, **common) if device.startswith("cuda") else None
    ref, ref_version = None, None
    if args.reference_python:
        print("timing the reference (adapters 1.3.0) ...", flush=True)
        cfg = {"configs": configs, "batch": args.batch_size, "length": args.length, "warmup": 1, "steps": args.steps}
        proc = subprocess.run([args.reference_python, str(Path(__file__).with_name("reference.py")),
                               model_path(spec), json.dumps(cfg)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        ref, ref_version = got["results"], got["adapters_version"]
    lines = [
        "# Training-step throughput: ours vs AdapterHub",
        "",
        f"MiniLM-L6 (all-MiniLM-L6-v2), batch {args.batch_size}, length {args.length}, float32 on {device} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"{args.steps} timed steps after 1 warm-up. Reference: adapters {ref_version or 'not run'}.",
        "",
        f"Command: `nox -s perf` (= `afbench perf --reference-python <reference env python>`). Targets: {TARGETS}.",
        "",
        "| setup | ours steps/s | ours seq/s | reference steps/s | ours / reference | ours vs one adapter (time) |"
        + (" ours bf16 steps/s |" if mine_bf16 else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if mine_bf16 else ""),
    ]
    single = mine["ST-A"]
    for name, _ in configs:
        r = ref[name] if ref else None
        row = (f"| {name} | {1 / mine[name]:.3f} | {args.batch_size / mine[name]:.1f} | "
               f"{(1 / r) if r else float('nan'):.3f} | {(r / mine[name]) if r else float('nan'):.2f}x | "
               f"{mine[name] / single:.2f}x |")
        if mine_bf16:
            row += f" {1 / mine_bf16[name]:.3f} |"
        lines.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0
