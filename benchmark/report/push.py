"""``afbench push``: an experiment's results as a Hugging Face dataset folder, and its upload.

The folder: ``data/runs.parquet`` (one row per result.json; nested fields as JSON text), the experiment's
reports (``reports/<experiment>.*``, its figures and prune reports), each run's ``predictions.parquet`` where
one was written (``predictions/<run id>.parquet``), the AdapterHub exports with ``--adapters`` (written by the
CLI through ``afbench export``), and ``README.md``: a dataset card from the experiment spec, the backbone specs
(how each stands in for the paper's) and the report's provenance section. ``--dry-run`` stops there; otherwise
``huggingface_hub`` (only it touches the network) creates the dataset repo and uploads the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmark import predictions
from benchmark.errors import BenchError
from benchmark.paths import under, write_atomic
from benchmark.records import scan_experiment

TABLE = "data/runs.parquet"


def table_bytes(records: list[dict]) -> bytes:
    """One row per record: scalars as they are, lists and objects as JSON text (a column mixing ints and
    floats is float; one mixing kinds is text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in records for k in r))
    cols = {}
    for k in keys:
        vals = [r.get(k) for r in records]
        vals = [json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v for v in vals]
        kinds = {type(v) for v in vals if v is not None}
        if kinds == {int, float}:
            vals = [None if v is None else float(v) for v in vals]
        elif len(kinds) > 1:
            vals = [None if v is None else str(v) for v in vals]
        cols[k] = vals
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), sink)
    return sink.getvalue().to_pybytes()


def provenance_section(report: Path) -> str:
    """The ``## Provenance`` section of the experiment's Markdown report, with its dating lines."""
    text = report.read_text(encoding="utf-8")
    start = text.find("## Provenance")
    end = text.find("\n## ", start + 1)
    return text[start:end].strip() if start >= 0 else ""


def card(exp, reg, rows: list[dict], files: list[str], report: Path, repo: str) -> str:
    """The dataset card (README.md) of the folder."""
    lines = ["---", f"pretty_name: 'AdapterFusion-Bench results: {exp.name}'",
             "tags: [adapterfusion-bench, adapters, adapterfusion, reproducibility]",
             "configs:", "- config_name: runs", f"  data_files: {TABLE}", "---", "",
             f"# AdapterFusion-Bench results: `{exp.name}`", "", exp.description.strip(), "",
             "## Backbones and how they differ from the paper's", ""]
    for name in exp.backbones:
        b = reg.backbones[name]
        stands = f" stands in for the paper's **{b.paper_backbone}**" if b.paper_backbone and b.paper_backbone != name \
            else " is the paper's backbone"
        pooling = " Heads read the masked mean of the last layer (the paper: the [CLS] token)." \
            if b.pooling == "mean" else ""
        lines.append(f"- **{name}**{stands}: {' '.join(b.description.split())}{pooling}")
    finished = sum(r["status"] == "finished" for r in rows)
    lines += ["", "## What is here", "",
              f"- `{TABLE}`: one row per run ({len(rows)} runs, {finished} finished), the fields of each "
              "result.json (nested ones as JSON text).",
              f"- `reports/`: {sum(f.startswith('reports/') for f in files)} files: the experiment's report (Markdown, "
              "HTML, LaTeX, figures) and its prune reports, as committed."]
    preds = [f for f in files if f.startswith("predictions/")]
    lines.append(f"- `predictions/`: {len(preds)} runs' dev predictions (per dev row: task, split, row, source_row, "
                 "the dataset's id and correct; no gold or predicted label)" if preds
                 else "- no run of this experiment wrote predictions")
    adapters = sorted({f.split("/")[1] for f in files if f.startswith("adapters/")})
    if adapters:
        lines.append(f"- `adapters/`: {len(adapters)} runs in AdapterHub `adapters` 1.3.0's format (export.json each)")
    lines += ["", "## Experiment", "", f"Seeds {', '.join(map(str, exp.seeds))}; selection "
              f"{exp.selection.protocol}; batching {exp.batching}."]
    if exp.notes:
        lines += ["", "## Notes (from the experiment spec)", "", exp.notes.strip()]
    prov = provenance_section(report)
    lines += ["", prov if prov else "## Provenance\n\nThe report has no provenance section.", "",
              f"Published with `afbench push {exp.name} --repo {repo}`.", ""]
    return "\n".join(lines)


def stage(exp, reg, results: Path, reports: Path, out: Path, repo: str) -> list[str]:
    """Write the dataset folder under ``out`` (empty but for ``afbench export``'s ``adapters/``: the CLI refuses
    a folder with anything else in it); returns its files, relative to ``out``."""
    report = reports / f"{exp.name}.md"
    if not report.exists():
        raise BenchError(f"experiment '{exp.name}' has no report to publish", file=str(report),
                         fix=f"run `afbench report {exp.name}` first (the card carries its provenance)")
    scan = scan_experiment(results, exp.name)
    if not scan.results:
        raise BenchError(f"no result of experiment '{exp.name}' to publish", file=str(results / exp.name),
                         fix=f"run `afbench run {exp.name}` first, or pass --results-dir")
    rows = [r.dump() for r in scan.results]
    files = {TABLE: table_bytes(rows)}
    for f in sorted(reports.glob("*")):
        if f.name.startswith((f"{exp.name}.", f"{exp.name}_files", f"prune_{exp.name}_")):
            for g in sorted(f.rglob("*")) if f.is_dir() else [f]:
                if g.is_file():
                    files[f"reports/{g.relative_to(reports)}"] = g.read_bytes()
    for r in scan.results:
        folder = results / exp.name / r.run_id
        if r.predictions is None or not (folder / predictions.FILE).exists():
            continue
        if predictions.is_legacy(folder):  # the dev split's labels can be read back from it: not published
            raise BenchError(f"run {r.run_id} has a predictions file of before 2026-12-08, from which the dev "
                             "split's labels can be read back", file=str(folder / predictions.FILE),
                             fix=f"rewrite it without them first: afbench migrate {exp.name}")
        predictions.read(folder, r.predictions)  # the bytes its record (in runs.parquet) names, or one error
        files[f"predictions/{r.run_id}.parquet"] = (folder / predictions.FILE).read_bytes()
    names = sorted(set(files) | {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()})
    files["README.md"] = card(exp, reg, rows, names, report, repo).encode("utf-8")
    for rel, data in files.items():
        write_atomic(under(out, rel), data, root=out)
    return sorted(set(names) | {"README.md"})


def upload(folder: Path, repo: str, private: bool = False) -> str:
    """Create the dataset repo (if needed) and upload ``folder``; one BenchError paragraph on failure."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, repo_type="dataset", exist_ok=True, private=private)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset",
                                 commit_message="afbench push")
    except Exception as e:  # noqa: BLE001 - any Hub failure (offline, auth, HTTP) is one paragraph
        raise BenchError(f"uploading to the Hub dataset '{repo}' failed: {type(e).__name__}: {e}", field="--repo",
                         fix="log in (`hf auth login` or HF_TOKEN), check the repo name and the network "
                             "(HF_HUB_OFFLINE must be unset), or use --dry-run --out DIR to write the folder only") \
            from None
    return str(getattr(info, "commit_url", info))
