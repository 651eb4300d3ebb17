"""MT-A's whole recipe (not one task's run): an adapter and a head per task, trained with the encoder over all
the tasks at once (``training/mt_a.py``: the sampling schedule of ``mt_a:``), saved as one run folder."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark import predictions
from benchmark.data.encode import tokenizer_fingerprint
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.checkpoint import save_modules
from benchmark.modeling.compute import Compute
from benchmark.modeling.model import AdapterModel, Modules
from benchmark.plan.run import Run
from benchmark.training.loop import merge_columns
from benchmark.training.mt_a import train_multitask
from benchmark.training.recipe import (
    RunContext,
    checkpoint_bytes,
    compile_info,
    data_info,
    load_data,
    param_counts,
    training_info,
)


def recipe(run: Run, ctx: RunContext, out_dir: Path) -> dict:
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
        **training_info(outcome),
        "per_task": {t: {"best_metric": per_task[t][best], "history": per_task[t],
                         "data": data_info(*data[t], heldout.get(t))} for t in run.tasks},
        "params": param_counts(model), "tokenizer": tokenizer_fingerprint(tok), **compile_info(model),
        "checkpoint_bytes": checkpoint_bytes(out_dir),
        "predictions": predictions.write(out_dir, merge_columns([outcome.best_predictions[t] for t in run.tasks])),
    }
