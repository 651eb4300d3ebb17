"""Dependencies read from another experiment's results (``dependencies_from:`` in an experiment spec).

A run id is exactly what changes a result (``plan/identity.py``), so a finished stage-1 ST-A or MT-A run
with the same id under ``results/<other experiment>/`` is the run this plan would train. An implied run
(one the plan adds because a fusion run reads it) that has no result under this experiment is read
there, in place: it is neither trained nor copied, and its result stays with the experiment that trained
it (a report shows only its own experiment's runs). Once a run has a result here (finished, failed, or
retrained because the lender's weights were unusable) it is this experiment's own. Grid runs are always
trained under their own experiment, and lending is not transitive: only the lenders' own folders are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from benchmark.records import is_finished, read_result_file


def borrowed(plan, results_dir: Path, usable: Callable[[Path], bool] | None = None,
             ids: Iterable[str] | None = None) -> dict[str, Path]:
    """Implied run id -> the folder of its finished result in the first experiment of
    ``plan.experiment.dependencies_from`` that has one (and whose folder passes ``usable``: the runner
    checks the weights there), for the implied runs with no result under this experiment; ``ids``: only
    these runs (a run's own dependencies: the weight check hashes files, so only what is read is checked)."""
    lenders = plan.experiment.dependencies_from
    if not lenders:
        return {}
    own = results_dir / plan.experiment.name
    wanted = None if ids is None else set(ids)
    out: dict[str, Path] = {}
    for r in plan.runs:
        if not r.implied or (wanted is not None and r.id not in wanted) or read_result_file(own / r.id).state != "missing":
            continue
        for other in lenders:
            folder = results_dir / other / r.id
            if is_finished(folder) and (usable is None or usable(folder)):
                out[r.id] = folder
                break
    return out
