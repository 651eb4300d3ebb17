"""Runs trained again under the same id (a retrain for missing weights, or ``--force``): how far the new
result moved from the one it replaced, which the runner keeps in ``previous_result``. Same id means same
settings, data and seed, so this is a reproducibility check of its own: on CPU with fixed seeds the
numbers should not move, and where they do the report shows by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.records import RunRecord
from benchmark.report.cost import NOT_RECORDED

# What is bit-exact and what is not, with this project's measured reruns (every report states it under its
# provenance; ``thread_note`` adds the report's own thread counts where they differ).
REPRODUCIBILITY_NOTE = (
    "Reproducibility: on the CPU with fixed seeds a run trained again is expected to be bit-exact (every epoch's "
    "loss and dev accuracy) with the same torch build, the same CPU family and the same number of torch threads "
    "(afbench run --jobs N gives each run cores / N); another thread count sums floats in another order, so "
    "results move, and a moved early epoch can change the kept one. Measured: 13 minilm_table1 runs retrained "
    "with 1 thread on an Intel Xeon reproduced the results they replaced exactly (those record no CPU model, so "
    "this does not show agreement across CPU families); minilm_table1's MT-A seed 43, trained with 1 thread on "
    "an AMD EPYC and retrained so on another AMD EPYC machine (a fresh checkout, 2026-12-07), reproduced it "
    "exactly; its seed-43 MRPC, RTE and SICK Fusion w/ MT-A runs, trained with 1 thread on an Intel Xeon and "
    "retrained so on an AMD EPYC, kept their dev accuracy at every epoch while their train losses moved by up to "
    "4.4e-7 (another CPU family: not bit-exact); minilm_rte_cb rerun on an AMD "
    "EPYC with 1 thread instead of 2 reproduced 3 of 5 dev accuracies exactly (MNLI ST-A 49.00 → 48.80, the RTE "
    "fusion reading it 51.99 → 51.62); minilm_bf16's SICK fusion, 2 threads on an AMD EPYC → 1 on an Intel "
    "Xeon, 84.24 → 84.85.")


def thread_note(results: list[RunRecord]) -> str:
    """One sentence where this report's finished runs were trained with different thread counts."""
    counts = sorted({r.torch_threads for r in results if r.finished and r.torch_threads})
    return (f" These results were trained with {', '.join(map(str, counts[:-1]))} and {counts[-1]} torch threads "
            "(provenance: torch threads): runs of different thread counts are not bit-comparable."
            if len(counts) > 1 else "")


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
        devs = [abs((a.dev_accuracy or 0.0) - (b.get("dev_accuracy") or 0.0)) for a, b in common]
        same = all(a.train_loss is not None and b.get("train_loss") is not None
                   and abs(a.train_loss - b["train_loss"]) <= 1e-9 for a, b in common)
        out.append(Rerun(r.run_id, r.seed, prev["best_metric"], r.best_metric, len(old_h), len(new_h),
                         max(devs, default=0.0), same, prev.get("cpu_model") or NOT_RECORDED,
                         r.cpu_model or NOT_RECORDED))
    return sorted(out, key=lambda x: x.run_id)


def summary(rows: list[Rerun]) -> str:
    if not rows:
        return ""
    exact = sum(1 for x in rows if x.delta == 0 and x.same_losses and x.epochs_before == x.epochs_after)
    worst = max(rows, key=lambda x: abs(x.delta))
    return (f"{len(rows)} run(s) were trained again under the same id; {exact} reproduced the result they replaced "
            f"exactly (every epoch's train loss and dev accuracy); the largest change of the reported accuracy is "
            f"{worst.delta:+.2f} ({worst.run_id}).")
