"""Expand an experiment into runs: task x method x backbone x seed (x reduction factor).

Each run has a stable id hashed from what changes its result (``identity.py``), so finished work is
found again after any prose edit. Runs that read other runs' weights get them as dependencies, added
when the experiment does not list them ("implied" runs): fusion over ST-A reads one stage-1 ST-A run
per fused source (or one run of its ``fusion.source_method``, e.g. LoRA); kinds that depend on MT-A read the one joint MT-A run per backbone and seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from benchmark import methods
from benchmark.adapterhub import check_backbone, fusable
from benchmark.data.published import Published, resolve
from benchmark.data.sources import task_fingerprints
from benchmark.errors import SpecError
from benchmark.plan.identity import run_id
from benchmark.plan.run import Plan, Run
from benchmark.spec.registry import Registry, method_name
from benchmark.spec.schema import DEFAULT_COMPUTE, Caps, ComputeSpec, ExperimentSpec, MethodRef, MethodSpec


@dataclass(frozen=True)
class Options:
    """Command-line choices that take precedence over the specs (None = the spec's, then the default)."""

    batching: str | None = None
    cpu_kernels: str | None = None
    last_layer: str | None = None
    precision: str | None = None
    compile: bool | None = None  # --compile: True; None = the experiment's compute.compile, then eager


def fusion_sources(exp: ExperimentSpec, target: str | None = None) -> list[str]:
    """The tasks whose adapters a fusion on ``target`` reads (``target`` itself added last where not listed)."""
    # all: every task of the experiment's groups, in the order they first appear
    srcs = list(dict.fromkeys(t for g in exp.groups for t in g.tasks)) if exp.fusion.sources == "all" \
        else list(exp.fusion.sources)
    return srcs if target is None or target in srcs else [*srcs, target]


def mt_a_tasks(reg: Registry, exp: ExperimentSpec) -> list[str]:
    out = list(exp.mt_a.tasks or fusion_sources(exp))
    for g in exp.groups:  # every task that asks for an MT-A cell, or for a kind built on MT-A, trains jointly
        for m in g.methods:
            kind = reg.methods[method_name(m)].method_kind
            if kind.multitask or kind.depends_on == "mt_a":
                out += [t for t in g.tasks if t not in out]
    return out


class _Planner:
    """Collects runs by id; the same run asked for twice (a grid ST-A run that is also a stage-1 source) is one."""

    def __init__(self, reg: Registry, exp: ExperimentSpec, available: Callable[[str], str | None] | None,
                 data_root, options: Options):
        self.reg, self.exp, self.available, self.data_root = reg, exp, available, data_root
        self.batching = options.batching
        spec = exp.compute
        compiled = bool(options.compile or spec.compile)
        kernels = options.cpu_kernels or spec.cpu_kernels
        if compiled and kernels == "fast":
            raise SpecError(f"experiment {exp.name}: compile is on, but cpu_kernels is fast; the fast CPU kernels "
                            "(oneDNN frozen linears, integer dropout masks) are eager-mode code that torch.compile "
                            "cannot trace, and inductor fuses the same work itself", field="compute.cpu_kernels",
                            fix="drop cpu_kernels (compile runs the stock kernels) or set it to stock, or turn "
                                "compile off")
        # the compiled path computes with the stock kernels (benchmark/modeling/compiled.py)
        self.compute = ComputeSpec(cpu_kernels=kernels or ("stock" if compiled else DEFAULT_COMPUTE.cpu_kernels),
                                   last_layer=options.last_layer or spec.last_layer or DEFAULT_COMPUTE.last_layer,
                                   precision=options.precision, compile=compiled)
        self.plan = Plan(exp, [])
        self.runs: dict[str, Run] = {}
        self._why: dict[str, str] = {}
        self._data: dict[str, dict[str, str]] = {}
        self._published: dict[str, Published] | None = None

    # ------------------------------------------------------------------ data
    def usable(self, task: str) -> bool:
        if task not in self._why:
            why = self.available(task) if self.available else None
            self._why[task] = why or ""
            if why:
                self.plan.skipped.append((f"task {task}", why))
        return not self._why[task]

    def fingerprints(self, task: str) -> dict[str, str]:
        if task not in self._data:  # once per task, not once per run
            self._data[task] = task_fingerprints(self.reg.tasks[task], self.data_root)
        return self._data[task]

    # ------------------------------------------------------------------ runs
    def caps(self, task: str, stage1: bool = False) -> Caps:
        base = (self.exp.fusion.caps or self.exp.caps) if stage1 else self.exp.caps
        return self.exp.task_caps.get(task, base)

    def add(self, run: Run, task_caps: dict[str, Caps] | None = None) -> Run:
        # precision: the command line, then the method spec, then the experiment's compute:, then auto
        precision = (self.compute.precision or run.method.precision or self.exp.compute.precision
                     or DEFAULT_COMPUTE.precision)
        run.selection, run.compute = self.exp.selection, self.compute.model_copy(update={"precision": precision})
        if run.compute.compile and run.method.fusion is not None and run.method.fusion.temperature:
            raise SpecError(f"experiment {self.exp.name}: method {run.method.name} anneals the fusion temperature "
                            "every step, and compile is on: each new temperature would compile a new graph",
                            field="compute.compile", fix=f"turn compile off for this experiment, or set "
                            f"fusion.temperature: false in method {run.method.name}")
        task_caps = self.exp.task_caps if task_caps is None else task_caps
        run.task_caps = {t: task_caps[t] for t in run.all_tasks if t in task_caps}
        run.data = {t: self.fingerprints(t) for t in run.all_tasks}
        run.id = run_id(run.task or "multi", run.label, run.backbone, run.seed, run.identity(self.reg))
        if run.id not in self.runs:
            self.runs[run.id] = run
        elif not run.implied:
            kept = self.runs[run.id]
            kept.columns = [*kept.report_columns, *(c for c in run.report_columns if c not in kept.report_columns)] \
                if not kept.implied else run.report_columns
            kept.implied = False
        return self.runs[run.id]

    def method(self, name: str, rf: int | None, caps: Caps) -> MethodSpec:
        """The method spec with the experiment's overrides, caps, batching and a swept reduction factor applied."""
        m = self.reg.methods[name].model_copy(deep=True)
        train = m.train.model_dump()
        train.update(self.exp.overrides.get(name, {}))
        if caps.max_epochs:
            train["epochs"] = min(train["epochs"], caps.max_epochs)
        if caps.max_steps_per_epoch:
            train["max_steps_per_epoch"] = min(train.get("max_steps_per_epoch") or caps.max_steps_per_epoch,
                                               caps.max_steps_per_epoch)
        train["batching"] = self.batching or train.get("batching") or self.exp.batching
        m.train = type(m.train)(**train)
        if rf is not None and m.adapter is not None:
            m.adapter = m.adapter.model_copy(update={"reduction_factor": rf})
        return m

    def stage1(self, task: str, backbone: str, seed: int, rf: int, method: str | None = None) -> Run:
        """The source run a fusion reads for ``task``: ST-A at ``rf`` (or the fusion's ``source_method``)."""
        caps = self.caps(task, stage1=True)
        return self.add(Run("", self.exp.name, self.method(method or methods.STAGE1, rf, caps), backbone, seed,
                            caps=caps, task=task, implied=True))

    def mt_a(self, backbone: str, seed: int, implied: bool) -> Run | None:
        tasks = [t for t in mt_a_tasks(self.reg, self.exp) if self.usable(t)]
        if not tasks:
            return None
        caps = self.exp.mt_a.caps or self.exp.caps
        run = Run("", self.exp.name, self.method(self.mt_a_method(), None, caps), backbone, seed, caps=caps,
                  tasks=tasks, implied=implied)
        return self.add(run, task_caps={} if self.exp.mt_a.caps else None)  # mt_a.caps: one cap for every task

    def published(self) -> dict[str, Published]:
        """fusion.adapterhub resolved once per plan: folders checked and hashed, Hub ids pinned."""
        if self._published is None:
            file = self.reg.file_of("experiment", self.exp.name)
            fused = fusion_sources(self.exp)
            for t in self.exp.fusion.adapterhub:
                if t not in fused:
                    raise SpecError(f"fusion.adapterhub names '{t}', which is not a fused source ({', '.join(fused)})",
                                    file=file, field=f"fusion.adapterhub.{t}",
                                    fix="add it to fusion.sources, or remove the entry")
            for t in self.exp.fusion.adapterhub_allow_other_base:
                if t not in self.exp.fusion.adapterhub:
                    raise SpecError(f"fusion.adapterhub_allow_other_base names '{t}', which fusion.adapterhub does "
                                    "not map to a published adapter", file=file,
                                    field="fusion.adapterhub_allow_other_base", fix="remove it, or add its adapter")
            self._published = {t: fusable(resolve(ref, file, t), file or "the experiment spec", f"fusion.adapterhub.{t}")
                               for t, ref in self.exp.fusion.adapterhub.items()}  # configs we compute exactly
        return self._published

    def mt_a_method(self) -> str:
        """The experiment's own multi-task method if it lists one, else the spec named after the kind."""
        return next((method_name(m) for g in self.exp.groups for m in g.methods
                     if self.reg.methods[method_name(m)].method_kind.multitask), "mt_a")

    def grid_run(self, name: str, task: str, backbone: str, seed: int, rf: int | None,
                 adapter_seed: int | str | None = None) -> None:
        caps = self.caps(task)
        run = Run("", self.exp.name, self.method(name, rf, caps), backbone, seed, caps=caps, task=task)
        chosen = self.exp.fusion.adapter_seed if adapter_seed is None else adapter_seed
        aseed = seed if chosen == "matched" else chosen
        if adapter_seed is not None and adapter_seed != self.exp.fusion.adapter_seed:
            # other adapters than the experiment's default: their own report column, e.g. fusion_st_a_rf16@s42
            # (every seed over the seed-42 adapters) or fusion_mt_a@matched
            run.columns = [f"{run.label}@{'matched' if adapter_seed == 'matched' else f's{adapter_seed}'}"]
        if run.kind.depends_on == "stage1":
            published = self.published()
            run.sources = [s for s in fusion_sources(self.exp, task) if s in published or self.usable(s)]
            run.published = {s: published[s] for s in run.sources if s in published}
            for s, pub in list(run.published.items()):  # each against this backbone: family, shape, base model
                other = check_backbone(pub, self.reg.backbones[backbone], self.reg.file_of("experiment", self.exp.name),
                                       f"fusion.adapterhub.{s}", s in self.exp.fusion.adapterhub_allow_other_base)
                run.published[s] = replace(pub, other_base=other)
            fusion = run.method.fusion
            run.deps = [self.stage1(s, backbone, aseed, fusion.source_reduction_factor, fusion.source_method).id
                        for s in run.sources if s not in published]
        elif run.kind.depends_on == "mt_a":
            dep = self.mt_a(backbone, aseed, implied=True)
            if dep is None or task not in dep.tasks:
                raise SpecError(f"{name} on '{task}' needs an MT-A run that includes it", file=self.exp.name,
                                field="mt_a.tasks", fix=f"add {task} to mt_a.tasks")
            run.sources, run.deps = list(dep.tasks), [dep.id]
        self.add(run)

    def group(self, g) -> None:
        for backbone in g.backbones or self.exp.backbones:
            for seed in g.seeds or self.exp.seeds:
                for mref in g.methods:
                    name = method_name(mref)
                    if self.reg.methods[name].method_kind.multitask:
                        self.mt_a(backbone, seed, implied=False)
                        continue
                    rfs = mref.reduction_factor if isinstance(mref, MethodRef) and mref.reduction_factor else [None]
                    aseed = mref.adapter_seed if isinstance(mref, MethodRef) else None
                    for task in g.tasks:
                        if self.usable(task):
                            for rf in rfs:
                                self.grid_run(name, task, backbone, seed, rf, aseed)


def build_plan(reg: Registry, exp: ExperimentSpec, available: Callable[[str], str | None] | None = None, *,
               data_root=None, options: Options = Options(), data: dict[str, dict[str, str]] | None = None) -> Plan:
    """``available(task) -> str | None`` says why a task's data is missing (None = usable). ``data``: task ->
    the fingerprints its results recorded (the report plans from them, with no data at hand)."""
    planner = _Planner(reg, exp, available, data_root, options)
    planner._data.update(data or {})
    for g in exp.groups:
        planner.group(g)
    # dependencies first, then in the order the experiment lists them (sorted() is stable)
    planner.plan.runs = sorted(planner.runs.values(), key=lambda r: len(r.deps) > 0)
    return planner.plan


def recorded(reg: Registry, exp: ExperimentSpec, results, available: Callable[[str], str | None] | None = None, *,
             data_root=None, lent=()) -> Plan:
    """The experiment as its results were planned: ``build_plan`` under the data fingerprints each task's latest
    result (or one of ``lent``, the results of ``dependencies_from``) recorded (results from before ``config.data``:
    the data in ``data_root``, as at training) and under every set of command-line choices (batching, CPU kernels,
    last layer, precision, compile) a result recorded, plus the spec's own; their runs together (plans in the
    order of their choices, each run once). What the report and the commands on finished runs (export, predict,
    push, prune, speed) read, so none of them takes the training flags."""
    data: dict[str, dict[str, str]] = {}
    for r in sorted([*lent, *results], key=lambda r: r.finished_at or ""):
        data.update((r.config or {}).get("data") or {})
    choices = {Options()}
    for r in results:
        c, train = (r.config or {}).get("compute") or {}, ((r.config or {}).get("method") or {}).get("train") or {}
        choices.add(Options(train.get("batching"), c.get("cpu_kernels"), c.get("last_layer"), c.get("precision"),
                            c.get("compile") or None))
    plans = [build_plan(reg, exp, available, options=o, data=data, data_root=data_root)
             for o in sorted(choices, key=repr)]
    plan, seen = plans[0], {r.id for r in plans[0].runs}
    for other in plans[1:]:
        plan.runs += [r for r in other.runs if r.id not in seen and not seen.add(r.id)]
    return plan


def data_drift(reg: Registry, runs, data_root=None) -> list[str]:
    """A warning per task whose dev split here differs from what the finished ``runs`` recorded for it: ``recorded``
    plans from the recorded fingerprints, so a command that evaluates finished runs on their own dev split (prune,
    speed) would otherwise read other rows without saying so. A split missing here is left to the command."""
    out, seen = [], set()
    for r in runs:
        task = reg.tasks.get(r.task)
        split = task.splits.eval if task else None
        was = (r.data.get(r.task) or {}).get(split)
        if task is None or was is None or (r.task, split) in seen:
            continue
        seen.add((r.task, split))
        here = task_fingerprints(task, data_root).get(split, "unavailable")
        if here in ("unavailable", was):
            continue
        same_kind = here.split(":")[0] == was.split(":")[0]
        out.append(f"warning: task '{r.task}', split '{split}': its runs evaluated {was}, the data here is {here}"
                   + (", other rows" if same_kind else " (a file and a Hub id cannot be compared: the rows may differ)")
                   + "; this command reads the data here. Fix: point --data-dir (or AFBENCH_DATA_DIR) at the data "
                   "the runs were trained on, or train them again.")
    return out


def select(plan: Plan, patterns: list[str]) -> set[str]:
    """Ids of the runs whose id matches any glob pattern (``afbench run --only``), with everything they
    depend on, so that a selection can always run."""
    by_id = plan.by_id()
    todo = [r.id for r in plan.matching(patterns)] if patterns else []  # matching's "no globs" is every run
    chosen: set[str] = set()
    while todo:
        rid = todo.pop()
        if rid not in chosen:
            chosen.add(rid)
            todo += by_id[rid].deps
    return chosen
