"""The cost model: how long each planned run takes, on this CPU or on a GPU. The one place that predicts
run time (``afbench plan --estimate`` and the runner's ETA read it).

Per run it counts the work, then prices it:

1. **Rows and tokens.** Train rows (after the held-out slice and the row caps), eval rows per epoch
   (dev, plus the held-out slice under ``selection: heldout``) and, from a sample of up to
   ``SAMPLE_ROWS`` rendered and tokenized rows per split, the length distribution; the computed tokens
   of an epoch (padding included) come from ``data/batching.py`` itself, simulating the run's batching
   on lengths resampled to the split's size. Where a task's data is not available (the Hub offline),
   its declared sizes (``paper.train_size``, ``paper.dev_size``) and ``ASSUMED_LENGTH`` of its max
   length are used, and the run says so (``basis``).
2. **Epochs.** The epoch budget times the share of it runs of this method kind actually trained
   (early stopping) in the calibration set; 1.0 for a kind the calibration has not seen.
3. **FLOPs per token** from the encoder's shape (layers, width, FFN width; the Hub's BERT-base and
   RoBERTa-base are listed so ``table1`` can be costed offline), counted by the one FLOP model
   (``plan/flops.py``: the forward, and what the backward really computes for what the method trains).
4. **Price.** CPU: ``seconds = (a * train GFLOP + b * eval GFLOP) / threads + c``, with ``a, b, c``
   fitted (non-negative least squares on relative errors) to finished runs of one CPU model and stored
   by ``afbench plan EXP --estimate --calibrate`` in ``<results>/.cost_calibration.json`` (``USER_FILE``),
   which takes precedence over the one shipped in the package (``cost_calibration.json``); ``threads`` are the run's
   torch threads (linear scaling assumed). GPU: FLOPs over a stated fraction (``GPU_EFFICIENCY``) of
   the datasheet bf16 dense peak (``GPUS``), plus a fixed time per step (``GPU_STEP_S``: launches and
   Python, which dominate small-batch fine-tuning on a large GPU) and ``GPU_OVERHEAD_S`` per run: an
   estimate, not a measurement, and labelled so wherever it is printed. Epochs on a budget the
   calibration has not seen (the paper's 30) use the same share, so long budgets are costed high when
   early stopping would end them sooner.
5. **Wall time on N devices**: list scheduling along the dependency graph (a run starts when its
   dependencies have finished and a device is free, in the runner's start order), not total / N.

What it reads of a backbone (its tokenizer, its config's shape) comes through a ``Reader`` that the caller
passes (``modeling.backbone.READER``): the planning layer loads no model code, and no torch.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data.batching import epoch_batches, padding_cost, row_lengths
from benchmark.data.encode import render_row_at, tokenize_row
from benchmark.data.holdout import heldout_size
from benchmark.data.sources import read_rows, subsample
from benchmark.errors import BenchError, DataError, DataUnavailable
from benchmark.paths import write_atomic
from benchmark.plan.flops import Shape, encoder_per_token, method_per_token, train_per_token, trains_of
from benchmark.plan.order import start_order
from benchmark.plan.run import Plan, Run
from benchmark.records import RunRecord, scan_experiment
from benchmark.spec.registry import Registry
from benchmark.spec.schema import BackboneSpec, TaskSpec

CALIBRATION_FILE = Path(__file__).with_name("cost_calibration.json")  # shipped: the default
USER_FILE = ".cost_calibration.json"  # under the results root: a user's own fit, which takes precedence
SAMPLE_ROWS = 400
SIM_ROWS = 20_000  # lengths resampled to at most this many rows to simulate an epoch's batches
ASSUMED_LENGTH = 0.5  # share of max_length a row is assumed to fill when its data is not available
# Datasheet dense bf16 peaks (FLOP/s, SXM parts) and the share of it a fine-tuning run is assumed to reach.
GPUS = {"a100": 312e12, "h100": 989e12, "h200": 989e12}
GPU_EFFICIENCY = 0.30
GPU_OVERHEAD_S = 30.0  # per run: loading the model and the data
# per step: kernel launches and Python of an eager PyTorch step (a BERT-base training step at batch 32 does
# not fill a datacenter GPU; this, not the FLOPs, dominates small-batch fine-tuning there)
GPU_STEP_S = {"train": 0.025, "eval": 0.008}
# Results written before the runner recorded the CPU model came from the project's earlier machine.
UNRECORDED_CPU = "AMD EPYC, 2 cores (cpu_model not recorded)"
# Shapes of Hub backbones, so a grid on them can be costed without downloading their configs.
KNOWN_SHAPES = {"bert-base-uncased": (12, 768, 3072), "roberta-base": (12, 768, 3072),
                "FacebookAI/roberta-base": (12, 768, 3072), "google-bert/bert-base-uncased": (12, 768, 3072)}


@dataclass(frozen=True)
class Reader:
    """What the cost model reads of a backbone: a tokenizer that counts tokens as the run's does, and the
    config's fields (``config.json`` as a dict)."""
    tokenizer: Callable[[BackboneSpec], object]
    config: Callable[[BackboneSpec], dict]


