"""MT-A (Stickland & Murray 2019): per-task adapters and heads trained jointly with the encoder.

Each step draws one task with probability proportional to N_i^alpha, alpha annealed linearly from
``alpha_start`` (1.0: proportional to size) to ``alpha_end`` (0.2: close to uniform) over the epochs,
and takes one batch of it with that task's adapter active. An epoch is as many steps as one pass over
all tasks' rows would take; early stopping watches the mean dev accuracy over the tasks.
"""

from __future__ import annotations

import math
import random
import time

import torch
from tqdm import tqdm

from benchmark.data.encode import EncodedSplit, batches
from benchmark.modeling.model import AdapterModel
from benchmark.spec.schema import MtaParams, TrainParams
from benchmark.training.loop import (
    Objective,
    Outcome,
    evaluate,
    linear_schedule,
    log_epoch,
    make_optimizer,
    step_loss,
    to_device,
)


def alpha_at(epoch: int, epochs: int, p: MtaParams) -> float:
    if epochs <= 1:
        return p.alpha_start
    return p.alpha_start + (p.alpha_end - p.alpha_start) * epoch / (epochs - 1)


def sampling_probs(sizes: dict[str, int], alpha: float) -> dict[str, float]:
    w = {t: n ** alpha for t, n in sizes.items()}
    z = sum(w.values())
    return {t: v / z for t, v in w.items()}


def _endless(split: EncodedSplit, bs: int, pad_id: int, seed: int):
    epoch = 0
    while True:
        yield from batches(split, bs, pad_id, shuffle=True, seed=seed * 100_003 + epoch)
        epoch += 1


def train_multitask(model: AdapterModel, data: dict[str, tuple[EncodedSplit, EncodedSplit]], params: TrainParams,
                    mt: MtaParams, *, pad_id: int, device: torch.device, seed: int, snapshot, desc: str = "MT-A"
                    ) -> tuple[Outcome, dict[str, list[float]]]:
    """Returns the outcome (best by mean dev accuracy) and each task's dev accuracy per epoch."""
    sizes = {t: len(tr) for t, (tr, _) in data.items()}
    steps_per_epoch = sum(math.ceil(n / params.batch_size) for n in sizes.values())
    if params.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, params.max_steps_per_epoch)
    opt = make_optimizer(model, params, device)
    sched = linear_schedule(opt, steps_per_epoch * params.epochs, params.warmup_ratio)
    streams = {t: _endless(tr, params.batch_size, pad_id, seed + i) for i, (t, (tr, _)) in enumerate(data.items())}
    rng = random.Random(seed)
    out, per_task, since_best, seen, train_time = Outcome(), {t: [] for t in data}, 0, 0, 0.0
    for epoch in range(params.epochs):
        probs = sampling_probs(sizes, alpha_at(epoch, params.epochs, mt))
        names, weights = list(probs), list(probs.values())
        model.train()
        t0, losses = time.perf_counter(), []
        for _ in tqdm(range(steps_per_epoch), desc=f"{desc} epoch {epoch + 1}/{params.epochs}", leave=False,
                      disable=None, unit="step"):
            task = rng.choices(names, weights)[0]
            model.set_active(task)
            batch = to_device(next(streams[task]), device)
            loss = step_loss(model, batch, task, Objective(), device)
            loss.backward()
            if params.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], params.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            seen += batch["labels"].shape[0]
        train_time += time.perf_counter() - t0
        accs = {}
        for t, (_, dev) in data.items():
            model.set_active(t)
            accs[t] = evaluate(model, dev, t, pad_id, params.eval_batch_size, device)
            per_task[t].append(accs[t])
        mean = sum(accs.values()) / len(accs)
        out.history.append({"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)), "dev_accuracy": mean,
                            "dev_accuracy_per_task": accs, "alpha": alpha_at(epoch, params.epochs, mt),
                            "seconds": time.perf_counter() - t0})
        log_epoch(desc, out.history[-1], params.epochs, seen / max(train_time, 1e-9))
        if mean > out.best_metric:
            out.best_metric, out.best_epoch, out.best_state, since_best = mean, epoch + 1, snapshot(), 0
        else:
            since_best += 1
            if params.patience and since_best >= params.patience:
                break
    out.examples_per_second = seen / max(train_time, 1e-9)
    return out, per_task
