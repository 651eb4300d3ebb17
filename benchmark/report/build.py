"""``afbench report``: stored results -> reports/<experiment>.{md,html,tex} (+ figures).

One data model (``ReportData``) is filled once and rendered by three Jinja templates; ``tabulate``
prints the terminal summary.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from tabulate import tabulate

from benchmark import methods
from benchmark.errors import BenchError, StorageError
from benchmark.paths import pid_alive, remove, shown_path, swap_in, under, write_atomic
from benchmark.records import RunRecord
from benchmark.report import figures, latex, published, reruns
from benchmark.report.aggregate import Cell, Collected, load
from benchmark.report.baseline import majority_baselines
from benchmark.report.composition import CompositionView, composition_tables
from benchmark.report.cost import CostView, cost_table, counted
from benchmark.report.prose import markdown_to_html
from benchmark.report.reruns import REPRODUCIBILITY_NOTE
from benchmark.report.stats import p_text
from benchmark.report.swept import swept_methods
from benchmark.report.tables import (
    ARROWS,
    FINDINGS_NOTE,
    CellView,
    Finding,
    Table2View,
    TableView,
    backbone_tests,
    build_table,
    build_table2,
    claim_checks,
    findings,
    fmt,
    variant_heading,
    variants,
)

# The entailment-style tasks among the paper's 16 (its Figure 4 discussion: RTE and CB attend mostly to
# the MNLI adapter). "NLI-like" attention in the report is the mass on these adapters other than the
# target's own. A named list rather than a task-spec field, because the task schema has no family key.
ENTAILMENT_TASKS = ("mnli", "scitail", "sick", "rte", "cb")
SOURCE_MODULES_NOTE = ("Per source task, dev accuracy of the kept epoch, mean ± std over the seeds listed: those every module type has on that task. The composition rows that say LoRA sources read the LoRA runs, as Fusion w/ ST-A and the other rows read the ST-A adapters (matched by seed).")
MULTITASK_NOTE = ("MT-A: one run per seed fine-tunes the encoder with all tasks' adapters and heads; the kept epoch "
                  "is the one with the best mean selection accuracy over tasks, so every task of a seed shares it. "
                  "Stage-1 ST-A: the same task's fusion-source adapter (one seed), for scale.")


@dataclass
class Figure:
    name: str
    title: str
    png: bytes
    file: str = ""

    @property
    def b64(self) -> str:
        return base64.b64encode(self.png).decode()


@dataclass
class AttentionSummary:
    backbone: str
    fusion: str  # the column heading: F. w/ ST-A or F. w/ MT-A
    target: str
    top: list[tuple[str, float]]  # adapters by mean attention over layers
    own: float | None
    nli_share: float  # attention mass on entailment-style adapters (MNLI-like)
    mnli_rank: int | None
    alone: bool = False  # the fusion fuses one adapter: its softmax is 100% on it by construction
    nli: bool = False  # it fuses an entailment-style adapter other than the target's own (nli_share means something)


@dataclass
class ReportData:
    experiment: str
    description: str
    notes: str
    generated: str
    reporter_revision: str
    provenance: dict
    tables: list[TableView] = field(default_factory=list)
    table2: list[Table2View] = field(default_factory=list)
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    composition: list[CompositionView] = field(default_factory=list)  # the composition table (composition.py)
    figures: list[Figure] = field(default_factory=list)
    attention: list[AttentionSummary] = field(default_factory=list)
    stage1: list[dict] = field(default_factory=list)
    multitask: list[dict] = field(default_factory=list)  # MT-A quality: one row per task of the mixture
    source_kinds: list[str] = field(default_factory=list)  # stage-1 module types (source_modules)
    source_modules: list[dict] = field(default_factory=list)
    source_modules_note: str = SOURCE_MODULES_NOTE
    skipped: dict[str, str] = field(default_factory=dict)
    not_in_experiment: list[str] = field(default_factory=list)  # paper tasks the experiment does not use
    failures: list[dict] = field(default_factory=list)
    paper_source: str = ""
    problems: list[str] = field(default_factory=list)  # result files left out, and why
    entailment_tasks: tuple[str, ...] = ENTAILMENT_TASKS
    multitask_note: str = MULTITASK_NOTE  # the same sentence in the Markdown and HTML reports
    findings_note: str = FINDINGS_NOTE  # how a verdict is reached, under the findings table
    reruns: list = field(default_factory=list)  # runs trained again under one id (reruns.py)
    reruns_summary: str = ""
    reproducibility: str = REPRODUCIBILITY_NOTE  # what is bit-exact and what is not (+ this report's threads)

    # the paper's NLI reading (its Figure 4) only where the fusions fuse its entailment-style adapters
    @property
    def nli_attention(self) -> bool:
        return any(a.nli for a in self.attention)

    @property
    def mnli_attention(self) -> bool:
        return any(a.mnli_rank is not None for a in self.attention)
    cost: CostView | None = None  # what each run cost, per method (cost.py)


def _data_hashes(fin: list[RunRecord]) -> str:
    """The content hash of every split the runs read (config.data: task -> split -> "sha256:..."), short."""
    seen: dict[tuple[str, str], set[str]] = {}
    for r in fin:
        for task, splits in (r.config.get("data") or {}).items():
            for split, h in (splits or {}).items():
                seen.setdefault((task, split), set()).add(str(h).removeprefix("sha256:")[:8])
    if not seen:
        return "not recorded"
    return "; ".join(f"{t} {sp} {'/'.join(sorted(hs))}" for (t, sp), hs in sorted(seen.items()))


def _lock(fin: list[RunRecord]) -> str:
    """Which lock the runs' environment was checked against, and whether it matched (results.environment)."""
    envs = [r.environment for r in fin]
    recorded = [e for e in envs if isinstance(e, dict) and e.get("lock_sha256")]
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in recorded:
        groups.setdefault((e.get("lock") or "lock", e["lock_sha256"]), []).append(e)
    parts = []
    for (lock, sha), group in sorted(groups.items()):
        drift = [e for e in group if not e.get("matches_lock")]
        text = f"{lock} sha256 {sha[:12]}: {len(group) - len(drift)} of {len(group)} runs match it"
        if drift:
            pkgs = sorted({str(d) for e in drift for d in e.get("drift") or []})
            text += f", {len(drift)} drift ({', '.join(pkgs[:6])}{' …' if len(pkgs) > 6 else ''})"
        parts.append(text)
    if len(recorded) < len(envs):
        parts.append(f"not recorded ({len(envs) - len(recorded)} older run{'s' if len(envs) - len(recorded) > 1 else ''})")
    return "; ".join(parts)