@dataclass
class SplitProfile:
    rows: int
    lengths: list  # sampled token counts (int, or a list per multiple-choice row)
    measured: bool  # from the data (True) or declared sizes and an assumed length (False)


@dataclass
class RunCost:
    id: str
    kind: str
    epochs: float
    train_gflop: float
    eval_gflop: float
    threads: int
    train_steps: float = 0.0
    eval_steps: float = 0.0
    seconds: float = 0.0
    basis: list[str] = field(default_factory=list)  # how the data part was obtained, when not measured


# --------------------------------------------------------------------------------------- shapes
def encoder_shape(spec: BackboneSpec, reader: Reader) -> Shape:
    if spec.source == "random_init":
        c = spec.config
        return Shape(int(c.get("num_hidden_layers", 12)), int(c.get("hidden_size", 768)),
                     int(c.get("intermediate_size", 4 * int(c.get("hidden_size", 768)))))
    if spec.source == "hub" and spec.model_id in KNOWN_SHAPES:
        return Shape(*KNOWN_SHAPES[spec.model_id])
    try:
        c = reader.config(spec)
        d = int(c.get("hidden_size", c.get("dim", 0)))  # DistilBERT: n_layers, dim, hidden_dim
        return Shape(int(c.get("num_hidden_layers", c.get("n_layers", 0))), d,
                     int(c.get("intermediate_size", c.get("hidden_dim", 4 * d))))
    except (OSError, ValueError, BenchError) as e:
        raise BenchError(f"the cost model cannot read the shape of backbone '{spec.name}' ({e})",
                         field="model_id", fix="make its config available offline, or add its shape to "
                                               "KNOWN_SHAPES in benchmark/plan/cost.py") from None


# --------------------------------------------------------------------------------------- data
_profiles: dict[tuple, SplitProfile] = {}  # split_profile's, per (task, split, max length, tokenizer, data root)


