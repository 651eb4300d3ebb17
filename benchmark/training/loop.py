"""The one training loop (``fit``), shared by single-task training (``train``) and MT-A (``mt_a.py``).

AdamW, linear decay (optional warm-up), gradient clipping, an evaluation after every epoch, early
stopping with patience on the selection metric, and the kept epoch's trained weights (only the trained
parameters). The selection metric is the dev accuracy (the paper's protocol) or the accuracy on a
held-out slice of train (``selection: heldout``); the reported metric is the dev accuracy of the kept
epoch either way, and every epoch's numbers stay in the history.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score
from tqdm import tqdm

from benchmark.data.batching import epoch_seed
from benchmark.data.encode import EncodedSplit, batch_rows, batches, collate
from benchmark.modeling.compiled import compiled_of
from benchmark.modeling.compute import DEFAULT, Compute
from benchmark.modeling.model import AdapterModel
from benchmark.spec.schema import TrainParams


class Diverged(RuntimeError):
    """The training loss exploded (``diverged``): the run is recorded as failed with ``"diverged": true``
    and is not retrained unless ``--force`` (the same settings would diverge again)."""


class NonFiniteLoss(Diverged):
    pass


# An epoch's mean training loss (over all its steps, so one bad batch does not count) this many times the first
# step's (the untrained model's), and above ln(classes), means the training diverged. Healthy fine-tuning ends an
# epoch below its starting loss; 3x (0.69 -> 2.1 for two classes) is a model confidently wrong on most examples.
DIVERGED_RATIO = 3.0


def diverged(epoch_loss: float, first_loss: float, classes: int) -> bool:
    """The one rule for a finite loss that diverged, whether it exploded in one epoch or rose and stayed: an
    epoch's mean training loss above ``DIVERGED_RATIO`` x the loss of the first step (the untrained model) and
    above ln(number of classes) (what a uniform guess scores)."""
    return epoch_loss > DIVERGED_RATIO * first_loss and epoch_loss > math.log(max(2, classes))


@dataclass
class Objective:
    """What a step optimises besides cross-entropy: the fusion value regulariser, temperature."""

    fusion: str | None = None
    reg_weight: float = 0.0
    anneal_temperature: bool = False


@dataclass
class Outcome:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1  # the kept epoch (1-based)
    best_metric: float = float("-inf")  # its dev accuracy: the reported number
    best_selection: float = float("-inf")  # its selection metric (= best_metric under selection: dev)
    best_state: dict | None = None
    examples_per_second: float = 0.0
    train_seconds: float = 0.0  # the training steps alone (no evaluation)
    stopped_early: str | None = None  # why training ended before the last epoch
    padding: dict = field(default_factory=lambda: {"real_tokens": 0, "computed_tokens": 0})
    best_predictions: dict | None = None  # the kept epoch's dev predictions per task (``Predictions``)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def inputs_of(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def forward(model: AdapterModel, head: str, batch: dict) -> torch.Tensor:
    """The logits of ``batch``: through the run's compiled forward where there is one (``compute.compile``;
    attention capture reads tensors back mid-forward and always runs eager), else the model itself."""
    runner = compiled_of(model)
    if runner is None or model._ctx.capture:
        return model(head=head, **inputs_of(batch))
    return runner(model, head, inputs_of(batch))


def shaped(model: AdapterModel, batch: dict) -> dict:
    """A collated batch as the model computes it: padded to a power-of-two length under the compiled path
    (bounded recompiles, ``modeling/compiled.py``), unchanged in eager."""
    runner = compiled_of(model)
    return batch if runner is None else runner.pad(batch)


def make_optimizer(model: AdapterModel, params: TrainParams, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over trainable parameters. Weight decay by a parameter's role, never by its name: vectors (biases,
    LayerNorm gains, scaling vectors) get none, and neither do the parameters a module declares in its
    ``no_decay()`` (fusion's V, which its regulariser pulls towards the identity); every other matrix decays."""
    declared = {id(p) for m in model.modules() if callable(getattr(m, "no_decay", None)) for p in m.no_decay()}
    trained = [p for p in model.parameters() if p.requires_grad]
    no_decay = [p for p in trained if p.ndim < 2 or id(p) in declared]
    decay = [p for p in trained if p.ndim >= 2 and id(p) not in declared]
    groups = [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=params.lr, fused=device.type == "cuda")


