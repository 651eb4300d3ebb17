"""The planner's output: ``Run`` (one training job) and ``Plan`` (an experiment's runs, dependencies first).

Both the recipes (``benchmark/training``) and the runner (``benchmark/runner``) read these records; the
planner (``build.py``) is the only writer.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from benchmark.data.published import Published
from benchmark.paths import shown_path
from benchmark.plan.identity import run_identity
from benchmark.records import SCHEMA, PlanRecord, PlanRun, Skipped
from benchmark.spec.registry import Registry
from benchmark.spec.schema import DEFAULT_COMPUTE, Caps, ComputeSpec, ExperimentSpec, MethodSpec, Selection


@dataclass
class Run:
    id: str
    experiment: str
    method: MethodSpec  # resolved: overrides, caps, batching and the reduction factor applied
    backbone: str
    seed: int
    caps: Caps = field(default_factory=Caps)  # data and epoch caps this run trains under
    task: str | None = None  # None for a multi-task run (MT-A), which trains on ``tasks``
    tasks: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # fusion: fused adapters, in order
    deps: list[str] = field(default_factory=list)  # run ids that must finish first
    implied: bool = False  # added as a dependency, not listed by the experiment
    task_caps: dict[str, Caps] = field(default_factory=dict)  # per-task caps (override ``caps``)
    selection: Selection = field(default_factory=Selection)
    compute: ComputeSpec = field(default_factory=lambda: DEFAULT_COMPUTE)
    data: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> split -> data fingerprint
    # report columns this run fills (not part of its identity): its label, or a variant's column such as
    # ``fusion_st_a_rf16@s42`` (fusion over seed-42 adapters); one run may fill several (seed 42 there)
    columns: list[str] = field(default_factory=list)
    # fusion sources taken from published adapters (fusion.adapterhub): source -> Published; no dep for them
    published: dict[str, Published] = field(default_factory=dict)

    @property
    def kind(self):
        return self.method.method_kind

    @property
    def all_tasks(self) -> list[str]:
        return [self.task] if self.task else list(self.tasks)

    @property
    def reduction_factor(self) -> int | None:
        return self.method.adapter.reduction_factor if self.method.adapter else None

    @property
    def label(self) -> str:
        return self.kind.label(self.method)

    @property
    def report_columns(self) -> list[str]:
        return self.columns or [self.label]

    @property
    def batching(self) -> str:
        return self.method.train.batching or "grouped"

    def caps_for(self, task: str) -> Caps:
        return self.task_caps.get(task, self.caps)

    def identity(self, reg: Registry) -> dict:
        """Exactly what changes this run's result (see identity.py); hashed into the run id."""
        tasks = self.all_tasks
        return run_identity(
            method=self.method, backbone=reg.backbones[self.backbone], tasks={t: reg.tasks[t] for t in tasks},
            data=self.data, seed=self.seed, sources=self.sources, caps=self.caps,
            task_caps={t: c for t, c in self.task_caps.items() if t in tasks}, deps=self.deps,
            selection=self.selection, compute=self.compute,
            published={s: p.identity() for s, p in self.published.items()})

    def config(self, reg: Registry, exp: ExperimentSpec | None = None) -> dict:
        """The resolved config stored with the result (provenance: prose included)."""
        # a local backbone's folder and a drop-in task's data files as a committed result may show them (their
        # content is in the run id)
        backbone = reg.backbones[self.backbone].model_dump(mode="json")
        if backbone.get("path"):
            backbone["path"] = shown_path(backbone["path"])
        tasks = {t: reg.tasks[t].model_dump(mode="json") for t in self.all_tasks}
        for task in tasks.values():
            if task.get("data_files"):
                task["data_files"] = {k: shown_path(v) for k, v in task["data_files"].items()}
        out = {
            "method": self.method.model_dump(mode="json"),
            "backbone": backbone,
            "tasks": tasks,
            "seed": self.seed,
            "sources": self.sources,
            "caps": self.caps.model_dump(mode="json"),
            "task_caps": {t: c.model_dump(mode="json") for t, c in self.task_caps.items()},
            "deps": self.deps,
            "selection": self.selection.model_dump(mode="json"),
            "compute": self.compute.model_dump(mode="json"),
            "data": self.data,
        }
        if self.published:
            out["published"] = {s: {"ref": p.ref, "sha256": p.sha256, "revision": p.revision}
                                | ({"other_base": p.other_base} if p.other_base else {})
                                for s, p in self.published.items()}
        return out

    def stage1_deps(self) -> list[tuple[str, str]]:
        """(source, stage-1 run id) for the fused sources that are not published adapters, in order."""
        trained = [s for s in self.sources if s not in self.published]
        return list(zip(trained, self.deps))


@dataclass
class Plan:
    experiment: ExperimentSpec
    runs: list[Run]  # dependencies before dependents
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why) left out of the grid

    def by_id(self) -> dict[str, Run]:
        return {r.id: r for r in self.runs}

    def matching(self, globs: list[str] | None) -> list[Run]:
        """The runs whose id matches one of the ``--only`` globs (no globs: every run), in plan order."""
        return [r for r in self.runs if not globs or any(fnmatch.fnmatchcase(r.id, g) for g in globs)]

    def record(self) -> PlanRecord:
        """What the report needs of the plan (``plan.json``): the expected cells and the tasks left out, with why."""
        return PlanRecord(
            schema=SCHEMA, experiment=self.experiment.name, description=self.experiment.description.strip(),
            runs=[PlanRun(id=r.id, task=r.task, tasks=r.tasks, label=r.label, kind=r.kind.name, columns=r.report_columns,
                          backbone=r.backbone, seed=r.seed, role="stage1" if r.implied else "grid") for r in self.runs],
            skipped=[Skipped(what=w, why=y) for w, y in self.skipped],
            # the tasks of the experiment's groups: the rows of its tables (an MT-A run also trains others)
            targets=sorted({t for g in self.experiment.groups for t in g.tasks}))
