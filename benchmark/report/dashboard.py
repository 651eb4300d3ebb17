"""``afbench dashboard``: one self-contained HTML page over every experiment of a results folder.

A point is one (experiment, backbone, task, method label) over its seeds: the mean dev metric with its 95% t
interval, against a cost axis (trainable parameters, training time, checkpoint size, peak memory, and
inference speed where a run recorded ``inference_examples_per_second``), each the mean over the runs that
recorded it. Results are read as records (``records.scan_experiment``), never planned. A cost a run did not
record is left out of that axis and the page lists which runs lack it. The filters, the Pareto front of the
shown points per axis, the hover details and the CSV of the selection are computed in the page (inline SVG
and JavaScript, no external file), so it opens offline and from a static host.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark import methods
from benchmark.paths import write_atomic
from benchmark.records import RunRecord, scan_experiment
from benchmark.report.cost import MIB
from benchmark.report.stats import mean_interval

NAME = "dashboard.html"


@dataclass(frozen=True)
class Axis:
    key: str
    label: str
    get: Callable[[RunRecord], float | None]
    better: str = "lower"  # "higher": inference speed
    log: bool = True


def _scaled(value, unit: float = 1.0) -> float | None:
    return value / unit if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


AXES = [
    Axis("trainable_params", "trainable parameters", lambda r: _scaled(r.params.trained if r.params else None)),
    Axis("train_seconds", "training time (s)", lambda r: _scaled(r.train_seconds)),
    # every record has its wall time (training and evaluation, one process): the time axis no run lacks
    Axis("wall_seconds", "wall time, training + evaluation (s)", lambda r: _scaled(r.wall_seconds)),
    Axis("checkpoint_mib", "checkpoint size (MiB)", lambda r: _scaled(r.checkpoint_bytes, MIB)),
    Axis("peak_rss_mib", "peak memory, resident (MiB)", lambda r: _scaled(r.memory.peak_rss_bytes if r.memory else None, MIB)),
    Axis("cuda_max_mib", "peak CUDA memory (MiB)",
         lambda r: _scaled(r.memory.cuda_max_allocated_bytes if r.memory else None, MIB)),
    Axis("inference_per_s", "inference speed (examples/s)",
         lambda r: _scaled(r.extra("inference_examples_per_second")), better="higher"),
]


def method_names() -> dict[str, str]:
    """Run label -> its name in the registry (the first table that has it), e.g. "Fusion w/ ST-A"."""
    out: dict[str, str] = {}
    for table in methods.TABLES:
        for c in methods.layout(table):
            out.setdefault(c.label, c.name)
    return out


def method_name(label: str, kind: str | None, names: dict[str, str]) -> str:
    """A registry label's name; another spec of a kind: the kind's name and the label."""
    if label in names:
        return names[label]
    ref = methods.reference_column(kind)  # None for an unknown kind
    return f"{ref.name} ({label})" if ref else label


def backbone_name(name: str, backbones: dict) -> str:
    spec = backbones.get(name)
    stands = getattr(spec, "paper_backbone", None)
    return f"{name} (stands in for {stands})" if stands and stands != name else name


def _scores(r: RunRecord) -> list[tuple[str, float, bool]]:
    """(task, metric, joint) per task the finished run holds a metric for (MT-A: each task of its mixture)."""
    if r.per_task:
        return [(t, v.best_metric, True) for t, v in r.per_task.items()]
    return [(r.task, r.best_metric, False)] if r.task and r.best_metric is not None else []


def experiments(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] not in "._") if root.is_dir() else []


def adapters_of(r: RunRecord, seeds: dict[str, int]) -> str:
    """What sets a run's point apart from others of its label: "" for a grid run without dependencies or over
    its own seed's; the seeds of the runs it read ("adapters s42", as the report's ``label@s42`` columns: a
    fusion seed over another seed's adapters is another protocol); "fusion source" for a stage-1 run."""
    dep_seeds = sorted({seeds[d] for d in r.deps if d in seeds})
    if r.role == "stage1":  # a fusion source that the experiment's grid did not ask for (caps may differ)
        return "fusion source"
    return "" if dep_seeds in ([], [r.seed]) else "adapters " + ", ".join(f"s{s}" for s in dep_seeds)


def _caps(r: RunRecord) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in ((r.config or {}).get("caps") or {}).items()))


