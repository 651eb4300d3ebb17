"""``afbench prune EXPERIMENT --only GLOB``: pruned fusion after training, no retraining.

For every finished Fusion w/ ST-A run selected (its fusion, head and source adapters are in its run
folder): capture the fusion attention on the ranking rows (the run's held-out slice under ``selection:
heldout``; its training rows under ``selection: dev`` — never dev), rank the adapters by the mean over
all layers and rows, and for k = 1, 2, 4, 8, all keep the top k in every layer with the softmax
renormalised over them (``benchmark/modeling/prune.py``). Per k: dev accuracy, and inference speed on
dev (examples/s at the run's eval batch size, batches sorted by length; latency of batch 1 over the
first rows), the median of ``--rounds`` rounds whose k order alternates. One table + raw json + a figure
per target task (seeds side by side) in ``reports/prune_<experiment>_<task>.{md,json,png}``.
"""

from __future__ import annotations

import io
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmark.data.encode import batches
from benchmark.errors import BenchError, CheckpointError
from benchmark.modeling.checkpoint import WEIGHTS
from benchmark.modeling.prune import mean_attention, rank_adapters, top_k
from benchmark.paths import read_regular, under, write_atomic
from benchmark.perf.harness import Harness, median
from benchmark.perf.meta import provenance_lines
from benchmark.perf.steps import sync
from benchmark.plan.build import data_drift
from benchmark.plan.run import Plan, Run
from benchmark.records import read_result, read_result_file
from benchmark.runner.export import activate, load_for_eval
from benchmark.runner.results import now
from benchmark.spec.registry import Registry
from benchmark.training.loop import inputs_of, predict, to_device
from benchmark.training.recipe import FUSION, RunContext, load_data

KS = (1, 2, 4, 8)
MAX_JSON = 16 * 1024 * 1024  # a stored prune report is a few kB
LATENCY_ROWS = 32  # batch-1 latency: the median over this many dev rows


def ks_for(n: int, wanted: tuple[int, ...] = KS) -> list[int]:
    """The k values below N, then N itself ('all')."""
    return sorted({k for k in wanted if k < n} | {n})


def load_trained(reg: Registry, run: Run, folder: Path, device: torch.device, run_dir=None):
    """(model with what the run evaluated active, tokenizer, compute, that setup: its ``Fuse``, adapter or None) from
    a finished run folder, rebuilt by ``export.load_for_eval`` (``export.build_model``, the rebuild ``afbench export``
    and ``afbench predict`` use); ``afbench speed`` loads its runs here too and names the setup in its measurement.
    ``run_dir``: run id -> its folder (default: beside ``folder``), for dependencies read from another experiment."""
    res = read_result_file(folder)
    if not res.finished:
        raise BenchError(f"run {run.id} is not finished ({res.state})", file=str(folder),
                         fix=f"train it first: afbench run {run.experiment} --only '{run.id}'")
    if not (folder / WEIGHTS).exists():
        raise CheckpointError(f"run {run.id} finished but its weights are not here (git keeps only the stage-1 "
                              "sources' weights)", file=str(folder),
                              fix="point --results-dir at the results of the machine that trained it, or move this "
                                  f"folder away and rerun afbench run {run.experiment} --only '{run.id}' (its "
                                  "finished stage-1 adapters are kept; --force would retrain them too)")
    model, tok, compute = load_for_eval(run, reg, run_dir or (lambda rid: folder.parent / rid), device)
    return model, tok, compute, activate(model, run.task)


@torch.no_grad()
def speed(model, split, head: str, pad_id: int, batch_size: int, device, compute) -> dict:
    """Examples/s at ``batch_size`` over the whole split, and median ms of batch 1 over its first rows."""
    sync(str(device))
    t0 = time.perf_counter()
    n = 0
    for batch in batches(split, batch_size, pad_id, mode="by_length"):
        with compute.autocast(device):
            model(head=head, **inputs_of(to_device(batch, device)))
        n += batch["labels"].shape[0]
    sync(str(device))  # CUDA: the work, not the launches
    through = n / (time.perf_counter() - t0)
    one = []
    sub = type(split)(split.task, split.split, split.type, split.examples[:LATENCY_ROWS], split.source, split.rows_total)
    for batch in batches(sub, 1, pad_id, mode="by_length"):
        batch = to_device(batch, device)
        sync(str(device))
        t = time.perf_counter()
        with compute.autocast(device):
            model(head=head, **inputs_of(batch))
        sync(str(device))
        one.append(1000 * (time.perf_counter() - t))
    return {"examples_per_second": through, "latency_ms_batch1": statistics.median(one)}


