"""``afbench perf --mode epochs``: what a user waits for, an epoch, on real mirrored data.

Per task (default RTE, MRPC, SST-2, MNLI; training rows capped by ``--max-rows``, 2,000 by default,
drawn as the runner draws capped rows), MiniLM-L6 with the committed runs' head (two layers on the
masked mean of the last layer), ST-A (Pfeiffer, rf 16) trained with AdamW (clipping at 1.0), fast CPU kernels,
batch 32, three ways of padding the same rows:

* ``pad128``: shuffled batches padded to ``--length`` (128), what AdapterHub's example scripts do by
  default (``pad_to_max_length``); the reference (adapters 1.3.0) times this case too;
* ``batch_max``: shuffled batches padded to their longest row (today's ``afbench run``);
* ``grouped``: length-grouped batches padded to their longest row (``benchmark/data/batching.py``).

Computed/real tokens are exact for the whole epoch (``padding_cost``). Seconds per epoch are measured
on ``--steps`` batches per task and padding and extrapolated (mean seconds per timed batch x batches
in the epoch); the timed batches are spread evenly over the epoch's batches ranked by padded width
(a stratified sample, so a few timed steps still see short and long batches in their proportions);
``--steps 0`` times every batch (a real epoch). Rounds alternate the order of the paddings.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark.data.batching import epoch_batches, epoch_seed, padding_cost, row_lengths
from benchmark.data.encode import collate, encode_split
from benchmark.errors import BenchError
from benchmark.modeling.compute import DEFAULT, Compute
from benchmark.modeling.model import AdapterModel, Modules
from benchmark.perf.harness import Harness
from benchmark.perf.inference_steps import OP_KINDS, profile_ms, profile_table
from benchmark.perf.meta import Target, machine
from benchmark.perf.steps import time_steps
from benchmark.spec.schema import AdapterParams
from benchmark.training.loop import inputs_of

PADDINGS = ("pad128", "batch_max", "grouped")
BF16_TARGET = 1.8  # an SST-2 epoch (grouped) in bf16 over fp32, examples/s
TARGETS = ("grouped computed/real <= 1.1 on every classification task; an SST-2 or MNLI epoch >= 2.5x "
           "faster grouped than padded to 128")


def pad_to(batch: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a collated batch ([B, L] or [B, K, L]: every tensor but the labels ends in the same L) to
    ``length`` tokens (ids with pad_id, mask 0)."""
    extra = length - batch["input_ids"].shape[-1]
    if extra <= 0:
        return batch
    return {k: v if k == "labels" else F.pad(v, (0, extra), value=pad_id if k == "input_ids" else 0)
            for k, v in batch.items()}


def spread(batches: list[list[int]], widths: list[int], k: int) -> list[int]:
    """Indices of ``k`` batches at evenly spaced ranks of padded width (all of them when k = 0 or >= n)."""
    n = len(batches)
    if k <= 0 or k >= n:
        return list(range(n))
    ranked = sorted(range(n), key=lambda i: widths[i])
    return [ranked[int((j + 0.5) * n / k)] for j in range(k)]


def plan_task(task, tok, args, root) -> dict:
    """The epoch's batches and padding cost for every padding of one task (seed 0, epoch 0)."""
    split = encode_split(task, task.splits.train, tok, max_rows=args.max_rows, root=root)
    if task.type != "classification":
        raise BenchError(f"task '{task.name}' is {task.type}; the epoch benchmark trains classification heads",
                         field="--tasks", fix="choose classification tasks (e.g. rte,mrpc,sst2,mnli)")
    lens = row_lengths(split.examples)
    out = {"task": task.name, "rows": len(split), "rows_total": split.rows_total, "num_labels": task.num_labels,
           "split": split, "paddings": {}}
    for pad in PADDINGS:
        mode = "grouped" if pad == "grouped" else "shuffled"
        bs = epoch_batches(lens, args.batch_size, mode=mode, seed=epoch_seed(0, 0))
        fixed = args.length if pad == "pad128" else None
        real, computed = padding_cost(lens, bs, pad_to=fixed)
        widths = [max([lens[i] for i in b] + [fixed or 0]) for b in bs]
        out["paddings"][pad] = {"batches": bs, "timed": spread(bs, widths, args.steps),
                                "real_tokens": real, "computed_tokens": computed}
    return out


def timed_batches(plan: dict, pad: str, pad_id: int, length: int) -> list[dict[str, torch.Tensor]]:
    """The padding's timed batches, collated (``pad128``: padded to ``length``)."""
    p = plan["paddings"][pad]
    bs = [collate([plan["split"].examples[j] for j in p["batches"][i]], pad_id) for i in p["timed"]]
    return [pad_to(b, length, pad_id) for b in bs] if pad == "pad128" else bs