def dated(results: list[RunRecord]) -> str:
    """A report's date: when its newest result finished (not the clock: an unchanged report regenerates
    byte for byte)."""
    stamps = sorted(r.finished_at or "" for r in results)
    if not stamps or not stamps[-1]:
        return "unknown (no result records when it finished)"
    try:
        return datetime.fromisoformat(stamps[-1]).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") + " (newest result)"
    except ValueError:
        return stamps[-1]


def reporter_revision() -> str:
    """The last commit that changed the reporter's code (benchmark/report), "+ uncommitted changes" when it
    has some; "" outside a git checkout. Not HEAD: a commit elsewhere must not change a report's bytes."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)

    try:
        rev = git("log", "-1", "--format=%H", "--", ".")
        if rev.returncode != 0 or not rev.stdout.strip():
            return ""
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return rev.stdout.strip()[:12] + (" + uncommitted changes" if dirty else "")


def _provenance(col: Collected, exp_spec, spec_file: str) -> dict:
    fin = [r for r in col.results if r.finished]
    # in the order they first trained a result; a grid trained across many commits lists short hashes
    by_time = sorted(col.results, key=lambda r: r.finished_at or "")
    revs = list(dict.fromkeys((r.git or {}).get("revision") or "unknown" for r in by_time))
    if len(revs) > 3:
        revs = [f"{len(revs)} commits in training order: " + ", ".join(r[:10] for r in revs)]
    v = (fin[0].versions or {}) if fin else {}
    versions = {k: v.get(k) for k in ("torch", "transformers", "python") if v.get(k)}
    caps = exp_spec.caps.model_dump(exclude_none=True) if exp_spec else {}
    overrides = exp_spec.overrides if exp_spec else {}
    runs = f"{len(fin)} finished, {len(col.results) - len(fin)} failed"
    if col.stale:
        runs += f"; {len(col.stale)} older results not in the current plan (spec edited since) left out"
    if col.held_back:
        held = sorted({r.seed for r in col.results if r.run_id in col.held_back})
        runs += (f"; {len(col.held_back)} results of seed(s) {', '.join(map(str, held))} held back from the tables "
                 f"(report_seeds: {', '.join(map(str, col.report_seeds or []))}) until those seeds are complete")
    if col.problems:
        runs += f"; {len(col.problems)} result file(s) left out (listed below)"
    return {
        "spec_file": shown_path(spec_file),
        "runs_finished": len(fin),
        "runs_failed": len(col.results) - len(fin),
        "revisions": revs,
        "dirty": any((r.git or {}).get("dirty") for r in col.results),
        "devices": sorted({r.device or "?" for r in fin}),
        "data_sources": sorted({r.data_source for r in fin} - {""}),
        "cpu": counted([r.cpu_model or "not recorded" for r in fin]) if fin else "—",
        "threads": counted([str(r.torch_threads) if r.torch_threads else "not recorded" for r in fin])
        if fin else "—",
        "gpu": ", ".join(sorted({d.split("(", 1)[1].rstrip(")") for d in (r.device or "" for r in fin)
                                 if "(" in d})) or "none used",
        "data_hashes": _data_hashes(fin),
        "lock": _lock(fin) if fin else "—",
        "total_train_hours": sum(r.wall_seconds for r in col.results) / 3600,
        # the same sentences in the Markdown and HTML reports
        "runs": runs,
        "versions": ", ".join(f"{k} {x}" for k, x in versions.items()),
        "caps": ", ".join(f"{k}={x}" for k, x in caps.items()),
        "overrides": "; ".join(f"{m}: " + ", ".join(f"{k}={x}" for k, x in o.items())
                               for m, o in overrides.items()) or "none",
    }


def attention_columns(col: Collected, backbone: str) -> list[tuple[str, str, str]]:
    """(run label, table heading, figure name) of the columns whose fusion weights the report shows: the registry's
    fusion kinds, then the variant columns of a fusion kind whose records were written by another fusion layer than
    AdapterFusion's attention (``fusion_attention.mixing``: static mixing, one softmax per layer for every token).
    Other variants of a fusion kind (other adapters, precision) attend as their kind's column does: not repeated."""
    out = [(c.label, c.heading, c.name) for c in methods.fusion_columns()]
    for label in variants(col, backbone):
        mixing = sorted({str(rec.get("mixing")) for (b, _, c), recs in col.attention.items()
                         if b == backbone and c == label for rec in recs if rec.get("mixing")})
        if mixing:
            named = f"{variant_heading(label)} ({', '.join(mixing)} mixing)"
            out.append((label, named, named))
    return out


