"""Experiment tracking, opt-in: ``afbench run --track NAME[,NAME]`` or ``tracking: {backends: [...]}`` in an
experiment spec (never part of a run id).

One interface (``Tracker``: ``start``, ``epoch``, ``finish``) and one class per backend (TensorBoard, MLflow,
W&B, Trackio), each importing its library only when chosen (extras ``track-NAME``). ``tracked`` wraps the
runner's ``execute_one``: per run it logs the config and run id, each epoch's history entry as the training
loop records it (``training.loop.epoch_listener``: train_loss, dev / held-out accuracy at step = epoch) and the
final record (result.json, or the error), under the experiment's name, grouped by method label and task.
Every backend call runs on a background thread, so a slow or unreachable backend never slows training; a
backend that fails (missing package, unreachable server) says so in one line and is off for that run.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from benchmark.errors import BenchError
from benchmark.records import read_result
from benchmark.spec.schema import TRACKERS
from benchmark.training import loop

FLUSH_SECONDS = 20.0  # after a run's result is written, how long its trackers may take to finish
FINAL = ("best_metric", "best_epoch", "selection_metric", "train_seconds", "wall_seconds", "examples_per_second")


class Tracker:
    """One backend for one run: ``start`` (config), ``epoch`` (one history entry), ``finish`` (the final record)."""

    def __init__(self, where: Path, experiment: str, group: str, task: str, run_id: str, tracking):
        self.where, self.experiment, self.group, self.task, self.run_id = where, experiment, group, task, run_id
        self.tracking = tracking

    def start(self, config: dict) -> None: ...

    def epoch(self, step: int, values: dict[str, float]) -> None: ...

    def finish(self, record: dict, final: dict[str, float]) -> None: ...


class TensorBoard(Tracker):
    def start(self, config):
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(str(self.where / "tensorboard" / self.experiment / self.group / self.task / self.run_id))
        self.w.add_text("config", f"```\n{json.dumps(config, indent=1)}\n```")

    def epoch(self, step, values):
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        self.w.flush()

    def finish(self, record, final):
        for k, v in final.items():
            self.w.add_scalar(f"final/{k}", v, 0)
        self.w.add_text("result", f"```\n{json.dumps(record, indent=1)}\n```")
        self.w.close()


class MLflow(Tracker):
    def start(self, config):
        uri = self.tracking.mlflow_uri or f"sqlite:///{self.where / 'mlflow.db'}"
        _probe(uri)
        from mlflow.tracking import MlflowClient

        self.where.mkdir(parents=True, exist_ok=True)
        self.c = MlflowClient(tracking_uri=uri)
        exp = self.c.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.c.create_experiment(
            self.experiment, artifact_location=None if self.tracking.mlflow_uri else (self.where / "mlflow").as_uri())
        self.r = self.c.create_run(exp_id, run_name=self.run_id, tags={
            "afbench.run_id": self.run_id, "afbench.method": self.group, "afbench.task": self.task})
        self.id = self.r.info.run_id
        for k in ("backbone", "seed"):
            self.c.log_param(self.id, k, config.get(k))
        self.c.log_dict(self.id, config, "config.json")

    def epoch(self, step, values):
        for k, v in values.items():
            self.c.log_metric(self.id, k, v, step=step)

    def finish(self, record, final):
        for k, v in final.items():
            self.c.log_metric(self.id, f"final_{k}", v)
        self.c.log_dict(self.id, record, "result.json")
        self.c.set_terminated(self.id, "FINISHED" if record.get("status") == "finished" else "FAILED")


class WandB(Tracker):
    def start(self, config):
        import wandb

        (self.where / "wandb").mkdir(parents=True, exist_ok=True)
        self.r = wandb.init(project=self.experiment, group=self.group, job_type=self.task, name=self.run_id,
                            config=config, dir=str(self.where / "wandb"), reinit="create_new")

    def epoch(self, step, values):
        self.r.log({"epoch": step, **values}, step=step)

    def finish(self, record, final):
        self.r.summary.update({**final, "status": record.get("status"), "run_id": self.run_id})
        self.r.finish(exit_code=0 if record.get("status") == "finished" else 1)


class Trackio(Tracker):
    def start(self, config):
        os.environ.setdefault("TRACKIO_DIR", str(self.where / "trackio"))  # read when trackio is imported
        import trackio

        self.r = trackio.init(project=self.experiment, name=self.run_id, group=self.group, config=config)

    def epoch(self, step, values):
        self.r.log(values, step=step)

    def finish(self, record, final):
        self.r.log({f"final/{k}": v for k, v in final.items()})
        self.r.finish()


BACKENDS: dict[str, type[Tracker]] = dict(zip(TRACKERS, (TensorBoard, MLflow, WandB, Trackio), strict=True))


def _probe(uri: str) -> None:
    """An http(s) tracking server that does not answer fails at once, not after the client's retries."""
    u = urlparse(uri)
    if u.scheme in ("http", "https"):
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=3).close()


