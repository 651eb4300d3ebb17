"""The order in which runs start: a pure rule on the plan, which the runner schedules by and the cost model
simulates (``cost.makespan``)."""

from __future__ import annotations

from benchmark.plan.run import Run


def start_order(todo: list[Run]) -> list[Run]:
    """Which run starts first when several could: the runs that read an MT-A run's weights first (they
    become ready the moment it finishes; every Fusion w/ MT-A seed reads the one MT-A run of
    ``fusion.adapter_seed``), then seed by seed in plan order. A grid stopped midway thus leaves no MT-A
    weights (~90 MB, not committed) that a later session on a fresh machine would have to retrain, and
    otherwise whole seeds done. Dependencies still finish before their dependents start: the scheduler
    waits for them."""
    rank = {r.id: i for i, r in enumerate(todo)}
    return sorted(todo, key=lambda r: (r.kind.depends_on != "mt_a", r.seed, rank[r.id]))
