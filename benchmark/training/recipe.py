"""Recipes: one planned run -> trained weights on disk + the measured part of its result.

A single-task run reads top to bottom (``run_single_task``): load the backbone, let the method kind add its
modules (its method package's ``setup.py``: ``setup``, ``benchmark/methods/registry.py``), add the head, train
exactly what the kind trains, load the data, train with the setup's objective, keep the selected epoch, let the
setup finish (fusion: capture attention, prune), save. A kind with a different shape of run (MT-A: many tasks at
once) gives its ``setup.py`` a whole ``recipe(run, ctx, out_dir)`` instead. Nothing here names a method kind.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark import predictions
from benchmark.data.encode import encode_split, tokenizer_fingerprint
from benchmark.methods import registry
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.checkpoint import WEIGHTS, save_modules
from benchmark.modeling.compiled import compiled_of
from benchmark.modeling.compute import Compute
from benchmark.modeling.model import AdapterModel, Modules
from benchmark.plan.run import Run
from benchmark.spec.registry import Registry
from benchmark.spec.schema import ExperimentSpec, TaskSpec
from benchmark.training.loop import Objective, Predictions, train

FUSION = "fusion"  # the name of the fusion layer a fusion run adds (its run folder's modules.json says so too)


@dataclass
class RunContext:
    reg: Registry
    exp: ExperimentSpec
    data_dir: Path | None
    device: torch.device
    run_dir: Callable[[str], Path]  # run id -> folder of a finished run (dependencies)


@dataclass
class Trained:
    """What a setup's ``finish`` sees once the kept epoch is loaded: it may add to ``result``, replace
    ``predictions`` (the dev rows the run reports) and change the setup's ``keeps`` (what is saved)."""

    model: AdapterModel
    run: Run
    ctx: RunContext
    compute: Compute
    pad_id: int
    train: object  # the encoded splits: train, dev, held-out (None under selection: dev)
    dev: object
    heldout: object | None
    best_metric: float  # the kept epoch's dev accuracy
    result: dict
    predictions: Predictions
    keeps: Modules  # frozen modules saved beside the trained ones (the setup's, until ``finish`` changes them)


@dataclass
class Setup:
    """What a kind's setup added: the modules it trains (the head is added by the recipe) and frozen
    modules saved beside them so the run folder is self-contained (fusion's source adapters)."""

    trains: Modules = field(default_factory=Modules)
    keeps: Modules = field(default_factory=Modules)
    record: dict = field(default_factory=dict)  # what the setup decided, written into result.json (``merge``)
    objective: Objective = field(default_factory=Objective)  # besides cross-entropy (fusion's V regulariser ...)
    finish: Callable[[Trained], None] | None = None  # after training: more measurements (fusion attention, pruning)


SETUPS: dict[str, Callable[[AdapterModel, Run, RunContext], Setup]] = {}  # kind -> setup, as the packages give them


def setup(*kinds: str):
    """Register a setup for these kinds in code (a test's hypothetical kind); a method package needs none."""
    def deco(fn):
        SETUPS.update(dict.fromkeys(kinds, fn))
        return fn
    return deco


