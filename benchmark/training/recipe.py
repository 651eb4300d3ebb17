"""Recipes: one planned run -> trained weights on disk + the measured part of its result.

Reads top to bottom: load backbone, add the method's modules, freeze what the method freezes,
load data, train, keep the best epoch, capture fusion attention, save.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.data.encode import encode_split
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.checkpoint import load_modules, save_modules, trained_state
from benchmark.modeling.compute import DEFAULT, Compute
from benchmark.modeling.cpu_kernels import set_cpu_kernels
from benchmark.modeling.model import AdapterModel, Fuse
from benchmark.runner.plan import Run
from benchmark.spec.registry import Registry
from benchmark.spec.schema import ExperimentSpec, TaskSpec
from benchmark.training.loop import Objective, evaluate, train
from benchmark.training.mt_a import train_multitask

FUSION = "fusion"


@dataclass
class RunContext:
    reg: Registry
    exp: ExperimentSpec
    data_dir: Path | None
    device: torch.device
    run_dir: callable  # run id -> folder of a finished run (dependencies)
    compute: Compute = DEFAULT  # faster or stock code paths (benchmark/modeling/compute.py)


def load_data(ctx: RunContext, run: Run, task: TaskSpec, tok):
    caps = run.caps
    common = dict(max_length=caps.max_length, data_seed=caps.data_seed, root=ctx.data_dir,
                  task_file=ctx.reg.file_of("task", task.name))
    tr = encode_split(task, task.splits.train, tok, max_rows=caps.max_train_rows, **common)
    dev = encode_split(task, task.splits.eval, tok, max_rows=caps.max_eval_rows, **common)
    return tr, dev


def _data_info(tr, dev) -> dict:
    return {"train_rows": len(tr), "train_rows_total": tr.rows_total, "eval_rows": len(dev),
            "eval_rows_total": dev.rows_total, "source": tr.source}


def _param_counts(model: AdapterModel) -> dict:
    return {"trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def _freeze_all_but(model: AdapterModel, *, adapters=(), fusions=(), heads=(), encoder=False) -> None:
    for name, p in model.named_parameters():
        p.requires_grad = (
            any(f".adapters.{a}." in name for a in adapters)
            or any(f".fusions.{f}." in name for f in fusions)
            or any(name.startswith(f"heads.{h}.") for h in heads)
            or (encoder and name.startswith("encoder.") and ".adapters." not in name and ".fusions." not in name)
        )


def run_single_task(run: Run, ctx: RunContext, out_dir: Path) -> dict:
    reg, method, kind = ctx.reg, run.method, run.method.method
    task = reg.tasks[run.task]
    bspec = reg.backbones[run.backbone]
    tok = load_tokenizer(bspec)
    model = AdapterModel(load_encoder(bspec, tok), ctx.compute.last_layer)

    torch.manual_seed(run.seed)  # module init, dropout and batch order follow the run seed
    train_mods: dict = {"heads": [task.name]}
    save_extra: dict = {}
    if kind == "full":
        train_mods["encoder"] = True
    elif kind in ("st_a", "st_a_houlsby"):
        model.add_adapter(task.name, method.adapter)
        model.set_active(task.name)
        train_mods["adapters"] = [task.name]
    elif kind == "fusion_st_a":
        for src, dep in zip(run.sources, run.deps):
            load_modules(model, ctx.run_dir(dep), adapters=[src], heads=[], fusions=[], encoder=False)
    elif kind == "fusion_mt_a":
        load_modules(model, ctx.run_dir(run.deps[0]), adapters=run.sources, heads=[], fusions=[], encoder=True)
    if kind.startswith("fusion"):
        model.add_fusion(FUSION, run.sources, method.fusion)
        model.set_active(Fuse(FUSION, run.sources))
        train_mods["fusions"] = [FUSION]
        save_extra["adapters"] = list(run.sources)  # frozen, saved so the run folder is self-contained
    model.add_head(task.name, task.type, task.num_labels, bspec.pooling)
    _freeze_all_but(model, **train_mods)
    set_cpu_kernels(model, ctx.compute.cpu_kernels)
    model.to(ctx.device)

    tr, dev = load_data(ctx, run, task, tok)
    objective = Objective()
    if kind.startswith("fusion"):
        reg_w = method.fusion.regularization if method.fusion.type == "dynamic" else 0.0
        objective = Objective(FUSION, reg_w, method.fusion.temperature)
    snapshot = lambda: trained_state(model, **train_mods)  # noqa: E731
    outcome = train(model, task.name, tr, dev, method.train, pad_id=tok.pad_token_id, device=ctx.device,
                    seed=run.seed, snapshot=snapshot, objective=objective, desc=run.label + " " + task.name)

    model.load_state_dict(outcome.best_state, strict=False)
    result = {"history": outcome.history, "best_epoch": outcome.best_epoch, "best_metric": outcome.best_metric,
              "params": _param_counts(model), "data": _data_info(tr, dev),
              "train_examples_per_second": outcome.examples_per_second}
    if kind.startswith("fusion"):
        model.start_capture()
        again = evaluate(model, dev, task.name, tok.pad_token_id, method.train.eval_batch_size, ctx.device)
        result["fusion_attention"] = {"adapters": list(run.sources), "layers": model.stop_capture(),
                                      "dev_accuracy": again}
    state = dict(outcome.best_state)
    if save_extra.get("adapters"):
        state.update(trained_state(model, adapters=save_extra["adapters"]))
    save_modules(model, out_dir, adapters=train_mods.get("adapters", []) + save_extra.get("adapters", []),
                 fusions=train_mods.get("fusions", []), heads=train_mods["heads"],
                 encoder=train_mods.get("encoder", False), state={k: v.cpu() for k, v in state.items()})
    return result


def run_mt_a(run: Run, ctx: RunContext, out_dir: Path) -> dict:
    reg, method = ctx.reg, run.method
    bspec = reg.backbones[run.backbone]
    tok = load_tokenizer(bspec)
    model = AdapterModel(load_encoder(bspec, tok), ctx.compute.last_layer)
    torch.manual_seed(run.seed)
    data = {}
    for t in run.tasks:
        task = reg.tasks[t]
        model.add_adapter(t, method.adapter)
        model.add_head(t, task.type, task.num_labels, bspec.pooling)
        data[t] = load_data(ctx, run, task, tok)
    set_cpu_kernels(model, ctx.compute.cpu_kernels)
    model.to(ctx.device)
    snapshot = lambda: trained_state(model, adapters=run.tasks, heads=run.tasks, encoder=True)  # noqa: E731
    outcome, per_task = train_multitask(model, data, method.train, method.mt_a, pad_id=tok.pad_token_id,
                                        device=ctx.device, seed=run.seed, snapshot=snapshot)
    best = outcome.best_epoch - 1
    save_modules(model, out_dir, adapters=run.tasks, heads=run.tasks, encoder=True,
                 state={k: v.cpu() for k, v in outcome.best_state.items()})
    return {
        "history": outcome.history, "best_epoch": outcome.best_epoch, "best_metric": outcome.best_metric,
        "per_task": {t: {"best_metric": per_task[t][best], "history": per_task[t],
                         "data": _data_info(*data[t])} for t in run.tasks},
        "params": _param_counts(model), "train_examples_per_second": outcome.examples_per_second,
    }


def execute(run: Run, ctx: RunContext, out_dir: Path) -> dict:
    if run.method.method == "mt_a":
        return run_mt_a(run, ctx, out_dir)
    return run_single_task(run, ctx, out_dir)