def trainer(plan: dict, encoder_factory, precision: str = "fp32"):
    """step(batch): one training step of a fresh ST-A model (fast CPU kernels, AdamW, clipping at 1.0; ``precision``
    bf16: the forward under bf16 autocast, as ``afbench run --precision bf16`` trains)."""
    torch.manual_seed(0)
    model = AdapterModel(encoder_factory())
    model.add_adapter("a", AdapterParams(reduction_factor=16))
    model.add_head("h", "classification", plan["num_labels"], pooling="mean")
    model.train_only(Modules(adapters=["a"], heads=["h"]))
    DEFAULT.apply(model)  # fast CPU kernels; the last layer is full anyway (mean pooling)
    model.set_active("a")
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-4)
    prec = Compute(precision=precision)

    def step(b):
        with prec.autocast(torch.device("cpu")):
            logits = model(head="h", **inputs_of(b))
        loss = F.cross_entropy(logits.float(), b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # as the training loop (grad_clip 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def time_ours(plan: dict, encoder_factory, pad_id: int, args, order, precision: str = "fp32") -> dict[str, float]:
    """Mean seconds per timed batch of each padding: one model per task and round, 1 warm-up step each."""
    step = trainer(plan, encoder_factory, precision)
    out = {}
    for pad in order:
        batches = timed_batches(plan, pad, pad_id, args.length)
        it = iter(batches[:1] + batches)  # the first one again as the warm-up
        out[pad] = time_steps(lambda: step(next(it)), 1, len(batches))
    return out


def grouped_profile(plan: dict, encoder_factory, pad_id: int, args) -> dict:
    """Where a grouped step spends its time, fp32 and bf16: ``profile_ms`` over the timed grouped batches (each
    once, after a warm-up), ms per step by operator kind, and ``width_tokens``, their mean padded width: what bounds the
    bf16 epoch's speed-up."""
    batches = timed_batches(plan, "grouped", pad_id, args.length)
    width = statistics.mean(b["input_ids"].shape[-1] for b in batches)
    out = {}
    for precision in ("fp32", "bf16"):
        step, it = trainer(plan, encoder_factory, precision), itertools.cycle(batches)
        out[precision] = {**profile_ms(lambda: step(next(it)), reps=len(batches)), "width_tokens": width}
    return out


def time_reference(h: Harness, args, plans: list[dict], pad_id: int, model_dir: str) -> dict[str, float]:
    """The reference's mean seconds per timed ``pad128`` batch of each task, in its own environment."""
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {}
        for plan in plans:
            f = Path(tmp) / f"{plan['task']}.pt"
            torch.save({"num_labels": plan["num_labels"], "batches": timed_batches(plan, "pad128", pad_id, args.length)}, f)
            tasks[plan["task"]] = str(f)
        return h.reference("reference_epochs.py", model_dir, {"tasks": tasks})


def run_epochs(args) -> int:
    from benchmark.data.sources import data_dir
    from benchmark.modeling.backbone import load_encoder, load_tokenizer, model_path
    from benchmark.spec import load_registry
    if (args.device or "cpu") != "cpu":
        raise BenchError("the epoch benchmark runs on the CPU only", field="--device",
                         fix="omit --device (the GPU step table: afbench perf --device cuda)")
    reg = load_registry([Path(p) for p in (getattr(args, "specs", None) or [])])
    spec = reg.backbones["minilm-l6"]
    tok = load_tokenizer(spec)
    root = data_dir(getattr(args, "data_dir", None))
    plans = [plan_task(reg.get("task", t.strip()), tok, args, root) for t in args.tasks.split(",") if t.strip()]
    bf16 = getattr(args, "precision", "auto") == "bf16"  # the bf16 epoch (grouped) beside fp32, when asked for
    if bf16:
        Compute(precision="bf16").check(torch.device("cpu"))
    h = Harness.of(args, "epochs")

    def run_ours(r, got):
        order = PADDINGS if r % 2 == 0 else PADDINGS[::-1]
        for plan in plans:
            print(f"round {r + 1}/{args.rounds}: ours, {plan['task']} ...", flush=True)
            got.setdefault(plan["task"], {}).update(time_ours(plan, lambda: load_encoder(spec), tok.pad_token_id,
                                                              args, order))
            if bf16:
                print(f"round {r + 1}/{args.rounds}: ours in bf16, {plan['task']} (grouped) ...", flush=True)
                got[plan["task"]]["grouped_bf16"] = time_ours(plan, lambda: load_encoder(spec), tok.pad_token_id,
                                                              args, ("grouped",), precision="bf16")["grouped"]

    def run_ref(r, got):
        print(f"round {r + 1}/{args.rounds}: the reference (adapters 1.3.0), padded to {args.length} ...", flush=True)
        for task, sec in time_reference(h, args, plans, tok.pad_token_id, model_path(spec)).items():
            got.setdefault(task, {})["reference_pad128"] = sec

    rounds = h.rounds(args.rounds, run_ours, run_ref)
    first = next((p for p in plans if p["task"] == "sst2"), plans[0])
    profile = {first["task"]: grouped_profile(first, lambda: load_encoder(spec), tok.pad_token_id, args)} if bf16 else {}
    lines, summary, targets = epochs_report(args, plans, rounds, h.ref_version, profile)
    raw = {"mode": "epochs", "backbone": "MiniLM-L6 (all-MiniLM-L6-v2), mean-pooling head, ST-A rf 16",
           "machine": machine("cpu"), "torch": torch.__version__,
           "batch_size": args.batch_size,
           "pad_to": args.length, "timed_batches_per_task_and_padding": args.steps or "all",
           "unit": "seconds per training step (mean of the timed batches)",
           "tasks": {p["task"]: {"rows": p["rows"], "rows_total": p["rows_total"],
                                 **{pad: {"batches": len(v["batches"]), "timed": len(v["timed"]),
                                          "real_tokens": v["real_tokens"], "computed_tokens": v["computed_tokens"]}
                                    for pad, v in p["paddings"].items()}} for p in plans},
           "rounds": rounds, "summary": summary, "grouped_step_profile_ms": profile}
    h.write(lines, raw, targets, args.out)
    return 0


def epochs_report(args, plans, rounds, ref_version, profile: dict | None = None) -> tuple[list[str], dict, list[Target]]:
    def epoch_s(task: str, pad: str, key: str | None = None) -> list[float]:
        nb = len(next(p for p in plans if p["task"] == task)["paddings"][pad]["batches"])
        return [r[task][key or pad] * nb for r in rounds]

    med = statistics.median
    lines = [
        "# Epoch time on real data: padding to 128, to the batch max, and length-grouped",
        "",
        f"MiniLM-L6 (all-MiniLM-L6-v2), the committed runs' mean-pooling head, ST-A (Pfeiffer, rf 16), AdamW, gradient clipping at 1.0, "
        f"default fast CPU kernels, batch {args.batch_size}, float32 on cpu ({machine('cpu')}). Training rows "
        f"capped at {args.max_rows} per task (the runner's deterministic subsample, data seed 0), tokens capped at "
        "128 (the tasks' max_length), batches of seed 0, epoch 0. Computed/real tokens: exact, whole epoch. "
        + ("Seconds per epoch: every batch timed. " if not args.steps else
           f"Seconds per epoch: {args.steps} batches per task and padding timed (spread evenly over the epoch's "
           "batches ranked by width), mean x batches in the epoch. ")
        + f"{args.rounds} rounds, paddings in alternating order; median round shown, per-round ratios as median "
        f"(lowest-highest). Reference: adapters {ref_version or 'not run'}, padded to {args.length} "
        "(the same timed batches). Raw per-round seconds per step: the JSON beside this file.",
        "",
        f"Command: `afbench perf --mode epochs --reference-python <reference env python>`. Targets: {TARGETS}.",
        "",
        "| task | rows (of) | computed/real: pad 128 | batch max | grouped | epoch s: pad 128 | batch max "
        "| grouped | grouped vs pad 128 (per round) | batch max vs pad 128 | reference, pad 128, epoch s "
        "| ours / reference, pad 128 (per round) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for p in plans:
        t, pads = p["task"], p["paddings"]
        ratio = {k: v["computed_tokens"] / max(1, v["real_tokens"]) for k, v in pads.items()}
        sec = {k: epoch_s(t, k) for k in PADDINGS}
        speed = {k: [a / b for a, b in zip(sec["pad128"], sec[k])] for k in ("grouped", "batch_max")}
        row = (f"| {t} | {p['rows']} ({p['rows_total']}) | {ratio['pad128']:.2f} | {ratio['batch_max']:.2f} | "
               f"{ratio['grouped']:.3f} | {med(sec['pad128']):.1f} | {med(sec['batch_max']):.1f} | "
               f"{med(sec['grouped']):.1f} | {med(sec['pad128']) / med(sec['grouped']):.2f}x "
               f"({med(speed['grouped']):.2f}x, {min(speed['grouped']):.2f}-{max(speed['grouped']):.2f}x) | "
               f"{med(sec['pad128']) / med(sec['batch_max']):.2f}x | ")
        entry = {"computed_over_real": ratio, "epoch_seconds_median": {k: med(v) for k, v in sec.items()},
                 "grouped_speedup_vs_pad128_per_round": speed["grouped"]}
        if all("reference_pad128" in r[t] for r in rounds):
            ref = epoch_s(t, "pad128", "reference_pad128")
            rr = [a / b for a, b in zip(ref, sec["pad128"])]
            row += f"{med(ref):.1f} | {med(ref) / med(sec['pad128']):.2f}x ({min(rr):.2f}-{max(rr):.2f}x) |"
            entry["reference_pad128_epoch_seconds_median"] = med(ref)
        else:
            row += "not run | |"
        lines.append(row)
        summary[t] = entry
    ok_ratio = all(s["computed_over_real"]["grouped"] <= 1.1 for s in summary.values())
    fast = {t: s["epoch_seconds_median"]["pad128"] / s["epoch_seconds_median"]["grouped"]
            for t, s in summary.items() if t in ("sst2", "mnli")}
    lines += ["", f"Grouped computed/real <= 1.1 on every task: {'yes' if ok_ratio else 'NO'}. "
              + (", ".join(f"{t} grouped vs pad 128: {v:.2f}x" for t, v in fast.items())
                 + f" (target >= 2.5x on one: {'met' if any(v >= 2.5 for v in fast.values()) else 'NOT met'})."
                 if fast else "SST-2/MNLI not measured.")]
    bf = {t: statistics.median(r[t]["grouped"] for r in rounds) / statistics.median(r[t]["grouped_bf16"] for r in rounds)
          for t in summary if all("grouped_bf16" in r[t] for r in rounds)}
    bf_rounds = {t: [r[t]["grouped"] / r[t]["grouped_bf16"] for r in rounds] for t in bf}
    for t, v in bf.items():
        summary[t]["bf16_over_fp32_examples_per_second_grouped"] = v
    targets = [Target(f"an SST-2 ST-A epoch (grouped) in bf16 >= {BF16_TARGET}x the examples/s of fp32",
                      bf["sst2"] >= BF16_TARGET if "sst2" in bf else None, f"{bf['sst2']:.2f}x" if "sst2" in bf else
                      "run --mode epochs --precision bf16 --tasks sst2,...")]
    if bf:
        lines += ["", "bf16 (autocast, `--precision bf16`) vs fp32, grouped batches, examples/s: "
                  + ", ".join(f"{t} {v:.2f}x (per round {min(bf_rounds[t]):.2f}-{max(bf_rounds[t]):.2f}x)"
                              for t, v in bf.items()) + "."]
    for task, prof in (profile or {}).items():
        lines += ["", *profile_lines(task, prof)]
    return lines, summary, targets


def profile_lines(task: str, prof: dict) -> list[str]:
    """What bounds the bf16 epoch: ``grouped_profile``'s kinds per precision, and Amdahl's law over them."""
    kinds = {p: {k: v[k] for k in [*OP_KINDS, "other"]} for p, v in prof.items()}
    f32, b16 = kinds["fp32"], kinds["bf16"]
    f = f32["linear"] / sum(f32.values())  # the linear layers' share of an fp32 step's profiled operator time
    s = f32["linear"] / max(b16["linear"], 1e-9)  # what bf16 gives them
    rest = 1 / BF16_TARGET - (1 - f)  # the time the linear layers may keep for the target, the rest as in fp32
    need = (f" For {BF16_TARGET}x with the rest as in fp32 the linear layers would have to be {f / rest:.2f}x faster "
            "in bf16 (this CPU's fp32 and bf16 GEMM peaks: `reports/perf_roofline.md`)." if rest > 0 else
            f" The linear layers alone cannot give {BF16_TARGET}x: taking no time at all, with the rest as in fp32, "
            f"the step would be {1 / (1 - f):.2f}x faster, so the rest has to shrink too.")
    return [f"Where a grouped {task} step spends its time (the timed grouped batches, mean padded width "
            f"{prof['fp32']['width_tokens']:.1f} tokens; torch.profiler's self CPU time per operator, ms per step):", "",
            *profile_table(kinds, "precision"), "",
            f"bf16 speeds up the linear layers {s:.2f}x ({f32['linear']:.1f} -> {b16['linear']:.1f} ms); they are "
            f"{100 * f:.0f} % of the fp32 step's profiled operator time. With every other operator as in fp32 the "
            f"step would be {1 / ((1 - f) + f / s):.2f}x faster (Amdahl's law, an estimate: the profiler's overhead "
            f"weighs on small operators); all operators together went {sum(f32.values()) / sum(b16.values()):.2f}x "
            "faster." + need]
