"""Expand an experiment into runs: task x method x backbone x seed (x reduction factor).

Each run has a stable id derived from its resolved config (the same config always maps to the same
folder, so finished work is found again). Fusion runs depend on the stage-1 ST-A runs of all their
source tasks (added to the plan when the experiment does not list them: "implied" runs); MT-A is one
run per backbone and seed whose per-task adapters the ``mt_a`` cells and ``fusion_mt_a`` runs use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.data.sources import digest
from benchmark.errors import SpecError
from benchmark.spec.registry import Registry
from benchmark.spec.schema import Caps, ExperimentSpec, MethodRef, MethodSpec


@dataclass
class Run:
    id: str
    experiment: str
    method: MethodSpec  # resolved: overrides, caps and the reduction factor applied
    backbone: str
    seed: int
    caps: Caps = field(default_factory=Caps)  # data and epoch caps this run trains under
    task: str | None = None  # None for MT-A, which trains on ``tasks``
    tasks: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # fusion: fused adapters, in order
    deps: list[str] = field(default_factory=list)  # run ids that must finish first
    implied: bool = False  # added as a dependency, not listed by the experiment

    @property
    def reduction_factor(self) -> int | None:
        return self.method.adapter.reduction_factor if self.method.adapter else None

    @property
    def label(self) -> str:
        rf = self.reduction_factor if self.method.method != "fusion_st_a" else self.method.fusion.source_reduction_factor
        return f"{self.method.name}_rf{rf}" if rf else self.method.name

    def config(self, reg: Registry, exp: ExperimentSpec) -> dict:
        tasks = [self.task] if self.task else self.tasks
        return {
            "method": self.method.model_dump(mode="json"),
            "backbone": reg.backbones[self.backbone].model_dump(mode="json"),
            "tasks": {t: reg.tasks[t].model_dump(mode="json") for t in tasks},
            "seed": self.seed,
            "sources": self.sources,
            "caps": self.caps.model_dump(mode="json"),
            "deps": self.deps,
        }


@dataclass
class Plan:
    experiment: ExperimentSpec
    runs: list[Run]  # dependencies before dependents
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why) left out of the grid

    def by_id(self) -> dict[str, Run]:
        return {r.id: r for r in self.runs}


def resolve_method(reg: Registry, exp: ExperimentSpec, name: str, rf: int | None = None,
                   caps: Caps | None = None) -> MethodSpec:
    m = reg.methods[name].model_copy(deep=True)
    train = m.train.model_dump()
    train.update({k: v for k, v in exp.overrides.get(name, {}).items()})
    caps = caps or exp.caps
    if caps.max_epochs:
        train["epochs"] = min(train["epochs"], caps.max_epochs)
    if caps.max_steps_per_epoch:
        train["max_steps_per_epoch"] = min(train.get("max_steps_per_epoch") or caps.max_steps_per_epoch,
                                           caps.max_steps_per_epoch)
    m.train = type(m.train)(**train)
    if rf is not None and m.adapter is not None:
        m.adapter = m.adapter.model_copy(update={"reduction_factor": rf})
    return m


def _finalize(run: Run, reg: Registry, exp: ExperimentSpec) -> Run:
    h = digest(run.config(reg, exp))[:8]
    who = run.task or "multi"
    run.id = f"{who}__{run.label}__{run.backbone}__s{run.seed}__{h}"
    return run


def experiment_tasks(exp: ExperimentSpec) -> list[str]:
    seen: list[str] = []
    for g in exp.groups:
        for t in g.tasks:
            if t not in seen:
                seen.append(t)
    return seen


def fusion_sources(exp: ExperimentSpec, target: str) -> list[str]:
    srcs = experiment_tasks(exp) if exp.fusion.sources == "all" else list(exp.fusion.sources)
    return srcs if target in srcs else [*srcs, target]


def mt_a_tasks(exp: ExperimentSpec) -> list[str]:
    base = exp.mt_a.tasks or (experiment_tasks(exp) if exp.fusion.sources == "all" else list(exp.fusion.sources))
    out = list(base)
    for g in exp.groups:  # every task that asks for an MT-A cell or fusion must be in the joint training
        for m in g.methods:
            name = m.method if isinstance(m, MethodRef) else m
            if name in ("mt_a", "fusion_mt_a"):
                out += [t for t in g.tasks if t not in out]
    return out


def build_plan(reg: Registry, exp: ExperimentSpec, available=None) -> Plan:
    """``available(task) -> str | None`` says why a task's data is missing (None = usable)."""
    runs: dict[str, Run] = {}
    plan = Plan(exp, [])
    missing: dict[str, str] = {}

    def usable(task: str) -> bool:
        if available is None:
            return True
        if task not in missing:
            why = available(task)
            missing[task] = why or ""
            if why:
                plan.skipped.append((f"task {task}", why))
        return not missing[task]

    def add(run: Run) -> Run:
        run = _finalize(run, reg, exp)
        if run.id not in runs:
            runs[run.id] = run
        elif not run.implied:
            runs[run.id].implied = False
        return runs[run.id]

    def stage1(task: str, backbone: str, seed: int, rf: int) -> Run:
        caps = exp.fusion.caps or exp.caps
        return add(Run("", exp.name, resolve_method(reg, exp, "st_a", rf, caps), backbone, seed, caps=caps,
                       task=task, implied=True))

    def mt_a_run(backbone: str, seed: int, implied: bool) -> Run | None:
        tasks = [t for t in mt_a_tasks(exp) if usable(t)]
        if not tasks:
            return None
        return add(Run("", exp.name, resolve_method(reg, exp, "mt_a"), backbone, seed, caps=exp.caps, tasks=tasks,
                       implied=implied))

    for g in exp.groups:
        for backbone in g.backbones or exp.backbones:
            for seed in g.seeds or exp.seeds:
                for mref in g.methods:
                    name = mref.method if isinstance(mref, MethodRef) else mref
                    rfs = (mref.reduction_factor if isinstance(mref, MethodRef) and mref.reduction_factor else [None])
                    kind = reg.methods[name].method
                    if kind == "mt_a":
                        mt_a_run(backbone, seed, implied=False)
                        continue
                    for task in g.tasks:
                        if not usable(task):
                            continue
                        for rf in rfs:
                            method = resolve_method(reg, exp, name, rf)
                            run = Run("", exp.name, method, backbone, seed, caps=exp.caps, task=task)
                            aseed = seed if exp.fusion.adapter_seed == "matched" else exp.fusion.adapter_seed
                            if kind == "fusion_st_a":
                                srcs = [s for s in fusion_sources(exp, task) if usable(s)]
                                rf_src = method.fusion.source_reduction_factor
                                run.sources = srcs
                                run.deps = [stage1(s, backbone, aseed, rf_src).id for s in srcs]
                            elif kind == "fusion_mt_a":
                                dep = mt_a_run(backbone, aseed, implied=True)
                                if dep is None or task not in dep.tasks:
                                    raise SpecError(f"fusion_mt_a on '{task}' needs an MT-A run that includes it",
                                                    file=exp.name, field="mt_a.tasks", fix=f"add {task} to mt_a.tasks")
                                run.sources = list(dep.tasks)
                                run.deps = [dep.id]
                            add(run)
    # dependencies first, then in the order the experiment lists them
    order = sorted(runs.values(), key=lambda r: len(r.deps) > 0)  # stable: keeps listing order
    plan.runs = order
    return plan
