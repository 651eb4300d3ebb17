"""The report's comparisons as the design has them: paired by seed as the records say (not by column or
position), a fusion run over another seed's adapters paired by its own seed and said to share them, and every
test in one named family, printed with that family's Holm value wherever it appears."""

from __future__ import annotations

import re
import shutil

import pytest
from scipy.stats import ttest_rel
from test_report import VALUES, handmade, make_result  # noqa: F401 - handmade: the fixture

from benchmark.records import RESULT, load_run
from benchmark.report import build as report_build
from benchmark.report.aggregate import load
from benchmark.report.paired import CONFIRMATORY, EXPLORATORY, SENSITIVITY, pair
from benchmark.runner.results import write_json_atomic
from conftest import MIRROR, ROOT, needs_mirror

RUN = "{task}__{label}__minilm-l6__s{seed}__x"


def _own_seed_pairs(task: str, fusion: str, base: str) -> tuple[list[float], list[float]]:
    """minilm_table1's committed records: (fusion, base) dev accuracies by seed, each fusion run the one whose
    dependency is its own seed's base run."""
    from benchmark.spec import load_registry

    seeds = load_registry().experiments["minilm_table1"].report_seeds  # the seeds the report's tables use
    runs = [r for r in (load_run(p) for p in sorted((ROOT / "results" / "minilm_table1").glob(f"{task}__*/{RESULT}")))
            if seeds is None or r.seed in seeds]
    bases = {r.run_id: r for r in runs if r.run_id.startswith(f"{task}__{base}__")}
    pairs = sorted((r.seed, r.best_metric, bases[d].best_metric) for r in runs
                   if r.run_id.startswith(f"{task}__{fusion}__") for d in r.deps
                   if d in bases and bases[d].seed == r.seed)
    return [f for _, f, _ in pairs], [b for _, _, b in pairs]


def test_pairing_is_read_from_the_records(registry, handmade):  # noqa: F811 - the fixture
    """Fusion seeds 2 and 3 read seed 1's ST-A adapter (shared); fusion seed 2 is then removed. The design pairs
    each run with the baseline run of its own recorded seed (1 and 3, not the first two positions) and says
    which runs read another seed's adapters; the report's Table 1 notes say so too."""
    folder = handmade / "handmade"
    shared = RUN.format(task="rte", label="st_a_rf16", seed=1)
    for seed, v in zip((1, 2, 3), VALUES["rte"]["fusion_st_a_rf16"], strict=True):
        r = make_result("rte", "fusion_st_a_rf16", seed, v) | {"deps": [shared]}
        write_json_atomic(folder / r["run_id"] / "result.json", r)
    shutil.rmtree(folder / RUN.format(task="rte", label="fusion_st_a_rf16", seed=2))
    col = load(handmade, "handmade", registry)
    pr = pair(col, "minilm-l6", "rte", "fusion_st_a_rf16", "st_a_rf16")
    assert pr.design.seeds == (1, 3)
    # 76 - 70 and 78 - 74 (seed by seed); by position it would be 76 - 70 and 78 - 72
    assert 100 * (pr.design.a - pr.design.b).mean() == pytest.approx((6.0 + 4.0) / 2)
    assert pr.notes == ("fusion_st_a_rf16: the runs of seed(s) 3 read the adapters of seed(s) 1 (shared adapters); "
                        "paired by each run's own seed",)
    data = report_build.build_data(registry, "handmade", handmade, None)
    t1 = next(t for t in data.tables if t.key == "table1")
    assert pr.notes[0] in t1.notes
    stats = {(s.task, s.comparison): s for s in data.table2[0].stats}
    assert stats[("rte", "F. w/ ST-A vs ST-A")].delta == "+5.00"  # over the 2 paired seeds
    assert pair(col, "minilm-l6", "sick", "fusion_st_a_rf16", "st_a_rf16") is None  # fusion not run on sick


_HOLM = r"(< [\d.]+|[^ ]+?)†?"  # an adjusted p as printed ("0.037", "< 0.001"), † where beyond seed noise
_TESTED = re.compile(r"(\w+) ([+-]\d+\.\d\d) \(95% CI ([^,]+), P\(A > B\) [\d.]+; p [=<] [\d.]+, Holm " + _HOLM
                     + r" (\w+)†?\)")
_STAT = re.compile(r"^\| (\w+) \| ([^|]+) \| ([+-]\d+\.\d\d) \| ([^|]+) \| [\d.]+ \| [^|]+ \| " + _HOLM
                   + r" \((\w+)\) \| (?:[01]\.\d\d|—) \|$", re.M)


