"""afbench perf (steps, epochs modes) and the GPU check (its no-CUDA path here;
the GPU-vs-CPU logits test runs where CUDA exists)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.cli import main as cli
from benchmark.perf.epochs import pad_to, spread
from benchmark.perf.gpu_check import METHODS, TOLERANCE, build_model, logits_gap
from benchmark.perf.training_steps import per_round_ratios
from conftest import needs_mirror


def test_per_round_ratios():
    ref = [{"ST-A": 2.0}, {"ST-A": 3.0}]
    ours = [{"ST-A": 1.0}, {"ST-A": 2.0}]
    assert per_round_ratios(ref, ours, "ST-A") == [2.0, 1.5]


def test_pad_to_and_spread():
    b = {"input_ids": torch.tensor([[5, 6], [7, 0]]), "attention_mask": torch.tensor([[1, 1], [1, 0]]),
         "labels": torch.tensor([1, 0])}
    p = pad_to(b, 4, pad_id=0)
    assert p["input_ids"].tolist() == [[5, 6, 0, 0], [7, 0, 0, 0]]
    assert p["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert p["labels"].tolist() == [1, 0]
    mc = {"input_ids": torch.ones(2, 3, 5, dtype=torch.long), "labels": torch.tensor([0, 1])}
    assert pad_to(mc, 8, 0)["input_ids"].shape == (2, 3, 8)
    widths = [10, 90, 30, 70, 50]
    got = spread([[i] for i in range(5)], widths, 2)
    assert sorted(widths[i] for i in got) == [30, 70]  # ranks 1 and 3 of 5: a short and a long one
    assert spread([[0]] * 5, widths, 0) == list(range(5)) == spread([[0]] * 5, widths, 9)


def test_perf_steps_end_to_end_tiny(tmp_path):
    """The step table on a tiny setting: both tables, and the raw per-round timings beside them."""
    out = tmp_path / "perf.md"
    assert cli(["perf", "--adapters", "2", "--steps", "1", "--rounds", "2", "--batch-size", "2",
                "--length", "16", "--precision", "fp32", "--no-memory", "--out", str(out)]) == 0
    md, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert "## As the committed runs train (headline)" in md and "## First-token setup" in md
    assert "| ST-A |" in md and "| Fusion N=2 |" in md
    assert len(raw["rounds"]) == 2
    for r in raw["rounds"]:
        assert set(r) == {"ours", "ours_first_token", "ours_stock"}
        assert set(r["ours"]) == {"ST-A", "Fusion N=2"} and all(v > 0 for v in r["ours"].values())
    assert str(tmp_path) not in md + json.dumps(raw)
    assert cli(["perf", "--adapters", "", "--steps", "1", "--rounds", "1", "--batch-size", "2", "--length", "8",
                "--no-first-token", "--precision", "fp32", "--no-memory", "--out", str(out)]) == 0
    assert set(json.loads(out.with_suffix(".json").read_text())["rounds"][0]) == {"ours", "ours_stock"}
    assert "First-token setup not run" in out.read_text()


@needs_mirror
def test_perf_epochs_end_to_end_tiny(tmp_path):
    out = tmp_path / "ep.md"
    assert cli(["perf", "--mode", "epochs", "--tasks", "rte", "--max-rows", "96", "--steps", "1",
                "--rounds", "1", "--out", str(out)]) == 0
    md, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    t = raw["tasks"]["rte"]
    assert t["rows"] == 96 and t["pad128"]["batches"] == 3 and t["grouped"]["timed"] == 1
    assert t["pad128"]["real_tokens"] == t["batch_max"]["real_tokens"] == t["grouped"]["real_tokens"]
    assert t["pad128"]["computed_tokens"] == 96 * 128
    assert t["grouped"]["computed_tokens"] < t["batch_max"]["computed_tokens"] <= t["pad128"]["computed_tokens"]
    assert set(raw["rounds"][0]["rte"]) == {"pad128", "batch_max", "grouped"}
    assert "| rte | 96 (2490) |" in md


@needs_mirror
def test_perf_epochs_bf16_profiles_the_grouped_step(tmp_path):
    from benchmark.modeling.compute import Compute
    try:
        Compute(precision="bf16").check(torch.device("cpu"))
    except Exception as e:  # noqa: BLE001 - the device's own refusal says why
        pytest.skip(f"no native bf16 on this CPU: {e}")
    out = tmp_path / "ep.md"
    assert cli(["perf", "--mode", "epochs", "--precision", "bf16", "--tasks", "rte", "--max-rows", "64",
                "--steps", "1", "--rounds", "1", "--out", str(out)]) == 0
    md, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    prof = raw["grouped_step_profile_ms"]["rte"]
    assert set(prof) == {"fp32", "bf16"}
    assert raw["tasks"]["rte"]["grouped"]["timed"] == 1  # the profile's steps: the timed grouped batch
    for p in prof.values():
        assert p["linear"] > 0 and p["other"] > 0 and 1 <= p["width_tokens"] <= 128
    assert "Where a grouped rte step spends its time" in md and "| bf16 |" in md and "(Amdahl's law" in md
    assert "grouped_bf16" in raw["rounds"][0]["rte"] and "rte " in md and "(per round " in md


def test_epoch_profile_lines_estimate_the_bf16_step_by_amdahl():
    from benchmark.perf.epochs import profile_lines
    kinds = {"attention": 1.0, "linear": 6.0, "dropout masks": 1.0, "other": 2.0}
    prof = {"fp32": {**kinds, "width_tokens": 24.0}, "bf16": {**kinds, "linear": 3.0, "width_tokens": 24.0}}
    lines = profile_lines("sst2", prof)
    assert "mean padded width 24.0 tokens" in lines[0] and "| fp32 | 1.0 (10%) | 6.0 (60%) | 1.0 (10%) | 2.0 (20%) |" in lines
    # linear 60 % of the step, 2x faster: 1 / (0.4 + 0.3) = 1.43x; all operators 10 / 7 = 1.43x;
    # 1.8x needs 0.6 / (1/1.8 - 0.4) = 3.86x
    assert lines[-1] == (
        "bf16 speeds up the linear layers 2.00x (6.0 -> 3.0 ms); they are 60 % of the fp32 step's profiled operator "
        "time. With every other operator as in fp32 the step would be 1.43x faster (Amdahl's law, an estimate: the "
        "profiler's overhead weighs on small operators); all operators together went 1.43x faster. For 1.8x with the "
        "rest as in fp32 the linear layers would have to be 3.86x faster in bf16 (this CPU's fp32 and bf16 GEMM "
        "peaks: `reports/perf_roofline.md`).")
    prof["fp32"]["linear"] = 1.0  # linear 1/5 of the step: 1.8x is out of reach whatever bf16 does to them
    assert profile_lines("sst2", prof)[-1].endswith(
        "The linear layers alone cannot give 1.8x: taking no time at all, with the rest as in fp32, the step would "
        "be 1.25x faster, so the rest has to shrink too.")


def test_perf_epochs_rejects_multiple_choice(tmp_path, capsys):
    assert cli(["perf", "--mode", "epochs", "--tasks", "socialiqa", "--out", str(tmp_path / "x.md")]) == 2
    assert "classification" in capsys.readouterr().err


def test_bert_base_random_shapes():
    from benchmark.perf.backbones import perf_backbone

    bb = perf_backbone("bert-base-random")
    cfg = bb.make().config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (12, 768, 12)
    assert bb.reference == {"bert_config": {k: getattr(cfg, k) for k in bb.reference["bert_config"]}}


def test_gpu_check_without_cuda_says_so_in_one_line(monkeypatch, capsys):
    from benchmark.perf import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA device" in out[0]


def test_gpu_check_models_exercise_their_method():
    """The checked models are not trivially the bare encoder: turning the method off changes the logits."""
    for m in METHODS:
        model, batch = build_model(m)
        with torch.no_grad():
            on = model(head="h", **batch)
            model.set_active(None)
            off = model(head="h", **batch)
        assert (on - off).abs().max() > 0.1, m
        assert logits_gap(m, "cpu") == (0.0, on.abs().max().item())


@pytest.mark.cuda
@pytest.mark.parametrize("method", METHODS)
def test_gpu_logits_match_cpu(method):
    gap, _ = logits_gap(method, "cuda")
    assert gap <= TOLERANCE
