"""Environment variables are read by the CLI, once, as the defaults of their flags, and passed down: the
runner's results root and the reporter's paper file and data folder are plain arguments."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli import build_parser, read_environment
from benchmark.report import published
from benchmark.runner.results import results_root

ENV = {"AFBENCH_DATA_DIR": "/mirror", "AFBENCH_RESULTS_DIR": "/res", "AFBENCH_PAPER_FILE": "/paper.yaml"}


def test_each_variable_is_the_default_of_its_flag_and_a_flag_wins():
    args = read_environment(build_parser().parse_args(["report", "x"]), ENV)
    assert (args.data_dir, args.results_dir, args.paper) == ("/mirror", "/res", "/paper.yaml")
    args = read_environment(build_parser().parse_args(["report", "x", "--results-dir", "mine", "--paper", "p.yaml",
                                                       "--data-dir", "d"]), ENV)
    assert (args.data_dir, args.results_dir, args.paper) == ("d", "mine", "p.yaml")
    args = read_environment(build_parser().parse_args(["status", "x"]), {})
    assert (args.data_dir, args.results_dir) == (None, None)
    # a command without the flag still gets the value (afbench perf --mode epochs reads args.data_dir)
    assert read_environment(build_parser().parse_args(["list"]), ENV).data_dir == "/mirror"


def test_the_runner_and_the_reporter_read_no_environment(monkeypatch, tmp_path):
    for var in ENV:
        monkeypatch.setenv(var, str(tmp_path / "nowhere"))
    assert results_root(None) == Path("results") and results_root("r") == Path("r")
    assert published.load(None)[1].startswith("bundled copy")


def test_the_data_layer_reads_no_environment(monkeypatch, registry, tmp_path):
    """AFBENCH_DATA_DIR is the CLI's default of --data-dir only: a library call names its mirror or reads
    the Hub (no file is read here: locating a Hub split and fingerprinting it need no network)."""
    from benchmark.data import sources

    monkeypatch.setenv("AFBENCH_DATA_DIR", str(tmp_path))
    rte = registry.tasks["rte"]
    assert sources.locate(rte, "train").kind == "hub"
    assert sources.fingerprint(rte, "train") == "hub:nyu-mll/glue:rte:train"
    assert sources.fingerprint(rte, "train", tmp_path) == "unavailable"  # the folder given, not the Hub