def _name_caps(groups: dict) -> dict:
    """Runs of one label under other caps (a spec edited between runs, e.g. more epochs) are points of their
    own: the caps that set them apart join ``adapters`` (the point's qualifier)."""
    out = {}
    for (exp, backbone, task, label, adapters, caps), g in groups.items():
        others = [c for (e, b, t, lb, a, c) in groups if (e, b, t, lb, a) == (exp, backbone, task, label, adapters)]
        differ = ", ".join(f"{k}={v}" for k, v in caps if any(dict(o).get(k) != v for o in others))
        out[(exp, backbone, task, label, "; ".join(x for x in (adapters, differ) if x))] = g
    return out


def collect(root: Path, backbones: dict, report_seeds: dict[str, list[int]] | None = None) -> tuple[dict, list[RunRecord]]:
    """The page's data (points, axes, which runs lack which axis, the result files left out) and the finished
    results it read (``report_seeds``: experiment -> the seeds its report uses; its other seeds are left out, as
    its report's tables leave them)."""
    names, groups = method_names(), {}
    scans = [scan_experiment(root, exp) for exp in experiments(root)]
    seeds_of = report_seeds or {}
    finished = [r for scan in scans for r in scan.results
                if r.finished and r.seed in seeds_of.get(r.experiment, [r.seed])]
    seeds = {r.run_id: r.seed for r in finished}
    problems = [p for scan in scans for p in scan.problems()]
    for r in finished:
        for task, value, joint in _scores(r):
            key = (r.experiment, r.backbone, task, r.label, adapters_of(r, seeds), _caps(r))
            g = groups.setdefault(key, {"runs": [], "values": [], "joint": joint})
            g["runs"].append(r)
            g["values"].append(value)
    groups = _name_caps(groups)
    for (*rest, adapters), g in groups.items():  # seed k over its own adapters also belongs to "adapters sk"
        own = groups.get((*rest, ""), {"runs": []})
        extra = [(r, v) for r, v in zip(own["runs"], own.get("values", []), strict=True)
                 if adapters == f"adapters s{r.seed}"]
        g["runs"][:0], g["values"][:0] = [r for r, _ in extra], [v for _, v in extra]
    metrics = [r.metric or "" for r in finished]
    axes = [a for a in AXES if any(a.get(r) is not None for r in finished)]
    points = []
    for (exp, backbone, task, label, adapters), g in sorted(groups.items()):
        runs, kind = g["runs"], g["runs"][0].method_kind
        ci = mean_interval(g["values"])
        have = {a.key: [v for v in (a.get(r) for r in runs) if v is not None] for a in axes}
        x = {k: statistics.fmean(vs) if vs else None for k, vs in have.items()}
        lacking = {a.key: missing for a in axes if (missing := [r.run_id for r in runs if a.get(r) is None])}
        points.append({
            "experiment": exp, "backbone": backbone, "backbone_name": backbone_name(backbone, backbones),
            "task": task, "method": label + (f"@{adapters.split()[1]}" if adapters.startswith("adapters") else ""),
            "method_name": method_name(label, kind, names) + (f" ({adapters})" if adapters else ""), "kind": kind or "",
            "n": len(runs), "seeds": [r.seed for r in runs], "run_ids": [r.run_id for r in runs],
            "accuracy": statistics.fmean(g["values"]), "ci95": list(ci) if ci else None, "joint": g["joint"],
            "x": x, "lacking": lacking})
    lacking = {a.key: sorted({rid for p in points for rid in p["lacking"].get(a.key, [])}) for a in axes}
    missing_axes = [a.label for a in AXES if a not in axes]
    return {"axes": [{"key": a.key, "label": a.label, "better": a.better, "log": a.log} for a in axes],
            "points": points, "runs": len(finished), "experiments": experiments(root),
            "metric": statistics.mode(metrics) if metrics else "metric",
            "lacking": lacking, "not_recorded": missing_axes, "problems": problems}, finished


def write_dashboard(root: Path, out_dir: Path, backbones: dict, report_seeds: dict[str, list[int]] | None = None) -> Path:
    """Write ``out_dir/dashboard.html`` over every experiment under ``root``; returns the file written."""
    from benchmark.report.build import _env, dated, reporter_revision

    data, finished = collect(root, backbones, report_seeds)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")
    html = _env().get_template("dashboard.html.j2").render(data=data, blob=blob, dated=dated(finished),
                                                           revision=reporter_revision())
    return write_atomic(out_dir / NAME, html, root=out_dir)
