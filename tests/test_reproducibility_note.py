"""Every report says what is bit-exact and what is not (issue 38): same torch build, CPU family and thread count
reproduce a run exactly; another thread count does not, with the measured examples; a report whose runs were
trained with different thread counts says so."""

from __future__ import annotations

from benchmark.cli import main
from benchmark.records import scan_experiment
from benchmark.report.reruns import thread_note
from conftest import ROOT, needs_mirror


@needs_mirror
def test_the_report_states_what_is_bit_exact(tmp_path):
    assert main(["report", "quick", "--out-dir", str(tmp_path)]) == 0
    for ext in ("md", "html", "tex"):
        text = (tmp_path / f"quick.{ext}").read_text()
        assert "same number of torch threads" in text and "3 of 5 dev accuracies exactly" in text, ext
        arrow = r"$\rightarrow$" if ext == "tex" else "→"
        assert f"49.00 {arrow} 48.80" in text and f"51.99 {arrow} 51.62" in text, ext
        assert "different thread counts" not in text, ext  # quick's 47 runs: 2 threads each


def test_a_report_of_mixed_thread_counts_says_so():
    results = scan_experiment(ROOT / "results", "minilm_table1").results
    assert "trained with 1 and 2 torch threads" in thread_note(results)
    assert thread_note(scan_experiment(ROOT / "results", "quick").results) == ""
