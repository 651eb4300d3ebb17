"""``afbench``: list, validate, data, plan, run, status, report, parity, perf.

Errors in specs, data or weights print as one paragraph (file, field, fix) and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from benchmark.errors import BenchError


def _registry(args):
    from benchmark.spec import load_registry

    return load_registry([Path(p) for p in (getattr(args, "specs", None) or [])])


def _data_dir(args) -> Path | None:
    from benchmark.data.sources import data_dir

    return data_dir(getattr(args, "data_dir", None))


def availability(reg, root):
    """task -> None if its train and eval splits can be read, else why not."""
    from benchmark.data.sources import locate

    def check(task: str) -> str | None:
        spec = reg.tasks[task]
        for split in (spec.splits.train, spec.splits.eval):
            try:
                locate(spec, split, root, task_file=reg.file_of("task", task))
            except BenchError as e:
                return e.message
        return None

    return check


def cmd_list(args) -> int:
    reg = _registry(args)
    from tabulate import tabulate

    rows = [("task", n, f"{t.type}, {t.num_labels} {'choices' if t.type == 'multiple_choice' else 'classes'}",
             reg.file_of("task", n)) for n, t in sorted(reg.tasks.items())]
    rows += [("method", n, m.method, reg.file_of("method", n)) for n, m in sorted(reg.methods.items())]
    rows += [("backbone", n, b.source, reg.file_of("backbone", n)) for n, b in sorted(reg.backbones.items())]
    rows += [("experiment", n, f"{len(e.groups)} group(s), seeds {e.seeds}", reg.file_of("experiment", n))
             for n, e in sorted(reg.experiments.items())]
    print(tabulate(rows, headers=["kind", "name", "what", "file"]))
    return 0


def cmd_validate(args) -> int:
    from benchmark.data.checks import check_task_data
    from benchmark.spec import load_registry
    from benchmark.spec.registry import spec_files

    paths = [Path(p) for p in args.paths] or []
    reg = load_registry(paths)
    chosen = {p.resolve() for p in spec_files(paths)} if paths else None
    for name, task in sorted(reg.tasks.items()):
        f = reg.files[("task", name)]
        if chosen is not None and f.resolve() not in chosen:
            continue
        status = check_task_data(task, str(f), _data_dir(args)) if not args.no_data else "data not checked"
        print(f"ok  task {name:<12} {status}")
    counts = {k: len(reg.table(k)) for k in ("task", "method", "backbone", "experiment")}
    print("valid: " + ", ".join(f"{v} {k}s" for k, v in counts.items()))
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
    first = None
    for split in (task.splits.train, task.splits.eval):
        try:
            src = locate(task, split, root, task_file=f)
        except BenchError as e:
            print(f"  {split}: MISSING - {e.message}")
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
    return 0


def _plan(args, reg):
    from benchmark.runner.plan import build_plan

    exp = reg.get("experiment", args.experiment)
    return build_plan(reg, exp, availability(reg, _data_dir(args)))


def cmd_plan(args) -> int:
    from tabulate import tabulate

    from benchmark.runner.results import read_result, results_root

    reg = _registry(args)
    plan = _plan(args, reg)
    exp_dir = results_root(args.results_dir) / plan.experiment.name
    rows = []
    for i, r in enumerate(plan.runs, 1):
        res = read_result(exp_dir / r.id)
        state = res["status"] if res else "pending"
        rows.append((i, r.task or "+".join(r.tasks), r.label, r.backbone, r.seed, len(r.deps),
                     "implied" if r.implied else "", state, r.id))
    print(tabulate(rows, headers=["#", "task", "method", "backbone", "seed", "deps", "", "status", "run id"]))
    for what, why in plan.skipped:
        print(f"skipped {what}: {why}")
    c = Counter(row[7] for row in rows)
    print(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items())))
    return 0


def cmd_run(args) -> int:
    from benchmark.modeling.compute import Compute
    from benchmark.runner.execute import run_plan
    from benchmark.runner.lock import experiment_lock
    from benchmark.runner.results import results_root
    from benchmark.runner.slurm import options_from_args

    reg = _registry(args)
    plan = _plan(args, reg)
    slurm_options = options_from_args(args) if args.executor == "slurm" else None
    with experiment_lock(results_root(args.results_dir) / plan.experiment.name, wait=args.wait_lock):
        summary = run_plan(plan, reg, results_dir=results_root(args.results_dir), data_dir=_data_dir(args),
                           device=args.device, jobs=args.jobs, force=args.force,
                           compute=Compute(args.cpu_kernels, args.last_layer),
                           executor=args.executor, slurm_options=slurm_options)
    return 1 if summary.failed else 0


def cmd_status(args) -> int:
    from benchmark.runner.results import results_root
    from benchmark.runner.status import print_status

    reg = _registry(args)
    return print_status(_plan(args, reg), results_root(args.results_dir))


def cmd_report(args) -> int:
    from benchmark.report.build import build_reports

    reg = _registry(args)
    for exp in args.experiments:
        for path in build_reports(reg, exp, results_dir=args.results_dir, out_dir=Path(args.out_dir),
                                  paper_file=args.paper):
            print(f"wrote {path}")
    return 0


def cmd_parity(args) -> int:
    from benchmark.parity import run_parity

    return run_parity(args.reference_python, Path(args.work_dir))


def cmd_perf(args) -> int:
    from benchmark.perf import run_perf

    return run_perf(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afbench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, data=True):
        sp.add_argument("--specs", action="append", help="extra folder of spec files (repeatable)")
        if data:
            sp.add_argument("--data-dir", help="offline mirror root (default: $AFBENCH_DATA_DIR; unset = Hub)")
        return sp

    common(sub.add_parser("list", help="tasks, methods, backbones, experiments found"), data=False)
    v = common(sub.add_parser("validate", help="validate spec files (and tasks against their data)"))
    v.add_argument("paths", nargs="*", help="spec files or folders (default: specs/)")
    v.add_argument("--no-data", action="store_true", help="skip the checks against the data")
    d = common(sub.add_parser("data", help="split sizes, label distribution and rendered examples"))
    d.add_argument("task")
    for name, helptext in (("plan", "show the runs of an experiment and what is done"), ("run", "run an experiment"),
                           ("status", "per run: finished, failed, running (local or Slurm), queued, pending")):
        sp = common(sub.add_parser(name, help=helptext))
        sp.add_argument("experiment")
        sp.add_argument("--results-dir", help="default: $AFBENCH_RESULTS_DIR or ./results")
        if name == "run":
            sp.add_argument("--jobs", type=int, default=1, help="independent runs in parallel processes")
            sp.add_argument("--force", action="store_true", help="retrain finished runs")
            sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: the experiment's, auto)")
            sp.add_argument("--cpu-kernels", choices=["fast", "stock"], default="fast",
                            help="CPU kernels: fast (dropout masks from 32-bit integers, frozen linear layers "
                                 "on oneDNN; same functions; default) or stock torch; recorded as cpu_kernels")
            sp.add_argument("--last-layer", choices=["first_token", "full"], default="first_token",
                            help="with a first-token ([CLS]) head the last layer computes position 0 only "
                                 "(same logits and gradients; default) or every position; recorded as last_layer")
            sp.add_argument("--executor", choices=["local", "slurm"], default="local",
                            help="local processes (default) or one Slurm job per run (see 'On a cluster')")
            sp.add_argument("--wait-lock", action="store_true",
                            help="if another driver runs this experiment, wait for it instead of exiting")
            from benchmark.runner.slurm import add_arguments

            add_arguments(sp)
    r = common(sub.add_parser("report", help="render reports/<experiment>.{md,html,tex}"), data=False)
    r.add_argument("experiments", nargs="+")
    r.add_argument("--results-dir")
    r.add_argument("--out-dir", default="reports")
    r.add_argument("--paper", help="paper numbers YAML (default: $AFBENCH_PAPER_FILE or the bundled copy)")
    pa = sub.add_parser("parity", help="compare logits with AdapterHub adapters 1.3.0")
    pa.add_argument("--reference-python", required=True, help="python of an env with adapters==1.3.0")
    pa.add_argument("--work-dir", default=".cache/parity")
    pe = sub.add_parser("perf", help="training steps/s, ours vs AdapterHub")
    pe.add_argument("--reference-python", help="python of an env with adapters==1.3.0 (omit: ours only)")
    pe.add_argument("--adapters", default="2,4,8,16")
    pe.add_argument("--steps", type=int, default=4, help="timed steps per setup and round")
    pe.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours / the reference")
    pe.add_argument("--batch-size", type=int, default=32)
    pe.add_argument("--length", type=int, default=128)
    pe.add_argument("--device", default=None)
    pe.add_argument("--out", default="reports/perf.md")
    return p


COMMANDS = {"list": cmd_list, "validate": cmd_validate, "data": cmd_data, "plan": cmd_plan, "run": cmd_run,
            "status": cmd_status,
            "report": cmd_report, "parity": cmd_parity, "perf": cmd_perf}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except BenchError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, the next invocation redoes only what is missing",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
