"""One training loop for every single-task method (MT-A has its own sampler in ``mt_a.py``).

AdamW, linear decay (optional warm-up), gradient clipping, dev evaluation after every epoch, early
stopping with patience, and the best epoch's trained weights kept (only the trained parameters).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score
from tqdm import tqdm

from benchmark.data.encode import EncodedSplit, batches
from benchmark.modeling.model import AdapterModel
from benchmark.spec.schema import TrainParams


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Objective:
    """What a step optimises besides cross-entropy: the fusion value regulariser, temperature."""

    fusion: str | None = None
    reg_weight: float = 0.0
    anneal_temperature: bool = False


@dataclass
class Outcome:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_metric: float = float("-inf")
    best_state: dict | None = None
    examples_per_second: float = 0.0


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def make_optimizer(model: AdapterModel, params: TrainParams, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; biases, LayerNorms and fusion V get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "LayerNorm" in name or ".value." in name
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=params.lr, fused=device.type == "cuda")


def linear_schedule(opt, total_steps: int, warmup_ratio: float):
    warm = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(model: AdapterModel, split: EncodedSplit, head: str, pad_id: int, batch_size: int,
             device: torch.device) -> float:
    """Dev accuracy in percent."""
    model.eval()
    preds, gold = [], []
    for batch in batches(split, batch_size, pad_id, shuffle=False, by_length=True):
        batch = to_device(batch, device)
        with autocast(device):
            logits = model(head=head, **batch)
        preds += logits.argmax(-1).tolist()
        gold += batch["labels"].tolist()
    return 100.0 * accuracy_score(gold, preds)


def log_epoch(desc: str, h: dict, epochs: int, examples_per_second: float) -> None:
    """One line per epoch, also where the step bar is hidden (logs, CI, nohup)."""
    tqdm.write(f"    {desc} epoch {h['epoch']}/{epochs}: train loss {h['train_loss']:.4f}, "
               f"dev accuracy {h['dev_accuracy']:.2f}, {examples_per_second:.1f} train ex/s, {h['seconds']:.0f}s")


def step_loss(model: AdapterModel, batch: dict, head: str, obj: Objective, device: torch.device) -> torch.Tensor:
    with autocast(device):
        logits = model(head=head, **batch)
    loss = F.cross_entropy(logits.float(), batch["labels"])
    if obj.fusion and obj.reg_weight:
        # the value regulariser enters the loss of the same step (AdapterHub adds it one step late)
        loss = loss + obj.reg_weight * model.fusion_regularization(obj.fusion)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"the training loss became {loss.item()}")
    return loss


def train(model: AdapterModel, head: str, train_split: EncodedSplit, dev_split: EncodedSplit,
          params: TrainParams, *, pad_id: int, device: torch.device, seed: int, snapshot,
          objective: Objective | None = None, desc: str = "") -> Outcome:
    """Train the parameters of ``model`` that require grad; ``snapshot()`` returns the trained state."""
    objective = objective or Objective()
    opt = make_optimizer(model, params, device)
    steps_per_epoch = math.ceil(len(train_split) / params.batch_size)
    if params.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, params.max_steps_per_epoch)
    total = steps_per_epoch * params.epochs
    sched = linear_schedule(opt, total, params.warmup_ratio)
    out, since_best, global_step = Outcome(), 0, 0
    seen, train_time = 0, 0.0
    for epoch in range(params.epochs):
        model.train()
        t0, losses = time.perf_counter(), []
        bar = tqdm(total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{params.epochs}", leave=False,
                   disable=None, unit="step")
        for step, batch in enumerate(batches(train_split, params.batch_size, pad_id, shuffle=True,
                                             seed=seed * 100_003 + epoch)):
            if step >= steps_per_epoch:
                break
            if objective.anneal_temperature:  # T from 50 down to 1 over the training steps
                model.set_fusion_temperature(max(1.0, 50.0 - 49.0 * global_step / max(1, total - 1)))
            batch = to_device(batch, device)
            loss = step_loss(model, batch, head, objective, device)
            loss.backward()
            if params.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], params.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            seen += batch["labels"].shape[0]
            global_step += 1
            bar.set_postfix(loss=f"{losses[-1]:.4f}", ex_s=f"{seen / max(1e-9, train_time + time.perf_counter() - t0):.1f}")
            bar.update()
        bar.close()
        train_time += time.perf_counter() - t0
        model.set_fusion_temperature(1.0)
        acc = evaluate(model, dev_split, head, pad_id, params.eval_batch_size, device)
        out.history.append({"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)),
                            "dev_accuracy": acc, "seconds": time.perf_counter() - t0})
        log_epoch(desc, out.history[-1], params.epochs, seen / max(train_time, 1e-9))
        if acc > out.best_metric:
            out.best_metric, out.best_epoch, out.best_state, since_best = acc, epoch + 1, snapshot(), 0
        else:
            since_best += 1
            if params.patience and since_best >= params.patience:
                break
    out.examples_per_second = seen / max(train_time, 1e-9)
    return out
