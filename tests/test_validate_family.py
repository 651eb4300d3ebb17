"""``afbench validate`` checks each backbone's family against the layout registry (a family without a
layout, such as ALBERT, would otherwise pass and fail at its first run), without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import sys; from benchmark.cli import main; rc = main(['validate', sys.argv[1], '--no-data']); "
         "print('rc', rc, 'torch' in sys.modules)")


def _validate(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, str(folder)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_a_backbone_family_without_a_layout_is_one_paragraph_and_no_torch(tmp_path):
    tiny = (ROOT / "specs" / "backbones" / "tiny-bert.yaml").read_text()
    (tmp_path / "backbones").mkdir()
    bad = tmp_path / "backbones" / "tiny-albert.yaml"
    bad.write_text(tiny.replace("model_type: bert", "model_type: albert"))
    out = _validate(tmp_path)
    assert "rc 2 False" in out.stdout, out.stdout + out.stderr
    err = out.stderr.strip()
    assert err.count("Error") == 1 and "Traceback" not in err
    assert "tiny-albert.yaml" in err and "model_type" in err and "no encoder layout for model_type 'albert'" in err
    assert "benchmark/modeling/layout.py" in err
    bad.write_text(tiny)
    assert "rc 0 False" in _validate(tmp_path).stdout  # a family with a layout passes, still without torch
