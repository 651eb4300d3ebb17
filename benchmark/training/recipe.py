"""Recipes: one planned run -> trained weights on disk + the measured part of its result.

A single-task run reads top to bottom (``run_single_task``): load the backbone, let the method kind add
its modules (its method package's ``setup.py``, or a ``@setup`` function here for the paper's kinds), add the head, train exactly what the kind trains
(``benchmark/methods``), load the data, train, keep the selected epoch, capture fusion attention, save.
A kind with a different shape of run (MT-A: many tasks at once) registers a whole ``@recipe`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark import predictions, records
from benchmark.data.encode import encode_split, tokenizer_fingerprint
from benchmark.data.published import content_hash
from benchmark.errors import CheckpointError, SpecError
from benchmark.methods import registry
from benchmark.modeling import merging
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.checkpoint import WEIGHTS, load_adapterhub, load_modules, save_modules
from benchmark.modeling.compiled import compiled_of
from benchmark.modeling.compute import Compute
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.modeling.prune import mean_attention, rank_adapters, top_k
from benchmark.plan.run import Run
from benchmark.spec.registry import Registry
from benchmark.spec.schema import ExperimentSpec, TaskSpec
from benchmark.training.loop import Objective, Predictions, evaluate, merge_columns, predict, train
from benchmark.training.mt_a import train_multitask

FUSION = "fusion"


@dataclass
class RunContext:
    reg: Registry
    exp: ExperimentSpec
    data_dir: Path | None
    device: torch.device
    run_dir: Callable[[str], Path]  # run id -> folder of a finished run (dependencies)


@dataclass
class Setup:
    """What a kind's setup added: the modules it trains (the head is added by the recipe) and frozen
    modules saved beside them so the run folder is self-contained (fusion's source adapters)."""

    trains: Modules = field(default_factory=Modules)
    keeps: Modules = field(default_factory=Modules)
    record: dict = field(default_factory=dict)  # what the setup decided, written into result.json (``merge``)


SETUPS: dict[str, Callable[[AdapterModel, Run, RunContext], Setup]] = {}
RECIPES: dict[str, Callable[[Run, RunContext, Path], dict]] = {}


def _registrar(table: dict, kinds: tuple[str, ...]):
    def deco(fn):
        for k in kinds:
            table[k] = fn
        return fn
    return deco


def setup(*kinds: str):
    """Register how single-task runs of these kinds add their modules to the model."""
    return _registrar(SETUPS, kinds)


def recipe(*kinds: str):
    """Register a whole recipe for runs of these kinds (instead of ``run_single_task``)."""
    return _registrar(RECIPES, kinds)


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


def _data_info(tr, dev, ho=None) -> dict:
    info = {"train_rows": len(tr), "train_rows_total": tr.rows_total, "eval_rows": len(dev),
            "eval_rows_total": dev.rows_total, "source": tr.source}
    if ho is not None:
        info["heldout_rows"] = len(ho)
    return info


def _param_counts(model: AdapterModel) -> dict:
    own = set(model.keys_of(Modules(encoder=True)))  # the backbone's own weights (not adapters, fusions, heads)
    return {"trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()),
            "backbone": sum(p.numel() for n, p in model.named_parameters() if n in own)}


def _checkpoint_bytes(out_dir: Path) -> int:
    return (out_dir / WEIGHTS).stat().st_size


def _combine(a: Modules, b: Modules) -> Modules:
    return Modules(tuple(a.adapters) + tuple(b.adapters), tuple(a.fusions) + tuple(b.fusions),
                   tuple(a.heads) + tuple(b.heads), a.encoder or b.encoder)


def _training_info(outcome) -> dict:
    return {"history": outcome.history, "best_epoch": outcome.best_epoch, "best_metric": outcome.best_metric,
            "selection_metric": outcome.best_selection, "stopped_early": outcome.stopped_early,
            "padding": outcome.padding, "train_examples_per_second": outcome.examples_per_second,
            "train_seconds": outcome.train_seconds}


# --------------------------------------------------------------------------------- per-kind setups
@setup("head")
def _head_only(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    return Setup()


@setup("full")
def _full(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    return Setup(trains=Modules(encoder=True))


@setup("st_a", "st_a_houlsby")
def _single_adapter(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    model.add_adapter(run.task, run.method.adapter)
    model.set_active(run.task)
    return Setup(trains=Modules(adapters=[run.task]))


def _fusion_over_loaded_adapters(model: AdapterModel, run: Run) -> Setup:
    model.add_fusion(FUSION, run.sources, run.method.fusion)
    model.set_active(Fuse(FUSION))
    return Setup(trains=Modules(fusions=[FUSION]), keeps=Modules(adapters=run.sources))


@setup("fusion_st_a")
def _fusion_st_a(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    if run.method.fusion.mixing == "merge":
        return _merged_sources(model, run, ctx)
    for src, dep in run.stage1_deps():  # one stage-1 ST-A run per source ...
        load_modules(model, ctx.run_dir(dep), adapters=[src], heads=[], fusions=[], encoder=False)
    for src, pub in run.published.items():  # ... or a published AdapterHub adapter (fusion.adapterhub)
        if content_hash(Path(pub.folder)) != pub.sha256:
            raise CheckpointError(f"the published adapter for '{src}' changed since the run was planned",
                                  file=pub.folder, fix="plan again (afbench run) so the run id holds its new content")
        load_adapterhub(model, Path(pub.folder), name=src)
    return _fusion_over_loaded_adapters(model, run)


def _merged_sources(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    """``fusion.mixing: merge``: the same stage-1 ST-A sources Fusion w/ ST-A reads, merged into ONE adapter
    (``modeling/merging.py``) put where the target's own adapter sits (named after the task, so the run folder
    is an ST-A run's: one adapter and the head). The task vectors are taken from the init every source started
    from: the stage-1 runs of one seed share it (their recipe seeds just before adding the adapter), re-created
    by ``merging.initial_adapter`` for the sources' seed. DARE's drop is seeded from the run seed. The sources
    are read in a scratch model of the same backbone, and the global generator is left as it was, so the head
    is initialised as in any run of this seed."""
    spec, task = run.method.fusion.merge, run.task
    if run.published:
        raise SpecError(f"fusion.mixing: merge needs the stage-1 init its sources started from, which published "
                        f"adapters do not have ({', '.join(run.published)} come from fusion.adapterhub)",
                        file=run.experiment, field="fusion.adapterhub",
                        fix="merge stage-1 sources only: leave fusion.adapterhub out of the experiment for this method")
    seeds = set()
    for _, dep in run.stage1_deps():
        rec = records.read_result(Path(ctx.run_dir(dep)))
        seeds.add(rec.seed if rec is not None else None)
    if len(seeds) != 1 or None in seeds:
        raise CheckpointError(f"the merged sources must be stage-1 runs of one seed with a result.json each; "
                              f"found seeds {sorted(map(str, seeds))}", file=str(ctx.run_dir(run.deps[0])),
                              fix="rerun the stage-1 dependencies (afbench run) so each has its result")
    source_seed = seeds.pop()
    bspec = ctx.reg.backbones[run.backbone]
    with torch.random.fork_rng(devices=[]):  # building the scratch backbone draws nothing from the run's generator
        scratch = AdapterModel(load_encoder(bspec, load_tokenizer(bspec)))
    sources = []
    for src, dep in run.stage1_deps():
        load_modules(scratch, ctx.run_dir(dep), adapters=[src], heads=[], fusions=[], encoder=False)
        sources.append(merging.read(scratch, src))
    params = scratch.adapter_params[run.sources[0]]
    if any(scratch.adapter_params[s] != params for s in run.sources):
        raise CheckpointError("the merged sources are adapters of different configurations "
                              f"({sorted({str(scratch.adapter_params[s]) for s in run.sources})})",
                              file=str(ctx.run_dir(run.deps[0])), fix="merge stage-1 ST-A runs of one configuration")
    base = None if spec.how == "average" else merging.initial_adapter(scratch, params, source_seed)
    merged = merging.merge_adapters(sources, spec.how, base=base, lam=spec.weight, density=spec.density,
                                    generator=torch.Generator().manual_seed(run.seed))
    del scratch
    model.add_adapter(task, params)
    merging.write(model, task, merged)
    model.set_active(task)
    mine = Modules(adapters=[task])
    info = {"how": spec.how, "density": spec.density, "weight": spec.weight, "sources": list(run.sources),
            "source_seed": source_seed, "base": "none" if base is None else "init", "train_adapter": spec.train_adapter}
    if spec.train_adapter:
        return Setup(trains=mine, record={"merge": info})
    return Setup(keeps=mine, record={"merge": info})


@setup("fusion_mt_a")
def _fusion_mt_a(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    # the MT-A run's adapters and its fine-tuned encoder, both frozen
    load_modules(model, ctx.run_dir(run.deps[0]), adapters=run.sources, heads=[], fusions=[], encoder=True)
    return _fusion_over_loaded_adapters(model, run)


def prune_after_training(model: AdapterModel, run: Run, keep: int, *, ranking, ranked_on: str, dev, pad_id: int,
                         ctx: RunContext, compute: Compute) -> tuple[dict, Predictions]:
    """``fusion.prune: {keep: k}``: rank the fused adapters by mean attention over every layer and the
    ``ranking`` rows (the held-out slice; train rows under ``selection: dev``, never dev), keep the top k in
    every layer (``modeling/prune.py``) and evaluate the pruned model on dev (its predictions too)."""
    bs = run.method.train.eval_batch_size
    model.start_capture()
    evaluate(model, ranking, run.task, pad_id, bs, ctx.device, compute)
    layers = model.stop_capture()
    names = list(model.fusion_params[FUSION][0])
    kept = model.prune_fusion(FUSION, top_k(names, layers, keep), drop_adapters=True)
    pred = predict(model, dev, run.task, pad_id, bs, ctx.device, compute)
    acc = pred.accuracy
    return {"keep": keep, "kept": kept, "ranking": rank_adapters(names, layers), "ranked_on": ranked_on,
            "ranking_rows": len(ranking), "mean_attention": dict(zip(names, mean_attention(layers))),
            "dev_accuracy": acc}, pred


def _compile_info(model: AdapterModel) -> dict:
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
    objective = Objective()
    fuses = kind.fusion and method.fusion.mixing != "merge"  # a merge builds one adapter, no fusion layer
    if fuses:
        has_value = method.fusion.type == "dynamic" and method.fusion.mixing == "attention"  # static mixing: no V
        reg_w = method.fusion.regularization if has_value else 0.0
        objective = Objective(FUSION, reg_w, method.fusion.temperature)
    outcome = train(model, task.name, tr, dev, method.train, pad_id=tok.pad_token_id, device=ctx.device,
                    seed=run.seed, snapshot=lambda: model.state_of(trains), objective=objective,
                    desc=run.label + " " + task.name, heldout=ho, compute=compute)

    model.load_state_dict(outcome.best_state, strict=False)
    kept_predictions = outcome.best_predictions[task.name]  # the kept epoch's dev rows
    result = {**_training_info(outcome), "params": _param_counts(model), "data": _data_info(tr, dev, ho),
              "tokenizer": tokenizer_fingerprint(tok), **_compile_info(model)}
    result.update(added.record)
    if fuses:
        model.start_capture()
        again = evaluate(model, dev, task.name, tok.pad_token_id, method.train.eval_batch_size, ctx.device, compute)
        result["fusion_attention"] = {"adapters": list(run.sources), "layers": model.stop_capture(),
                                      "dev_accuracy": again}
        if method.fusion.mixing != "attention":  # static mixing: the same weights at every token, recorded alike
            result["fusion_attention"]["mixing"] = method.fusion.mixing
        if method.fusion.prune is not None:
            result["prune"], kept_predictions = prune_after_training(
                model, run, method.fusion.prune.keep, ranking=ho if ho is not None else tr,
                ranked_on="heldout" if ho is not None else "train", dev=dev, pad_id=tok.pad_token_id, ctx=ctx,
                compute=compute)
            result["prune"]["unpruned_dev_accuracy"] = outcome.best_metric
            result["best_metric"] = result["prune"]["dev_accuracy"]  # the pruned model is what this run reports
            added.keeps = Modules(adapters=result["prune"]["kept"])
    result["predictions"] = predictions.write(out_dir, kept_predictions.columns())
    saved = _combine(trains, added.keeps)
    state = {**model.state_of(added.keeps), **outcome.best_state}
    save_modules(model, out_dir, adapters=saved.adapters, fusions=saved.fusions, heads=saved.heads,
                 encoder=saved.encoder, state={k: v.cpu() for k, v in state.items()})
    result["checkpoint_bytes"] = _checkpoint_bytes(out_dir)
    return result


@recipe("mt_a")
def run_mt_a(run: Run, ctx: RunContext, out_dir: Path) -> dict:
    reg, method = ctx.reg, run.method
    bspec = reg.backbones[run.backbone]
    tok = load_tokenizer(bspec)
    model = AdapterModel(load_encoder(bspec, tok))
    torch.manual_seed(run.seed)
    data, heldout = {}, {}
    for t in run.tasks:
        task = reg.tasks[t]
        model.add_adapter(t, method.adapter)
        model.add_head(t, task.type, task.num_labels, bspec.pooling)
        tr, dev, ho = load_data(ctx, run, task, tok)
        data[t] = (tr, dev)
        if ho is not None:
            heldout[t] = ho
    trains = Modules(adapters=run.tasks, heads=run.tasks, encoder=True)
    model.train_only(trains)
    compute = Compute.of(run.compute)
    compute.check(ctx.device)
    compute.apply(model, tok.pad_token_id)
    model.to(ctx.device)
    outcome, per_task = train_multitask(model, data, method.train, method.mt_a, pad_id=tok.pad_token_id,
                                        device=ctx.device, seed=run.seed, snapshot=lambda: model.state_of(trains),
                                        heldout=heldout or None, compute=compute)
    best = outcome.best_epoch - 1
    save_modules(model, out_dir, adapters=run.tasks, heads=run.tasks, encoder=True,
                 state={k: v.cpu() for k, v in outcome.best_state.items()})
    return {
        **_training_info(outcome),
        "per_task": {t: {"best_metric": per_task[t][best], "history": per_task[t],
                         "data": _data_info(*data[t], heldout.get(t))} for t in run.tasks},
        "params": _param_counts(model), "tokenizer": tokenizer_fingerprint(tok), **_compile_info(model),
        "checkpoint_bytes": _checkpoint_bytes(out_dir),
        "predictions": predictions.write(out_dir, merge_columns([outcome.best_predictions[t] for t in run.tasks])),
    }


def setup_of(kind: str) -> Callable[[AdapterModel, Run, RunContext], Setup] | None:
    """How single-task runs of ``kind`` add their modules: its method package's ``setup.py`` (``setup``), else a
    ``@setup`` function here; None when it has neither."""
    if kind not in SETUPS:
        part = registry.part(kind, "setup")
        if part is not None:
            SETUPS[kind] = part.setup
    return SETUPS.get(kind)


def execute(run: Run, ctx: RunContext, out_dir: Path) -> dict:
    fn = RECIPES.get(run.kind.name)
    if fn is not None:
        return fn(run, ctx, out_dir)
    if setup_of(run.kind.name) is None:
        raise KeyError(f"method kind '{run.kind.name}' has no setup: give its package a setup.py with "
                       "setup(model, run, ctx) (benchmark/methods/registry.py), or a @setup / @recipe in "
                       "benchmark/training/recipe.py")
    return run_single_task(run, ctx, out_dir)