def attention_summaries(col: Collected, backbone: str, reg) -> list[AttentionSummary]:
    out = []
    for label, heading, _ in attention_columns(col, backbone):  # run label, heading (tables)
        got = figures.attention_matrix(col, backbone, label, reg)
        if got is None:
            continue
        targets, adapters, m = got  # m: (layers, targets, adapters)
        for i, t in enumerate(targets):
            mean = m[:, i, :].mean(0)  # over layers
            order = sorted(range(len(adapters)), key=lambda j: -mean[j])
            top = [(adapters[j], float(mean[j])) for j in order[:3]]
            own = float(mean[adapters.index(t)]) if t in adapters else None
            nli = float(sum(mean[j] for j, a in enumerate(adapters) if a in ENTAILMENT_TASKS and a != t))
            rank = order.index(adapters.index("mnli")) + 1 if "mnli" in adapters else None
            fused = {len(rec["adapters"]) for rec in col.attention.get((backbone, t, label), [])}  # this row's own
            out.append(AttentionSummary(backbone, heading, t, top, own, nli, rank, alone=fused == {1},
                                        nli=any(a in ENTAILMENT_TASKS and a != t for a in adapters)))
    return out


def st_a_sources(col: Collected) -> list:
    """The finished stage-1 runs that are ST-A adapters (the paper's sources; records older than ``method_kind`` all
    are): the LoRA sources of ``fusion.source_method`` are not, and show as the LoRA column on the targets."""
    return [r for r in col.stage1 if (r.method_kind or methods.STAGE1) == methods.STAGE1]


