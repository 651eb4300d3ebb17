"""What a new user meets first (issue 24): specs outside specs/, an empty or unmatched plan explained by
status / plan / migrate as by report, a one-adapter fusion warned about, an implied duplicate explained."""

from __future__ import annotations

import textwrap

from benchmark.cli import main
from benchmark.runner.results import write_json_atomic


def _mine(tmp_path, sources="[mytask]"):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "train.csv").write_text("a,y\n" + "".join(f"row {i},{i % 2}\n" for i in range(20)))
    (d / "mytask.yaml").write_text(textwrap.dedent("""
        include: _defaults.yaml
        data_files: {train: train.csv, validation: train.csv}
        type: classification
        input: {text: "{{ a }}"}
        label: {column: y, names: [n, p], map: {"0": 0, "1": 1}}
    """))
    (d / "myexp.yaml").write_text(textwrap.dedent(f"""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{{tasks: [mytask], methods: [st_a, fusion_st_a]}}]
        fusion: {{sources: {sources}}}
    """))
    return d


def test_validating_one_file_finds_the_task_beside_it(tmp_path, capsys):
    d = _mine(tmp_path)
    assert main(["validate", str(d / "myexp.yaml"), "--no-data"]) == 0, capsys.readouterr().err


def test_unknown_experiment_mentions_specs(capsys):
    assert main(["plan", "myexp"]) == 2
    err = capsys.readouterr().err
    assert "--specs" in err and "specs/experiments/myexp.yaml" in err


def test_reporting_an_unknown_experiment_mentions_specs(tmp_path, capsys):
    assert main(["report", "myexp", "--results-dir", str(tmp_path / "results"), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no experiment spec named 'myexp'" in err and "afbench report myexp --specs DIR" in err


def test_reporting_a_broken_experiment_spec_gives_its_own_error(tmp_path, capsys):
    d = _mine(tmp_path)
    (d / "myexp.yaml").write_text((d / "myexp.yaml").read_text() + "bogus_key: 1\n")
    assert main(["report", "myexp", "--specs", str(d), "--results-dir", str(tmp_path / "results"),
                 "--out-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "bogus_key" in err and "no experiment spec named" not in err


def test_a_one_adapter_fusion_is_warned_about(tmp_path, capsys):
    d = _mine(tmp_path)
    assert main(["plan", "myexp", "--specs", str(d), "--results-dir", str(tmp_path / "results")]) == 0
    err = capsys.readouterr().err
    assert "warning: fusion_st_a_rf16 on 'mytask' fuses 1 adapter(s) (mytask)" in err and "fusion: sources:" in err


def test_an_implied_stage1_twin_of_a_grid_run_is_explained(tmp_path, capsys):
    d = _mine(tmp_path)
    text = (d / "myexp.yaml").read_text().replace("fusion: {sources: [mytask]}",
                                                  "fusion: {sources: [mytask], caps: {max_train_rows: 10}}")
    (d / "myexp.yaml").write_text(text)
    assert main(["plan", "myexp", "--specs", str(d), "--results-dir", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "(implied: a fusion source) and grid run" in out and "differ in caps" in out


def test_status_plan_and_migrate_explain_results_the_plan_does_not_have(tmp_path, capsys, monkeypatch):
    """Results trained on the mirror, looked at without AFBENCH_DATA_DIR: every command says why none match."""
    d = _mine(tmp_path)
    results = tmp_path / "results"
    stale = {"schema": 1, "id_scheme": 2, "status": "finished", "run_id": "mytask__st_a_rf16__tiny-bert__s1__old",
             "experiment": "myexp", "task": "mytask", "label": "st_a_rf16", "backbone": "tiny-bert", "seed": 1,
             "data": {"source": "mirror"}, "best_metric": 50.0}
    write_json_atomic(results / "myexp" / stale["run_id"] / "result.json", stale)
    monkeypatch.delenv("AFBENCH_DATA_DIR", raising=False)
    for cmd in (["status"], ["plan"], ["migrate", "--dry-run"]):
        assert main([*cmd, "myexp", "--specs", str(d), "--results-dir", str(results)]) == 0
        out = capsys.readouterr().out
        assert "1 result(s) under" in out and "trained on the offline data mirror" in out, (cmd, out)
        assert "AFBENCH_DATA_DIR" in out


def test_a_one_adapter_fusion_report_says_its_attention_is_100_by_construction(tmp_path, capsys):
    """mytask fuses only its own adapter; other fuses two (its own and mytask's): only mytask's row is marked."""
    d, res, rep = _mine(tmp_path), tmp_path / "results", tmp_path / "reports"
    (d / "other.yaml").write_text((d / "mytask.yaml").read_text())
    exp = d / "myexp.yaml"
    exp.write_text(exp.read_text().replace("tasks: [mytask]", "tasks: [mytask, other]"))
    common = ["--specs", str(d), "--results-dir", str(res)]
    assert main(["run", "myexp", *common]) == 0, capsys.readouterr().out
    assert main(["report", "myexp", *common, "--out-dir", str(rep)]) == 0
    rows = {line.split(" | ")[2]: line for line in (rep / "myexp.md").read_text().splitlines()
            if line.startswith("| tiny-bert | F. w/ ST-A |")}
    assert "100.0% (its only adapter: 100% by construction)" in rows["mytask"]
    assert "by construction" not in rows["other"]
    assert "$^\\ast$ its only adapter: 100\\% by construction" in (rep / "myexp.tex").read_text()
