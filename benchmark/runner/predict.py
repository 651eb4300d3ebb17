"""``afbench predict``: per-example predictions of finished runs, recomputed from their stored weights.

A run trained since predictions exist writes ``predictions.parquet`` itself (``training/recipe.py``). For a
run finished before, this rebuilds its model from its folder (``export.build_model``, as ``afbench export``
does), scores the same dev rows with the same batches and precision (``training.loop.predict``) and writes
the file and the record's ``predictions`` entry only when every task's accuracy equals the recorded one
exactly; otherwise it refuses the run with one line (recorded vs recomputed) and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark import predictions
from benchmark.modeling.checkpoint import WEIGHTS
from benchmark.plan.run import Plan, Run
from benchmark.records import RESULT, RunRecord, add_to_run, read_result_file
from benchmark.runner.borrowed import borrowed
from benchmark.runner.execute import weights_problem
from benchmark.runner.export import activate, load_for_eval
from benchmark.spec.registry import Registry
from benchmark.training.loop import merge_columns, predict
from benchmark.training.recipe import dev_split


@dataclass
class Outcome:
    run_id: str
    written: bool
    line: str


def has_predictions(folder: Path, rec: RunRecord) -> bool:
    try:
        predictions.read(folder, rec.predictions)
        return True
    except predictions.PredictionsError:
        return False


def predict_run(run: Run, reg: Registry, folder: Path, run_dir, data_dir, device: torch.device) -> Outcome:
    """Recompute one finished run's predictions; write them only when they reproduce its record."""
    rec = read_result_file(folder).record
    model, tok, compute = load_for_eval(run, reg, run_dir, device)
    # each task's recorded dev accuracy (MT-A: per_task)
    want = {t: v.best_metric for t, v in rec.per_task.items()} if rec.per_task else {rec.task: rec.best_metric}
    got, preds = {}, []
    for t in want:
        activate(model, t)
        p = predict(model, dev_split(reg, data_dir, run, reg.tasks[t], tok), t, tok.pad_token_id,
                    run.method.train.eval_batch_size, device, compute)
        got[t] = p.accuracy
        preds.append(p)
    differ = {t: (want[t], got[t]) for t in want if got[t] != want[t]}
    if differ:
        return Outcome(run.id, False, f"refused {run.id}: recomputed dev accuracy differs from the record ("
                       + "; ".join(f"{t}: recorded {a!r}, recomputed {b!r}" for t, (a, b) in differ.items())
                       + f"; recorded with {rec.torch_threads} thread(s) on {rec.cpu_model or rec.device}, "
                         f"recomputed with {torch.get_num_threads()}); nothing written")
    root = folder.parent
    entry = predictions.write(folder, merge_columns(preds), root=root)
    add_to_run(folder / RESULT, {"predictions": entry}, root=root)  # the rest of the file stays as it was
    return Outcome(run.id, True, f"wrote {run.id}/{predictions.FILE}: {entry['rows']} rows, accuracy "
                   + ", ".join(f"{t} {a:.2f}" for t, a in got.items()) + " = recorded")


def predict_plan(plan: Plan, reg: Registry, exp_dir: Path, *, only: list[str] | None = None, data_dir=None,
                 device: str = "cpu", force: bool = False, echo=print) -> list[Outcome]:
    """``predict_run`` for every finished run of ``plan`` under ``exp_dir`` (ids matching a glob of ``only``)
    whose weights are here and match their record; a run with valid predictions is skipped unless ``force``."""
    lent = borrowed(plan, exp_dir.parent)
    out = []
    for run in plan.matching(only):
        folder = exp_dir / run.id
        res = read_result_file(folder)
        if not res.finished:
            continue
        if not force and has_predictions(folder, res.record):
            echo(f"{run.id}: predictions present and match the record; skipped")
            continue
        if not (folder / WEIGHTS).exists():
            echo(f"{run.id}: no weights here ({WEIGHTS}); skipped")
            continue
        why = weights_problem(folder)
        out.append(Outcome(run.id, False, f"refused {run.id}: {why}") if why else
                   predict_run(run, reg, folder, lambda rid: lent.get(rid, exp_dir / rid), data_dir,
                               torch.device(device)))
        echo(out[-1].line)
    return out