@pytest.fixture(scope="module")
def minilm_table1(tmp_path_factory):
    """The committed minilm_table1 results, reported once for this module: (ReportData, output folder)."""
    if MIRROR is None or not (ROOT / "results" / "minilm_table1").is_dir():
        pytest.skip("needs the offline data mirror and the committed minilm_table1 results")
    from benchmark.spec import load_registry

    reg, out = load_registry(), tmp_path_factory.mktemp("reports")
    paper = str(ROOT / "benchmark" / "paper" / "adapterfusion_eacl2021.yaml")
    data = report_build.build_data(reg, "minilm_table1", ROOT / "results", paper, data_root=MIRROR)
    report_build.build_reports(reg, "minilm_table1", results_dir=str(ROOT / "results"), out_dir=out,
                               paper_file=paper, data_root=MIRROR)
    return data, out


@needs_mirror
def test_minilm_table1_every_test_in_one_family_printed_with_its_name(minilm_table1):
    """The committed minilm_table1 results: the paper's findings are the confirmatory family (10 tests: 4 + 4
    per-task, 2 averages; the TOST of "on par" cannot pass at these seeds and spread, so it is not run and is in
    no family), Table 2's other 16 comparisons the exploratory one; the shared-adapter
    columns have CIs, no test and no †. Every adjusted p printed in Table 2 and the findings names its family,
    and each comparison has one adjusted value wherever it appears."""
    data, out = minilm_table1
    t2 = data.table2[0]
    assert t2.families == "confirmatory: 10 tests, exploratory: 16 tests", t2.families
    stats = {(s.task, s.comparison): s for s in t2.stats}
    rte = stats[("rte", "F. w/ ST-A vs ST-A")]
    # the audit: paired by seed (Welch's test treated the columns as independent), recomputed here with scipy from
    # the records: each fusion run over its own seed's adapter against that seed's ST-A run
    fusion, st_a = _own_seed_pairs("rte", "fusion_st_a_rf16", "st_a_rf16")
    diffs = [f - b for f, b in zip(fusion, st_a, strict=True)]
    assert len(diffs) == 5 and rte.delta == f"{sum(diffs) / 5:+.2f}", (rte.delta, diffs)  # seeds 42-46
    raw = ttest_rel(fusion, st_a).pvalue
    assert rte.t_p == ("< 0.001" if raw < 0.001 else f"{raw:#.2g}") and rte.holm.endswith(f"({CONFIRMATORY})")
    assert float(rte.holm.split()[0].rstrip("†")) >= raw  # Holm never lowers a p
    assert stats[("sick", "F. w/ ST-A vs MT-A")].holm.endswith(f"({EXPLORATORY})")
    t1 = next(t for t in data.tables if t.key == "table1")
    for j, label in enumerate(t1.labels):
        if "@" in label:  # shared adapters: sensitivity, never marked
            assert all(r.cells[j].marker == "" and r.cells[j].test.family == SENSITIVITY for r in t1.rows)
    notes = [n for n in t1.notes if n.startswith("Adapter-seed sensitivity") or "@s42:" in n]
    assert notes and not any("Holm" in n or "p = " in n for n in notes)
    assert any("seed(s) 43, 44 read the adapters of seed(s) 42 (shared adapters)" in n for n in t1.notes)

    md = (out / "minilm_table1.md").read_text()
    generated = md[md.index("## Table 2"):md.index("## Where fusion attends")]  # not the hand-written discussion
    seen: dict[tuple, set] = {}
    for task, delta, ci, holm, family in _TESTED.findall(generated):
        seen.setdefault((task, delta, ci.strip()), set()).add((holm, family))
    for task, _, delta, ci, holm, family in _STAT.findall(generated):
        seen.setdefault((task, delta, ci.strip()), set()).add((holm, family))
    assert len(seen) == 26 and all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}
    assert {f for v in seen.values() for _, f in v} == {CONFIRMATORY, EXPLORATORY}
    # 24 Table 2 comparisons and 2 averages; every "Holm" in the generated sections is followed by its value and a family name
    for m in re.finditer(r"Holm (\S+)( \S+)?", generated):  # a value is followed by its family's name
        value, family = m.group(1).rstrip("†"), (m.group(2) or "").strip(" ()|,;†")
        assert value in ("p", "value") or family in (CONFIRMATORY, EXPLORATORY), m.group(0)
    findings = data.findings["minilm-l6"]
    assert [f.verdict.split(" (")[0].split(":")[0] for f in findings] == [
        "does not hold on most tasks", "holds", "within seed noise", "in direction only",
        "cannot be shown with 5 seeds"]
    assert all(f.power.count("MDE ") >= 1 for f in findings)
    assert "TOST at ±1.0 point" in findings[-1].ours and "Holm" not in findings[-1].ours  # shown, not tested
    assert findings[-1].ours.endswith(", not run (the verdict says why)")


