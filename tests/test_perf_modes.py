"""The roofline's FLOP count against torch's profiler count, and the roofline, inference and bf16/memory
step modes end to end on a tiny random BERT (timings are not checked: only that every cell is measured)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmark.cli import main as cli
from benchmark.modeling.compute import bf16_unsupported
from benchmark.modeling.cpu_kernels import set_cpu_kernels
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.perf import harness
from benchmark.perf.harness import gemm_peak
from benchmark.perf.steps import Head, make_batch
from benchmark.plan.flops import Shape, step_flops
from benchmark.spec.schema import AdapterParams, FusionParams

BF16 = bf16_unsupported(torch.device("cpu")) is None
TINY = ["--backbone", "bert-tiny-random", "--steps", "1", "--rounds", "1", "--batch-size", "2", "--length", "16"]


def _setup(make, setup: str, n: int):
    torch.manual_seed(0)
    model = AdapterModel(make())
    model.encoder.set_attn_implementation("eager")  # attention as bmm: what the profiler counts
    names = [f"a{i}" for i in range(max(n, 1))]
    for a in names:
        model.add_adapter(a, AdapterParams(type="houlsby" if setup == "houlsby" else "pfeiffer", reduction_factor=4))
    if setup == "fusion":
        model.add_fusion("f", names, FusionParams())
        model.set_active(Fuse("f"))
        sel = Modules(fusions=["f"])
    elif setup in ("full", "head"):
        model.set_active(None)
        sel = Modules(encoder=setup == "full")
    else:
        model.set_active(names[0])
        sel = Modules(adapters=names[:1])
    model.train_only(sel)
    set_cpu_kernels(model, "stock")  # nn.Linear -> addmm/mm (oneDNN's linear is not in the profiler's table)
    return model.train()


@pytest.mark.parametrize("setup,n", [("st_a", 0), ("houlsby", 0), ("full", 0), ("head", 0), ("fusion", 2),
                                     ("fusion", 5)])
def test_analytic_flops_equal_the_profiler_count(tiny_bert, setup, n):
    _, make = tiny_bert
    model = _setup(make, setup, n)
    head = Head(model.hidden_size, pooling="mean")
    batch = make_batch(model.config.vocab_size, 4, 16)
    with FlopCounterMode(display=False) as counter:
        h = model.encode(batch["input_ids"], batch["attention_mask"])
        F.cross_entropy(head(h, batch["attention_mask"]), batch["labels"]).backward()
    count = step_flops(Shape.of(model.config, 4, 16), setup, n=n, rf=4)
    assert count.total == counter.get_total_flops()


def test_a_frozen_encoder_backward_stops_at_the_lowest_adapter():
    one = Shape(layers=1, hidden=64, intermediate=256, batch=2, length=8)
    st = step_flops(one, "st_a", rf=16)
    assert st.backward["encoder"] == 0  # one layer: nothing of the encoder lies above its adapter
    two = step_flops(Shape(2, 64, 256, 2, 8), "st_a", rf=16)
    # layer 2's encoder: input grads only (no weight grads), attention products both operands
    layer = two.forward["encoder"] // 2
    attn = 2 * 2 * 2 * 8 * 8 * 64
    assert two.backward["encoder"] == (layer - attn) + 2 * attn
    full = step_flops(Shape(2, 64, 256, 2, 8), "full")
    assert full.backward["encoder"] == 2 * full.forward["encoder"]
    # ours vs the reference fusion: K and V on every adapter output cost the reference ~2N H² per token
    ours, ref = (step_flops(Shape(6, 384, 1536, 32, 128), "fusion", n=16, impl=i).total for i in ("ours", "reference"))
    assert ref > 3 * ours


def test_gemm_peak_measures_each_shape():
    got = gemm_peak(torch.float32, "cpu", ((64, 64, 64), (128, 32, 64)), min_seconds=0.01)
    assert set(got["per_shape"]) == {"64x64x64", "128x32x64"} and got["gflops"] == max(got["per_shape"].values()) > 0
    # the best of torch.mm and, on the CPU, oneDNN's linear (the GEMM the fast kernels run), named per shape
    assert set(got["library"]) == set(got["per_shape"]) and set(got["library"].values()) <= {"torch.mm", "oneDNN"}
    libs = harness.gemm_libraries("cpu")
    a, b = torch.randn(8, 4), torch.randn(4, 3)
    for name, mm in libs.items():  # both compute a @ b (oneDNN from the weight layout [n, k])
        torch.testing.assert_close(mm(a, b if name == "torch.mm" else b.t().contiguous()), a @ b)


def test_roofline_mode_end_to_end_tiny(tmp_path):
    out = tmp_path / "roof.md"
    assert cli(["perf", "--mode", "roofline", *TINY, "--adapters", "2", "--gemm-seconds", "0.01",
                "--out", str(out)]) == 0
    md, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert "## fp32" in md and "| Houlsby |" in md and "| Full |" in md and "| Fusion N=2 |" in md
    assert ("## bf16" in md) == BF16 and raw["precisions"] == (["fp32", "bf16"] if BF16 else ["fp32"])
    assert set(raw["rounds"][0]["ours_fp32"]) == {"ST-A", "Houlsby", "Full", "Fusion N=2"}
    assert raw["flops_per_step"]["ours"]["Fusion N=2"] < raw["flops_per_step"]["reference"]["Fusion N=2"]
    assert "## Targets" in md and "Revision" in md and raw["provenance"]["versions"]["torch"]
    assert str(tmp_path) not in md + json.dumps(raw)
    # the compiled ST-A step beside eager (one per round), or why there is none; its target either way
    if raw["compiled_missing"] is None:
        assert len(raw["compiled_st_a_fp32_seconds"]) == len(raw["rounds"]) and "| ST-A, compiled |" in md
    else:
        assert raw["compiled_st_a_fp32_seconds"] == [] and f"No compiled row: {raw['compiled_missing']}" in md
    assert any(t["text"].startswith("compiled ST-A step in fp32") for t in raw["targets"])
    assert set(raw["gemm_peak_gflops"]["fp32"]["library"].values()) <= {"torch.mm", "oneDNN"}
    # where ours' ST-A step spends its time: the fast kernels' dropout masks are their own kind
    prof = raw["st_a_step_profile_ms"]["ST-A"]
    assert prof["linear"] > 0 and prof["attention"] > 0 and prof["dropout masks"] > 0
    assert "Where ours' ST-A step (fp32) spends its time" in md and "| ST-A | " in md
    if raw["compiled_missing"] is None:  # the compiled step profiled too: its GEMMs are extern kernels, still linear
        assert raw["st_a_step_profile_ms"]["ST-A, compiled"]["linear"] > 0 and "| ST-A, compiled | " in md


def test_profile_kinds_by_operator_name():
    from benchmark.perf.inference_steps import op_kind

    assert [op_kind(n) for n in ("mkldnn::_linear_pointwise", "aten::addmm", "_FrozenLinearBackward", "aten::bmm",
                                 "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax_backward_data",
                                 "aten::random_", "aten::where", "aten::ge", "aten::gelu", "aten::gelu_backward",
                                 "aten::native_layer_norm", "aten::_log_softmax", "aten::_softmax")] == \
        ["linear", "linear", "linear", "attention", "attention", "attention", "dropout masks", "dropout masks",
         "dropout masks", "other", "other", "other", "other", "attention"]


def test_inference_mode_end_to_end_tiny(tmp_path):
    out = tmp_path / "inf.md"
    assert cli(["perf", "--mode", "inference", *TINY, "--adapters", "2", "--reps", "2", "--infer-batch", "4",
                "--no-memory", "--out", str(out)]) == 0
    md, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    r = raw["rounds"][0]
    assert set(r) == ({"ours_fp32", "ours_bf16"} if BF16 else {"ours_fp32"})
    assert all(v["latency_ms"] > 0 and v["examples_per_second"] > 0 for k in r for v in r[k].values())
    assert "| Fusion N=2 |" in md and "Revision" in md and "Fusion N=16" not in md  # no N=16: no target row
    # ST-A's targets are listed, not measured: no reference side ran
    assert [t["met"] for t in raw["targets"]] == [None] * 2 * len(raw["precisions"]) and "not measured" in md
    # timed under no_grad; the one-layer check of inference_mode beside it, per precision
    assert raw["grad_context"] == "torch.no_grad" and "Why `torch.no_grad`" in md
    ms = raw["linear_context_check"]["ms"]
    assert set(ms) == {"no_grad", "inference_mode"} and all(set(v) == set(raw["precisions"]) for v in ms.values())
    assert all(t > 0 for v in ms.values() for t in v.values())
    # what bounds the ST-A ratio: ours' forward split into attention, linear layers and the rest, per precision
    prof = raw["st_a_profile_ms"]
    assert set(prof) == set(raw["precisions"]) and all(set(v) == {"attention", "linear", "dropout masks", "other"}
                                                       for v in prof.values())
    assert all(v["dropout masks"] == 0 for v in prof.values())  # eval: no dropout
    assert all(v["attention"] > 0 and v["linear"] > 0 for v in prof.values()) and "Where ours ST-A forward" in md
    # the memory pass: one fresh process per side, setup and precision
    assert cli(["perf", "--mode", "inference", *TINY, "--adapters", "", "--reps", "1", "--infer-batch", "2",
                "--precision", "fp32", "--out", str(out)]) == 0
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["peak_memory_mib"]["ours_fp32"]["ST-A"] > 0 and "Peak memory" in out.read_text()


@pytest.mark.parametrize("module", ["training_steps", "inference"])
def test_memory_children_print_one_peak(module, capsys):
    import importlib

    child = importlib.import_module(f"benchmark.perf.{module}")._memory_child
    cfg = {"backbone": "bert-tiny-random", "config": ["Fusion N=2", 2, "fusion"], "batch": 2, "length": 8,
           "device": "cpu", "precision": "bf16" if BF16 else "fp32"}
    child(cfg)
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) > 0


@pytest.mark.skipif(not BF16, reason="no native bf16 on this CPU")
def test_steps_mode_gains_bf16(tmp_path):
    out = tmp_path / "perf.md"
    assert cli(["perf", *TINY, "--adapters", "16", "--no-first-token", "--no-memory", "--out", str(out)]) == 0
    md, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert set(raw["rounds"][0]) == {"ours", "ours_stock", "ours_bf16"}
    assert "## bf16 (autocast) and peak memory" in md and "ST-A step in bf16 >= 1.5x fp32" in md
    assert "Fusion N=16 in bf16 >= 8x AdapterHub's fp32: **not measured**" in md  # no reference side here


def test_bf16_is_refused_by_perf_where_the_cpu_lacks_it(tmp_path, monkeypatch, capsys):
    from benchmark.modeling import compute

    monkeypatch.setattr(compute, "cpu_bf16_flags", lambda: [])
    assert cli(["perf", "--mode", "inference", *TINY, "--precision", "bf16", "--out", str(tmp_path / "x.md")]) == 2
    assert "no native bf16" in capsys.readouterr().err


def test_reports_show_the_command_as_typed_without_machine_paths(tmp_path, monkeypatch):
    """The perf reports' provenance carries the command that measured them: flags as typed, the reference
    interpreter as a placeholder, paths relative to the working directory (a report holds no machine path)."""
    from benchmark.perf.meta import shown_command

    monkeypatch.chdir(tmp_path)
    argv = ["perf", "--mode", "epochs", "--precision", "bf16", "--reference-python", "/opt/ref/bin/python",
            "--out", str(tmp_path / "reports" / "x.md"), "--results-dir=/elsewhere/r"]
    assert shown_command(argv) == ("afbench perf --mode epochs --precision bf16 --reference-python "
                                   "'<reference env python>' --out reports/x.md '--results-dir=<path>'")
    out = tmp_path / "inf.md"
    assert cli(["perf", "--mode", "inference", *TINY, "--adapters", "", "--reps", "1", "--infer-batch", "2",
                "--precision", "fp32", "--no-memory", "--out", str(out)]) == 0
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["provenance"]["command"] == ("afbench perf --mode inference " + " ".join(TINY) + " --adapters '' "
                                            "--reps 1 --infer-batch 2 --precision fp32 --no-memory --out inf.md")
    assert "Ran as `afbench perf --mode inference" in out.read_text() and str(tmp_path) not in out.read_text()