def linear_schedule(opt, total_steps: int, warmup_ratio: float):
    warm = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class Predictions:
    """One evaluation's per-row predictions: ``rows`` (indices into the split), ``pred`` and ``gold``
    (label ids; multiple choice: option indices), in evaluation order."""

    split: EncodedSplit
    rows: list[int]
    pred: list[int]
    gold: list[int]

    @property
    def accuracy(self) -> float:
        """Accuracy in percent: the run's metric."""
        return 100.0 * accuracy_score(self.gold, self.pred)

    def columns(self) -> dict[str, list]:
        """The rows of ``benchmark/predictions.py`` in split order."""
        s, order = self.split, sorted(range(len(self.rows)), key=self.rows.__getitem__)
        rows = [self.rows[i] for i in order]
        return {"task": [s.task] * len(rows), "split": [s.split] * len(rows), "row": rows,
                "source_row": [s.rows[r] if s.rows else None for r in rows],
                "id": [s.ids[r] if s.ids else None for r in rows],
                "correct": [self.pred[i] == self.gold[i] for i in order]}


def merge_columns(preds: list[Predictions]) -> dict[str, list]:
    """Several tasks' predictions (MT-A) as one file's columns."""
    cols = [p.columns() for p in preds]
    return {k: [v for c in cols for v in c[k]] for k in cols[0]}


@torch.no_grad()
def scored_batches(model: AdapterModel, split: EncodedSplit, head: str, pad_id: int, batch_size: int,
                   device: torch.device, compute: Compute = DEFAULT):
    """Per evaluation batch (sorted by length, as ``batches`` yields them): (row indices, float32 logits [B, C] or
    [B, K], labels [B]), in eval mode; ``predict`` and the serving path (``runner/serve.py``) read it."""
    model.eval()
    for idx in batch_rows(split, batch_size, mode="by_length"):
        batch = to_device(shaped(model, collate([split.examples[j] for j in idx], pad_id)), device)
        with compute.autocast(device):
            logits = forward(model, head, batch)
        yield idx, logits.float(), batch["labels"]


def predict(model: AdapterModel, split: EncodedSplit, head: str, pad_id: int, batch_size: int,
            device: torch.device, compute: Compute = DEFAULT) -> Predictions:
    """Every row's prediction (batches sorted by length: the metric does not depend on the order)."""
    out = Predictions(split, [], [], [])
    for idx, logits, labels in scored_batches(model, split, head, pad_id, batch_size, device, compute):
        out.rows += idx
        out.pred += logits.argmax(-1).tolist()
        out.gold += labels.tolist()
    return out


# Where the step bar is hidden (a log file, nohup, CI), a progress line at least this often: an MRPC
# fusion epoch on a CPU takes ~10 minutes, and one line per epoch looked like a hung run.
PROGRESS_SECONDS = 30.0
# afbench run --track: the runner's trackers hear each epoch's history entry (benchmark/runner/tracking.py)
epoch_listener: Callable[[dict], None] | None = None


def progress_line(desc: str, epoch: int, epochs: int, steps: int, steps_per_epoch: int, examples: int,
                  seconds: float) -> str:
    """"step 120/460, 21.3 ex/s, epoch ETA 8m05s": the epoch's own rate, its remaining steps at that pace."""
    rate = examples / max(seconds, 1e-9)
    eta = int(seconds / max(steps, 1) * (steps_per_epoch - steps))
    return (f"    {desc} epoch {epoch}/{epochs}: step {steps}/{steps_per_epoch}, {rate:.1f} train ex/s, "
            f"epoch ETA {eta // 60}m{eta % 60:02d}s")


