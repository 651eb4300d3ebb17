"""``afbench perf`` / ``nox -s perf``: how fast we train, ours vs AdapterHub ``adapters`` 1.3.0.

Three modes (``--mode``):

* ``steps`` (default): training steps per second of ST-A and Fusion (N adapters), batch 32, length
  128, on identical random token ids; writes ``reports/perf.md`` and the raw per-round timings
  ``reports/perf.json``. Both sides time the same step: forward, cross-entropy through the same
  two-layer head, backward and AdamW over the trained parameters only (the adapter for ST-A;
  fusion + head for Fusion, whose adapters are frozen).
  The headline table is the configuration the committed MiniLM runs train: the head reads the
  masked **mean** of the last layer (``specs/backbones/minilm-l6.yaml``), so every position of the
  last layer is computed, with the default fast CPU kernels (``benchmark/modeling/cpu_kernels.py``);
  beside it ours with stock kernels. A second, separately labelled table is the first-token setup
  (a [CLS] head, the last layer computed at position 0 only: ``benchmark/modeling/first_token.py``),
  which is what BERT/RoBERTa runs as in the paper use and no committed MiniLM run does.
* ``epochs``: seconds per epoch on real data with three paddings (``benchmark/perf/epochs.py``).
* ``malloc``: a step with and without glibc malloc tuning, each in its own process
  (``benchmark/perf/malloc_ab.py``, ``benchmark/modeling/malloc.py``).

Timings on a shared machine drift by 10-20 % over minutes, so the sides run in alternating rounds
(``--rounds``; the order of ours and the reference flips every round), tables show the median
round, and each ratio to the reference is given both as the ratio of the medians and per round
(median, lowest, highest of the per-round ratios).
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from benchmark.modeling.compute import DEFAULT, Compute
from benchmark.modeling.cpu_kernels import set_cpu_kernels
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.perf.backbones import PerfBackbone, perf_backbone
from benchmark.perf.steps import Head, make_batch, time_steps
from benchmark.spec.schema import AdapterParams, FusionParams

TARGETS = "Fusion N=16 >= 4x the reference; Fusion N=16 step <= 1.6x a single-adapter step; ST-A >= 1.2x the reference"
WARMUP = 1


def ours(bb: PerfBackbone, configs, batch_size, length, warmup, steps, device="cpu", bf16=False,
         compute: Compute = DEFAULT, pooling: str = "mean") -> dict[str, float]:
    """Seconds per training step of each (name, N) setup; N = 0 is ST-A."""
    out = {}
    for name, n in configs:
        torch.manual_seed(0)
        model = AdapterModel(bb.make())
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
        head = Head(model.hidden_size, pooling=pooling)
        compute.apply(model)
        set_cpu_kernels(head, compute.cpu_kernels)
        model.to(device).train()
        head.to(device).train()
        opt = torch.optim.AdamW(trained + list(head.parameters()), lr=1e-4, fused=device.startswith("cuda"))
        batch = make_batch(model.config.vocab_size, batch_size, length, device=device)
        ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))

        def step():
            with ctx():
                h = model.encode(batch["input_ids"], batch["attention_mask"], first_token_only=pooling == "cls")
                loss = torch.nn.functional.cross_entropy(head(h, batch["attention_mask"]).float(), batch["labels"])
                if n:
                    loss = loss + 0.01 * model.fusion_regularization("f")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[name] = time_steps(step, warmup, steps, device)
    return out


def reference(args, bb: PerfBackbone, configs, device: str, poolings=("mean", "cls")) -> tuple[dict, str]:
    """One round of the AdapterHub side, in its own environment: {pooling: {setup: seconds}}."""
    cfg = {"configs": configs, "batch": args.batch_size, "length": args.length, "warmup": WARMUP,
           "steps": args.steps, "device": device, "poolings": list(poolings)}
    proc = subprocess.run([args.reference_python, str(Path(__file__).with_name("reference.py")),
                           json.dumps(bb.reference), json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the reference side failed:\n{proc.stdout}{proc.stderr}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return got["results"], got["adapters_version"]


def per_round_ratios(ref: list[dict[str, float]], mine: list[dict[str, float]], name: str) -> list[float]:
    """Speed-up of ours over the reference in each round (reference seconds / our seconds)."""
    return [r[name] / m[name] for r, m in zip(ref, mine)]


def _median(rounds: list[dict[str, float]], name: str) -> float:
    return statistics.median(r[name] for r in rounds)


def _ratio_cells(ref: list[dict], mine: list[dict], name: str) -> str:
    """'x.xx | a.aa (lo-hi)': ratio of the medians, then median (range) of the per-round ratios."""
    if not ref:
        return "not run | not run | not run"
    rr = per_round_ratios(ref, mine, name)
    return (f"{1 / _median(ref, name):.3f} | {_median(ref, name) / _median(mine, name):.2f}x | "
            f"{statistics.median(rr):.2f}x ({min(rr):.2f}-{max(rr):.2f}x)")


def default_out(mode: str) -> str:
    return {"steps": "reports/perf.md", "epochs": "reports/perf_epochs.md", "malloc": "reports/perf_malloc.md"}[mode]


def targets_met(mine: list[dict], ref: list[dict]) -> list[str]:
    """Each target of ``TARGETS`` with its measured value and met / NOT met (not measured: say so)."""
    out = []
    have = {name for r in mine for name in r}

    def state(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for setup, goal in (("Fusion N=16", 4.0), ("ST-A", 1.2)):
        if setup in have and ref:
            x = _median(ref, setup) / _median(mine, setup)
            out.append(f"{setup} >= {goal:g}x the reference: {x:.2f}x, {state(x >= goal)}")
        else:
            out.append(f"{setup} >= {goal:g}x the reference: not measured")
    if "Fusion N=16" in have:
        x = _median(mine, "Fusion N=16") / _median(mine, "ST-A")
        out.append(f"Fusion N=16 step <= 1.6x a single-adapter step: {x:.2f}x, {state(x <= 1.6)}")
    else:
        out.append("Fusion N=16 step <= 1.6x a single-adapter step: not measured")
    return out


def stamp() -> str:
    """Revision, date and versions of a measurement (a perf report is rewritten only when re-measured)."""
    import datetime
    import importlib.metadata as md

    from benchmark.runner.results import git_revision

    g = git_revision()
    rev = (g.get("revision") or "unknown")[:12] + (" + uncommitted changes" if g.get("dirty") else "")

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Measured {when} at revision {rev}; python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {version('transformers')}.")


def write_report(md_path: Path, lines: list[str], raw: dict) -> None:
    """``<name>.md`` and the raw timings beside it as ``<name>.json`` (no machine paths in either); the
    Markdown's second paragraph says when, at which revision and with which versions it was measured."""
    lines = [*lines[:2], stamp(), "", *lines[2:]] if lines and lines[0].startswith("#") else [stamp(), "", *lines]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines) + "\n")
    md_path.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print("\n".join(lines))
    print(f"wrote {md_path} and {md_path.with_suffix('.json').name}")


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def run_perf(args) -> int:
    mode = getattr(args, "mode", "steps")
    if mode == "epochs":
        from benchmark.perf.epochs import run_epochs

        return run_epochs(args)
    if mode == "malloc":
        from benchmark.perf.malloc_ab import run_malloc

        return run_malloc(args)
    return run_steps(args)


