"""The composition table (issue 36): a fusion column beside the other ways of composing the fused tasks' stage-1
modules that the experiment ran (its ST-A adapters, or stage-1 LoRA runs of the same tasks and seeds), one row per
method, after the paper's tables.

A variant column of a kind (``tables.variants``: another spec of the kind, compared with the kind's column) is a
composition of that column's sources when every finished run of it recorded another composition than fusion's
attention: a ``merge`` entry (``fusion.mixing: merge``: one adapter merged from the sources, no fusion layer), or a
``fusion_attention.mixing`` / ``config.method.fusion.mixing`` other than the default. The rows and their names
come from the records (a ``merge`` entry's how and PEFT combination, a ``lorahub`` entry), never from labels. Per task: dev accuracy over seeds, and the difference from the fusion column
as ``tables.backbone_tests`` computed it for Table 1 (a variant against its kind's column: the sensitivity family,
CIs only). Cost: the records' ``params.trained``, ``train_seconds`` and ``memory.peak_rss_bytes``, and inference
examples/s from ``afbench speed``'s measurement in the experiment folder (``records.SPEED``), where there is one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from benchmark import methods
from benchmark.methods.merge_defaults import MERGE_DEFAULTS
from benchmark.records import SPEED, RecordError, RunRecord, read_speed
from benchmark.report.aggregate import Cell, Collected
from benchmark.report.baseline import Majority
from benchmark.report.cost import cost_cells, counted
from benchmark.report.inference import BOOTSTRAP_SEED, REPLICATES
from benchmark.report.paired import SENSITIVITY, Tested, Tests
from benchmark.report.tables import MAJORITY_MARK, CellView, cell_view, mean_cell, task_order, variants
from benchmark.spec.schema import FusionParams

ATTENTION = FusionParams.model_fields["mixing"].default  # fusion's own attention over the sources
MERGE = "merge"  # fusion.mixing of a weight merge (its records carry ``merge``)
# fusion.merge.how as a row names it (another value: its words, capitalised)
MERGE_NAMES = {"average": "Uniform average", "task_arithmetic": "Task arithmetic", "ties": "TIES", "dare": "DARE",
               "dare_ties": "DARE-TIES", "svd": "SVD"}


@dataclass
class CompositionRow:
    name: str  # "Static mixing", "TIES merge (head only)"
    label: str  # the report column (run label) the row's runs fill, as in Table 1
    cells: list[CellView]  # per task: dev accuracy, mean ± sd over seeds, n
    mean: CellView  # the mean of the task means
    deltas: list[Tested | None]  # per task, against the reference row (None: the reference itself, or no paired seed)
    params: str  # mean params.trained over the row's runs
    train_seconds: str  # mean train_seconds per run
    peak_rss: str  # mean memory.peak_rss_bytes, MiB
    runs: list[RunRecord] = field(default_factory=list)
    inference: str = "—"  # median examples/s of its runs that afbench speed measured (on the tasks the note names)


@dataclass
class CompositionView:
    backbone: str
    reference: str  # the first row's name
    fusion: str  # the kind column's name, as figure titles have it ("Fusion w/ ST-A")
    tasks: list[str]
    rows: list[CompositionRow]
    notes: list[str] = field(default_factory=list)


def mixing_of(rec: RunRecord) -> str | None:
    """How a run composed its sources, as its record says: the method config's ``fusion.mixing`` (fusion's attention
    where a fusion section leaves it out: results older than the field), else ``fusion_attention.mixing``, else
    ``merge`` where the record has a merge entry; None: no fusion section, not a composition of sources."""
    fusion = ((rec.config or {}).get("method") or {}).get("fusion")
    if isinstance(fusion, dict) and fusion.get("mixing"):
        return str(fusion["mixing"])
    if rec.fusion_attention is not None and rec.fusion_attention.mixing:
        return rec.fusion_attention.mixing
    if rec.merge is not None:
        return MERGE
    return ATTENTION if isinstance(fusion, dict) else None


def _runs(col: Collected, backbone: str, label: str) -> list[RunRecord]:
    """The finished runs behind a column's cells (every task), each once, in cell order."""
    by_id = {r.run_id: r for r in col.results}
    ids = [i for (b, _, c), cell in sorted(col.cells.items()) if b == backbone and c == label for i in cell.run_ids]
    return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]