def multitask_quality(col: Collected) -> list[dict]:
    """MT-A on every task of its mixture: dev accuracy of the kept epoch over seeds, beside the task's
    stage-1 ST-A adapter (the same dev rows) where the experiment has one."""
    stage1 = {(r.backbone, r.task): r.best_metric for r in sorted(st_a_sources(col), key=lambda r: -r.seed)}
    by_task: dict[tuple[str, str], list[dict]] = {}
    for r in col.multitask:
        for t, pt in (r.per_task or {}).items():
            by_task.setdefault((r.backbone, t), []).append({**pt.model_dump(), "seed": r.seed, "epoch": r.best_epoch})
    rows = []
    for (b, t), runs in sorted(by_task.items()):
        c = Cell(values=[x["best_metric"] for x in runs], seeds=[x["seed"] for x in runs])
        d = runs[0].get("data") or {}
        rows.append({"task": t, "backbone": b, "n": c.n, "mean": c.mean, "std": c.std,
                     "epochs": sorted({x["epoch"] for x in runs}), "stage1": stage1.get((b, t)),
                     "rows": d.get("train_rows"), "rows_total": d.get("train_rows_total")})
    return rows


def source_modules(col: Collected) -> tuple[list[str], list[dict]]:
    """Stage-1 sources by module type (ST-A adapters; the LoRA runs that ``fusion.source_method`` composes): per
    task, dev accuracy of the kept epoch, mean ± std over the seeds every type has on that task; nothing where
    the experiment composes one type only. Returns the types' headings and one row per task."""
    by: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for r in col.stage1:
        by.setdefault((r.backbone, r.task), {}).setdefault(r.method_kind or methods.STAGE1, {})[r.seed] = r.best_metric
    kinds = sorted({k for per in by.values() for k in per}, key=lambda k: (k != methods.STAGE1, k))
    if len(kinds) < 2:
        return [], []
    rows = []
    for (b, t), per in sorted(by.items()):
        seeds = sorted(set.intersection(*(set(per.get(k, ())) for k in kinds)))
        cells = [Cell(values=[per[k][s] for s in seeds]) for k in kinds]
        rows.append({"task": t, "backbone": b, "seeds": ", ".join(map(str, seeds)) or "—",
                     "cells": [CellView(c.mean, c.std, c.n).text for c in cells]})
    return [c.heading if (c := methods.reference_column(k)) else k for k in kinds], rows


