"""``afbench dashboard``: one self-contained page over every experiment, checked against the result files and,
where Debian's ``chromium`` is installed, in a real headless browser (tests/browser.py, DevTools protocol)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import statistics
import subprocess
import sys

import pytest

from browser import chromium_path, open_page
from conftest import ROOT

COMMITTED = ROOT / "reports" / "dashboard.html"
RESULTS = ROOT / "results"


def _raw(experiment: str, run_id: str) -> dict:
    return json.loads((RESULTS / experiment / run_id / "result.json").read_text())


def _scores(rec: dict, task: str) -> float:
    return rec["per_task"][task]["best_metric"] if rec.get("per_task") else rec["best_metric"]


def _front(points: list[tuple[float, float]]) -> set[int]:
    """Indices of the non-dominated (cost, accuracy) points: lower cost and higher accuracy are better."""
    return {i for i, (c, a) in enumerate(points)
            if not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i)}


def test_the_cli_writes_one_page_over_every_experiment(tmp_path):
    """A real ``afbench dashboard`` process over two experiments (one result damaged): every finished run is
    a point's member, the damaged file is named, the page holds no machine path and loads nothing."""
    res = tmp_path / "results"
    for exp in ("minilm_batching", "minilm_bf16"):
        shutil.copytree(RESULTS / exp, res / exp, ignore=shutil.ignore_patterns("*.safetensors", "modules.json"))
    broken = next((res / "minilm_batching").glob("sick__st_a_rf16__*s44*"))
    (broken / "result.json").write_text("{}")
    out = subprocess.run([sys.executable, "-m", "benchmark.cli", "dashboard", "--results-dir", str(res),
                          "--out-dir", str(tmp_path / "reports")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    html = (tmp_path / "reports" / "dashboard.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="af-data">(.*?)</script>', html, re.S)[1])
    ids = sorted(rid for p in data["points"] for rid in p["run_ids"])
    assert len(ids) == 6 + 12 - 1 == data["runs"]
    assert f"minilm_batching/{broken.name}/result.json" in " ".join(data["problems"])
    assert str(tmp_path) not in html and "src=" not in html and "href=\"http" not in html
    # minilm_bf16 recorded every cost; minilm_batching (older) none: said per axis, by run id
    lacking = data["lacking"]["train_seconds"]
    assert lacking == sorted(p.name for p in (res / "minilm_batching").iterdir() if p.is_dir() and p != broken)
    st_a = next(p for p in data["points"] if p["experiment"] == "minilm_bf16" and p["method"] == "st_a_rf16")
    recs = [_raw("minilm_bf16", rid) for rid in st_a["run_ids"]]
    assert st_a["accuracy"] == pytest.approx(statistics.fmean(r["best_metric"] for r in recs))
    assert st_a["x"]["train_seconds"] == pytest.approx(statistics.fmean(r["train_seconds"] for r in recs))
    assert st_a["seeds"] == [42, 43, 44] and st_a["method_name"] == "ST-A"
    assert st_a["backbone_name"] == "minilm-l6 (stands in for bert-base-uncased)"
    lo, hi = st_a["ci95"]
    assert lo < st_a["accuracy"] < hi


def test_a_point_is_one_setting_over_distinct_seeds():
    """Runs of one label that differ in more than the seed (fusion over the seed-42 adapters, a stage-1
    source, other caps after a spec edit) are points of their own, each seed at most once."""
    from benchmark.report.dashboard import collect

    data, finished = collect(RESULTS, {})
    assert all(len(set(p["seeds"])) == len(p["seeds"]) for p in data["points"])
    assert {rid for p in data["points"] for rid in p["run_ids"]} == {r.run_id for r in finished}
    names = {(p["task"], p["method_name"]) for p in data["points"] if p["experiment"] == "minilm_table1"}
    assert {("rte", "Fusion w/ ST-A"), ("rte", "Fusion w/ ST-A (adapters s42)"), ("mnli", "ST-A (fusion source)")} <= names


def test_the_committed_dashboard_names_no_machine_path():
    html = COMMITTED.read_text()
    assert not re.search(r"(/work/|/home/|/tmp/|/root/|[A-Z]:\\\\)", html)
    assert "<script src" not in html and "<link" not in html


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_the_committed_dashboard_in_headless_chromium(tmp_path):
    """reports/dashboard.html in a real browser: no error, no request but the file itself, filters and the
    axis change what is drawn, the Pareto rings are the non-dominated points, hover names run ids and seeds,
    the CSV (also as downloaded) matches the result files."""
    with open_page(COMMITTED, tmp_path / "profile") as page:
        data = page.js("window.afDashboard.data")
        points = data["points"]
        circles = "[...document.querySelectorAll('#plot circle')]"
        drawn = lambda: page.js(f"{circles}.map(c => +c.dataset.index)")  # noqa: E731
        ringed = lambda: page.js(f"{circles}.filter(c => c.classList.contains('front')).map(c => +c.dataset.index)")  # noqa: E731
        first = data["axes"][0]["key"]
        assert sorted(drawn()) == [i for i, p in enumerate(points) if p["x"][first] is not None]

        # one task, then time on the x axis: only the task's points that recorded a training time
        task = "sick"
        page.js("document.querySelector('#filters fieldset:nth-child(2) button[data-all=\"0\"]').click()")
        assert drawn() == []
        page.js(f"document.querySelector('input[data-dim=task][value={task}]').click()")
        mine = [i for i, p in enumerate(points) if p["task"] == task]
        assert sorted(drawn()) == mine
        page.js("const s = document.getElementById('axis'); s.value = 'train_seconds';"
                "s.dispatchEvent(new Event('change'))")
        timed = [i for i in mine if points[i]["x"]["train_seconds"] is not None]
        assert sorted(drawn()) == timed and 0 < len(timed) < len(mine)
        front = _front([(points[i]["x"]["train_seconds"], points[i]["accuracy"]) for i in timed])
        assert sorted(ringed()) == sorted(timed[k] for k in front)
        assert f"{len(mine) - len(timed)} selected point(s) lack" in page.js("document.getElementById('undrawn').textContent")

        # hover: the point's run ids, seeds and interval
        i = timed[0]
        page.js(f"document.querySelector('#plot circle[data-index=\"{i}\"]').dispatchEvent(new MouseEvent('mouseenter'))")
        tip = page.js("document.getElementById('tip').innerText")
        assert all(rid in tip for rid in points[i]["run_ids"]) and "95% CI" in tip
        assert "seeds " + ", ".join(map(str, points[i]["seeds"])) in tip

        # the CSV of the selection, against the result files themselves
        text = page.js("window.afDashboard.csv()")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(mine)
        for row in rows:
            recs = [_raw(row["experiment"], rid) for rid in row["run_ids"].split()]
            assert {r["task"] or row["task"] for r in recs if r.get("task")} <= {task}
            assert float(row["accuracy"]) == pytest.approx(statistics.fmean(_scores(r, task) for r in recs))
            assert row["seeds"] == " ".join(str(r["seed"]) for r in recs)
            assert float(row["trainable_params"]) == pytest.approx(statistics.fmean(r["params"]["trained"] for r in recs))
            secs = [r["train_seconds"] for r in recs if r.get("train_seconds")]
            assert (float(row["train_seconds"]) == pytest.approx(statistics.fmean(secs))) if secs else row["train_seconds"] == ""
        assert sum(row["on_front"] == "1" for row in rows) == len(front)

        # the button downloads the same text
        downloads = tmp_path / "downloads"
        page.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        page.js("document.getElementById('csv').click()")
        for _ in range(100):
            got = list(downloads.glob("*.csv")) if downloads.exists() else []
            if got:
                break
            page.js("new Promise(r => setTimeout(r, 100))")
        assert got and got[0].read_text() == text
        assert page.errors() == []
        assert {u.split(":", 1)[0] for u in page.requests()} <= {"file", "blob"}


def test_the_dashboard_uses_each_experiments_report_seeds():
    """An experiment's ``report_seeds`` keep its other seeds off the dashboard, as they are off its report's tables."""
    from benchmark.report.dashboard import collect

    every, _ = collect(RESULTS, {})
    kept, finished = collect(RESULTS, {}, {"minilm_table1": [42, 43]})
    assert all(r.seed in (42, 43) for r in finished if r.experiment == "minilm_table1")
    assert any(44 in p["seeds"] for p in every["points"] if p["experiment"] == "minilm_table1")
    assert not any(44 in p["seeds"] for p in kept["points"] if p["experiment"] == "minilm_table1")
