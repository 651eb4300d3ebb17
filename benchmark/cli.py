"""``afbench``: list, validate, data, plan, run, status, report, dashboard, push, export, parity, perf, prune, speed.

Errors in specs, data or weights print as one paragraph (file, field, fix) and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

from benchmark.errors import BenchError, DataUnavailable, HubUnreachable, SpecError, StorageError
from benchmark.paths import shown_path, under
from benchmark.runner.results import results_root


def _registry(args):
    # a broken file in a spec folder blocks only what needs it (afbench validate stays strict): one warning
    # line per broken file, except the one the command asks for, whose own paragraph is the error
    reg = load_with_siblings([Path(p) for p in (getattr(args, "specs", None) or [])], strict=False,
                             warn=lambda line: None)  # printed below, from reg.skipped
    asked = [("experiment", getattr(args, "experiment", None)), ("task", getattr(args, "task", None)),
             *[("experiment", e) for e in getattr(args, "experiments", None) or []]]
    for skipped in reg.skipped:
        if not any(name and skipped.is_(kind, name) for kind, name in asked):
            print(skipped.warning(), file=sys.stderr)
    return reg


def load_with_siblings(paths: list[Path], strict: bool = True, warn=None):
    """The registry of ``paths``; where a named file does not load alone (it names a task that is not
    there), the specs in its folder too: an experiment finds the task spec that sits beside it. The
    first error stands when the folder does not help (an unrelated YAML file there changes nothing)."""
    from benchmark.spec import load_registry

    try:
        return load_registry(paths, strict=strict, warn=warn)
    except SpecError:
        folders = [p.parent for p in paths if p.is_file()]
        if not folders:
            raise
        with contextlib.suppress(BenchError):
            return load_registry(list(dict.fromkeys([*paths, *folders])), strict=strict, warn=warn)
        raise


# The environment variables a command reads, each the default of the flag beside it, read here once and passed
# down as plain arguments (ARCHITECTURE.md: AFBENCH_CACHE_DIR and AFBENCH_SPECS are read where they are used).
ENVIRONMENT = {"data_dir": "AFBENCH_DATA_DIR", "results_dir": "AFBENCH_RESULTS_DIR", "paper": "AFBENCH_PAPER_FILE"}


def read_environment(args: argparse.Namespace, environ=os.environ) -> argparse.Namespace:
    """Fill each flag of ``ENVIRONMENT`` left unset from its variable (a flag given wins)."""
    for attr, var in ENVIRONMENT.items():
        if getattr(args, attr, None) is None and environ.get(var):
            setattr(args, attr, environ[var])
    return args


def _data_dir(args) -> Path | None:
    return Path(args.data_dir) if args.data_dir else None


def availability(reg, root):
    """task -> None if its train and eval splits can be read, else why not.

    Only data that is not there (``DataUnavailable``: a missing file, a split the mirror lacks, the Hub
    unreachable) skips a task; any other data problem (a directory where a file should be, no file
    named for a split) returns None so the run fails with that error recorded. An unreachable Hub is
    said in full once; the other Hub tasks refer to it.
    """
    from benchmark.data.sources import locate

    hub_down: list[str] = []  # the first task that found the Hub unreachable

    def check(task: str) -> str | None:
        spec = reg.tasks[task]
        for split in (spec.splits.train, spec.splits.eval):
            try:
                locate(spec, split, root, task_file=reg.file_of("task", task))
            except DataUnavailable as e:
                if not isinstance(e, HubUnreachable):
                    return e.message
                if hub_down:
                    return f"the Hugging Face Hub is unreachable (as said for task {hub_down[0]})"
                hub_down.append(task)
                return f"{e.message}. Fix: {e.fix.rstrip('.')}."
            except BenchError:
                return None  # not a missing-data case: the run itself fails and records why
        return None

    return check


def cmd_list(args) -> int:
    reg = _registry(args)
    rows = [("task", n, f"{t.type}, {t.num_labels} {'choices' if t.type == 'multiple_choice' else 'classes'}",
             reg.file_of("task", n)) for n, t in sorted(reg.tasks.items())]
    rows += [("method", n, m.method, reg.file_of("method", n)) for n, m in sorted(reg.methods.items())]
    rows += [("backbone", n, b.source, reg.file_of("backbone", n)) for n, b in sorted(reg.backbones.items())]
    rows += [("experiment", n, f"{len(e.groups)} group(s), seeds {e.seeds}", reg.file_of("experiment", n))
             for n, e in sorted(reg.experiments.items())]
    from tabulate import tabulate  # imported where a table prints: it costs ~25 ms of every start-up
    print(tabulate(rows, headers=["kind", "name", "what", "file"]))
    return 0


def cmd_validate(args) -> int:
    """Exit 2 on any invalid spec or data; missing data (e.g. the UKP corpus) is listed as MISSING and
    is an error only for a spec file named on the command line (you asked about that task)."""
    from benchmark.data.checks import check_task_data
    from benchmark.spec.registry import spec_files

    paths = [Path(p) for p in args.paths]
    reg = load_with_siblings(paths)
    chosen = {p.resolve() for p in spec_files(paths)} if paths else None
    named = {p.resolve() for p in paths if p.is_file()}
    missing_named, missing_any, hub_down = [], [], None
    for name, task in sorted(reg.tasks.items()):
        f = reg.files[("task", name)]
        if chosen is not None and f.resolve() not in chosen:
            continue
        if args.no_data:
            print(f"ok  task {name:<12} data not checked")
            continue
        check = check_task_data(task, str(f), _data_dir(args))
        status = f"MISSING: the Hugging Face Hub is unreachable (as said for task {hub_down})" \
            if check.hub_down and hub_down else check.status
        hub_down = hub_down or (name if check.hub_down else None)
        print(f"{'ok ' if check.missing is None else '!! '} task {name:<12} {status}")
        if check.missing is not None:
            missing_any.append(name)
            if f.resolve() in named:
                missing_named.append(name)
    from benchmark.modeling.layout import layout_for, spec_family

    for name, b in sorted(reg.backbones.items()):  # a family without a layout would fail at its first run
        f, family = reg.files[("backbone", name)], spec_family(b)
        try:
            if family is not None and (chosen is None or f.resolve() in chosen):
                layout_for(family)
        except TypeError as e:
            raise BenchError(f"backbone '{name}' cannot be trained here: {e}", file=str(f),
                             field="model_type" if b.source == "random_init" else "model_id / path (its config.json)",
                             fix="use an encoder of a supported family, or add its Layout to "
                                 "benchmark/modeling/layout.py") from None
    counts = {k: len(reg.table(k)) for k in ("task", "method", "backbone", "experiment")}
    print("valid: " + ", ".join(f"{v} {k}s" for k, v in counts.items())
          + (f"; data MISSING for {len(missing_any)} task(s): {', '.join(missing_any)} (their runs are skipped;"
             " name a task file to make its missing data an error)" if missing_any and not missing_named else ""))
    if missing_named:
        print(f"Error: the data of {', '.join(missing_named)} is missing (see above); nothing can run on it.",
              file=sys.stderr)
        return 2
    return 0


def cmd_data(args) -> int:
    from benchmark.data.encode import labels_of, render_row
    from benchmark.data.sources import locate, read_rows

    reg = _registry(args)
    task = reg.get("task", args.task)
    f = reg.file_of("task", task.name)
    root = _data_dir(args)
    print(f"task {task.name} ({task.type}, {task.num_labels} {'choices' if task.type == 'multiple_choice' else 'classes'})"
          f" from {f}")
    first, missing = None, []
    for split in (task.splits.train, task.splits.eval):
        try:
            src = locate(task, split, root, task_file=f)
        except BenchError as e:
            print(f"  {split}: MISSING - {e.message}")
            missing.append(split)
            continue
        rows = read_rows(task, split, root, task_file=f)
        ids = labels_of(task, rows, split, f)
        dist = Counter(ids)
        names = task.label.names or [f"choice {i}" for i in range(task.num_labels)]
        shown = ", ".join(f"{names[i]}: {dist.get(i, 0)}" for i in range(task.num_labels))
        print(f"  {split}: {len(rows)} rows ({src.kind}: {src.location})\n    labels: {shown}")
        first = first or (split, rows, ids)
    if first:
        split, rows, ids = first
        print(f"\nthree rendered examples from {split}:")
        for row, y in list(zip(rows, ids))[:3]:
            r = render_row(task, row, f)
            print(f"  - label {y}" + (f" ({task.label.names[y]})" if task.label.names else ""))
            for k, v in r.items():
                if v is not None:
                    print(f"      {k}: {v!r}"[:400])
    if missing:
        print(f"Error: task {task.name}: split(s) {', '.join(missing)} missing (see above); no run can use it.",
              file=sys.stderr)
        return 2
    return 0


def _options(args):
    """The command-line choices that are part of run ids (plan, run, status, migrate and sweep alike)."""
    from benchmark.plan.build import Options

    return Options(args.batching, args.cpu_kernels, args.last_layer, args.precision, args.compile or None)


def _planned(args):
    """(registry, plan, results root, experiment folder) of the experiment a command names."""
    from benchmark.plan.build import build_plan

    reg = _registry(args)
    exp = reg.get("experiment", args.experiment)
    plan = build_plan(reg, exp, availability(reg, _data_dir(args)), data_root=_data_dir(args), options=_options(args))
    for line in fusion_warnings(plan, reg):
        print(line, file=sys.stderr)
    root = results_root(args.results_dir)
    return reg, plan, root, under(root, plan.experiment.name)


def _finished(args, reg=None):
    """``_planned`` for the commands on finished runs (export, predict, push, prune, speed): the experiment as its
    results were planned (``plan.build.recorded``: every set of training choices they recorded), so none of these
    commands takes the training flags; only runs with a folder here or under a lender (``dependencies_from``), since a
    choice recorded by some runs plans the whole grid under it."""
    from benchmark.plan.build import recorded
    from benchmark.records import scan_experiment

    reg, root = reg or _registry(args), results_root(args.results_dir)
    exp = reg.get("experiment", args.experiment)
    lent = [r for e in exp.dependencies_from for r in scan_experiment(root, e).results]
    plan = recorded(reg, exp, scan_experiment(root, exp.name).results, availability(reg, _data_dir(args)),
                    data_root=_data_dir(args), lent=lent)
    homes = [under(root, e) for e in (exp.name, *exp.dependencies_from)]
    plan.runs = [r for r in plan.runs if any((h / r.id).is_dir() for h in homes)]
    return reg, plan, root, homes[0]


def fusion_warnings(plan, reg) -> list[str]:
    """A fusion over fewer than two adapters only re-weights one adapter: say so once per method and sources."""
    seen, out = set(), []
    for r in plan.runs:
        if r.kind.depends_on in ("stage1", "mt_a") and len(r.sources) < 2 and (r.label, tuple(r.sources)) not in seen:
            seen.add((r.label, tuple(r.sources)))
            out.append(f"warning: {r.label} on '{r.task}' fuses {len(r.sources)} adapter(s) ({', '.join(r.sources) or 'none'}):"
                       " fusion needs at least two sources to mean anything. Fix: list two or more tasks under "
                       f"'fusion: sources:' in {reg.file_of('experiment', plan.experiment.name)} (or sources: all).")
    return out


def implied_duplicates(plan, reg) -> list[str]:
    """Implied stage-1 runs that train the same task, method and seed as a grid run, but under another run id:
    which parts of the identity differ (so the adapter is trained twice, on purpose)."""
    grid = {(r.task, r.label, r.backbone, r.seed): r for r in plan.runs if not r.implied and r.task}
    out = []
    for r in plan.runs:
        twin = grid.get((r.task, r.label, r.backbone, r.seed)) if r.implied and r.task else None
        if twin is None:
            continue
        a, b = r.identity(reg), twin.identity(reg)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        out.append(f"note: {r.id} (implied: a fusion source) and grid run {twin.id} train the same task, method and "
                   f"seed, but differ in {', '.join(diff) or 'their identity'} (e.g. fusion.caps vs the experiment's "
                   "caps), so the adapter is trained twice; give both the same settings to train it once.")
    return out


def cmd_plan(args) -> int:
    from benchmark.records import read_result_file, scan_experiment
    from benchmark.runner.borrowed import borrowed

    reg, plan, root, exp_dir = _planned(args)  # --estimate prices exactly these runs (a Hub task not downloaded: declared sizes)
    where = borrowed(plan, root)  # implied runs finished under another experiment (dependencies_from)
    if args.estimate or args.calibrate:
        return _estimate(args, reg, plan, root, where)
    rows = []
    for i, r in enumerate(plan.runs, 1):
        res = read_result_file(where.get(r.id, exp_dir / r.id))
        state = res.record.status if res.ok else "pending" if res.state == "missing" else res.state
        rows.append((i, r.task or "+".join(r.tasks), r.label, r.backbone, r.seed,
                     f"{len(r.deps)}+{len(r.published)} published" if r.published else len(r.deps),
                     "implied" if r.implied else "grid", state, r.id))
    from tabulate import tabulate
    print(tabulate(rows, headers=["#", "task", "method", "backbone", "seed", "deps", "role", "status", "run id"],
                   disable_numparse=True))
    for what, why in plan.skipped:
        print(f"skipped {what}: {why}")
    for src, p in sorted({(s, p) for r in plan.runs for s, p in r.published.items()}, key=lambda x: x[0]):
        print(f"published source {src}: {p.ref} -> {shown_path(p.folder)}" + (f" (revision {p.revision})" if p.revision else "")
              + f", sha256 {p.sha256[:16]}, fused instead of a stage-1 run (fusion.adapterhub)"
              + (f"; names another base model, allowed by fusion.adapterhub_allow_other_base: {p.other_base}"
                 if p.other_base else ""))
    for line in scan_experiment(root, plan.experiment.name).problems():
        print(f"warning: {line}")
    c = Counter(row[7] for row in rows)
    print(f"{len(rows)} runs: " + (", ".join(f"{v} {k}" for k, v in sorted(c.items())) or "none"))
    for other, n in sorted(Counter(p.parent.name for p in where.values()).items()):
        print(f"note: {n} implied run(s) are finished under {other} and read from there (dependencies_from), "
              "not trained here")
    from benchmark.runner.status import empty_plan_note, unmatched_note

    for line in implied_duplicates(plan, reg) + empty_plan_note(plan, _data_dir(args)) + \
            unmatched_note(plan, root, _data_dir(args)):
        print(line)
    return 0


def _estimate(args, reg, plan, root, where) -> int:
    """``plan --estimate``: predicted seconds per run (benchmark/plan/cost.py); ``--calibrate`` refits the CPU
    model on this experiment's finished runs of one seed (``cost.fit_seed``) and checks it on the others.
    ``where``: implied runs finished under a lender (dependencies_from), read there and never trained: not priced."""
    from benchmark.modeling.backbone import READER
    from benchmark.plan import cost
    from benchmark.runner.provenance import cpu_model

    data_root = _data_dir(args)
    if args.calibrate:
        print(f"wrote {cost.recalibrate(plan, reg, data_root, root, READER)}")
        return 0
    device = args.estimate_device
    jobs = args.gpus or (os.cpu_count() or 1 if device == "cpu" else 1)
    threads = max(1, (os.cpu_count() or 1) // jobs) if device == "cpu" else 1
    lent = Counter(p.parent.name for p in where.values())
    own = [r for r in plan.runs if r.id not in where] if where else None
    if args.pending:  # what is left to train: the finished runs are not priced either
        from benchmark.records import is_finished

        own = [r for r in own or plan.runs if not is_finished(root / plan.experiment.name / r.id)]
    est = cost.estimate(plan, reg, data_root, READER, device=device, devices=jobs, threads=threads, runs=own,
                        cpu=cpu_model(), results_root=root)
    if args.json:
        print(json.dumps({**est.as_json(), **({"not_priced_read_from": dict(lent)} if lent else {}),
                          **({"skipped": dict(plan.skipped)} if plan.skipped else {})}, indent=1))
        return 0
    rows = [(r.id, r.kind, f"{r.epochs:.1f}", f"{r.train_gflop / 1e3:.1f}", f"{r.eval_gflop / 1e3:.1f}",
             f"{r.seconds / 60:.1f}") for r in est.runs]
    from tabulate import tabulate
    print(tabulate(rows, headers=["run id", "kind", "epochs", "train TFLOP", "eval TFLOP", "minutes"],
                   disable_numparse=True))
    if device == "cpu":
        print(f"(CPU: {jobs} runs at a time, {threads} thread(s) each; --gpus N sets the number of parallel runs)")
    for line in cost.summary_lines(est):
        print(line)
    for other, n in sorted(lent.items()):
        print(f"note: {n} implied run(s) are finished under {other} and read from there (dependencies_from): "
              "not priced")
    for what, why in plan.skipped:
        print(f"skipped {what}, as by `afbench plan`: {why}")
    bf16 = sum(r.compute.precision == "bf16" for r in (plan.runs if own is None else own))
    if bf16 and device == "cpu":
        print(f"note: {bf16} bf16 run(s) are priced as float32: the CPU calibration was fitted on float32 runs "
              "only, so expect them to finish sooner")
    return 0


def cmd_run(args) -> int:
    from benchmark.runner.execute import pending_runs, run_plan
    from benchmark.runner.lock import experiment_lock, record_workers
    from benchmark.runner.progress import guard_streams

    reg, plan, root, exp_dir = _planned(args)
    if not plan.runs and plan.skipped:
        raise DataUnavailable("no run of this experiment can start: " + "; ".join(f"{w}: {y}" for w, y in plan.skipped),
                              file=reg.file_of("experiment", plan.experiment.name),
                              fix="make the data available (see each reason), then rerun")
    only, force = None, args.force
    if args.only:
        from benchmark.plan.build import select

        only = select(plan, args.only)
        # --force retrains the runs the globs name; the runs they depend on are retrained only if their
        # weights are unusable (as without --force), so refreshing fusion runs keeps their committed sources
        force = {r.id for r in plan.matching(args.only)} if args.force else False
        if not only:
            raise BenchError(f"--only {' '.join(args.only)} matches no run of '{plan.experiment.name}'",
                             field="--only", fix=f"use glob patterns over the run ids that afbench plan "
                                                 f"{plan.experiment.name} lists, e.g. '*__st_a_rf16__*'")
    if args.track:  # tracking never enters a run id: the ids are planned already
        from benchmark.runner.tracking import with_backends

        plan.experiment = with_backends(plan.experiment, args.track)
    slurm_opts = slurm_options(args) if args.executor == "slurm" else None
    try:  # guarded: `afbench run ... | head`, a reader that goes away, never fails a run nor stops the grid
        with guard_streams(), experiment_lock(exp_dir, wait=args.wait_lock) as me:
            summary = run_plan(plan, reg, results_dir=root, data_dir=_data_dir(args),
                               device=args.device, jobs=args.jobs, force=force, only=only,
                               executor=args.executor, slurm_options=slurm_opts,
                               on_workers=lambda pids: record_workers(exp_dir, me, pids))
    except StorageError as e:
        # a read-only (or full) results folder is fine for a run with nothing to write
        todo, done = pending_runs(plan, exp_dir, force, lambda _: None, only)
        if todo or not done:
            raise
        print(f"note: nothing to write ({len(done)} runs already finished), so {shown_path(exp_dir)} was only "
              f"read: {e.message.split(';')[0]}")
        return 0
    return 1 if summary.failed else 0


def cmd_sweep(args) -> int:
    """``afbench sweep``: benchmark/runner/sweep.py (Optuna on the held-out slice; dev never read)."""
    from benchmark.runner.sweep import resolve, sweep, write_variant

    reg = _registry(args)
    exp = reg.get("experiment", args.experiment)
    spec = resolve(reg, exp, args.method, args.space, args.trials)
    if args.parallel < 1 or (args.executor == "slurm" and not args.wait):
        raise BenchError("a sweep waits for each batch of trials, whose held-out accuracy picks the next values"
                         if args.parallel >= 1 else f"--parallel {args.parallel} asks for no trial at a time",
                         field="--parallel" if args.parallel < 1 else "--no-wait",
                         fix="drop --no-wait (a killed sweep resumes: rerun it and it adopts the queued jobs)"
                         if args.parallel >= 1 else "give --parallel 1 or more")
    study = sweep(reg, exp, spec, results_dir=results_root(args.results_dir), data_dir=_data_dir(args),
                  available=availability(reg, _data_dir(args)), options=_options(args), device=args.device,
                  jobs=args.jobs, parallel=args.parallel, executor=args.executor,
                  slurm_options=slurm_options(args) if args.executor == "slurm" else None)
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        print("no trial finished: no best configuration to write", file=sys.stderr)
        return 1
    print(f"best: {study.best_trial.params} (held-out {study.best_value:.2f}); wrote "
          f"{write_variant(reg, exp, spec.method, study, Path(args.out))} (adopt it: --specs {args.out} and its name "
          "in an experiment's groups)")
    return 0


def cmd_migrate(args) -> int:
    from benchmark.runner import slurm
    from benchmark.runner.lock import experiment_lock
    from benchmark.runner.migrate import migrate_experiment, upgrade_predictions

    reg, plan, root, exp_dir = _planned(args)
    with experiment_lock(exp_dir, wait=False):  # no driver may write the folders being renamed
        if live := slurm.live_runs(exp_dir):
            raise slurm.busy_error(exp_dir, live)
        moved = migrate_experiment(plan, reg, root, _data_dir(args), dry_run=args.dry_run)
        upgraded = upgrade_predictions(exp_dir, dry_run=args.dry_run)
    would = "would be " if args.dry_run else ""
    print(f"{len(moved)} result folder(s) {would}renamed to run-id scheme 2")
    print(f"{len(upgraded)} predictions file(s) {would}rewritten without the labels (gold, pred) they held")
    from benchmark.runner.status import empty_plan_note, unmatched_note

    for line in empty_plan_note(plan, _data_dir(args)) or unmatched_note(plan, root, _data_dir(args)):
        print(line)
    return 0


def cmd_status(args) -> int:
    from benchmark.runner.status import empty_plan_note, print_status, unmatched_note

    _, plan, root, _ = _planned(args)
    code = print_status(plan, root)
    for line in empty_plan_note(plan, _data_dir(args)) + unmatched_note(plan, root, _data_dir(args)):
        print(line)
    return code


def cmd_report(args) -> int:
    """Reports from what the results recorded: no data (but for the majority baselines), no training flags."""
    from benchmark.report.build import build_reports

    reg = _registry(args)
    for exp in args.experiments:
        for path in build_reports(reg, exp, results_dir=results_root(args.results_dir), out_dir=Path(args.out_dir),
                                  paper_file=args.paper, data_root=_data_dir(args)):
            print(f"wrote {path}")
    return 0


def cmd_dashboard(args) -> int:
    from benchmark.report.dashboard import write_dashboard

    reg = _registry(args)
    seeds = {name: e.report_seeds for name, e in reg.experiments.items() if e.report_seeds is not None}
    print(f"wrote {write_dashboard(results_root(args.results_dir), Path(args.out_dir), reg.backbones, seeds)}")
    return 0


def cmd_push(args) -> int:
    """``afbench push``: the results dataset (benchmark/report/push.py); --dry-run writes it to --out only."""
    import shutil
    import tempfile

    from benchmark.report import push

    reg = _registry(args)
    exp = reg.get("experiment", args.experiment)
    if args.dry_run and not args.out:
        raise BenchError("--dry-run writes the folder that would be uploaded, so it needs a place", field="--out",
                         fix="add --out DIR")
    from benchmark.runner.export import export_plan, refuse_overlap

    out = Path(args.out or tempfile.mkdtemp(prefix="afbench_push_"))
    if args.out:  # exactly what this push stages is uploaded: a folder of its own, empty, outside results and specs
        refuse_overlap(out, [("the results root", results_root(args.results_dir)), *_keep_clear(args)])
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BenchError("the push folder is not empty: push uploads exactly the folder it stages, so it starts "
                             "from an empty one", file=str(out), field="--out", fix="choose a new or empty folder")
    try:
        if args.adapters:
            export_plan(_finished(args, reg)[1], reg, results_root(args.results_dir) / exp.name, out / "adapters",
                        data_dir=_data_dir(args), keep_clear=_keep_clear(args))
        files = push.stage(exp, reg, results_root(args.results_dir), Path(args.reports_dir), out, args.repo)
        print(f"{len(files)} files in {out}" + (" (dry run: nothing uploaded)" if args.dry_run else ""))
        if not args.dry_run:
            print(f"uploaded to https://huggingface.co/datasets/{args.repo}: "
                  f"{push.upload(out, args.repo, args.private)}")
    finally:
        if not args.out:  # the temporary staging folder (exports may hold whole base models)
            shutil.rmtree(out, ignore_errors=True)
    return 0


def _keep_clear(args) -> list[tuple[str, Path]]:
    """The folders an output folder (export, push) may neither lie inside nor contain, beside the results root."""
    from benchmark.spec.registry import default_spec_dir

    specs = [default_spec_dir(), *(Path(p) if Path(p).is_dir() else Path(p).parent for p in args.specs or [])]
    return [("the spec folder", p) for p in specs] + ([("the data folder", _data_dir(args))] if args.data_dir else [])


def cmd_export(args) -> int:
    from benchmark.runner.export import export_plan

    reg, plan, _, exp_dir = _finished(args)
    done = export_plan(plan, reg, exp_dir, Path(args.out), only=args.only, data_dir=_data_dir(args),
                       keep_clear=_keep_clear(args))
    refused = [e for e in done if e.refused]
    if not done:
        raise BenchError(f"no finished run of '{plan.experiment.name}' under {exp_dir}"
                         + (f" matches --only {' '.join(args.only)}" if args.only else ""),
                         field="--only" if args.only else "--results-dir",
                         fix=f"run it first (afbench run {plan.experiment.name}) or check the globs against "
                             f"afbench plan {plan.experiment.name}")
    print(f"{len(done) - len(refused)} run(s) exported under {args.out} (AdapterHub adapters 1.3.0 format; see "
          f"export.json)" + (f", {len(refused)} refused (see above)" if refused else ""))
    return 1 if refused else 0


def cmd_predict(args) -> int:
    from benchmark.runner import slurm
    from benchmark.runner.lock import experiment_lock
    from benchmark.runner.predict import predict_plan

    reg, plan, _, exp_dir = _finished(args)
    with experiment_lock(exp_dir, wait=False):  # no driver may retrain or rename a run whose record this adds to
        if live := slurm.live_runs(exp_dir):
            raise slurm.busy_error(exp_dir, live)
        out = predict_plan(plan, reg, exp_dir, only=args.only, data_dir=_data_dir(args),
                           device=args.device or "cpu", force=args.force)
    refused = [o for o in out if not o.written]
    print(f"{len(out) - len(refused)} run(s) written, {len(refused)} refused")
    return 1 if refused else 0


def cmd_parity(args) -> int:
    from benchmark.parity import run_parity

    return run_parity(args.reference_python, Path(args.work_dir))


def cmd_prune(args) -> int:
    from benchmark.analysis.prune import rerender, run_prune

    if args.rerender:  # from the stored JSON: no model, no data, no timing
        rerender(args.experiment, Path(args.out_dir), results_root(args.results_dir))
        return 0
    reg, plan, root, _ = _finished(args)
    ks = tuple(int(k) for k in args.keep.split(",") if k and k != "all")
    run_prune(reg, plan, root, _data_dir(args), only=args.only, device=args.device or "cpu",
              rounds=args.rounds, out_dir=Path(args.out_dir), ks=ks, argv=args.argv)
    return 0


def cmd_speed(args) -> int:
    from benchmark.analysis.speed import run_speed

    reg, plan, _, exp_dir = _finished(args)
    path = run_speed(reg, plan, exp_dir, _data_dir(args), only=args.only, device=args.device or "cpu",
                     rounds=args.rounds, threads=args.threads, argv=args.argv)
    print(f"wrote {path}")
    return 0


def cmd_perf(args) -> int:
    from benchmark.perf import run_perf

    return run_perf(args)


RESULTS_HELP = "results root (default: $AFBENCH_RESULTS_DIR or ./results)"
EPILOG = """examples:
  afbench validate specs/                   check every spec (and each task against its data)
  AFBENCH_DATA_DIR=../shared/data afbench run quick --jobs 2
  afbench report quick                      reports/quick.{md,html,tex} + reports/quick_files/