def _measure(task: TaskSpec, split: str, max_length: int, tok, data_root: Path | None, task_file: str,
             declared_rows: int | None) -> SplitProfile:
    try:
        rows = read_rows(task, split, data_root, task_file=task_file)
    except (DataUnavailable, DataError):
        n = declared_rows or 0
        k = task.num_labels if task.type == "multiple_choice" else 0
        length = max(8, int(ASSUMED_LENGTH * max_length))
        return SplitProfile(n, [[length] * k if k else length], False)
    encoded = []
    for i in subsample(len(rows), SAMPLE_ROWS, 0):
        with contextlib.suppress(BenchError):  # a row that fails to render or tokenize is left out of the sample
            encoded.append(tokenize_row(tok, render_row_at(task, rows[i], split, i, task_file), task, max_length))
    return SplitProfile(len(rows), row_lengths(encoded) or [max_length // 2], True)


_tokenizers: dict[str, object] = {}


def _tokenizer(reg: Registry, backbone: str, load_tokenizer: Callable):
    """The backbone's tokenizer, loaded once; a Hub backbone offline uses MiniLM's (BERT's uncased vocab)."""
    if backbone not in _tokenizers:
        try:
            _tokenizers[backbone] = load_tokenizer(reg.backbones[backbone])
        except Exception:  # noqa: BLE001 - any tokenizer that cannot load offline: the proxy below
            proxy = next((b for b, s in reg.backbones.items() if s.source == "python_package"), None)
            if proxy is None or proxy == backbone:
                raise
            _tokenizers[backbone] = load_tokenizer(reg.backbones[proxy])
    return _tokenizers[backbone]


def split_profile(reg: Registry, run: Run, task: str, split: str, data_root: Path | None,
                  reader: Reader) -> SplitProfile:
    spec = reg.tasks[task]
    caps = run.caps_for(task)
    max_len = min(caps.max_length or spec.max_length, spec.max_length)
    train = spec.paper.train_size
    declared = train if split == spec.splits.train else spec.paper.dev_size or (train // 10 if train else None)
    tok = _tokenizer(reg, run.backbone, reader.tokenizer)
    key = (spec.name, split, max_len, run.backbone, str(data_root) if data_root else None)
    if key not in _profiles:
        _profiles[key] = _measure(spec, split, max_len, tok, data_root, reg.file_of("task", task), declared)
    return _profiles[key]


def computed_tokens(lengths: list, rows: int, batch_size: int, mode: str, seed: int = 0) -> float:
    """Computed tokens (padding included) of one pass over ``rows`` rows whose lengths are like ``lengths``."""
    if rows <= 0:
        return 0.0
    n = min(rows, SIM_ROWS)
    rng = random.Random(seed)
    sim = [lengths[rng.randrange(len(lengths))] for _ in range(n)]
    batches = epoch_batches(sim, batch_size, mode=mode, seed=seed, randperm=lambda k: rng.sample(range(k), k))
    _, computed = padding_cost(sim, batches)
    return computed * rows / n


# --------------------------------------------------------------------------------------- runs
def run_work(reg: Registry, run: Run, data_root: Path | None, epoch_share: dict[str, float],
             threads: int, reader: Reader) -> RunCost:
    """Tokens and FLOPs of one run (no pricing)."""
    shape = encoder_shape(reg.backbones[run.backbone], reader)
    extra = method_per_token(run.method, shape, len(run.sources))  # what the method's modules add per token
    tp = run.method.train
    epochs = max(1.0, tp.epochs * epoch_share.get(run.kind.name, 1.0))
    train_gf = eval_gf = train_steps = eval_steps = 0.0
    basis: list[str] = []
    tasks = run.all_tasks
    for t in tasks:
        spec, caps = reg.tasks[t], run.caps_for(t)
        tr = split_profile(reg, run, t, spec.splits.train, data_root, reader)
        ev = split_profile(reg, run, t, spec.splits.eval, data_root, reader)
        if not (tr.measured and ev.measured):
            basis.append(f"{t}: declared sizes, {ASSUMED_LENGTH:.0%} of max length assumed")
        held = heldout_size(tr.rows, run.selection.heldout_fraction, run.selection.heldout_max_rows) \
            if run.selection.protocol == "heldout" else 0
        n_train = min(tr.rows - held, caps.max_train_rows or tr.rows)
        n_eval = min(ev.rows, caps.max_eval_rows or ev.rows)
        if tp.max_steps_per_epoch and len(tasks) == 1:
            n_train = min(n_train, tp.max_steps_per_epoch * tp.batch_size)
        per_epoch = computed_tokens(tr.lengths, n_train, tp.batch_size, run.batching)
        evals = computed_tokens(ev.lengths, n_eval, tp.eval_batch_size, "shuffled") + \
            computed_tokens(tr.lengths, held, tp.eval_batch_size, "shuffled")
        flat = [x for v in tr.lengths for x in (v if isinstance(v, list) else [v])]  # each choice its own sequence
        seq = statistics.fmean(flat) if flat else 0.0
        train_steps += epochs * -(-n_train // tp.batch_size)
        eval_steps += epochs * (-(-n_eval // tp.eval_batch_size) + -(-held // tp.eval_batch_size))
        train_gf += per_epoch * epochs * train_per_token(trains_of(run.method), shape, seq, extra) / 1e9
        eval_gf += evals * epochs * (encoder_per_token(shape, seq) + extra) / 1e9
    return RunCost(run.id, run.kind.name, epochs, train_gf, eval_gf, threads, train_steps, eval_steps, basis=basis)


def load_calibration(results_root: Path | None = None) -> dict:
    """The user's calibration (``<results_root>/.cost_calibration.json``) where there is one, else the shipped one."""
    for path in ([Path(results_root) / USER_FILE] if results_root else []) + [CALIBRATION_FILE]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
    return {"cpus": {}}


def cpu_entry(calibration: dict, cpu: str | None) -> tuple[str, dict]:
    """The calibration of this CPU model, else the default one (the note says which)."""
    cpus = calibration.get("cpus", {})
    for name in (cpu, calibration.get("default")):
        if name in cpus:
            return name, cpus[name]
    raise BenchError("no CPU calibration for the cost model", field=f"<results>/{USER_FILE}",
                     fix="run `afbench plan minilm_table1 --estimate --calibrate` after some runs have finished")


def calibration_note(fitted: str, cpu: str | None) -> str:
    """Which CPU the calibration was fitted on and whether this one (``cpu``) matches it: the same model name,
    the same name as far as the fit's runs recorded it (``UNRECORDED_CPU``), or another model."""
    if fitted == cpu:
        return f"CPU calibration fitted on this CPU model ({cpu})"
    if fitted == UNRECORDED_CPU:
        name = fitted.split(" (")[0]  # "AMD EPYC, 2 cores"
        known = name.split(",")[0]
        head = f"CPU calibration fitted on {name} (its runs did not record the exact model name)"
        if cpu and cpu.startswith(known):
            return f"{head}; this CPU ({cpu}) matches that name"
    else:
        head = f"CPU calibration fitted on {fitted}"
    return (f"{head}; this CPU ({cpu or 'model unknown'}) does not match: the seconds assume that CPU's speed "
            "(the runner's ETA corrects them as runs progress; refit with `--estimate --calibrate`)")


def price(cost: RunCost, device: str, cpu_fit: dict | None) -> float:
    if device == "cpu":
        a, b, c = cpu_fit["a"], cpu_fit["b"], cpu_fit["c"]
        return (a * cost.train_gflop + b * cost.eval_gflop) / max(1, cost.threads) + c
    peak = GPUS[device] * GPU_EFFICIENCY
    steps = cost.train_steps * GPU_STEP_S["train"] + cost.eval_steps * GPU_STEP_S["eval"]
    return (cost.train_gflop + cost.eval_gflop) * 1e9 / peak + steps + GPU_OVERHEAD_S


def makespan(seconds: dict[str, float], devices: int, order: list[Run]) -> float:
    """Wall seconds on ``devices`` parallel workers: list scheduling in the runner's start order, each run
    started when its dependencies (among ``seconds``) have finished and a worker is free."""
    finish: dict[str, float] = {}
    free = [0.0] * max(1, devices)
    pending = [r for r in order if r.id in seconds]
    while pending:
        ready = [r for r in pending if all(d in finish or d not in seconds for d in r.deps)]
        if not ready:
            break
        # the worker that frees first takes the first run, in start order, whose dependencies are done by then
        free.sort()
        t = free[0]
        startable = [r for r in ready if max([finish.get(d, 0.0) for d in r.deps] or [0.0]) <= t]
        r = startable[0] if startable else min(ready, key=lambda r: max(finish.get(d, 0.0) for d in r.deps))
        start = max(t, max([finish.get(d, 0.0) for d in r.deps] or [0.0]))
        finish[r.id] = start + seconds[r.id]
        free[0] = finish[r.id]
        pending.remove(r)
    return max(finish.values(), default=0.0)


@dataclass
class Estimate:
    device: str
    devices: int
    runs: list[RunCost]
    wall_seconds: float
    calibration: str  # which CPU calibration priced it, or the GPU assumption
    per_kind: dict[str, float] = field(default_factory=dict)  # kind -> summed hours

    @property
    def total_hours(self) -> float:
        return sum(r.seconds for r in self.runs) / 3600

    def as_json(self) -> dict:
        return {"device": self.device, "devices": self.devices, "calibration": self.calibration,
                "runs": [{"id": r.id, "seconds": round(r.seconds, 1), "kind": r.kind, "epochs": round(r.epochs, 2),
                          "train_gflop": round(r.train_gflop, 1), "eval_gflop": round(r.eval_gflop, 1),
                          **({"basis": r.basis} if r.basis else {})} for r in self.runs],
                "per_kind_hours": {k: round(v, 3) for k, v in self.per_kind.items()},
                "total_hours": round(self.total_hours, 3), "wall_hours": round(self.wall_seconds / 3600, 3)}


def estimate(plan: Plan, reg: Registry, data_root: Path | None, reader: Reader, *, device: str = "cpu",
             devices: int = 1, threads: int | None = None, runs: list[Run] | None = None,
             cpu: str | None = None, results_root: Path | None = None) -> Estimate:
    """Predicted seconds of ``runs`` (default: every run of the plan) and the wall time on ``devices``
    (priced by ``load_calibration(results_root)``)."""
    cal = load_calibration(results_root)
    name, entry = cpu_entry(cal, cpu) if device == "cpu" else (
        f"{GPU_EFFICIENCY:.0%} of the {device.upper()} datasheet bf16 peak + {GPU_STEP_S['train'] * 1e3:.0f} ms per "
        "training step: an assumption, not a measurement", None)
    fit = entry["fit"] if entry else None
    share = cal.get("epoch_share", {})
    chosen = runs if runs is not None else plan.runs
    out = []
    per_kind: dict[str, float] = {}
    for r in chosen:
        c = run_work(reg, r, data_root, share, threads or 1, reader)
        c.seconds = price(c, device, fit)
        out.append(c)
        per_kind[c.kind] = per_kind.get(c.kind, 0.0) + c.seconds / 3600
    seconds = {c.id: c.seconds for c in out}
    wall = makespan(seconds, devices, start_order(list(chosen)))
    label = calibration_note(name, cpu) if device == "cpu" else name
    return Estimate(device, devices, out, wall, label, per_kind)


# --------------------------------------------------------------------------------------- calibration
def fit_seed(plan: Plan, results: dict[str, RunRecord]) -> int:
    """The seed to fit on: the one whose finished runs (of this plan) cover the most method kinds, then
    the most runs, then the lowest. A fit on one kind alone (a CPU that trained only ST-A runs of a seed)
    cannot tell training, evaluation and per-run overhead apart."""
    by_id = plan.by_id()
    kinds: dict[int, list[str]] = {}  # seed -> the kind of each of its finished runs
    for rid, r in results.items():
        if rid in by_id and r.finished:
            kinds.setdefault(r.seed, []).append(by_id[rid].kind.name)
    return min(kinds, key=lambda seed: (-len(set(kinds[seed])), -len(kinds[seed]), seed))


def calibrate(plan: Plan, reg: Registry, data_root: Path | None, results: dict[str, RunRecord],
              fit_seeds: set[int], reader: Reader) -> dict:
    """Fit ``a, b, c`` and the per-kind epoch share on finished runs of ``fit_seeds``; check on the rest.
    ``results``: run id -> result.json of this plan's finished runs (one CPU model)."""
    import numpy as np
    from scipy.optimize import nnls

    by_id = plan.by_id()
    done = [(by_id[i], r) for i, r in results.items() if i in by_id and r.finished]
    share: dict[str, list[float]] = {}
    for run, r in done:
        if run.seed in fit_seeds and r.history:
            share.setdefault(run.kind.name, []).append(len(r.history) / run.method.train.epochs)
    epoch_share = {k: statistics.fmean(v) for k, v in share.items()}
    costs = []
    for run, r in done:
        c = run_work(reg, run, data_root, epoch_share, int(r.torch_threads or 1), reader)
        # fitting on the runs' own epoch counts: the share above predicts them, the fit prices them
        c_true = run_work(reg, run, data_root, {run.kind.name: len(r.history or [1]) / run.method.train.epochs},
                          int(r.torch_threads or 1), reader)
        costs.append((run, r, c, c_true))
    fit_rows = [(c_true, r.wall_seconds) for run, r, _, c_true in costs if run.seed in fit_seeds]
    rows = [[c.train_gflop / c.threads / secs, c.eval_gflop / c.threads / secs, 1 / secs] for c, secs in fit_rows]
    coef, _ = nnls(np.array(rows), np.ones(len(rows)))  # relative errors: every run's predicted / actual time is 1
    fit = {"a": float(coef[0]), "b": float(coef[1]), "c": float(coef[2])}
    check = []
    for run, r, c, _ in costs:
        if run.seed in fit_seeds:
            continue
        pred = price(c, "cpu", fit)
        check.append({"id": run.id, "kind": run.kind.name, "predicted": round(pred, 1),
                      "actual": round(r.wall_seconds, 1), "rel_error": round(pred / r.wall_seconds - 1, 3)})
    errs = [abs(x["rel_error"]) for x in check]
    by_kind: dict[str, list[float]] = {}
    for x in check:
        by_kind.setdefault(x["kind"], []).append(abs(x["rel_error"]))
    worst = max(by_kind.items(), key=lambda kv: statistics.median(kv[1])) if by_kind else ("", [0.0])
    return {"fit": fit, "epoch_share": {k: round(v, 4) for k, v in epoch_share.items()},
            "fit_runs": len(fit_rows), "check_runs": len(check),
            "median_rel_error": round(statistics.median(errs), 4) if errs else None,
            "worst_kind": {"kind": worst[0], "median_rel_error": round(statistics.median(worst[1]), 4)},
            "check": check}


def recalibrate(plan: Plan, reg: Registry, data_root: Path | None, results_root: Path, reader: Reader,
                log=print) -> Path:
    """Refit the CPU model per CPU model on this experiment's finished runs of one seed (``fit_seed``), check it
    on the other seeds, and write the user calibration (``<results_root>/.cost_calibration.json``)."""
    by_cpu: dict[str, dict] = {}
    for r in scan_experiment(results_root, plan.experiment.name).results:
        by_cpu.setdefault(r.cpu_model or UNRECORDED_CPU, {})[r.run_id] = r
    cal = load_calibration(results_root)
    for cpu, res in sorted(by_cpu.items()):
        if len({r.seed for r in res.values()}) < 2:
            log(f"{cpu}: runs of one seed only; not calibrated (the check needs other seeds)")
            continue
        seed = fit_seed(plan, res)
        out = calibrate(plan, reg, data_root, res, {seed}, reader)
        out.update({"experiment": plan.experiment.name, "fit_seeds": [seed]})
        cal.setdefault("cpus", {})[cpu] = out
        cal["epoch_share"] = out["epoch_share"] if cpu == cal.get("default", cpu) else cal.get("epoch_share", {})
        cal.setdefault("default", cpu)
        log(f"{cpu}: fitted on {out['fit_runs']} runs of seed {seed}, checked on {out['check_runs']}: median "
            f"|relative error| {out['median_rel_error']:.1%}; worst kind {out['worst_kind']['kind']} "
            f"({out['worst_kind']['median_rel_error']:.1%})")
    path = Path(results_root) / USER_FILE
    write_atomic(path, json.dumps(cal, indent=2) + "\n", root=results_root)
    return path


def summary_lines(est: Estimate) -> list[str]:
    lines = [f"estimate on {est.device}" + (f" x {est.devices}" if est.devices > 1 else "") + f" ({est.calibration}):"]
    lines += [f"  {k:<14} {h:8.2f} h" for k, h in sorted(est.per_kind.items(), key=lambda kv: -kv[1])]
    unit = "GPU-hours" if est.device != "cpu" else "CPU run-hours"
    lines.append(f"  total          {est.total_hours:8.2f} {unit}; wall {est.wall_seconds / 3600:.2f} h on "
                 f"{est.devices} {'device' if est.devices == 1 else 'devices'} along the dependency graph")
    if any(r.basis for r in est.runs):
        tasks = sorted({b.split(':')[0] for r in est.runs for b in r.basis})
        lines.append(f"  no data for {', '.join(tasks)}: declared sizes and {ASSUMED_LENGTH:.0%} of max length assumed")
    return lines