def composition_columns(col: Collected, backbone: str) -> dict[str, list[str]]:
    """A kind's column -> its variant columns whose every run composed the sources another way than its attention
    (other mixings first, then merges; by label within each)."""
    out: dict[str, list[tuple[bool, str]]] = {}
    have = col.columns(backbone)
    for label, base in variants(col, backbone).items():
        mix = {mixing_of(r) for r in _runs(col, backbone, label)}
        if base in have and mix and not mix & {None, ATTENTION}:
            out.setdefault(base, []).append((MERGE in mix, label))
    return {base: [label for _, label in sorted(labels)] for base, labels in out.items()}


def method_name(runs: list[RunRecord]) -> str:
    """A row's name from its records: "TIES merge (head only)", "DARE merge at lambda 0.4 (head only)" (a lambda
    other than the merge's published default), "Static mixing"."""
    merges = sorted({(r.merge.how or "?", bool(r.merge.train_adapter), r.merge.combination is not None,
                      r.merge.weight if r.merge.weight != MERGE_DEFAULTS.get(r.merge.how, (None,))[0] else None)
                     for r in runs if r.merge is not None}, key=str)
    if merges:  # a merge of LoRA sources records PEFT's combination type
        return "; ".join(f"{MERGE_NAMES.get(how, how.replace('_', ' ').capitalize())} merge"
                         f"{' of LoRA sources' if lora else ''}{f' at lambda {lam:g}' if lam is not None else ''} "
                         f"({'merged adapter and head trained' if trained else 'head only'})"
                         for how, trained, lora, lam in merges)
    if any(r.lorahub is not None for r in runs):
        return "LoraHub weights over LoRA sources (head only)"
    return "; ".join(f"{m.capitalize()} mixing" for m in sorted({mixing_of(r) or "?" for r in runs}))


def _row(col: Collected, backbone: str, label: str, base: str, name: str, tasks: list[str],
         tests: Tests, majority: dict[str, Majority]) -> CompositionRow:
    cells = [cell_view(col, backbone, t, label, majority) for t in tasks]
    deltas = [None if label == base else tests.get((t, label, base)) for t in tasks]
    runs = _runs(col, backbone, label)
    cost = cost_cells(runs)  # as the cost table has them
    return CompositionRow(name, label, cells, mean_cell(cells), deltas, cost["trainable params"], cost["train s"],
                          cost["peak RSS (MiB)"], runs)


def composition_tables(col: Collected, backbone: str, reg, tests: Tests,
                       majority: dict[str, Majority]) -> list[CompositionView]:
    """One table per kind column that has composition variants (none: no table). ``tests``: the backbone's
    comparisons (``tables.backbone_tests``), which hold every variant against its kind's column; ``majority``: task ->
    its majority baseline (‡ as in Table 1)."""
    views = []
    for base, labels in composition_columns(col, backbone).items():
        heading = next((c.name for c in methods.layout("table1") if c.label == base), base)
        reference = f"{heading} ({ATTENTION})"
        tasks = task_order(reg, [t for t in col.tasks(backbone) if t in col.no_data or any(
            col.cells.get((backbone, t, lb), Cell()).expected for lb in (base, *labels))])
        rows = [_row(col, backbone, lb, base, reference if lb == base else method_name(_runs(col, backbone, lb)),
                     tasks, tests, majority) for lb in (base, *labels)]
        view = CompositionView(backbone, reference, heading, tasks, rows)
        view.notes = _notes(col, view, _inference(col, rows))
        views.append(view)
    return views