def prune_run(reg: Registry, run: Run, folder: Path, data_dir, device: torch.device, rounds: int,
              wanted: tuple[int, ...] = KS) -> dict:
    model, tok, compute, _ = load_trained(reg, run, folder, device)
    ctx = RunContext(reg, reg.experiments.get(run.experiment), data_dir, device, lambda rid: folder.parent / rid)
    tr, dev, ho = load_data(ctx, run, reg.tasks[run.task], tok)
    ranking_rows, ranked_on = (ho, "heldout") if ho is not None else (tr, "train")
    bs, pad = run.method.train.eval_batch_size, tok.pad_token_id
    model.start_capture()
    predict(model, ranking_rows, run.task, pad, bs, device, compute)
    layers = model.stop_capture()
    names = list(model.fusion_built_on[FUSION])
    ks = ks_for(len(names), wanted)
    per_k = {k: {"kept": top_k(names, layers, k)} for k in ks}
    for k in ks:
        model.prune_fusion(FUSION, per_k[k]["kept"])
        per_k[k]["dev_accuracy"] = predict(model, dev, run.task, pad, bs, device, compute).accuracy
        per_k[k]["rounds"] = []
    for r in range(rounds):  # alternate the order of k every round: drift hits every k alike
        for k in ks if r % 2 == 0 else ks[::-1]:
            model.prune_fusion(FUSION, per_k[k]["kept"])
            per_k[k]["rounds"].append(speed(model, dev, run.task, pad, bs, device, compute))
    model.prune_fusion(FUSION, names)
    for k in ks:  # None where nothing was timed (--rounds 0)
        per_k[k].update({m: median(per_k[k]["rounds"], m) for m in ("examples_per_second", "latency_ms_batch1")})
    return {"run_id": run.id, "task": run.task, "seed": run.seed, "adapters": names,
            "ranking": rank_adapters(names, layers), "mean_attention": dict(zip(names, mean_attention(layers))),
            "ranked_on": ranked_on, "ranking_rows": len(ranking_rows), "dev_rows": len(dev),
            "precision": compute.precision, "k": {str(k): v for k, v in per_k.items()}}


def target_lines(exp: str, task: str, runs: list[dict], rounds: int, stem_name: str,
                 seeds_note: str = "") -> tuple[list[str], dict, list[int], int]:
    """The report's lines (without provenance), its table per k, the k values and N, from the per-run results."""
    n = len(runs[0]["adapters"])
    ks = sorted({int(k) for r in runs for k in r["k"]})
    label = lambda k: "all" if k == n else str(k)  # noqa: E731
    seeds = [r["seed"] for r in runs]
    lines = [f"# Pruned fusion: {task} ({exp})", "",
             f"Fusion w/ ST-A over {n} adapters, pruned after training (no retraining) to the k adapters with the "
             f"highest mean fusion attention over all layers and the ranking rows ({runs[0]['ranked_on']} slice, "
             f"{runs[0]['ranking_rows']} rows; never dev), the same k in every layer, the softmax renormalised over "
             f"them. Dev accuracy on {runs[0]['dev_rows']} rows; speed: examples/s over dev at the eval batch size "
             f"and median batch-1 latency over {LATENCY_ROWS} rows, the median of {rounds} rounds (k order "
             "alternating). Command: `afbench prune " + exp + "".join(f" --only '{r['run_id']}'" for r in runs) + "`.", ""]
    if seeds_note:
        lines += [seeds_note, ""]
    lines += ["| k | " + " | ".join(f"dev acc s{s}" for s in seeds) + " | mean dev acc | ex/s (median over seeds) "
              "| batch-1 ms | speed vs all |",
              "|---|" + "---:|" * (len(seeds) + 4)]
    base = statistics.median(r["k"][str(n)]["examples_per_second"] or 0 for r in runs)
    table = {}
    for k in ks:
        cells = [r["k"].get(str(k)) for r in runs]
        accs = [c["dev_accuracy"] for c in cells if c]
        e, lat = median(cells, "examples_per_second"), median(cells, "latency_ms_batch1")  # over the seeds timed
        table[k] = {"mean_dev_accuracy": statistics.mean(accs), "examples_per_second": e, "latency_ms_batch1": lat}
        lines.append(f"| {label(k)} | " + " | ".join(f"{c['dev_accuracy']:.2f}" if c else "-" for c in cells)
                     + f" | {statistics.mean(accs):.2f} | " + (f"{e:.1f}" if e else "not timed") + " | "
                     + (f"{lat:.1f}" if lat else "-") + " | "
                     + (f"{e / base:.2f}x" if e and base else "-") + " |")
    lines += ["", "Kept adapters per seed (k = 1, 2, ...: the ranking by mean attention): "
              + "; ".join(f"s{r['seed']}: {', '.join(r['ranking'])}" for r in runs) + ".",
              "", f"![dev accuracy and speed per k]({stem_name}.png)"]
    return lines, table, ks, n