def test_minilm_table1_pdf_numbers_its_tables_as_the_paper(minilm_table1, tmp_path):
    """Table 1 all methods, Table 2 Fusion against its baselines, Table 3 reduction factors, the findings table
    Table 4, in that order in the PDF; every "Table N" of the text that is not the paper's names a table the PDF
    has; Table 1 is set unscaled in parts of at most five method columns, nothing in it below \footnotesize
    (8 pt in a 10 pt document), and with the compiled PDF nothing is overfull by more than 5 pt. The HTML's wide
    tables scroll with a sticky task column, and Table 2's statistics are there too."""
    data, out = minilm_table1
    n_methods = len(next(t for t in data.tables if t.key == "table1").labels)
    tex = (out / "minilm_table1.tex").read_text()
    body = tex[tex.index(r"\begin{document}"):]
    set_at = [(m.start(), int(m.group(1)) + 1) for m in re.finditer(r"\\setcounter\{table\}\{(\d)\}", body)]
    assert [n for _, n in set_at] == [1, 2, 3, 4], set_at  # each set just before its caption, in the paper's order
    captions = [m.start() for m in re.finditer(r"\\captionof\{table\}|\\caption\{", body)][:4]  # then figures
    assert len(captions) == 4 and all(a < c for (a, _), c in zip(set_at, captions, strict=True))
    assert r"\renewcommand{\thetable}" not in tex and r"\resizebox" not in body.split(r"\section*{Where fusion")[0]
    # Table 1: from its counter to Table 2's
    table1 = body[set_at[0][0]:set_at[1][0]]
    assert r"\fitwidth" not in table1 and r"\scriptsize" not in table1 and r"\tiny" not in table1
    specs = re.findall(r"\\begin\{tabular\}\{l(r*)\}", table1)
    assert len(specs) == -(-n_methods // 5) and all(len(cols) - 1 <= 5 for cols in specs), specs  # majority + <= 5
    assert sum(len(cols) - 1 for cols in specs) == n_methods >= 9  # every method column is in one of the parts
    # every reference to a table of this document names one it has (the paper's own tables are named as such)
    for m in re.finditer(r"(\S+ )?(\S+ )?Table[~ ](\d)", body):
        before = (m.group(1) or "") + (m.group(2) or "")
        if "paper's" in before or "its" in before.split():
            continue
        assert 1 <= int(m.group(3)) <= 4, m.group(0)
    html = (out / "minilm_table1.html").read_text()
    assert html.count('<div class="wide">') >= 4 and "background-attachment: local" in html
    assert "<th>paired t p (paper-style)</th><th>Holm p (family)</th>" in html
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended "
                    "texlive-latex-extra): the table numbers of the compiled PDF are not checked")
    import subprocess

    folder = tmp_path / "pdf"
    shutil.copytree(out, folder)
    for _ in range(2):  # the second pass settles the references
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "minilm_table1.tex"],
                           cwd=folder, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:]
    log = (folder / "minilm_table1.log").read_text(errors="replace")
    assert not re.findall(r"Overfull \\[hv]box \((\d{2,}|[6-9])[.\d]*pt too", log)  # nothing over 5 pt
    assert "multiply defined" not in log and "undefined references" not in log
    aux = (folder / "minilm_table1.aux").read_text()
    numbered = re.findall(r"\\contentsline \{table\}\{\\numberline \{(\d)\}\{(?:\\ignorespaces )?([^.:]+)", aux)
    assert numbered == [("1", "All methods"), ("2", "Fusion against its baselines (as in the paper's Table 2)"),
                        ("3", "ST-A reduction factors"), ("4", "The paper's findings, checked")], numbered