def build_data(reg, experiment: str, results_dir: Path, paper_file: str | None,
               data_root: Path | None = None) -> ReportData:
    """The report of what the results recorded (``aggregate.load``: no data, no training flags needed).
    ``data_root``: where the majority baselines read the data (the CLI passes --data-dir, else
    $AFBENCH_DATA_DIR; None: the Hub's data, no baseline offline)."""
    why = reg.broken_error("experiment", experiment) if reg is not None else None
    if why is not None:  # a spec that does not load: its file's own paragraph, not a report from a stale plan
        raise why
    col = load(results_dir, experiment, reg, data_root)
    if not col.results:
        extra = f" ({'; '.join(col.problems)})" if col.problems else ""
        fix = f"run it first: afbench run {experiment} (or nox -s reproduce -- {experiment})"
        if col.stale and "mirror" in col.stale_sources and data_root is None:
            extra += (f" ({len(col.stale)} result(s) on disk were trained on the offline data mirror and record no "
                      "fingerprint of it (schema 1), and run ids include a content hash of the data: with "
                      "AFBENCH_DATA_DIR unset the plan reads the Hub instead, so none of their ids is in it)")
            fix = ("set AFBENCH_DATA_DIR (or --data-dir) to the mirror, e.g. AFBENCH_DATA_DIR=../shared/data, and "
                   f"report again; afbench run {experiment} without it would train every run anew on Hub data")
        elif reg is not None and experiment not in reg.experiments and col.plan_source == "none":
            # neither results, a spec nor a plan.json: most likely a spec kept outside specs/
            extra += f" and no experiment spec named '{experiment}' among the loaded specs"
            fix = (f"if its spec lives outside specs/, pass its folder: afbench report {experiment} --specs DIR (and "
                   f"afbench run {experiment} --specs DIR first); afbench list shows the known experiments")
        elif col.stale:
            extra += (f" ({len(col.stale)} result(s) on disk are from an older version of the spec or other data: "
                      "their run ids are not in the current plan)")
        raise BenchError(f"no results for experiment '{experiment}' under {results_dir / experiment}{extra}", fix=fix)
    paper, paper_src = published.load(paper_file)  # --paper, else $AFBENCH_PAPER_FILE, else the bundled copy
    exp_spec = reg.experiments.get(experiment)
    data = ReportData(
        experiment=experiment,
        description=(exp_spec.description.strip() if exp_spec else col.description),
        notes=(exp_spec.notes.strip() if exp_spec else ""),
        generated=dated(col.results),
        reporter_revision=reporter_revision(),
        provenance=_provenance(col, exp_spec, reg.file_of("experiment", experiment)),
        skipped=col.no_data,
        paper_source=paper_src,
        problems=col.problems,
    )
    data.reruns = reruns.reruns([r for r in col.results if r.finished])
    data.reruns_summary = reruns.summary(data.reruns)
    data.reproducibility += reruns.thread_note(col.results)
    for b in col.backbones():
        pb = reg.backbones[b].paper_backbone if b in reg.backbones else None
        floor = majority_baselines(reg, col.tasks(b), data_root)
        checks = claim_checks(col, b, paper, reg)  # the paper's findings and their tests
        tests = backbone_tests(col, b, checks)  # every comparison once, each in one family, Holm-adjusted
        data.tables += [t for key in published.tables_for(paper, pb)
                        if (t := build_table(key, col, b, paper, reg, floor, tests))]
        t2 = build_table2(col, b, paper, reg, tests)
        if t2:
            data.table2.append(t2)
        fs = findings(checks, tests, paper)
        if fs:
            data.findings[b] = fs
        data.composition += composition_tables(col, b, reg, tests, floor)
        own = exp_spec.table_notes if exp_spec else {}  # the experiment's notes for its tables (deviations)
        for view, key in [(t, t.key) for t in data.tables] + [(t, "table2") for t in data.table2] + \
                [(c, "composition") for c in data.composition]:
            if own.get(key) and own[key].strip() not in view.notes:
                view.notes.append(own[key].strip())
        for label, _, name in attention_columns(col, b):
            png = figures.heatmap(col, b, label, reg, name)
            if png:
                data.figures.append(Figure(f"attention-{label}-{b}", f"{name}: mean attention per layer "
                                           f"({b}; rows = target task, columns = adapter, % of the softmax mass "
                                           "over dev tokens, averaged over seeds), Figure 4/6 style", png))
        full = methods.reference_column(methods.FULL)
        png = figures.relative_to_full(col, b, full.label, [(c.label, c.heading) for c in methods.layout("table1")],
                                       reg) if full else None
        if png:
            data.figures.append(Figure(f"relative-to-full-{b}", f"Relative difference to Full ({b}), Figure 3 style",
                                       png))
        data.attention += attention_summaries(col, b, reg)
    data.stage1 = sorted([{"task": r.task, "backbone": r.backbone, "seed": r.seed,
                           "accuracy": r.best_metric, "epoch": r.best_epoch,
                           "heldout": r.selection_metric if r.selection == "heldout" else None,
                           "rows": r.data.train_rows if r.data else None,
                           "rows_total": r.data.train_rows_total if r.data else None, "published": None}
                          for r in st_a_sources(col)] + published_sources(col),
                         key=lambda d: (d["backbone"], d["task"], bool(d["published"]), d["seed"]))
    data.multitask = multitask_quality(col)
    data.source_kinds, data.source_modules = source_modules(col)
    used = {t for r in col.results for t in (r.tasks or [r.task])} | set(col.no_data)
    data.not_in_experiment = sorted((t for t, spec in reg.tasks.items() if spec.paper.order and t not in used),
                                    key=lambda t: reg.tasks[t].paper.order)
    data.failures = [{"run": r.run_id, "error": r.error} for r in col.results if not r.finished]
    data.cost = cost_table([r for r in col.results if r.run_id not in col.held_back])
    return data


