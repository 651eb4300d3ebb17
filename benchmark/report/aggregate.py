"""Stored results -> cells: (backbone, task, column) -> best-epoch dev accuracies over seeds.

Only the runs the experiment asked for count (role "grid"), and only for the tasks of its groups: an
MT-A run also trains the other tasks of its mixture, which are listed (with every seed) as MT-A quality,
not as table rows. The adapters fusion read (its dependencies, grid runs or not) are listed as stage-1
adapters. A cell knows why it is empty: not run, failed, no data.

Which results are current is decided from the experiment spec as it is now and what the results
recorded (``plan.build.recorded``: the spec's runs with the data fingerprints and the command-line choices each
result stored), never from the data or the training flags, so a report needs neither; nor from the
``plan.json`` of the last run alone, which may be older than the results (``--only``) or the specs. It
gives the tasks left out for want of data; it is the whole plan only when the experiment's spec is gone.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.plan.build import recorded
from benchmark.records import PLAN, PlanRecord, RecordError, RunRecord, load_plan, scan_experiment


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # one per seed
    seeds: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # error messages of failed runs
    expected: bool = False  # the plan asked for it
    last: list[float] = field(default_factory=list)  # dev accuracy of each seed's last trained epoch
    run_ids: list[str] = field(default_factory=list)  # the finished runs behind ``values``, in their order

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (ddof = 1); None with fewer than two seeds."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def reason(self, no_data: str | None) -> str:
        return "" if self.values else "no data" if no_data else "failed" if self.failed else "not run"


@dataclass
class Collected:
    experiment: str
    cells: dict[tuple[str, str, str], Cell]  # (backbone, task, column label)
    stage1: list[RunRecord]  # finished single-task results that a fusion run read (its stage-1 adapters)
    no_data: dict[str, str]  # task -> why it was skipped
    results: list[RunRecord]  # every result read (finished and failed)
    description: str = ""
    attention: dict[tuple[str, str, str], list[dict]] = field(default_factory=dict)  # fusion_attention per cell
    stale: list[str] = field(default_factory=list)  # run ids on disk that the current plan no longer has
    problems: list[str] = field(default_factory=list)  # result files left out (corrupt, other experiment)
    plan_source: str = ""  # where the expected runs came from: the current specs, plan.json or nothing
    folder: Path | None = None  # results/<experiment>: where each run's own files are (predictions)
    multitask: list[RunRecord] = field(default_factory=list)  # finished MT-A results (grid or implied), every task
    column_kinds: dict[str, str] = field(default_factory=dict)  # report column -> method kind (from the plan)
    stale_sources: set[str] = field(default_factory=set)  # stale results recording no fingerprint: data source
    held_back: list[str] = field(default_factory=list)  # results of seeds outside report_seeds
    report_seeds: list[int] | None = None  # the experiment's report_seeds (None: every seed)

    def kind_of(self, label: str) -> str | None:
        """The method kind of a report column (a variant such as st_a_shuffled_rf16 -> st_a)."""
        return self.column_kinds.get(label) or next(
            (r.method_kind for r in self.results if r.label == label), None)

    def backbones(self) -> list[str]:
        return sorted({b for b, _, _ in self.cells})

    def tasks(self, backbone: str) -> list[str]:
        return sorted({t for b, t, _ in self.cells if b == backbone} | set(self.no_data))

    def columns(self, backbone: str) -> set[str]:
        return {c for (b, _, c), cell in self.cells.items() if b == backbone and cell.values}


def _read_plan(folder: Path) -> tuple[PlanRecord | None, str]:
    """The runner's ``plan.json`` (fallback for an experiment whose spec is gone), or why not."""
    f = folder / PLAN
    if not f.exists():
        return None, ""
    try:
        return load_plan(f), ""
    except RecordError as e:
        return None, f"{folder.name}/{PLAN} {e.message}; left out"


