"""A report over a user's own tasks says nothing of the paper's NLI reading (issue 38): no "the paper's Figure 4
finds RTE and CB attending mostly to MNLI", no "NLI-like" or "rank of mnli" column, in Markdown, HTML and LaTeX;
a report whose fusions fuse the paper's entailment adapters keeps them (minilm_rte_cb)."""

from __future__ import annotations

from test_newcomer import _mine

from benchmark.cli import main
from conftest import needs_mirror


def test_a_report_over_own_tasks_has_no_paper_attention_prose_or_columns(tmp_path, capsys):
    d, res, rep = _mine(tmp_path), tmp_path / "results", tmp_path / "reports"
    (d / "other.yaml").write_text((d / "mytask.yaml").read_text())
    exp = d / "myexp.yaml"
    exp.write_text(exp.read_text().replace("[mytask]", "[mytask, other]"))
    common = ["--specs", str(d), "--results-dir", str(res)]
    assert main(["run", "myexp", *common]) == 0, capsys.readouterr().out
    assert main(["report", "myexp", *common, "--out-dir", str(rep)]) == 0
    md = (rep / "myexp.md").read_text()
    assert "## Where fusion attends" in md and "| tiny-bert | F. w/ ST-A | other |" in md
    for ext in ("md", "html", "tex"):
        text = (rep / f"myexp.{ext}").read_text()
        assert "paper's Figure 4" not in text and "NLI-like" not in text and "of mnli" not in text, ext


@needs_mirror
def test_a_report_fusing_the_papers_entailment_adapters_keeps_them(tmp_path):
    assert main(["report", "minilm_rte_cb", "--out-dir", str(tmp_path)]) == 0  # the committed results
    md = (tmp_path / "minilm_rte_cb.md").read_text()
    assert "the paper's Figure 4 finds RTE and CB" in md and "| NLI-like adapters | rank of mnli |" in md