class Session:
    """A run's trackers, fed through a queue by one background thread."""

    def __init__(self, trackers: list[Tracker], log=print):
        self.trackers, self.log, self.q = trackers, log, queue.Queue()
        self.thread = threading.Thread(target=self._work, name="afbench-tracking", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        live = list(self.trackers)
        while (item := self.q.get()) is not None:
            method, args = item
            for t in list(live):
                try:
                    getattr(t, method)(*args)
                except Exception as e:  # noqa: BLE001 - a tracker never fails a run: one line, then off
                    live.remove(t)
                    extra = next(f"track-{name}" for name, cls in BACKENDS.items() if isinstance(t, cls))
                    why = f"the package is not installed (pip install 'adapterfusion-bench[{extra}]')" \
                        if isinstance(e, ImportError) else f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    self.log(f"  tracking: {type(t).__name__} is off for {t.run_id}: {why}")

    def epoch(self, entry: dict) -> None:
        values = {k: float(v) for k, v in entry.items() if k != "epoch" and isinstance(v, int | float)}
        self.q.put(("epoch", (int(entry.get("epoch", 0)), values)))

    def close(self, record: dict) -> None:
        final = {k: float(record[k]) for k in FINAL if isinstance(record.get(k), int | float)}
        self.q.put(("finish", (record, final)))
        self.q.put(None)
        self.thread.join(FLUSH_SECONDS)
        if self.thread.is_alive():
            self.log(f"  tracking: still sending after {FLUSH_SECONDS:.0f}s; the run goes on without waiting")


def tracked(execute_one):
    """Wrap the runner's ``execute_one(run, reg, plan, exp_dir, ...) -> (run id, error, seconds)`` with the
    run's trackers, started with its config; without tracking it is called as it is."""

    @functools.wraps(execute_one)
    def wrapper(run, reg, plan, exp_dir, *args, **kwargs):
        tracking = plan.experiment.tracking
        if not tracking.backends:
            return execute_one(run, reg, plan, exp_dir, *args, **kwargs)
        task = run.task or "+".join(run.tasks)
        # the local store: tracking.dir (relative to the working directory), else <results>/<experiment>/.tracking
        where = Path(tracking.dir).resolve() if tracking.dir else exp_dir / ".tracking"
        session = Session([BACKENDS[b](where, run.experiment, run.label, task, run.id, tracking)
                           for b in dict.fromkeys(tracking.backends)])
        config = {"run_id": run.id, "experiment": run.experiment, "method": run.method.name, "label": run.label,
                  "task": task, "backbone": run.backbone, "seed": run.seed, "config": run.config(reg, plan.experiment)}
        session.q.put(("start", (config,)))
        loop.epoch_listener, record = session.epoch, {"status": "interrupted", "run_id": run.id}
        try:
            out = execute_one(run, reg, plan, exp_dir, *args, **kwargs)
            written = None if out[1] else read_result(exp_dir / run.id)  # bounded; None for a damaged file
            record = {"status": "failed", "run_id": run.id, "error": out[1]} if out[1] else \
                written.dump() if written is not None else {"status": "finished", "run_id": run.id}
            return out
        finally:
            loop.epoch_listener = None
            session.close(record)

    return wrapper


def with_backends(experiment, names: str | None):
    """``--track a,b``: the experiment spec with these backends added to its tracking block."""
    if not names:
        return experiment
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if unknown := [n for n in chosen if n not in TRACKERS]:
        raise BenchError(f"--track names {', '.join(map(repr, unknown))}, which is not a tracker", field="--track",
                         fix=f"use one or more of {', '.join(TRACKERS)}, separated by commas")
    tracking = experiment.tracking.model_copy(update={"backends": list(dict.fromkeys(
        [*experiment.tracking.backends, *chosen]))})
    return experiment.model_copy(update={"tracking": tracking})
