"""Runs trained again under the same id (a retrain for missing weights, or ``--force``): how far the new
result moved from the one it replaced, which the runner keeps in ``previous_result``. Same id means same
settings, data and seed, so this is a reproducibility check of its own: on CPU with fixed seeds the
numbers should not move, and where they do the report shows by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.records import RunRecord

NOT_RECORDED = "not recorded"


@dataclass
class Rerun:
    run_id: str
    seed: int
    before: float
    after: float
    epochs_before: int
    epochs_after: int
    max_epoch_delta: float  # largest |dev accuracy difference| over the epochs both trained
    same_losses: bool  # every common epoch's train loss equal to 1e-9
    wall_before: float | None
    wall_after: float | None
    cpu_before: str
    cpu_after: str

    @property
    def delta(self) -> float:
        return self.after - self.before


def reruns(results: list[RunRecord]) -> list[Rerun]:
    out = []
    for r in results:
        prev = r.previous_result  # what the runner kept of the replaced result (execute.previous_summary)
        if not r.finished or not isinstance(prev, dict) or prev.get("best_metric") is None:
            continue
        new_h, old_h = r.history, prev.get("history") or []
        common = list(zip(new_h, old_h))
        devs = [abs((a.get("dev_accuracy") or 0.0) - (b.get("dev_accuracy") or 0.0)) for a, b in common]
        same = all(a.get("train_loss") is not None and b.get("train_loss") is not None
                   and abs(a["train_loss"] - b["train_loss"]) <= 1e-9 for a, b in common)
        out.append(Rerun(r.run_id, r.seed, prev["best_metric"], r.best_metric, len(old_h), len(new_h),
                         max(devs, default=0.0), same, prev.get("wall_seconds"), r.wall_seconds,
                         prev.get("cpu_model") or NOT_RECORDED, r.cpu_model or NOT_RECORDED))
    return sorted(out, key=lambda x: x.run_id)


def summary(rows: list[Rerun]) -> str:
    if not rows:
        return ""
    exact = sum(1 for x in rows if x.delta == 0 and x.same_losses and x.epochs_before == x.epochs_after)
    worst = max(rows, key=lambda x: abs(x.delta))
    return (f"{len(rows)} run(s) were trained again under the same id; {exact} reproduced the result they replaced "
            f"exactly (every epoch's train loss and dev accuracy); the largest change of the reported accuracy is "
            f"{worst.delta:+.2f} ({worst.run_id}).")