environment:
  AFBENCH_DATA_DIR     offline data mirror (Hub-schema Parquet); unset: datasets come from the Hub
  AFBENCH_RESULTS_DIR  where results/<experiment>/<run id>/ live (default: ./results)
  AFBENCH_SPECS        the spec folder to use instead of the checkout's specs/
  AFBENCH_CACHE_DIR    cache of tokenized data and tiny tokenizers (default: ~/.cache/afbench)
  AFBENCH_PAPER_FILE   published numbers YAML for reports (default: the bundled copy)
  HF_HUB_OFFLINE=1     never contact the Hugging Face Hub (use only its local cache)
"""


def id_flags(sp) -> None:
    """Choices that change what a run computes, so they are part of its id: the commands that plan runs to train
    (plan, run, status, migrate, sweep) take them; the commands on finished runs read them from the records."""
    sp.add_argument("--batching", choices=["grouped", "shuffled"],
                    help="training batches grouped by length or shuffled (default: the method's, then the "
                         "experiment's batching:, then grouped); recorded as batching")
    sp.add_argument("--cpu-kernels", choices=["fast", "stock"],
                    help="CPU kernels: fast (dropout masks from 32-bit integers, frozen linear layers "
                         "on oneDNN; same functions) or stock torch (default: the experiment's compute:, then "
                         "fast); recorded as cpu_kernels")
    sp.add_argument("--last-layer", choices=["first_token", "full"],
                    help="with a first-token ([CLS]) head the last layer computes position 0 only "
                         "(same logits and gradients) or every position (default: the experiment's compute:, "
                         "then first_token); recorded as last_layer")
    sp.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 autocast on CUDA, float32 on the CPU (today's runs); fp32; bf16: autocast on "
                         "the CPU and CUDA, float32 master weights, loss and metrics (refused on a device without "
                         "native bf16). Default: the method's precision:, then the experiment's compute:, then auto; "
                         "part of the run id when not auto; recorded as precision")
    sp.add_argument("--compile", action="store_true", default=None,
                    help="run the training step and evaluation through torch.compile (inductor; needs a C compiler "
                         "on the CPU), with the stock CPU kernels and batches padded to power-of-two lengths; "
                         "default: the experiment's compute.compile, then eager. Part of the run id when on; the "
                         "number of recompiles is recorded as compile.recompiles (docs/perf.md, Compiled path)")


def slurm_flags(sp: argparse.ArgumentParser) -> None:
    """The ``afbench run`` flags of the Slurm executor (they override the --cluster file)."""
    g = sp.add_argument_group("Slurm (with --executor slurm)")
    g.add_argument("--cluster", help="YAML of the fields below (e.g. specs/clusters/example.yaml)")
    g.add_argument("--partition", help="partition (default: the cluster file's, else Slurm's default)")
    g.add_argument("--time-min", type=int, help="wall-clock limit per run in minutes (default 120)")
    g.add_argument("--gpus-per-run", type=int, help="default: 1 when the device is cuda, else 0")
    g.add_argument("--cpus-per-run", type=int, help="CPUs per run, also its torch threads (default 1)")
    g.add_argument("--mem-gb", type=float, help="memory per run in GB (default: the partition's)")
    g.add_argument("--array-parallelism", type=int,
                   help="submit runs that share their dependencies as one job array with at most N running")
    g.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                   help="extra sbatch option, e.g. --sbatch account=myproj --sbatch constraint=a100 (repeatable)")
    g.add_argument("--slurm-log-dir", help="submitit pickles and job logs (default results/<experiment>/.slurm)")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--wait", dest="wait", action="store_true", default=True,
                   help="stay until every job ended, printing progress (default)")
    w.add_argument("--no-wait", dest="wait", action="store_false", help="exit once everything is submitted")
    g.add_argument("--poll-s", type=float, default=float(os.environ.get("AFBENCH_SLURM_POLL_S", 10)),
                   help=argparse.SUPPRESS)


def slurm_options(args: argparse.Namespace):
    """``slurm.SlurmOptions`` from the --cluster file and the flags over it (run and sweep: ``slurm_flags``)."""
    from benchmark.runner.cluster import ClusterSpec, load_cluster, parse_sbatch_options
    from benchmark.runner.slurm import SlurmOptions

    spec = load_cluster(args.cluster)
    flags = {k: getattr(args, k) for k in ("partition", "time_min", "gpus_per_run", "cpus_per_run", "mem_gb",
                                           "array_parallelism")}
    update = {k: v for k, v in {**flags, "log_dir": args.slurm_log_dir}.items() if v is not None}
    if extra := parse_sbatch_options(args.sbatch):
        update["sbatch"] = {**spec.sbatch, **extra}
    spec = ClusterSpec.model_validate({**spec.model_dump(), **update})
    return SlurmOptions(spec, args.wait, args.poll_s, args.cluster)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afbench", epilog=EPILOG,
                                description="AdapterFusion-Bench: YAML specs -> plan -> runs -> results -> reports. "
                                            "Errors in specs, data or weights print as one paragraph (file, field, "
                                            "fix) and exit with status 2.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", help="one of:")

    def common(sp, data=True, experiment=False, results=False):
        sp.add_argument("--specs", action="append", metavar="DIR",
                        help="extra folder of spec files, added to specs/ (repeatable)")
        if data:
            sp.add_argument("--data-dir", metavar="DIR",
                            help="offline mirror root (default: $AFBENCH_DATA_DIR; unset = Hub)")
        if experiment:
            sp.add_argument("experiment", help="experiment name (see afbench list)")
        if results:
            sp.add_argument("--results-dir", metavar="DIR", help=RESULTS_HELP)
        return sp

    common(sub.add_parser("list", help="tasks, methods, backbones, experiments found"), data=False)
    v = common(sub.add_parser("validate", help="validate spec files (and tasks against their data)"))
    v.add_argument("paths", nargs="*", help="spec files or folders (default: specs/)")
    v.add_argument("--no-data", action="store_true", help="skip the checks against the data")
    d = common(sub.add_parser("data", help="split sizes, label distribution and rendered examples"))
    d.add_argument("task", help="task name (see afbench list)")
    for name, helptext in (("plan", "show the runs of an experiment and what is done"), ("run", "run an experiment"),
                           ("migrate", "rename result folders of older run-id schemes to the current ids; rewrite "
                                       "older predictions files (gold, pred labels) as today's (correct)"),
                           ("status", "per run: finished, failed, running (local or Slurm), queued, pending")):
        sp = common(sub.add_parser(name, help=helptext), experiment=True, results=True)
        id_flags(sp)
        if name == "run":
            sp.add_argument("--jobs", type=int, default=1, metavar="N",
                            help="independent runs in parallel processes (default: 1)")
            sp.add_argument("--force", action="store_true",
                            help="retrain finished runs (with --only: the runs the globs match, not the finished "
                                 "runs they depend on)")
            sp.add_argument("--only", action="append", metavar="GLOB",
                            help="run only the runs whose id matches this glob (repeatable), and the runs they "
                                 "depend on, e.g. --only '*__st_a_rf16__*__s42__*'")
            sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: the experiment's, auto)")
            sp.add_argument("--executor", choices=["local", "slurm"], default="local",
                            help="local processes (default) or one Slurm job per run (see 'On a cluster')")
            sp.add_argument("--track", metavar="NAME[,NAME]", help="log each run to tensorboard, mlflow, wandb or "
                                                                 "trackio (also: a tracking: block in the experiment)")
            sp.add_argument("--wait-lock", action="store_true",
                            help="if another driver runs this experiment, wait for it instead of exiting")
            slurm_flags(sp)
        if name == "migrate":
            sp.add_argument("--dry-run", action="store_true", help="only say what would be renamed")
        if name == "plan":
            sp.add_argument("--estimate", action="store_true",
                            help="predicted train+eval time per run and in total (benchmark/plan/cost.py)")
            sp.add_argument("--device", dest="estimate_device", choices=["cpu", "a100", "h100", "h200"],
                            default="cpu", help="with --estimate: this CPU (calibrated) or a GPU (an assumed "
                                                "share of its datasheet peak)")
            sp.add_argument("--gpus", type=int, metavar="N", help="with --estimate: devices (GPUs, or parallel "
                                                                 "CPU runs) for the wall time")
            sp.add_argument("--json", action="store_true", help="with --estimate: JSON")
            sp.add_argument("--pending", action="store_true", help="with --estimate: price only the runs not "
                                                                   "finished yet (what is left to train)")
            sp.add_argument("--calibrate", action="store_true",
                            help="refit the CPU cost model on this experiment's finished runs (writes "
                                 "<results>/.cost_calibration.json, which then takes precedence over the shipped one)")
    sw = common(sub.add_parser("sweep", help="tune a method's train hyper-parameters with Optuna on the held-out "
                                             "slice of train (never dev); the best as a new method spec"), results=True)
    sw.add_argument("experiment", help="experiment name (it must use selection: heldout)")
    sw.add_argument("--method", help="the method to tune (one the experiment's groups list); default: its sweep:")
    sw.add_argument("--space", action="append", metavar="KEY=LOW:HIGH[:log]",
                    help="a train hyper-parameter and its range, e.g. lr=1e-5:1e-3:log (repeatable; with --method)")
    sw.add_argument("--trials", type=int, help="trials the study should hold (a rerun continues it; default: the "
                                               "sweep: block's, else 10)")
    sw.add_argument("--out", required=True, metavar="DIR", help="where <method>_swept.yaml goes (DIR/methods/)")
    sw.add_argument("--jobs", type=int, default=1, metavar="N", help="runs in parallel processes (local executor)")
    sw.add_argument("--parallel", type=int, default=1, metavar="K",
                    help="trials asked at once and trained together (Slurm: one array with --array-parallelism)")
    sw.add_argument("--device", help="cpu, cuda, cuda:1 (default: the experiment's, auto)")
    sw.add_argument("--executor", choices=["local", "slurm"], default="local",
                    help="train each trial's runs locally or as Slurm jobs (the study stays with this driver)")
    slurm_flags(sw)
    id_flags(sw)
    ex = common(sub.add_parser("export", help="finished runs as AdapterHub folders (adapters, fusion, head, base)"),
                experiment=True, results=True)
    ex.add_argument("--out", required=True, metavar="DIR", help="export root: one folder per run id under it")
    ex.add_argument("--only", action="append", metavar="GLOB",
                    help="export only runs whose id matches this glob (repeatable)")
    pd = common(sub.add_parser("predict", help="per-example dev predictions of finished runs from their weights "
                                               "(written only where they reproduce the recorded accuracy)"),
                experiment=True, results=True)
    pd.add_argument("--only", action="append", metavar="GLOB", help="only runs whose id matches this glob (repeatable)")
    pd.add_argument("--device", help="cpu (default), cuda")
    pd.add_argument("--force", action="store_true", help="recompute runs whose predictions are present")
    r = common(sub.add_parser("report", help="render reports/<experiment>.{md,html,tex}"), results=True)
    r.add_argument("experiments", nargs="+", metavar="experiment", help="one or more experiment names")
    r.add_argument("--out-dir", default="reports", metavar="DIR", help="where reports are written (default: reports)")
    r.add_argument("--paper", metavar="FILE",
                   help="paper numbers YAML (default: $AFBENCH_PAPER_FILE or the bundled copy)")
    db = common(sub.add_parser("dashboard", help="reports/dashboard.html: accuracy against cost over every experiment"),
                data=False, results=True)
    db.add_argument("--out-dir", default="reports", metavar="DIR", help="where dashboard.html goes (default: reports)")
    pu = common(sub.add_parser("push", help="results, reports, predictions (and adapters) as a Hub dataset"),
                experiment=True, results=True)
    pu.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub dataset repository")
    pu.add_argument("--adapters", action="store_true", help="add the AdapterHub exports (afbench export) of its runs")
    pu.add_argument("--dry-run", action="store_true", help="write the folder to --out and upload nothing")
    pu.add_argument("--out", metavar="DIR", help="the folder to write (default: a temporary folder)")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--reports-dir", default="reports", metavar="DIR", help="where its reports are (default: reports)")
    pr = common(sub.add_parser("prune", help="pruned fusion after training: dev accuracy and inference speed per k"),
                experiment=True, results=True)
    pr.add_argument("--only", action="append", metavar="GLOB",
                    help="Fusion w/ ST-A runs whose id matches (repeatable; default: all finished ones)")
    pr.add_argument("--keep", default="1,2,4,8", help="k values below N (N itself, 'all', is always added)")
    pr.add_argument("--rounds", type=int, default=3, help="timing rounds per k (0: accuracy only)")
    pr.add_argument("--device", help="cpu or cuda (default: cpu)")
    pr.add_argument("--rerender", action="store_true",
                    help="re-render prune_<experiment>_*.md and .png in --out-dir from their stored .json "
                         "(nothing is loaded, evaluated or timed; the json stays as it is)")
    pr.add_argument("--out-dir", default="reports", metavar="DIR",
                    help="where prune_<experiment>_<task>.{md,json,png} go (default: reports)")
    sp = common(sub.add_parser("speed", help="inference speed of finished runs on their dev split (the composition "
                                             "table's examples/s)"), experiment=True, results=True)
    sp.add_argument("--only", action="append", required=True, metavar="GLOB",
                    help="runs whose id matches (repeatable), e.g. 'rte__*__s42__*'")
    sp.add_argument("--rounds", type=int, default=3, help="timing rounds, the run order alternating (default: 3)")
    sp.add_argument("--device", help="cpu or cuda (default: cpu)")
    sp.add_argument("--threads", type=int, metavar="N", help="torch threads while timing (default: torch's, "
                                                             "recorded in the measurement's provenance)")
    pa = sub.add_parser("parity", help="compare logits with AdapterHub adapters 1.3.0")
    pa.add_argument("--reference-python", required=True, help="python of an env with adapters==1.3.0")
    pa.add_argument("--work-dir", default=".cache/parity", help="scratch folder for weights and logits "
                    "(default: .cache/parity)")
    pe = common(sub.add_parser("perf", help="training and inference speed, ours vs AdapterHub, and the roofline"))
    pe.add_argument("--mode", choices=["steps", "epochs", "roofline", "inference", "compiled"], default="steps",
                    help="steps: steps/s on random ids, fp32 and bf16, peak memory (reports/perf.md); epochs: "
                         "seconds per epoch on mirrored data, three paddings (reports/perf_epochs.md); roofline: "
                         "GEMM peak, analytic FLOPs per step, achieved fraction (reports/perf_roofline.md); "
                         "inference: latency (batch 1) and throughput (batch 64), fp32 and bf16, peak memory "
                         "(reports/perf_inference.md); compiled: numerics (no timings) of --compile against eager, "
                         "max logit difference and dev accuracy of ST-A on the first of --tasks over --seeds seeds "
                         "(reports/perf_compiled.md)")
    pe.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto (default): fp32, and bf16 too where the device has it natively; fp32: only "
                         "fp32; bf16: bf16 required (refused without native bf16)")
    pe.add_argument("--reference-python", help="python of an env with adapters==1.3.0 (omit: ours only)")
    pe.add_argument("--adapters", default="2,4,8,16", help="fusion sizes N (steps)")
    pe.add_argument("--steps", type=int, default=8, help="timed steps per setup and round (epochs: per task "
                                                         "and padding, extrapolated to the epoch; 0 = all)")
    pe.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours / the reference")
    pe.add_argument("--batch-size", type=int, default=32, help="examples per step (default: 32)")
    pe.add_argument("--length", type=int, default=128, help="tokens per row (epochs: the fixed padding)")
    pe.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if visible, else cpu)")
    pe.add_argument("--backbone", choices=["minilm-l6", "bert-base-random", "bert-tiny-random"], default="minilm-l6",
                    help="MiniLM-L6, BERT-base shapes randomly initialised (no Hub), or a tiny random BERT "
                         "(smoke runs)")
    pe.add_argument("--no-memory", action="store_true",
                    help="steps, inference: skip the peak-memory pass (one fresh process per side, setup, precision)")
    pe.add_argument("--gemm-seconds", type=float, default=0.3,
                    help="seconds per GEMM shape: the roofline's peak and every mode's drift guard (before and after)")
    pe.add_argument("--reps", type=int, default=20, help="inference: timed calls per setup, batch size and round")
    pe.add_argument("--infer-batch", type=int, default=64, help="inference: the throughput batch (default: 64)")
    pe.add_argument("--no-first-token", action="store_true",
                    help="steps: skip the first-token ([CLS] head) table, on both sides (halves the reference's time)")
    pe.add_argument("--tasks", default="rte,mrpc,sst2,mnli", help="epochs: tasks from the data mirror")
    pe.add_argument("--max-rows", type=int, default=2000, help="epochs: training rows per task (a cap)")
    pe.add_argument("--seeds", type=int, default=3, help="compiled: training seeds (42, 43, ...) per path")
    pe.add_argument("--epochs", type=int, default=3, help="compiled: epochs per run")
    pe.add_argument("--train-rows", type=int, default=300, help="compiled: training rows (a cap, as quick's targets)")
    pe.add_argument("--work-dir", default=None, help="compiled: scratch folder for its specs and runs (default: a "
                                                     "temporary folder; an existing one resumes)")
    pe.add_argument("--out", default=None, help="report path (default: reports/perf.md, perf_epochs.md, "
                                                "perf_roofline.md, perf_inference.md, perf_compiled.md by mode; raw "
                                                "timings beside it as .json)")
    return p


COMMANDS = {"list": cmd_list, "validate": cmd_validate, "data": cmd_data, "plan": cmd_plan, "run": cmd_run,
            "sweep": cmd_sweep, "migrate": cmd_migrate,
            "status": cmd_status,
            "report": cmd_report, "dashboard": cmd_dashboard, "push": cmd_push, "export": cmd_export,
            "predict": cmd_predict, "parity": cmd_parity, "perf": cmd_perf, "prune": cmd_prune,
            "speed": cmd_speed}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = read_environment(build_parser().parse_args(argv))
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: perf reports show it
    try:
        code = COMMANDS[args.cmd](args)
        sys.stdout.flush()  # a reader that went away (afbench status | head) is seen here, not at exit
        return code
    except BrokenPipeError:
        # quiet, like any Unix tool whose reader closed the pipe; stdout goes nowhere from now on so the
        # interpreter's own flush at exit does not complain either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BenchError as e:
        sys.stdout.flush()  # what was printed before comes first where both streams go to one file or pipe
        print(e.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, the next invocation redoes only what is missing",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