def test_runs_with_predictions_pair_by_row_and_fall_back_to_seeds_without(registry, handmade):  # noqa: F811
    """Where both runs of every paired seed stored their per-example predictions (reproducing the recorded
    accuracy), the comparison is the two-level bootstrap over seeds and dev rows (no "seed-level" mark); one
    run without them, or a file that does not reproduce its record, sends that comparison back to seed level."""
    from benchmark import predictions

    folder = handmade / "handmade"

    def write(label, seed, correct):  # 100 dev rows of rte, the first `correct` right
        cols = {"task": ["rte"] * 100, "split": ["validation"] * 100, "row": list(range(100)),
                "source_row": list(range(100)), "id": [str(i) for i in range(100)],
                "correct": [i < correct for i in range(100)]}
        run = folder / RUN.format(task="rte", label=label, seed=seed)
        entry = predictions.write(run, cols, root=folder)
        r = make_result("rte", label, seed, predictions.accuracy(cols, "rte")) | {"predictions": entry}
        write_json_atomic(run / "result.json", r)

    for seed, (a, b) in enumerate(zip((76, 77, 78), (70, 72, 74), strict=True), 1):
        write("fusion_st_a_rf16", seed, a)
        write("st_a_rf16", seed, b)
    col = load(handmade, "handmade", registry)
    pr = pair(col, "minilm-l6", "rte", "fusion_st_a_rf16", "st_a_rf16")
    assert pr.design.level == "rows" and pr.design.a.shape == (3, 100)
    stats = {(s.task, s.comparison): s for s in report_build.build_data(registry, "handmade", handmade, None)
             .table2[0].stats}
    assert "seed-level" not in stats[("rte", "F. w/ ST-A vs ST-A")].ci
    assert "seed-level" in stats[("cb", "F. w/ ST-A vs ST-A")].ci  # no predictions there
    (folder / RUN.format(task="rte", label="st_a_rf16", seed=2) / predictions.FILE).write_bytes(b"damaged")
    col = load(handmade, "handmade", registry)
    assert pair(col, "minilm-l6", "rte", "fusion_st_a_rf16", "st_a_rf16").design.level == "seeds"


def test_minilm_table1_says_how_cb_heldout_ties_are_broken(minilm_table1):
    """Table 1's notes state the tie rule (the first epoch at the maximum held-out accuracy is kept, as the loop's
    strict '>' does) and count CB's tied runs as the raw result files do; the loop still breaks ties that way."""
    import json

    data, _ = minilm_table1
    t1 = next(t for t in data.tables if t.key == "table1")
    note = next(n for n in t1.notes if n.startswith("Held-out ties:"))
    assert "the kept epoch is the first that reaches the highest held-out accuracy" in note
    assert "if metrics[select] > out.best_selection:" in (ROOT / "benchmark" / "training" / "loop.py").read_text()
    from benchmark.spec import load_registry

    cells = {(t, label) for (b, t, label) in data_cells(t1)}
    seeds = load_registry().experiments["minilm_table1"].report_seeds  # the seeds the tables use
    runs = tied = 0
    for f in sorted((ROOT / "results" / "minilm_table1").glob("cb__*/result.json")):
        r = json.loads(f.read_text())
        if r.get("status") != "finished" or r.get("per_task") or ("cb", r["label"]) not in cells:
            continue
        if seeds is not None and r["seed"] not in seeds:
            continue
        hist = [h for h in r["history"] if h.get("heldout_accuracy") is not None]
        if r.get("selection") != "heldout" or not hist:
            continue
        runs += 1
        top = max(h["heldout_accuracy"] for h in hist)
        tied += sum(h["heldout_accuracy"] == top for h in hist) > 1
        assert r["best_epoch"] == next(h["epoch"] for h in hist if h["heldout_accuracy"] == top)  # the first
    assert f"cb (25-row slice): {tied} of {runs} runs tie" in note, (tied, runs, note)


def data_cells(t1):
    """(backbone, task, column label) of every filled cell of a TableView."""
    return {(t1.backbone, r.task, label) for r in t1.rows for label, c in zip(t1.labels, r.cells, strict=True)
            if c.mean is not None}


@needs_mirror
def test_minilm_table1_prints_its_deviations_under_the_tables_they_affect():
    """The experiment's ``table_notes`` (issue 33: the disclosures on the tables they affect, the MT-A budget on
    Table 2) end up under their own table and no other, once."""
    from benchmark.spec import load_registry

    reg = load_registry()
    own = reg.experiments["minilm_table1"].table_notes
    assert {"table1", "table2", "table3"} <= set(own) and "AllNLI" in own["table1"] and "budget" in own["table2"]
    data = report_build.build_data(reg, "minilm_table1", ROOT / "results", None, data_root=MIRROR)
    views = [(t.key, t.notes) for t in data.tables] + [("table2", t.notes) for t in data.table2] + \
        [("composition", c.notes) for c in data.composition]
    for key, notes in views:
        for other, text in own.items():
            assert notes.count(text.strip()) == (other == key), (key, other)