class Console:
    """Where ``fit`` reports by default (this process's own output): a step bar on a terminal, else a
    ``progress_line`` at least every ``PROGRESS_SECONDS``; ``line`` for an epoch's numbers. The runner puts
    its own class in ``REPORTER`` for the runs it starts (``runner/progress.py``): the runs' progress then
    reaches the driver, which alone writes it, with ``--jobs N`` as with one job."""

    def __init__(self, desc: str, epoch: int, epochs: int, steps_per_epoch: int):
        self.where = (desc, epoch, epochs)
        self.bar = tqdm(total=steps_per_epoch, desc=f"{desc} epoch {epoch}/{epochs}", leave=False, disable=None,
                        unit="step")
        self.steps_per_epoch, self.last = steps_per_epoch, time.perf_counter()

    def step(self, steps: int, examples: int, seconds: float) -> None:
        self.bar.update()
        if self.bar.disable and time.perf_counter() - self.last >= PROGRESS_SECONDS:
            self.last = time.perf_counter()
            tqdm.write(progress_line(*self.where, steps, self.steps_per_epoch, examples, seconds))

    def close(self) -> None:
        self.bar.close()

    @staticmethod
    def line(text: str) -> None:
        tqdm.write(text)


REPORTER = Console


def log_epoch(desc: str, h: dict, epochs: int, examples_per_second: float) -> None:
    """One line per epoch, also where the step bar is hidden (logs, CI, nohup)."""
    held = f", held-out accuracy {h['heldout_accuracy']:.2f}" if "heldout_accuracy" in h else ""
    REPORTER.line(f"    {desc} epoch {h['epoch']}/{epochs}: train loss {h['train_loss']:.4f}, "
                  f"dev accuracy {h['dev_accuracy']:.2f}{held}, {examples_per_second:.1f} train ex/s, "
                  f"{h['seconds']:.0f}s")


def step_loss(model: AdapterModel, batch: dict, head: str, obj: Objective, device: torch.device,
              compute: Compute = DEFAULT) -> tuple[torch.Tensor, int]:
    """The step's loss and the class count C of its logits [B, C] (C classes, or K choices)."""
    with compute.autocast(device):
        logits = forward(model, head, batch)
    loss = F.cross_entropy(logits.float(), batch["labels"])  # the loss in float32 under any precision
    if obj.fusion and obj.reg_weight:
        # the value regulariser enters the loss of the same step (AdapterHub adds it one step late)
        loss = loss + obj.reg_weight * model.fusion_regularization(obj.fusion)
    return loss, logits.shape[-1]


