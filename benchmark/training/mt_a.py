"""MT-A (Stickland & Murray 2019): per-task adapters and heads trained jointly with the encoder.

Each step draws one task with probability proportional to N_i^alpha, alpha annealed linearly from
``alpha_start`` (1.0: proportional to size) to ``alpha_end`` (0.2: close to uniform) over the epochs,
and takes one batch of it with that task's adapter active. An epoch is as many steps as one pass over
all tasks' rows would take; early stopping watches the mean selection metric over the tasks (dev accuracy,
or held-out accuracy under ``selection: heldout``). The epoch loop itself is ``loop.fit``.
"""

from __future__ import annotations

import itertools
import math
import random

import torch

from benchmark.data.batching import epoch_seed
from benchmark.data.encode import EncodedSplit, batches
from benchmark.modeling.compute import DEFAULT, Compute
from benchmark.modeling.model import AdapterModel
from benchmark.spec.schema import MtaParams, TrainParams
from benchmark.training.loop import Outcome, fit, predict


def alpha_at(epoch: int, epochs: int, p: MtaParams) -> float:
    if epochs <= 1:
        return p.alpha_start
    return p.alpha_start + (p.alpha_end - p.alpha_start) * epoch / (epochs - 1)


def sampling_probs(sizes: dict[str, int], alpha: float) -> dict[str, float]:
    w = {t: n ** alpha for t, n in sizes.items()}
    z = sum(w.values())
    return {t: v / z for t, v in w.items()}


def _endless(split: EncodedSplit, bs: int, pad_id: int, seed: int, mode: str):
    for epoch in itertools.count():
        yield from batches(split, bs, pad_id, mode=mode, seed=epoch_seed(seed, epoch))


def train_multitask(model: AdapterModel, data: dict[str, tuple[EncodedSplit, EncodedSplit]], params: TrainParams,
                    mt: MtaParams, *, pad_id: int, device: torch.device, seed: int, snapshot, desc: str = "MT-A",
                    heldout: dict[str, EncodedSplit] | None = None,
                    compute: Compute = DEFAULT) -> tuple[Outcome, dict[str, list[float]]]:
    """Returns the outcome (kept epoch by the mean selection metric over tasks) and each task's dev
    accuracy per epoch."""
    sizes = {t: len(tr) for t, (tr, _) in data.items()}
    steps_per_epoch = sum(math.ceil(n / params.batch_size) for n in sizes.values())
    mode = params.batching or "grouped"
    streams = {t: _endless(tr, params.batch_size, pad_id, seed + i, mode) for i, (t, (tr, _)) in enumerate(data.items())}
    rng = random.Random(seed)
    per_task: dict[str, list[float]] = {t: [] for t in data}

    def epoch_batches(epoch: int):
        probs = sampling_probs(sizes, alpha_at(epoch, params.epochs, mt))
        names, weights = list(probs), list(probs.values())
        while True:  # fit() takes steps_per_epoch of these
            task = rng.choices(names, weights)[0]
            model.set_active(task)
            yield task, next(streams[task])

    def evaluate_epoch() -> dict:
        accs, held, preds = {}, {}, {}
        for t, (_, dev) in data.items():
            model.set_active(t)
            preds[t] = predict(model, dev, t, pad_id, params.eval_batch_size, device, compute)
            accs[t] = preds[t].accuracy
            per_task[t].append(accs[t])
            if heldout:
                held[t] = predict(model, heldout[t], t, pad_id, params.eval_batch_size, device, compute).accuracy
        epoch = len(per_task[next(iter(data))]) - 1
        m = {"dev_accuracy": sum(accs.values()) / len(accs), "dev_accuracy_per_task": accs,
             "alpha": alpha_at(epoch, params.epochs, mt), "predictions": preds}
        if heldout:
            m["heldout_accuracy"] = sum(held.values()) / len(held)
            m["heldout_accuracy_per_task"] = held
        return m

    out = fit(model, params, steps_per_epoch=steps_per_epoch, epoch_batches=epoch_batches,
              evaluate_epoch=evaluate_epoch, snapshot=snapshot, device=device,
              select="heldout_accuracy" if heldout else "dev_accuracy", desc=desc, compute=compute)
    return out, per_task