def collect(results: list[RunRecord], plan: PlanRecord | None, experiment: str,
            seeds: list[int] | None = None) -> Collected:
    """``seeds`` (the experiment's ``report_seeds``): only results of these seeds fill cells and the stage-1 and
    MT-A lists; the others are listed in ``held_back``."""
    planned = plan.runs if plan is not None else []
    roles = {r.id: r.role for r in planned}
    # the report columns a run fills (a plan.json older than variant columns reads as its label: records.py)
    columns = {r.id: r.columns for r in planned}
    kinds = {c: r.kind for r in planned if r.kind for c in r.columns}
    # A spec edited after a run changes the run ids; results of the old spec stay on disk but are not
    # part of this experiment any more (they would count as an extra seed), so they are left out.
    stale = sorted(r.run_id for r in results if plan is not None and r.run_id not in roles)
    stale_sources = {r.data_source for r in results if plan is not None and r.run_id not in roles
                     and not (r.config or {}).get("data")} - {""}  # their ids need the data (schema 1)
    results = [r for r in results if plan is None or r.run_id in roles]
    cells: dict[tuple[str, str, str], Cell] = {}
    attention: dict[tuple[str, str, str], list[dict]] = {}
    stage1, multitask, held_back = [], [], []
    targets = set(plan.targets if plan is not None else [])  # empty (an old plan.json): every task is a row
    read_by_fusion = {d for r in results if r.finished and (seeds is None or r.seed in seeds) for d in r.deps}

    def rows(tasks) -> list[str]:
        return [t for t in tasks if not targets or t in targets]

    def cell(b, t, c) -> Cell:
        return cells.setdefault((b, t, c), Cell())

    for run in planned:
        if run.role == "grid":
            for t in rows(run.rows):
                for c in run.columns:
                    cell(run.backbone, t, c).expected = True
    for r in results:
        role = roles.get(r.run_id, r.role)
        if seeds is not None and r.seed not in seeds:  # every table and test: the report's seeds only
            held_back.append(r.run_id)
            continue
        if r.finished:
            if r.per_task:  # a finished MT-A run: one result for several tasks
                multitask.append(r)
            elif role != "grid" or r.run_id in read_by_fusion:
                stage1.append(r)
        if role != "grid":
            continue
        per_task = r.per_task or {}
        # MT-A: one result for several tasks (per_task when finished; a failed one counts for each of its tasks)
        for t in rows(r.trained_tasks):
            for label in columns.get(r.run_id, [r.label]):
                c = cell(r.backbone, t, label)
                c.expected = True
                if not r.finished:
                    c.failed.append(r.error or "unknown error")
                    continue
                c.values.append(per_task[t].best_metric if per_task else r.best_metric)
                c.seeds.append(r.seed)
                c.run_ids.append(r.run_id)
                hist = per_task[t].history if per_task else [h.dev_accuracy for h in r.history]
                if hist and hist[-1] is not None:
                    c.last.append(hist[-1])
                if r.fusion_attention and r.fusion_attention.layers:
                    attention.setdefault((r.backbone, t, label), []).append(r.fusion_attention.model_dump())
    no_data = {s.what[5:]: s.why for s in (plan.skipped if plan is not None else []) if s.what.startswith("task ")}
    return Collected(experiment, cells, stage1, no_data, results, plan.description if plan is not None else "",
                     attention, stale, stale_sources=stale_sources, multitask=multitask, column_kinds=kinds,
                     held_back=held_back, report_seeds=seeds)


def load(results_dir: Path, experiment: str, reg=None, data_root=None) -> Collected:
    """Read ``results_dir/<experiment>`` and which of its results are current (``plan.build.recorded`` as a record,
    with the tasks left out for want of data as ``plan.json`` says)."""
    scan = scan_experiment(results_dir, experiment)
    problems = scan.problems()
    spec = reg.experiments.get(experiment) if reg is not None else None
    stored, why = _read_plan(results_dir / experiment)
    if spec is not None:
        lent = [r for e in spec.dependencies_from for r in scan_experiment(results_dir, e).results]
        plan, source = recorded(reg, spec, scan.results, data_root=data_root, lent=lent).record(), "current specs"
        plan.skipped = stored.skipped if stored is not None else []
    else:
        plan, source = stored, "plan.json (the experiment spec no longer exists)" if stored else "none"
        problems += [why] if why else []
    col = collect(scan.results, plan, experiment, spec.report_seeds if spec is not None else None)
    problems += [f"run {r.run_id} diverged ({r.first_error_line or '?'}); left out of the means"
                 for r in col.results if r.diverged]
    col.problems, col.plan_source, col.folder = problems, source, results_dir / experiment
    return col
