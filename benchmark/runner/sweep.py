"""``afbench sweep EXPERIMENT --method M --space lr=1e-5:1e-3:log --trials N``: an Optuna search of a method's
train hyper-parameters on the held-out slice of train only (the experiment must use ``selection: heldout``).

Each trial is the experiment's runs of that method with the trial's values as ``overrides``, planned by the
ordinary planner (so a trial's run id is the normal id of that configuration) and trained by ``run_plan`` into a
results root of its own, ``<results>/<experiment>/.sweep/<method>/`` (the experiment's own folder, plan and ids
are never touched); a finished run is read back, never retrained. The objective is the mean of the runs'
``selection_metric`` (held-out accuracy of the kept epoch); the dev metric is never read. The study is sqlite
in that folder, so rerunning continues it (a trial killed mid-way is marked failed and its values tried again).
The best values are written as a new method spec (``<method>_swept.yaml`` under ``--out``/methods) that the user
adopts explicitly (``--specs OUT`` and the name in an experiment's groups). Optuna is the ``sweep`` extra,
imported only here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from benchmark.errors import BenchError, SpecError
from benchmark.paths import under, write_atomic
from benchmark.plan.build import Options, build_plan, select
from benchmark.records import read_result_file
from benchmark.runner.execute import run_plan
from benchmark.runner.lock import experiment_lock
from benchmark.spec.registry import Registry, check_sweep
from benchmark.spec.schema import ExperimentSpec, SearchRange, SweepSpec, searchable

MISSING = ("afbench sweep needs Optuna, which is an optional extra and not installed in this environment. Install "
           "it with `pip install 'adapterfusion-bench[sweep]'` (or `pip install 'optuna>=4'`) into the environment "
           "that runs afbench, then rerun the same command; nothing was trained or written")


@dataclass(frozen=True)
class Dim:
    """One searched hyper-parameter (integers when the method's train field is one)."""

    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial):
        if self.integer:
            return trial.suggest_int(self.key, math.ceil(self.low), math.floor(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def __str__(self) -> str:
        return f"{self.key} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


def resolve(reg: Registry, exp: ExperimentSpec, method: str | None, space: list[str] | None,
            trials: int | None) -> SweepSpec:
    """What to search: ``--method``/``--space`` when given (checked as a ``sweep:`` block would be), else the
    experiment's ``sweep:`` block; ``--trials`` over either."""
    file = reg.file_of("experiment", exp.name)
    if not method and not space:
        if exp.sweep is None:
            raise BenchError(f"experiment '{exp.name}' has no sweep: block and no --method/--space was given, so "
                             "there is nothing to search", file=file, field="sweep",
                             fix="give --method M --space KEY=LOW:HIGH[:log], or add to the experiment e.g. "
                                 "sweep: {method: st_a, space: {lr: '1e-5:1e-3:log'}, trials: 20}")
        spec = exp.sweep
    elif not (method and space):
        raise BenchError("--method and --space go together (or neither, to use the experiment's sweep: block)",
                         field="--space" if method else "--method", fix="e.g. --method head --space lr=1e-5:1e-3:log")
    else:
        ranges = {}
        for item in space:
            key, _, rng = item.partition("=")
            try:
                ranges[key] = SearchRange.model_validate(rng)
            except ValidationError as e:
                raise BenchError(f"--space '{item}': {e.errors()[0]['msg'].removeprefix('Value error, ')}",
                                 field="--space", fix="KEY=LOW:HIGH or KEY=LOW:HIGH:log with finite LOW < HIGH "
                                                      "(and LOW > 0 for log), e.g. --space lr=1e-5:1e-3:log") from None
        spec = SweepSpec(method=method, space=ranges, trials=(exp.sweep.trials if exp.sweep else 10),
                         seed=exp.sweep.seed if exp.sweep else 0)
        if method not in reg.methods:
            raise BenchError(f"no method named '{method}'", field="--method", fix="see afbench list")
        try:
            check_sweep(reg, exp.model_copy(update={"sweep": spec}), file)
        except SpecError as e:  # the same checks as a sweep: block, named by the flag the user typed
            raise BenchError(e.message, field="--method" if e.field == "sweep.method" else "--space",
                             fix=e.fix) from None
    return spec.model_copy(update={"trials": trials}) if trials is not None else spec


class TrialFailed(Exception):
    """A trial whose runs did not all finish (diverged, failed): no objective value."""


def objective_value(exp_dir: Path, run_ids: list[str]) -> float:
    """The mean held-out accuracy (``selection_metric``) of the trial's runs: the only number read. Dev is not."""
    values = []
    for rid in run_ids:
        res = read_result_file(exp_dir / rid)
        if not res.ok or res.record.status != "finished" or res.record.selection_metric is None:
            raise TrialFailed(f"run {rid} did not finish with a held-out metric"
                              + (f": {res.record.error}" if res.ok and res.record.error else ""))
        values.append(res.record.selection_metric)
    return sum(values) / len(values)


def done(study) -> list:
    """The study's trials that count: finished or failed, not interrupted by a kill (those are tried again)."""
    return [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]


def sweep(reg: Registry, exp: ExperimentSpec, spec: SweepSpec, *, results_dir: Path, data_dir: Path | None,
          available=None, options: Options | None = None, device: str | None = None, jobs: int = 1,
          parallel: int = 1, executor: str = "local", slurm_options=None, log=print):
    """Run the study until it holds ``spec.trials`` trials (finished or failed); returns the Optuna study.

    Trials are asked ``parallel`` at a time and their runs trained together by one ``run_plan`` (locally with
    ``jobs`` processes, or as Slurm jobs: one array with ``--array-parallelism``); only this driver opens the
    study (sqlite next to the results), so no job ever writes it (sqlite locks are unsafe on network file systems).
    """
    file = reg.file_of("experiment", exp.name)
    method = spec.method
    if exp.selection.protocol != "heldout":
        raise BenchError(f"experiment '{exp.name}' selects epochs on dev (selection: {exp.selection.protocol}), so a "
                         "sweep would have to tune on dev, which it never does: its objective is the held-out "
                         "accuracy of each trial's runs", file=file, field="selection",
                         fix="sweep an experiment with 'selection: heldout' (copy this one under another name with "
                             "that line; its run ids are then its own)")
    ints = searchable(type(reg.methods[method].train))
    dims = [Dim(k, r.low, r.high, r.log, ints[k]) for k, r in spec.space.items()]
    try:
        import optuna
    except ImportError:
        raise BenchError(MISSING, field="optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the trial runs (<root>/<experiment>/<run id>/) and the study
    root = under(under(results_dir, exp.name), ".sweep", method)
    exp_dir = under(root, exp.name)

    def plan_of(values: dict):  # the experiment with ``values`` over its overrides of ``method`` (a copy)
        overrides = {**exp.overrides, method: {**exp.overrides.get(method, {}), **values}}
        varied = exp.model_copy(update={"overrides": overrides})
        plan = build_plan(reg, varied, available, data_root=data_dir, options=options or Options())
        return plan, [r.id for r in plan.runs if r.method.name == method and not r.implied]

    if not (planned := plan_of({})[1]):
        raise BenchError(f"experiment '{exp.name}' has no run of method '{method}' (with data available)",
                         file=file, field="groups", fix="name a method its groups list, or add it to a group")
    with experiment_lock(exp_dir, log=log):
        storage = f"sqlite:///{root / 'study.db'}"
        study = optuna.create_study(study_name=f"{exp.name}.{method}", storage=storage, load_if_exists=True,
                                    direction="maximize")
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # we hold the lock: a running trial is one whose sweep was killed; try its values again
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params, skip_if_exists=True)
            log(f"trial {t.number} was interrupted: its values are tried again ({t.params})")
        with warnings.catch_warnings():  # constant_liar (pending trials count as bad) is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.TPESampler(seed=(spec.seed + len(study.trials)) % 2**32,
                                                       constant_liar=parallel > 1)
        study.set_user_attr("space", [str(d) for d in dims])
        study.set_user_attr("sampler", f"Optuna TPE, seed {spec.seed}")
        todo = max(0, spec.trials - len(done(study)))
        log(f"sweep {exp.name} / {method}: {len(study.trials)} trial(s) stored, {todo} to run; objective: mean "
            f"held-out accuracy of {len(planned)} run(s); dev is not used")
        while (todo := spec.trials - len(done(study))) > 0:
            batch = [study.ask() for _ in range(min(parallel, todo))]
            runs, ids = {}, {}
            for trial in batch:
                plan, ids[trial.number] = plan_of({d.key: d.suggest(trial) for d in dims})
                trial.set_user_attr("run_ids", ids[trial.number])
                runs.update({r.id: r for r in plan.runs if r.id not in runs})  # trials may share runs (same values)
            plan.runs = list(runs.values())  # each trial's dependencies stay before its runs
            run_plan(plan, reg, results_dir=root, data_dir=data_dir, device=device, jobs=jobs,
                     only=select(plan, [i for t in batch for i in ids[t.number]]), executor=executor,
                     slurm_options=slurm_options, log=log if executor == "slurm" else (lambda _: None))
            for trial in batch:
                try:
                    value = objective_value(exp_dir, ids[trial.number])
                except TrialFailed as e:
                    trial.set_user_attr("error", str(e))
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    log(f"trial {trial.number}: {trial.params} failed: {e}")
                    continue
                study.tell(trial, value)
                log(f"trial {trial.number}: {trial.params} -> held-out {value:.2f} "
                    f"({', '.join(ids[trial.number])})")
    return study


def write_variant(reg: Registry, exp: ExperimentSpec, method: str, study, out: Path) -> Path:
    """The best trial as ``<out>/methods/<method>_swept.yaml``: the method with the experiment's overrides and
    the best values in its ``train:``; what was searched is in its notes."""
    best = study.best_trial
    spec = reg.methods[method].model_dump(mode="json")
    name = f"{method}_swept"
    finished = done(study)
    spec.update(name=name, train={**spec["train"], **exp.overrides.get(method, {}), **best.params},
                description=f"{method} with the hyper-parameters found by afbench sweep {exp.name}",
                notes=f"Swept by `afbench sweep {exp.name} --method {method}`: searched "
                      f"{'; '.join(study.user_attrs.get('space', []))} over {len(finished)} trial(s) (Optuna TPE); "
                      f"objective: mean held-out accuracy (a slice of train, selection: heldout), best "
                      f"{best.value:.2f} at {best.params}. Dev was not used.")
    text = yaml.safe_dump(spec, sort_keys=False)
    return write_atomic(under(out, "methods", f"{name}.yaml"), text, root=out)