def one_module_setup(section: str) -> Callable[[AdapterModel, Run, RunContext], Setup]:
    """The setup of a kind that adds one module of its method YAML's ``section``, named after the task, and trains
    it with the head (ST-A's ``adapter``, LoRA's ``lora``, (IA)^3's ``ia3``): a package's ``setup = ...``."""
    def setup(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
        model.add_adapter(run.task, getattr(run.method, section))
        model.set_active(run.task)
        return Setup(trains=Modules(adapters=[run.task]))
    return setup


# --------------------------------------------------------------------------------- data
def _common(reg: Registry, data_dir: Path | None, run: Run, task: TaskSpec) -> dict:
    caps = run.caps_for(task.name)
    return dict(max_length=caps.max_length, data_seed=caps.data_seed, root=data_dir,
                task_file=reg.file_of("task", task.name))


def dev_split(reg: Registry, data_dir: Path | None, run: Run, task: TaskSpec, tok):
    """The dev rows a run of ``run`` is scored on (its caps): what training and ``afbench predict`` evaluate."""
    return encode_split(task, task.splits.eval, tok, max_rows=run.caps_for(task.name).max_eval_rows,
                        **_common(reg, data_dir, run, task))


def load_data(ctx: RunContext, run: Run, task: TaskSpec, tok):
    """(train, dev, held-out or None) of one task, under the run's caps and selection protocol."""
    caps = run.caps_for(task.name)
    common = _common(ctx.reg, ctx.data_dir, run, task)
    sel = run.selection
    held = (sel.heldout_fraction, sel.heldout_max_rows) if sel.protocol == "heldout" else None
    tr = encode_split(task, task.splits.train, tok, max_rows=caps.max_train_rows, heldout=held, **common)
    dev = dev_split(ctx.reg, ctx.data_dir, run, task, tok)
    ho = encode_split(task, task.splits.train, tok, heldout=held, part="heldout", **common) if held else None
    return tr, dev, ho


def data_info(tr, dev, ho=None) -> dict:
    info = {"train_rows": len(tr), "train_rows_total": tr.rows_total, "eval_rows": len(dev),
            "eval_rows_total": dev.rows_total, "source": tr.source}
    if ho is not None:
        info["heldout_rows"] = len(ho)
    return info


def param_counts(model: AdapterModel) -> dict:
    own = set(model.keys_of(Modules(encoder=True)))  # the backbone's own weights (not adapters, fusions, heads)
    return {"trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()),
            "backbone": sum(p.numel() for n, p in model.named_parameters() if n in own)}


def checkpoint_bytes(out_dir: Path) -> int:
    return (out_dir / WEIGHTS).stat().st_size


def _combine(a: Modules, b: Modules) -> Modules:
    return Modules(tuple(a.adapters) + tuple(b.adapters), tuple(a.fusions) + tuple(b.fusions),
                   tuple(a.heads) + tuple(b.heads), a.encoder or b.encoder)


def training_info(outcome) -> dict:
    return {"history": outcome.history, "best_epoch": outcome.best_epoch, "best_metric": outcome.best_metric,
            "selection_metric": outcome.best_selection, "stopped_early": outcome.stopped_early,
            "padding": outcome.padding, "train_examples_per_second": outcome.examples_per_second,
            "train_seconds": outcome.train_seconds}


def compile_info(model: AdapterModel) -> dict:
    """A compiled run's ``compile`` record (graphs, recompiles, shapes: ``modeling/compiled.py``); eager: none."""
    runner = compiled_of(model)
    return {} if runner is None else {"compile": runner.record()}


# --------------------------------------------------------------------------------- recipes
def run_single_task(run: Run, ctx: RunContext, out_dir: Path) -> dict:
    reg, method, kind = ctx.reg, run.method, run.kind
    task = reg.tasks[run.task]
    bspec = reg.backbones[run.backbone]
    tok = load_tokenizer(bspec)
    model = AdapterModel(load_encoder(bspec, tok))

    torch.manual_seed(run.seed)  # module init, dropout and batch order follow the run seed
    added = setup_of(kind.name)(model, run, ctx)
    model.add_head(task.name, task.type, task.num_labels, bspec.pooling)
    trains = _combine(added.trains, Modules(heads=[task.name])) if "head" in kind.trains else added.trains
    model.train_only(trains)
    compute = Compute.of(run.compute)
    compute.check(ctx.device)
    compute.apply(model, tok.pad_token_id)
    model.to(ctx.device)

    tr, dev, ho = load_data(ctx, run, task, tok)
    outcome = train(model, task.name, tr, dev, method.train, pad_id=tok.pad_token_id, device=ctx.device,
                    seed=run.seed, snapshot=lambda: model.state_of(trains), objective=added.objective,
                    desc=run.label + " " + task.name, heldout=ho, compute=compute)

    model.load_state_dict(outcome.best_state, strict=False)
    result = {**training_info(outcome), "params": param_counts(model), "data": data_info(tr, dev, ho),
              "tokenizer": tokenizer_fingerprint(tok), **compile_info(model)}
    result.update(added.record)
    done = Trained(model, run, ctx, compute, tok.pad_token_id, tr, dev, ho, outcome.best_metric, result,
                   outcome.best_predictions[task.name], added.keeps)  # the kept epoch's dev rows
    if added.finish is not None:
        added.finish(done)
    result["predictions"] = predictions.write(out_dir, done.predictions.columns())
    saved = _combine(trains, done.keeps)
    state = {**model.state_of(done.keeps), **outcome.best_state}
    save_modules(model, out_dir, adapters=saved.adapters, fusions=saved.fusions, heads=saved.heads,
                 encoder=saved.encoder, state={k: v.cpu() for k, v in state.items()})
    result["checkpoint_bytes"] = checkpoint_bytes(out_dir)
    return result


def setup_of(kind: str) -> Callable[[AdapterModel, Run, RunContext], Setup] | None:
    """How single-task runs of ``kind`` add their modules: its method package's ``setup.py`` (``setup``), or a
    ``@setup`` in code; None when it has neither (or its package gives a whole ``recipe``)."""
    if kind not in SETUPS and (found := getattr(registry.part(kind, "setup"), "setup", None)) is not None:
        SETUPS[kind] = found
    return SETUPS.get(kind)


def recipe_of(kind: str) -> Callable[[Run, RunContext, Path], dict] | None:
    """A kind's whole recipe (its package's ``setup.py`` gives ``recipe`` instead of ``setup``: MT-A), else None."""
    fn = getattr(registry.part(kind, "setup"), "recipe", None)
    return fn if callable(fn) and not isinstance(fn, types.ModuleType) else None  # not ``from ... import recipe``


def execute(run: Run, ctx: RunContext, out_dir: Path) -> dict:
    fn = recipe_of(run.kind.name)
    if fn is not None:
        return fn(run, ctx, out_dir)
    if setup_of(run.kind.name) is None:
        raise KeyError(f"method kind '{run.kind.name}' has no setup: give its package a setup.py with "
                       "setup(model, run, ctx) or recipe(run, ctx, out_dir) (benchmark/methods/registry.py)")
    return run_single_task(run, ctx, out_dir)