def fit(model: AdapterModel, params: TrainParams, *, steps_per_epoch: int,
        epoch_batches: Callable[[int], Iterator[tuple[str, dict]]], evaluate_epoch: Callable[[], dict],
        snapshot: Callable[[], dict], device: torch.device, objective: Objective | None = None,
        select: str = "dev_accuracy", desc: str = "", compute: Compute = DEFAULT) -> Outcome:
    """Train the parameters of ``model`` that require grad.

    ``epoch_batches(epoch)`` yields (head, batch) pairs; ``evaluate_epoch()`` returns the epoch's metrics
    (``dev_accuracy`` and, under held-out selection, ``heldout_accuracy``); ``select`` names the one
    that picks the kept epoch and drives early stopping; ``snapshot()`` returns the trained state.
    ``compute`` gives the precision of the forward (the trained parameters stay float32 either way).
    An epoch is ``steps_per_epoch`` steps, at most ``params.max_steps_per_epoch``.
    """
    if params.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, params.max_steps_per_epoch)
    objective = objective or Objective()
    opt = make_optimizer(model, params, device)
    total = steps_per_epoch * params.epochs
    sched = linear_schedule(opt, total, params.warmup_ratio)
    trained = [p for p in model.parameters() if p.requires_grad]
    check_every = 1 if device.type == "cpu" else 50  # a finiteness check is a host sync on a GPU
    out, since_best, global_step, seen = Outcome(), 0, 0, 0
    first_loss = classes = None  # the untrained model's loss and the class count: the divergence rule
    for epoch in range(params.epochs):
        model.train()
        t0, steps, epoch_seen = time.perf_counter(), 0, 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # on the device: no host sync per step
        bar = REPORTER(desc, epoch + 1, params.epochs, steps_per_epoch)
        for head, batch in islice(epoch_batches(epoch), steps_per_epoch):
            if objective.anneal_temperature:  # T from 50 down to 1 over the training steps
                model.set_fusion_temperature(max(1.0, 50.0 - 49.0 * global_step / max(1, total - 1)))
            batch = shaped(model, batch)
            mask = batch["attention_mask"]
            out.padding["real_tokens"] += int(mask.sum())
            out.padding["computed_tokens"] += mask.numel()
            batch = to_device(batch, device)
            loss, n_classes = step_loss(model, batch, head, objective, device, compute)
            if first_loss is None:
                first_loss, classes = float(loss.detach()), n_classes
            loss.backward()
            if params.grad_clip:
                torch.nn.utils.clip_grad_norm_(trained, params.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach().double()
            steps += 1
            global_step += 1
            seen += batch["labels"].shape[0]
            epoch_seen += batch["labels"].shape[0]
            if steps % check_every == 0 and not torch.isfinite(loss_sum):
                raise NonFiniteLoss(f"the training loss became {loss_sum.item()} (epoch {epoch + 1}, step {steps})")
            bar.step(steps, epoch_seen, time.perf_counter() - t0)
        bar.close()
        train_loss = loss_sum.item() / max(1, steps)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"the training loss became {train_loss} (epoch {epoch + 1})")
        if first_loss is not None and diverged(train_loss, first_loss, classes):
            raise Diverged(f"the training diverged: mean loss {train_loss:.4g} in epoch {epoch + 1}, over "
                           f"{DIVERGED_RATIO:g}x the "
                           f"first step's {first_loss:.4g} and over ln({classes}) (a uniform guess); "
                           "lower the learning rate")
        out.train_seconds += time.perf_counter() - t0
        model.set_fusion_temperature(1.0)
        metrics = evaluate_epoch()
        predictions = metrics.pop("predictions", None)  # per-row, kept for the kept epoch only
        out.history.append({"epoch": epoch + 1, "train_loss": train_loss, **metrics,
                            "seconds": time.perf_counter() - t0})
        log_epoch(desc, out.history[-1], params.epochs, seen / max(out.train_seconds, 1e-9))
        if epoch_listener is not None:
            epoch_listener(dict(out.history[-1]))
        if metrics[select] > out.best_selection:
            out.best_selection, out.best_metric = metrics[select], metrics["dev_accuracy"]
            out.best_epoch, out.best_state, since_best = epoch + 1, snapshot(), 0
            out.best_predictions = predictions
        else:
            since_best += 1
            if params.patience and since_best >= params.patience and epoch + 1 < params.epochs:
                out.stopped_early = (f"stopped after epoch {epoch + 1}: no gain in {select.replace('_', ' ')} "
                                     f"for {since_best} epochs (kept epoch {out.best_epoch})")
                REPORTER.line(f"    {desc} {out.stopped_early}")
                break
    out.examples_per_second = seen / max(out.train_seconds, 1e-9)
    return out


def train(model: AdapterModel, head: str, train_split: EncodedSplit, dev_split: EncodedSplit,
          params: TrainParams, *, pad_id: int, device: torch.device, seed: int, snapshot,
          objective: Objective | None = None, desc: str = "", heldout: EncodedSplit | None = None,
          compute: Compute = DEFAULT) -> Outcome:
    """Single-task training: one head, batches of ``train_split`` in the method's batching mode."""
    steps_per_epoch = math.ceil(len(train_split) / params.batch_size)

    def epoch_batches(epoch: int):
        return ((head, b) for b in batches(train_split, params.batch_size, pad_id, mode=params.batching or "grouped",
                                           seed=epoch_seed(seed, epoch)))

    def evaluate_epoch() -> dict:
        p = predict(model, dev_split, head, pad_id, params.eval_batch_size, device, compute)
        m = {"dev_accuracy": p.accuracy, "predictions": {head: p}}
        if heldout is not None:
            m["heldout_accuracy"] = predict(model, heldout, head, pad_id, params.eval_batch_size, device,
                                            compute).accuracy
        return m

    return fit(model, params, steps_per_epoch=steps_per_epoch, epoch_batches=epoch_batches,
               evaluate_epoch=evaluate_epoch, snapshot=snapshot, device=device, objective=objective,
               select="heldout_accuracy" if heldout is not None else "dev_accuracy", desc=desc, compute=compute)
