"""``precision: auto | fp32 | bf16``: run ids, refusal without native bf16, bf16 numerics against float32 on
tiny models, and the training loop end to end under bf16 (``benchmark/modeling/compute.py``)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from test_plan import GRID, _ids, _plan, _specs
from test_training import _toy_split

from benchmark.errors import BenchError
from benchmark.modeling import compute as compute_mod
from benchmark.modeling.compute import Compute, bf16_unsupported, cpu_bf16_flags
from benchmark.modeling.cpu_kernels import CpuLinear, set_cpu_kernels
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.spec.schema import AdapterParams, FusionParams, TrainParams
from benchmark.training.loop import Objective, train
from conftest import needs_mirror

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(bf16_unsupported(CPU) is not None,
                                reason=f"this CPU cannot run bf16 natively: {bf16_unsupported(CPU)}")
# bf16 keeps 8 mantissa bits (relative rounding 2**-9 ~ 0.2 %); through 2 tiny layers + adapters + fusion the
# logits stay within this share of their float32 scale (measured on tiny-bert: 0.4 % with one adapter, 0.7 % with
# fusion over three), each trained tensor's gradient within this share of its norm (measured: 0.8 %)
LOGIT_TOL = 0.03
GRAD_TOL = 0.05


# ------------------------------------------------------------------ run ids
def test_auto_is_the_default_and_leaves_ids_alone_other_values_enter_the_id(tmp_path):
    specs = _specs(tmp_path, GRID)
    base = _ids(_plan(specs))
    assert _ids(_plan(specs, precision="auto")) == base
    assert all(r.compute.precision == "auto" for r in _plan(specs).runs)
    fp32, bf16 = _ids(_plan(specs, precision="fp32")), _ids(_plan(specs, precision="bf16"))
    assert not set(fp32.values()) & set(base.values()) and not set(bf16.values()) & set(fp32.values())
    exp = specs / "experiments/probe.yaml"
    exp.write_text(exp.read_text() + "compute: {precision: bf16}\n")
    assert _ids(_plan(specs)) == bf16  # the experiment's compute: is the same switch
    assert _ids(_plan(specs, precision="auto")) == base  # the command line wins


def test_a_method_spec_precision_changes_only_its_runs_and_beats_the_experiment(tmp_path):
    specs = _specs(tmp_path, GRID)
    base = _ids(_plan(specs))
    m = specs / "methods/head.yaml"
    m.write_text(m.read_text() + "precision: bf16\n")
    plan = _plan(specs)
    after = _ids(plan)
    changed = {k[0] for k in base if base[k] != after[k]}
    assert changed == {"head"}
    assert {r.compute.precision for r in plan.runs if r.label == "head"} == {"bf16"}
    exp = specs / "experiments/probe.yaml"
    exp.write_text(exp.read_text() + "compute: {precision: fp32}\n")
    plan = _plan(specs)
    assert {(r.label == "head", r.compute.precision) for r in plan.runs} == {(True, "bf16"), (False, "fp32")}


def test_older_results_without_a_precision_are_auto():
    from benchmark.spec.schema import ComputeSpec

    c = Compute.of(ComputeSpec.model_validate({"cpu_kernels": "fast", "last_layer": "full"}))
    assert c.precision == "auto" and c.dtype(CPU) == torch.float32
    assert Compute(precision="bf16").dtype(CPU) == torch.bfloat16
    assert Compute(precision="fp32").dtype(torch.device("cuda")) == torch.float32
    assert Compute().dtype(torch.device("cuda")) == torch.bfloat16  # auto: today's CUDA behaviour


# ------------------------------------------------------------------ refusal
def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_bf16_flags("processor: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n") == ["avx512_bf16"]
    assert cpu_bf16_flags("Features\t: fp asimd bf16 i8mm\n") == ["bf16"]
    assert cpu_bf16_flags("flags: fpu sse avx2 avx512f avx512bw\n") == []


def test_bf16_is_refused_on_a_cpu_without_it_with_one_paragraph(monkeypatch):
    monkeypatch.setattr(compute_mod, "cpu_bf16_flags", lambda: [])
    Compute(precision="fp32").check(CPU)  # nothing to refuse
    Compute(precision="auto").check(CPU)
    with pytest.raises(BenchError) as e:
        Compute(precision="bf16").check(CPU)
    text = e.value.render()
    assert "no native bf16" in text and "--precision fp32" in text and "Traceback" not in text


@needs_mirror
def test_afbench_run_refuses_bf16_before_anything_trains(tmp_path, monkeypatch, capsys):
    from benchmark.cli import main

    monkeypatch.setattr(compute_mod, "cpu_bf16_flags", lambda: [])
    d = tmp_path / "specs" / "experiments"
    d.mkdir(parents=True)
    (d / "tiny_bf16_refused.yaml").write_text(textwrap.dedent("""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{tasks: [rte], methods: [head]}]
        caps: {max_train_rows: 8, max_eval_rows: 8, max_epochs: 1, max_length: 32}
    """))
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    code = main(["run", "tiny_bf16_refused", "--precision", "bf16", *args])
    err = capsys.readouterr().err
    assert code == 2 and "precision bf16" in err
    assert not list((tmp_path / "r").glob("*/*/result.json"))


# ------------------------------------------------------------------ numerics
def _fusion_model(make, seed=0):
    torch.manual_seed(seed)
    model = AdapterModel(make())
    for n in "abc":
        model.add_adapter(n, AdapterParams(reduction_factor=4))
    model.add_fusion("f", list("abc"), FusionParams())
    model.add_head("t", "classification", 3)
    with torch.no_grad():  # adapters away from their near-zero init, so the fusion really mixes them
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _batch(vocab, b=4, t=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (b,), generator=g)}


@needs_bf16
@pytest.mark.parametrize("kernels", ["fast", "stock"])
@pytest.mark.parametrize("active", ["adapter", "fusion"])
def test_bf16_logits_and_gradients_match_float32_within_tolerance(tiny_bert, kernels, active):
    tok, make = tiny_bert
    model = _fusion_model(make)
    model.set_active("a" if active == "adapter" else Fuse("f"))
    sel = Modules(adapters=["a"], heads=["t"]) if active == "adapter" else Modules(fusions=["f"], heads=["t"])
    model.train_only(sel)
    Compute(kernels, "first_token").apply(model)
    model.eval()  # no dropout: the same function on both sides
    batch = _batch(model.config.vocab_size)
    out = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with Compute(kernels, "first_token", precision).autocast(CPU):
            logits = model(head="t", input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        out[precision] = (logits.float().detach(), loss.detach(), grads)
        assert loss.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
        assert all(g.dtype == torch.float32 for g in grads.values())
    (l32, loss32, g32), (l16, loss16, g16) = out["fp32"], out["bf16"]
    assert not torch.equal(l32, l16)  # bf16 really ran
    scale = l32.abs().max()
    assert (l16 - l32).abs().max() <= LOGIT_TOL * scale
    assert abs(loss16 - loss32) <= LOGIT_TOL * loss32
    for n, g in g32.items():
        assert (g16[n] - g).norm() <= GRAD_TOL * g.norm() + 1e-6, n


@needs_bf16
def test_frozen_cpu_linear_runs_bf16_from_a_cached_copy():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    lin.requires_grad_(False)
    set_cpu_kernels(wrapper := torch.nn.Sequential(lin), "fast")
    fast = wrapper[0]
    assert isinstance(fast, CpuLinear)
    x = torch.randn(8, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(x)
        ref = F.linear(x, fast.weight, fast.bias)  # what autocast itself computes
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.allclose(x.grad, fast.weight.sum(0).expand(8, 64), rtol=2e-2,
                                                            atol=2e-2)
    first = fast.__dict__["_low_copy"][1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast(x)
    assert fast.__dict__["_low_copy"][1] is first  # made once, not per call
    with torch.no_grad():
        fast.weight.mul_(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast(x)
    assert fast.__dict__["_low_copy"][1] is not first  # the weight changed: a new copy
    assert "_low_copy" not in str(list(fast.state_dict()))
    assert fast(x).dtype == torch.float32  # outside autocast: float32 as before


@needs_bf16
def test_the_loop_trains_a_tiny_fusion_run_end_to_end_under_bf16(tiny_bert):
    tok, make = tiny_bert
    model = _fusion_model(make)
    model.set_active(Fuse("f"))
    trains = Modules(fusions=["f"], heads=["t"])
    model.train_only(trains)
    compute = Compute(precision="bf16")
    compute.apply(model)
    before = {k: v.clone() for k, v in model.state_of(trains).items()}
    params = TrainParams(lr=1e-3, epochs=2, batch_size=8, patience=None)
    out = train(model, "t", _toy_split(), _toy_split(8, 1), params, pad_id=tok.pad_token_id, device=CPU, seed=0,
                objective=Objective("f", 0.01), snapshot=lambda: model.state_of(trains), compute=compute)
    assert len(out.history) == 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in out.history)
    assert 0 <= out.best_metric <= 100
    assert all(v.dtype == torch.float32 for v in out.best_state.values())
    assert any(not torch.equal(before[k], out.best_state[k]) for k in before)  # it trained


@needs_bf16
@needs_mirror
@pytest.mark.slow
def test_afbench_run_bf16_records_its_precision(tmp_path):
    from benchmark.cli import main

    d = tmp_path / "specs" / "experiments"
    d.mkdir(parents=True)
    (d / "tiny_bf16.yaml").write_text(textwrap.dedent("""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{tasks: [rte], methods: [st_a]}]
        caps: {max_train_rows: 16, max_eval_rows: 8, max_epochs: 1, max_length: 32}
    """))
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_bf16", "--precision", "bf16", *args]) == 0
    (res,) = [json.loads(f.read_text()) for f in (tmp_path / "r" / "tiny_bf16").glob("*/result.json")]
    assert res["status"] == "finished" and res["precision"] == "bf16" and res["matmul_dtype"] == "bfloat16"
    assert res["config"]["compute"]["precision"] == "bf16"
    assert main(["run", "tiny_bf16", *args]) == 0  # auto: another run id, trained beside it
    got = {json.loads(f.read_text())["precision"] for f in (tmp_path / "r" / "tiny_bf16").glob("*/result.json")}
    assert got == {"bf16", "auto"}


@needs_bf16
@pytest.mark.parametrize("method", ["st_a", "houlsby", "fusion"])
def test_gpu_checks_bf16_bound_holds_on_the_cpu(method):
    """``nox -s gpu`` checks bf16 against float32 logits on the GPU; the same function and bound on the CPU."""
    from benchmark.perf.gpu_check import BF16_TOLERANCE, bf16_gap

    gap, scale = bf16_gap(method, "cpu")
    assert 0 < gap <= BF16_TOLERANCE * scale