def _day(stamp: str | None) -> str:
    return (stamp or "an unrecorded time")[:16].replace("T", " ") + (" UTC" if stamp else "")


def _attends(record) -> bool:
    """A fusion record of AdapterFusion's attention, not of static mixing (``fusion.mixing: static``), which has
    no per-token attention to prune by."""
    return ((record.config.get("method") or {}).get("fusion") or {}).get("mixing", "attention") == "attention"


def seeds_note(results_dir: Path | None, exp: str, task: str, runs: list[dict], measured_at: str | None = None) -> str:
    """Why these seeds, from the records: the pruned runs against the other finished Fusion w/ ST-A runs of the
    task (each run's own seed, whose adapters it read, when it finished and on which CPU); "" without records.
    A pruned run whose record finished after ``measured_at`` (the measurement's date) was retrained since: it is
    described by the result its rerun replaced (``previous_result``), which is the training that was pruned."""
    if results_dir is None or not (results_dir / exp).is_dir():
        return ""
    recs = [r for r in (read_result(d) for d in sorted((results_dir / exp).iterdir()) if d.is_dir())
            if r is not None and r.finished and r.task == task and r.method_kind == "fusion_st_a" and _attends(r)]
    by_id = {r.run_id: r for r in recs}
    pruned = [by_id[r["run_id"]] for r in runs if r["run_id"] in by_id]
    if not pruned:
        return ""
    dep_seeds = {r.run_id: sorted({int(m.group(1)) for d in r.deps if (m := re.search(r"__s(\d+)__", d))})
                 for r in recs}

    def reads(r) -> str:
        ds = dep_seeds[r.run_id]
        return "its own seed's adapters" if ds == [r.seed] else f"the seed-{', '.join(map(str, ds))} adapters"

    def where(r) -> str:
        return f"finished {_day(r.finished_at)}, {r.cpu_model or 'CPU not recorded'}"

    def pruned_as(r) -> str:
        if not (measured_at and r.finished_at and r.finished_at > measured_at):
            return where(r)
        prev = r.previous_result or {}
        was = (f"finished {_day(prev.get('finished_at'))}, {prev.get('cpu_model') or 'CPU not recorded'}"
               if prev.get("finished_at") and prev["finished_at"] <= measured_at else "a training the records no longer hold")
        return (f"{was}; retrained since under the same id, {where(r)}, so these measurements are of the earlier "
                f"training and its dev accuracy, not of the one Table 1 now reads")

    done = "; ".join(f"seed {r.seed} ({reads(r)}, {pruned_as(r)})" for r in pruned)
    others = [r for r in recs if r.run_id not in {p.run_id for p in pruned}]
    text = (f"Why these seeds: pruning reads a run's weights.safetensors, and fusion weights are not committed "
            f"(only result.json is), so only runs whose weights were in the results folder at the time could be "
            f"pruned; the command names them. Pruned: {done}.")
    if others:
        text += " Not pruned, of the finished Fusion w/ ST-A runs of " + task + " in the records: " + "; ".join(
            f"seed {r.seed} ({reads(r)}, {where(r)}{'' if dep_seeds[r.run_id] == [r.seed] else '; the shared-adapter column'})"
            for r in sorted(others, key=lambda r: (r.seed, r.run_id))) + "."
    return text