def _inference(col: Collected, rows: list[CompositionRow]) -> str:
    """Fill each row's ``inference`` from ``afbench speed``'s measurement and return the note on it. A row's value is
    the mean over the tasks timed for the first row of the median examples/s of its runs timed on each; a row not
    timed on every one of those tasks gets none (dev splits differ in length, so rows timed on other tasks would
    not compare)."""
    counts = sorted({len(x.sources) for r in rows for x in r.runs if x.sources})
    n = f"the N = {' or '.join(map(str, counts))} sources" if counts else "the sources"
    try:
        speed = read_speed(col.folder) if col.folder else None
    except RecordError as e:
        return (f"Inference ex/s: not shown, {SPEED} is not readable ({e.message}"
                + (f"; field {e.field}" if e.field else "") + f"). Fix: {e.fix}.")
    timed = speed.runs if speed else {}
    tasks = sorted({timed[x.run_id].task for x in rows[0].runs if x.run_id in timed})
    if not tasks:
        return (f"Inference ex/s (over {n}): not measured (afbench speed EXPERIMENT --only GLOB times finished runs "
                "whose weights are on disk and writes the measurement this column reads).")
    drift = speed.drift_guard
    trusted = drift.get("trustworthy", True) is not False
    seeds = set()
    for r in rows:
        per_task = {t: [timed[x.run_id].examples_per_second for x in r.runs
                        if x.run_id in timed and timed[x.run_id].task == t] for t in tasks}
        if all(per_task.values()):
            seeds |= {timed[x.run_id].seed for x in r.runs if x.run_id in timed and timed[x.run_id].task in tasks}
            value = statistics.fmean(statistics.median(v) for v in per_task.values())
            r.inference = f"{value:.1f}" + ("" if trusted else " (untrustworthy)")
    prov = speed.provenance
    change = drift.get("change")
    return ("" if trusted else "UNTRUSTWORTHY timings: the machine's fp32 GEMM peak moved beyond the drift guard's "
            "limit while they were taken. ") + (
        f"Inference ex/s: examples per second on the {', '.join(tasks)} dev split at each run's eval batch size "
        f"(batches sorted by length), forward only under no_grad"
        + (", every weight frozen as a served run's (runner/serve.py: prepacked oneDNN linear layers)" if speed.weights == "frozen" else
           ", with the weights as loaded (every linear layer through F.linear; measured before afbench speed froze them)")
        + f", as afbench speed timed the trained runs (seeds "
        f"{', '.join(map(str, sorted(seeds)))}): per run the median of {speed.rounds or '?'} rounds whose run order "
        f"alternates, per task the median over a row's runs, then the mean over the tasks; a row not timed on every "
        f"one of them shows —. On {prov.get('machine') or 'a machine not recorded'}, "
        f"{prov.get('date') or 'date not recorded'}, revision "
        f"{str((prov.get('git') or {}).get('revision') or 'not recorded')[:12]}; drift guard "
        f"{drift.get('verdict') or 'not recorded'}"
        + (f" (fp32 GEMM peak {change:+.1%})" if isinstance(change, (int, float)) else "")
        + f". A merged adapter serves as one adapter and a merged LoRA as one LoRA, B A x added beside the frozen "
        f"linear layer (not folded into its weight, as PEFT's merge_and_unload would); fusion and static mixing "
        f"run all {n}"
        + (": both run the N down projections as one matmul and never form the N outputs (modeling/adapters.py, "
           "stacked_down), and fusion adds its Query, Key and Value." if speed.static_mixing == "stacked" else
           ": static mixing computed each adapter's output in turn (it was timed before afbench speed served it "
           "stacked), while fusion's fast path runs the N down projections as one matmul and never forms the N "
           "outputs (modeling/fusion.py), which is why static mixing could serve slower."))