def published_sources(col: Collected) -> list[dict]:
    """The published adapters (fusion.adapterhub) the finished fusion runs read, one row per backbone, task and
    content: its reference, pinned revision, content hash and any other base model allowed for it."""
    seen = {}
    for r in (r for r in col.results if r.finished):
        for task, p in ((r.config or {}).get("published") or {}).items():
            text = f"{p.get('ref')}" + (f" (revision {p['revision']})" if p.get("revision") else "") + \
                f", sha256 {str(p.get('sha256'))[:16]}" + \
                (f"; names another base model, allowed by fusion.adapterhub_allow_other_base: {p['other_base']}"
                 if p.get("other_base") else "")
            seen[(r.backbone, task, p.get("sha256"))] = {
                "task": task, "backbone": r.backbone, "seed": "—", "accuracy": None, "epoch": "—", "heldout": None,
                "published": text}
    return list(seen.values())


def _env() -> jinja2.Environment:
    loader = jinja2.PackageLoader("benchmark.report", "templates")
    # every report.html.j2 (and any other *.html.j2) is autoescaped: spec prose and data (task names,
    # error messages) are untrusted text
    env = jinja2.Environment(loader=loader, autoescape=jinja2.select_autoescape(["html", "html.j2"]),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["markdown"] = markdown_to_html
    env.globals["arrow_threshold"] = published.ARROW_THRESHOLD
    env.filters["f2"] = fmt
    env.filters["pct"] = lambda x: "—" if x is None else f"{100 * x:.1f}%"
    env.filters["arrow"] = lambda a: ARROWS.get(a, "—")
    env.filters["p"] = p_text
    env.filters["tex"] = latex.escape
    env.filters["texmd"] = latex.markdown
    env.filters["texarrow"] = lambda a: latex.escape(ARROWS.get(a, "—"))  # ↗ -> $\nearrow$, no arrow: --
    return env


def build_reports(reg, experiment: str, *, results_dir: str | Path = "results", out_dir: Path = Path("reports"),
                  paper_file: str | None = None, data_root: Path | None = None) -> list[Path]:
    """``results_dir``: the results root (the CLI resolves --results-dir / $AFBENCH_RESULTS_DIR)."""
    data = build_data(reg, experiment, Path(results_dir), paper_file, data_root)
    for f in data.figures:
        f.file = f"{experiment}_files/{f.name}.png"
    env = _env()
    sweeps = swept_methods(reg, experiment, Path(results_dir))  # report/swept.py: afbench sweep's studies
    texts = {f"{experiment}.{ext}": env.get_template(f"report.{ext}.j2").render(d=data, sweeps=sweeps)
             for ext in ("md", "html", "tex")}
    files = {f.file: f.png for f in data.figures}
    for name, text in tex_fragments(env, data):  # the tables alone, for \input into a paper
        files[f"{experiment}_files/{name}"] = text.encode("utf-8")
    written = publish(out_dir, texts, files, f"{experiment}_files" if files else None)
    print_summary(data)
    return written


HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}
READY = ".ready"  # in a staging folder: every file is written; lists what moves into place


def publish(out_dir: Path, texts: dict[str, str], pngs: dict[str, bytes], fig_folder: str | None) -> list[Path]:
    """Write a report's files as one set: each is written (``paths.write_atomic``) into a staging folder
    beside the reports, then a ``.ready`` note listing them, and only then are they moved into place, with
    SIGINT and SIGTERM held during the moves and concurrent reports into the same folder taking turns
    (``flock`` on the folder). An interrupted or failed report leaves the previous complete set; a report
    killed with -9 during its moves is completed by the next report into the folder (its staging folder is
    ready: ``_finish``), one killed before is removed. Every target is checked to lie under ``out_dir``
    before anything is opened. OS errors (read-only, full) are one StorageError paragraph."""
    words = {"kept": "the reports there before are intact (a report's files are written to a staging folder and "
                     "moved into place together)",
             "fix": f"free space (or fix permissions) on the file system of {out_dir}, or give another --out-dir"}

    def failed(path, e: OSError) -> StorageError:
        return StorageError.from_os_error(path, e, **words)

    targets = [under(out_dir, name) for name in texts] + [under(out_dir, name) for name in pngs]
    folder = under(out_dir, fig_folder) if fig_folder else None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=out_dir))
    except OSError as e:
        raise failed(out_dir, e) from None
    try:
        for name, text in texts.items():
            write_atomic(under(staging, name), text, root=staging, **words)
        for name, png in pngs.items():
            write_atomic(under(staging, name), png, root=staging, **words)
        write_atomic(staging / READY, json.dumps({"texts": list(texts), "folder": fig_folder}), root=staging, **words)
        with _taking_turns(out_dir), held_signals():
            for stale in out_dir.glob(".staging-*"):  # left by a report killed with -9
                pid = stale.name.split("-")[1]
                if stale != staging and not (pid.isdigit() and pid_alive(int(pid))):
                    if (stale / READY).exists():  # killed while moving its set into place: finish it
                        _finish(out_dir, stale)
                    shutil.rmtree(stale, ignore_errors=True)
            _finish(out_dir, staging)
            shutil.rmtree(staging, ignore_errors=True)  # before a held signal acts
    except OSError as e:
        raise failed(getattr(e, "filename", None) or out_dir, e) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets[:len(texts)] + ([folder] if folder is not None else [])