def rerender(exp: str, out_dir: Path, results_dir: Path | None) -> list[Path]:
    """Every ``prune_<exp>_<task>`` report re-rendered from its stored JSON (no model is loaded, nothing is
    timed): the Markdown and the figure are written again with this code's wording, the JSON is left as it is
    (its provenance is the measurement's, printed as stored)."""
    paths = []
    for js in sorted(out_dir.glob(f"prune_{exp}_*.json")):
        raw = json.loads(read_regular(js, MAX_JSON).decode())
        if raw.get("experiment") != exp or not raw.get("runs"):
            continue
        stem = js.with_suffix("")
        runs = raw["runs"]
        lines, table, ks, n = target_lines(exp, raw["task"], runs, raw["rounds"], stem.name,
                                           seeds_note(results_dir, exp, raw["task"], runs,
                                                      raw.get("provenance", {}).get("date")))
        head = []
        drift = raw.get("drift_guard")
        if drift and not drift.get("trustworthy", True):
            head = [f"> **UNTRUSTWORTHY: the machine's fp32 GEMM peak moved {drift['change']:+.1%} during this run** "
                    f"(see the drift guard line at the end).", ""]
        body = head + lines + ["", *provenance_lines(raw["provenance"])]
        if drift:
            body += ["", f"Drift guard: fp32 GEMM peak {drift['gemm_fp32_gflops_before']:.0f} GFLOP/s before, "
                         f"{drift['gemm_fp32_gflops_after']:.0f} after ({drift['change']:+.1%}; limit "
                         f"±{drift['limit']:.0%}): {'trustworthy.' if drift['trustworthy'] else 'UNTRUSTWORTHY.'}"]
        figure(stem.with_suffix(".png"), raw["task"], ks, n, table, runs)
        write_atomic(stem.with_suffix(".md"), "\n".join(body) + "\n")
        paths.append(stem.with_suffix(".md"))
        print(f"wrote {paths[-1]}")
    if not paths:
        raise BenchError(f"no prune report of '{exp}' in {out_dir}", file=str(out_dir),
                         fix=f"run afbench prune {exp} --only <run ids> first, or point --out-dir at its reports")
    return paths


def figure(path: Path, task: str, ks: list[int], n: int, table: dict, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in runs:
        ax.plot(ks, [r["k"][str(k)]["dev_accuracy"] if str(k) in r["k"] else float("nan") for k in ks],
                color="0.75", marker=".", lw=1)
    ax.plot(ks, [table[k]["mean_dev_accuracy"] for k in ks], color="C0", marker="o", label="dev accuracy (mean)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, ["all" if k == n else str(k) for k in ks])
    ax.set_xlabel("adapters kept (k)")
    ax.set_ylabel("dev accuracy (%)", color="C0")
    eps = [table[k]["examples_per_second"] for k in ks]
    if all(eps):
        ax2 = ax.twinx()
        ax2.plot(ks, eps, color="C1", marker="s", label="examples/s")
        ax2.set_ylabel("inference examples/s", color="C1")
    ax.set_title(f"Pruned fusion: {task}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def run_prune(reg: Registry, plan: Plan, results_dir: Path, data_dir, *, only: list[str] | None, device: str,
              rounds: int, out_dir: Path, ks: tuple[int, ...] = KS, argv: list[str] | None = None) -> list[Path]:
    chosen = [r for r in plan.matching(only) if r.kind.name == "fusion_st_a" and r.method.fusion.mixing == "attention"]
    if not chosen:
        raise BenchError(f"no Fusion w/ ST-A run of '{plan.experiment.name}' matches {only or 'anything'}",
                         field="--only", fix=f"use globs over the ids afbench plan {plan.experiment.name} lists, "
                                             "e.g. 'sick__fusion_st_a*'")
    for line in data_drift(reg, chosen, data_dir):
        print(line, file=sys.stderr)
    dev = torch.device(device)
    h = Harness("prune", device, argv=argv)
    by_task: dict[str, list[dict]] = {}
    for run in chosen:
        print(f"pruning {run.id} ...", flush=True)
        by_task.setdefault(run.task, []).append(
            prune_run(reg, run, results_dir / plan.experiment.name / run.id, data_dir, dev, rounds, ks))
    paths, exp = [], plan.experiment.name
    for task, runs in by_task.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        stem = under(out_dir, f"prune_{exp}_{task}")  # spec names: never a path out of --out-dir
        lines, table, ks, n = target_lines(exp, task, runs, rounds, stem.name,
                                           seeds_note(results_dir, exp, task, runs, now()))
        figure(stem.with_suffix(".png"), task, ks, n, table, runs)
        paths.append(h.write(lines, {"experiment": exp, "task": task, "rounds": rounds, "runs": runs, "table": table},
                             out=stem.with_suffix(".md"), quiet=True))
        print(f"wrote {paths[-1]}")
    return paths
