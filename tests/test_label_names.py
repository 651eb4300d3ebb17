"""Labels named in the data map by name (issue 38): `label: {column: Topic, names: [animal, vehicle]}` over a
column holding "animal"/"vehicle" needs no label.map; a value that is no name is one paragraph naming
label.names, on its own line after what was printed before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from benchmark.cli import main
from conftest import ROOT


def _topic(tmp_path, names="[animal, vehicle]"):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "train.csv").write_text("Text,Topic\n" + "".join(
        f"row {i},{'animal' if i % 3 else 'vehicle'}\n" for i in range(12)))
    (d / "topic.yaml").write_text(textwrap.dedent(f"""
        include: _defaults.yaml
        data_files: {{train: train.csv, validation: train.csv}}
        type: classification
        input: {{text: "{{{{ Text }}}}"}}
        label: {{column: Topic, names: {names}}}
    """))
    return d


def test_labels_equal_to_names_map_to_their_class(tmp_path, capsys):
    d = _topic(tmp_path)
    assert main(["data", "topic", "--specs", str(d)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "labels: animal: 8, vehicle: 4" in out and "label 1 (vehicle)" in out


def test_a_value_that_is_no_name_is_one_paragraph_on_its_own_line(tmp_path):
    d = _topic(tmp_path, "[animal, car]")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": ""}
    env.pop("PYTHONUNBUFFERED")
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "data", "topic", "--specs", str(d)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    assert lines[0].startswith("task topic (classification, 2 classes)")  # printed first, shown first
    err = [line for line in lines if "label values" in line]
    assert len(err) == 1 and err[0].startswith("Error in ") and "at field 'label.names'" in err[0]
    assert "'vehicle' (4 rows)" in err[0] and "label.names ['animal', 'car']" in err[0]
