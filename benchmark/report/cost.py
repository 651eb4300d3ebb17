"""What each run cost, per backbone and method (mean over its finished runs: tasks and seeds).

Read from result.json only: ``memory`` (peak resident memory of the run alone, CUDA max allocated),
``params`` (trained; the backbone's own count where recorded, else the smallest total - trained among
the backbone's runs, i.e. a head or ST-A run's frozen encoder), ``checkpoint_bytes``, ``train_seconds``
and ``padding.real_tokens`` (tokens/s = real tokens / training seconds). A figure a result does not hold
(every result trained before these were recorded) is "not recorded", never a guess; a mean over some
runs only says over how many. A column no run recorded is left out, said once in a note; train s and tokens/s
then fall back to what older results hold (``wall_seconds``, ``train_examples_per_second``), headed as such. Fusion's cost as a function of the number of fused adapters is
``afbench perf``'s. Also: which results were trained under another lock or a drifted environment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from benchmark.records import RunRecord

NOT_RECORDED = "not recorded"
MIB = 1024 * 1024


@dataclass
class CostRow:
    backbone: str
    label: str
    runs: int
    cells: dict[str, str]  # column -> text


@dataclass
class CostView:
    columns: list[str]
    rows: list[CostRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


COLUMNS = ["runs", "peak RSS (MiB)", "CUDA max allocated (MiB)", "trainable params", "% of backbone",
           "checkpoint (MiB)", "train s", "tokens/s"]


# what a column left empty by every run shows instead (older results hold these): heading, value of a run
FALLBACK = {"train s": ("wall s (whole run)", lambda r: r.wall_seconds or None),
            "tokens/s": ("train ex/s", lambda r: r.extra("train_examples_per_second"))}
CPU_ONLY = "n/a (CPU)"


def mean_text(values: list[float], n: int, fmt: str) -> str:
    if not values:
        return NOT_RECORDED
    text = fmt.format(sum(values) / len(values))
    return text if len(values) == n else f"{text} ({len(values)}/{n} runs)"


def counted(values: list[str]) -> str:
    """"A (80 runs), not recorded (2 runs)"; one value alone without a count."""
    counts = Counter(values)
    if len(counts) == 1:
        return values[0]
    return ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in sorted(counts.items()))


def _backbone_params(results: list[RunRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        if r.params is None:
            continue
        guess = r.params.backbone or ((r.params.total or 0) - (r.params.trained or 0))
        if guess > 0 and (r.backbone not in out or (r.params.backbone or guess < out[r.backbone])):
            out[r.backbone] = guess
    return out


def cost_cells(rs: list[RunRecord], backbone_params: int | None = None) -> dict[str, str]:
    """A group of runs' cells (``COLUMNS``), each the mean over the runs that recorded it."""
    n = len(rs)
    mem = [r.memory for r in rs if r.memory]
    rss = [m.peak_rss_bytes / MIB for m in mem if m.peak_rss_bytes]
    cuda = [m.cuda_max_allocated_bytes / MIB for m in mem if m.cuda_max_allocated_bytes is not None]
    trained = [r.params.trained for r in rs if r.params and r.params.trained is not None]
    share = [100.0 * t / backbone_params for t in trained] if backbone_params else []
    ckpt = [r.checkpoint_bytes / MIB for r in rs if r.checkpoint_bytes]
    secs = [r.train_seconds for r in rs if r.train_seconds]
    tps = [r.padding.real_tokens / r.train_seconds for r in rs if r.train_seconds and r.padding
           and r.padding.real_tokens]
    return {"runs": str(n), "peak RSS (MiB)": mean_text(rss, n, "{:.0f}"),
            "CUDA max allocated (MiB)": mean_text(cuda, n, "{:.0f}") if cuda or any((r.device or "").startswith("cuda")
                                                                        for r in rs) else CPU_ONLY,
            "trainable params": mean_text(trained, n, "{:,.0f}"), "% of backbone": mean_text(share, n, "{:.2f}"),
            "checkpoint (MiB)": mean_text(ckpt, n, "{:.2f}"), "train s": mean_text(secs, n, "{:.1f}"),
            "tokens/s": mean_text(tps, n, "{:.0f}")}


def cost_table(results: list[RunRecord]) -> CostView | None:
    fin = [r for r in results if r.finished]
    if not fin:
        return None
    backbone = _backbone_params(fin)
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in fin:
        groups.setdefault((r.backbone, r.label), []).append(r)
    view = CostView(COLUMNS, [CostRow(b, label, len(rs), cost_cells(rs, backbone.get(b)))
                              for (b, label), rs in sorted(groups.items())])
    _leave_out_empty(view, groups)
    view.notes += environment_notes(fin)
    return view


def _leave_out_empty(view: CostView, groups: dict[tuple[str, str], list[RunRecord]]) -> None:
    """Columns that read "not recorded" (or "n/a (CPU)") on every row go, named once in a note; an empty train s /
    tokens/s is replaced by its FALLBACK where the runs hold that."""
    kept, unrecorded, cpu = [], [], False
    for c in view.columns:
        if not all(r.cells[c] in (NOT_RECORDED, CPU_ONLY) for r in view.rows):
            kept.append(c)
            continue
        cpu = cpu or any(r.cells[c] == CPU_ONLY for r in view.rows)
        unrecorded += [c] if any(r.cells[c] == NOT_RECORDED for r in view.rows) else []
        if c in FALLBACK:
            heading, value = FALLBACK[c]
            cells = {(r.backbone, r.label): mean_text([v for x in groups[(r.backbone, r.label)] if (v := value(x))],
                                                   r.runs, "{:.1f}") for r in view.rows}
            if any(v != NOT_RECORDED for v in cells.values()):
                kept.append(heading)
                for r in view.rows:
                    r.cells[heading] = cells[(r.backbone, r.label)]
    view.columns = kept
    if unrecorded:
        view.notes.append(f"Not recorded by these runs (trained before the field existed; a rerun records it), so left "
                          f"out: {', '.join(unrecorded)}.")
    if cpu:
        view.notes.append("Every run trained on the CPU: no CUDA memory column.")


def environment_notes(results: list[RunRecord]) -> list[str]:
    """Results trained under another lock than the newest one seen, or in an environment that drifted from it."""
    envs = [(r.run_id, r.environment or {}) for r in results]
    hashes = [e.get("lock_sha256") for _, e in envs if e.get("lock_sha256")]
    notes = []
    if not hashes:
        return [f"{len(results)} result(s) record no lock hash (trained before requirements.lock)."]
    if len(set(hashes)) > 1:
        counts = {h: hashes.count(h) for h in dict.fromkeys(hashes)}
        notes.append("results were trained under " + str(len(counts)) + " different locks: "
                     + ", ".join(f"{h[:12]} ({c} runs)" for h, c in counts.items()))
    drifted = [(rid, e.get("drift") or []) for rid, e in envs if e.get("matches_lock") is False]
    if drifted:
        shown = "; ".join(f"{rid}: {', '.join(d[:3])}" for rid, d in drifted[:3])
        notes.append(f"{len(drifted)} result(s) were trained in an environment that drifted from its lock ({shown}"
                     f"{'; ...' if len(drifted) > 3 else ''})")
    missing = sum(1 for _, e in envs if not e.get("lock_sha256"))
    if missing:
        notes.append(f"{missing} result(s) record no lock hash (trained before requirements.lock).")
    return notes