def run_steps(args) -> int:
    bb = perf_backbone(getattr(args, "backbone", "minilm-l6"))
    ns = [int(x) for x in args.adapters.split(",") if x]
    configs = [("ST-A", 0)] + [(f"Fusion N={n}", n) for n in ns]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    common = dict(batch_size=args.batch_size, length=args.length, warmup=WARMUP, steps=args.steps, device=device)
    # name -> how ours runs; on CUDA the CPU kernels do not apply, bf16 autocast does
    first_token = not getattr(args, "no_first_token", False)
    variants = {"ours": dict(pooling="mean")}
    if first_token:
        variants["ours_first_token"] = dict(pooling="cls", compute=Compute("fast", "first_token"))
    if cuda:
        variants["ours_bf16"] = dict(pooling="mean", bf16=True)
    else:
        variants["ours_stock"] = dict(pooling="mean", compute=Compute("stock", "full"))
    rounds, ref_version = [], None
    for r in range(args.rounds):
        got: dict[str, dict[str, float]] = {}

        def run_ours():
            for v, kw in variants.items():
                print(f"round {r + 1}/{args.rounds}: {v} on {device} ...", flush=True)
                got[v] = ours(bb, configs, **common, **kw)

        def run_ref():
            nonlocal ref_version
            print(f"round {r + 1}/{args.rounds}: the reference (adapters 1.3.0) ...", flush=True)
            res, ref_version = reference(args, bb, configs, device, ("mean", "cls") if first_token else ("mean",))
            for pooling, sec in res.items():
                got[f"reference_{pooling}"] = sec

        sides = [run_ours] + ([run_ref] if args.reference_python else [])
        try:
            for side in sides if r % 2 == 0 else sides[::-1]:  # alternate who goes first
                side()
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        rounds.append(got)
    lines = steps_report(args, bb, configs, device, rounds, ref_version)
    raw = {"mode": "steps", "backbone": bb.label, "device": device, "machine": machine(device),
           "torch": torch.__version__, "reference": f"adapters {ref_version}" if ref_version else None,
           "batch_size": args.batch_size, "length": args.length, "warmup_steps": WARMUP,
           "timed_steps_per_round": args.steps, "unit": "seconds per training step (mean of the timed steps)",
           "rounds": rounds}
    write_report(Path(args.out or default_out("steps")), lines, raw)
    return 0


def steps_report(args, bb: PerfBackbone, configs, device, rounds, ref_version) -> list[str]:
    col = lambda key: [r[key] for r in rounds if key in r]  # noqa: E731
    mine, ref_mean, ref_cls, first = col("ours"), col("reference_mean"), col("reference_cls"), col("ours_first_token")
    alt = "ours_bf16" if device.startswith("cuda") else "ours_stock"
    alt_label = "ours, bf16 autocast, steps/s" if alt == "ours_bf16" else "ours, stock kernels, steps/s"
    lines = [
        "# Training-step throughput: ours vs AdapterHub",
        "",
        f"{bb.label}, batch {args.batch_size}, length {args.length}, float32 on {device} ({machine(device)}), "
        f"{args.steps} timed steps after {WARMUP} warm-up per setup and round, {args.rounds} alternating rounds "
        f"(median round shown; the raw per-round seconds per step are in `{Path(args.out or default_out('steps')).with_suffix('.json').name}`). "
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
    single = _median(mine, "ST-A")
    for name, _ in configs:
        m = _median(mine, name)
        alt_cell = f"{1 / _median(col(alt), name):.3f}" if col(alt) else "not run"
        lines.append(f"| {name} | {1 / m:.3f} | {args.batch_size / m:.1f} | {alt_cell} | "
                     f"{_ratio_cells(ref_mean, mine, name)} | {m / single:.2f}x |")
    lines += ["", "Targets (headline table, ratio of the median rounds): " + "; ".join(targets_met(mine, ref_mean)) + "."]
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
        lines.append(f"| {name} | {1 / _median(first, name):.3f} | {_ratio_cells(ref_cls, first, name)} |")
    return lines