def _notes(col: Collected, view: CompositionView, inference: str) -> list[str]:
    ref, rows = view.reference, view.rows
    seeds = "; ".join(f"{r.name} {', '.join(map(str, sorted({x.seed for x in r.runs})))}" for r in rows)
    tested = [x for r in rows for x in r.deltas if x is not None]
    levels = {x.comparison.level for x in tested}
    level = ("every Δ here is two-level" if levels == {"rows"} else "every Δ here is seed-level" if levels == {"seeds"}
             else "the Δ cells marked seed-level are seed-level, the others two-level") if levels else "no Δ here"
    notes = [
        f"Rows: {ref}, the column of its kind in Table 1, and the variant columns of that kind whose runs composed the "
        "fused tasks' stage-1 modules another way, as their records say (fusion.mixing in the method config, "
        "fusion_attention.mixing, a merge entry); column = the run label, as Table 1 heads the variant. Rows that say "
        "LoRA sources compose stage-1 LoRA runs of the same tasks and seeds, not the adapters: their Δ holds the "
        "change from adapters to LoRA as well as the composition (the LoRA column of Table 1 is those runs on the "
        "targets). "
        "Accuracy cells: dev accuracy of the kept epoch, mean ± sample std (ddof = 1) over seeds, n = seeds; "
        "mean = the mean of the task means. Seeds per row: " + seeds + ".",
        f"Δ vs {ref}: on each task, the mean over paired seeds (each run paired with the {ref} run of its own "
        f"recorded seed; n = paired seeds) of the row's dev accuracy minus {ref}'s, in points, with the 95% CI and "
        "P(A > B) of Table 1's comparison of this variant with its kind's column (the same numbers; "
        f"{SENSITIVITY} family: CIs only, no test, no significance mark, no multiplicity correction). The CI is the "
        f"percentile interval of the paired bootstrap ({REPLICATES:,} replicates, seed {BOOTSTRAP_SEED}): two-level "
        "(the paired seeds resampled with replacement, then within each drawn seed the dev rows, the same rows for "
        "both sides) where every paired run stored per-example predictions that reproduce its accuracy, else "
        "seed-level and marked so; " + level + ". P(A > B): the share of (replicate, drawn seed) draws with the "
        "row's method ahead, ties half.",
        "Cost, means over each row's runs (tasks and seeds): trainable parameters = params.trained (the task "
        "head's size differs with the task's classes); train s = train_seconds, the training steps alone (no "
        "evaluation, not the set-up before them: loading and merging the sources is not in it); peak RSS = "
        "memory.peak_rss_bytes, the run's own peak resident memory. Runs of different CPUs or thread counts do not "
        "time alike; they ran on: " + "; ".join(
            f"{r.name}: {counted([x.cpu_model or 'CPU not recorded' for x in r.runs])}, torch threads "
            f"{counted([str(x.torch_threads) if x.torch_threads else 'not recorded' for x in r.runs])}" for r in rows)
        + ".",
        inference,
    ]
    merged = [f"{r.name} {_merge_settings(r)}" for r in rows if any(x.merge for x in r.runs)]
    if merged:
        notes.append("Merge settings, as the records' merge entries hold them (density: the share of each task vector "
                     "kept, TIES' top-k or DARE's 1 - p; lambda: the scale of the merged task vectors): "
                     + "; ".join(merged) + ".")
    if any(c.note for r in rows for c in r.cells):
        notes.append(f"{MAJORITY_MARK} = a mean within one dev row of the task's majority baseline or below it, as in "
                     "Table 1 (its majority column).")
    notes += [_searched_weights(r, view.tasks) for r in rows if any(x.lorahub for x in r.runs)]
    weights = [r.name for r in rows[1:] if any(c == r.label for (b, _, c) in col.attention if b == view.backbone)]
    if weights:
        notes.append(f"The learned mixing weights of {', '.join(weights)} are shown beside {view.fusion}'s attention "
                     "under \"Where fusion attends\".")
    return notes


def _merge_settings(row: CompositionRow) -> str:
    """"density 0.2, lambda 1" of a merge row's records; "the plain mean" for a merge that has neither."""
    got = sorted({(x.merge.density, x.merge.weight) for x in row.runs if x.merge}, key=str)
    return " or ".join(", ".join(p for p in (f"density {d:g}" if d is not None else "",
                                              f"lambda {w:g}" if w is not None else "") if p) or "the plain mean"
                       for d, w in got)


def _searched_weights(row: CompositionRow, tasks: list[str]) -> str:
    """A LoraHub row's weights (``lorahub.weights`` of its records), per target: the mean over seeds of each
    source's signed weight, the three largest in magnitude and the target's own."""
    parts = []
    for t in tasks:
        runs = [x for x in row.runs if x.task == t and x.lorahub and x.lorahub.weights]
        if not runs:
            continue
        sources = list(runs[0].lorahub.weights)
        mean = {s: sum(x.lorahub.weights.get(s, 0.0) for x in runs) / len(runs) for s in sources}
        top = sorted(sources, key=lambda s: -abs(mean[s]))[:3]
        own = f"; own {mean[t]:+.2f}" if t in mean and t not in top else ""
        parts.append(f"{t} ({len(runs)} seed{'s' if len(runs) > 1 else ''}): "
                     + ", ".join(f"{s} {mean[s]:+.2f}" for s in top) + own)
    return (f"{row.name}: the weights its few-shot search found (result.json lorahub.weights: one signed weight per "
            "source on both LoRA factors, A = sum w_i A_i, B = sum w_i B_i, in [-1.5, 1.5]), mean over seeds, the "
            "three largest in magnitude per target: " + "; ".join(parts) + ".")