def _finish(out_dir: Path, staging: Path) -> None:
    """Move a ready staging folder's set into place (what is still there of it: a killed report's set is
    completed): the figure folder swapped whole (no old figure beside new ones), then the texts."""
    try:
        ready = json.loads((staging / READY).read_text(encoding="utf-8"))
        names, fig_folder = [str(n) for n in ready["texts"]], ready["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a note this version wrote: the staging folder is only removed
    if fig_folder and under(staging, fig_folder).exists():
        trash = staging / ".old_files"
        remove(trash)
        swap_in(staging / fig_folder, under(out_dir, fig_folder), trash)  # a link is moved, never followed
    for name in names:
        if under(staging, name).exists():
            swap_in(staging / name, under(out_dir, name))


@contextlib.contextmanager
def _taking_turns(out_dir: Path):
    """Hold an exclusive ``flock`` on the reports folder (no file is created; released when the process ends,
    even by kill -9): two reports never interleave their moves. Where the file system has no such locks
    (some network mounts) the moves go on unlocked."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_signals():
    """SIGINT and SIGTERM wait until the body is done, then act as they would have (handlers, not a
    signal mask: a process-directed signal may land on any thread, and torch's threads do not block it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in HELD_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        for s in dict.fromkeys(got):
            os.kill(os.getpid(), s)  # now, with the handler the process had


def tex_fragments(env: jinja2.Environment, data: ReportData) -> list[tuple[str, str]]:
    """(file name, LaTeX) of every table as an \\input-able fragment (what report.tex typesets inline)."""
    def tex(template: str, **view) -> str:
        return env.get_template(template).render(**view)

    return ([(f"{t.key}-{t.backbone}.tex", tex("tex_table.tex.j2", t=t)) for t in data.tables]
            + [(f"table2-{t2.backbone}.tex", tex("tex_table2.tex.j2", t2=t2)) for t2 in data.table2]
            + [(f"findings-{b}.tex", tex("tex_findings.tex.j2", fs=fs)) for b, fs in data.findings.items()]
            + [(f"composition-{c.backbone}.tex", tex("tex_composition.tex.j2", c=c)) for c in data.composition])


def print_summary(data: ReportData) -> None:
    for t in data.tables:
        floor = t.has_majority  # the majority baseline beside the task: the floor every cell is read against
        rows = [[r.task] + ([r.majority_text] if floor else []) + [c.text for c in r.cells] for r in t.rows]
        rows.append(["Mean"] + ([""] if floor else []) + [c.text for c in t.mean_row])
        print(f"\n{t.title} ({t.backbone})")
        print(tabulate(rows, headers=["task", *(["majority"] if floor else []), *t.columns],
                       disable_numparse=True))  # keep 70.10 as printed
        if any(c.marker for r in t.rows for c in r.cells):
            print(t.legend)
        if t.majority_note:
            print(t.majority_note)
    for t2 in data.table2:
        rows = [[r.task] + [ARROWS.get(a, "—") for a in r.ours] for r in t2.rows]
        rows.append(["Improved"] + t2.improved_ours)
        print(f"\nTable 2 ({t2.backbone})")
        print(tabulate(rows, headers=["task", *t2.columns], disable_numparse=True))
        th = published.ARROW_THRESHOLD
        print(f"Arrows: ↗ gain > {th}, ↘ loss < −{th}, → otherwise (accuracy points, the paper's thresholds)"
              + f"; Δ, 95% CIs, P(A > B) and the tests ({t2.families}) are in the Markdown report.")
    for line in data.problems:
        print(f"warning: {line}")
