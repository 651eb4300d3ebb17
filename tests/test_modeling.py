"""Adapters, fusion and heads on real (tiny, random) transformers BERT and RoBERTa models."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.adapterhub import to_hub
from benchmark.errors import CheckpointError
from benchmark.modeling.checkpoint import (
    load_adapterhub,
    load_modules,
    save_modules,
)
from benchmark.modeling.fusion import AdapterFusion, fast_fusion, naive_fusion
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.spec.schema import AdapterParams, FusionParams

PFEIFFER = AdapterParams(type="pfeiffer", reduction_factor=16)
HOULSBY = AdapterParams(type="houlsby", reduction_factor=16)


def inputs(tok, n=3):
    texts = ["a man is playing a guitar", "the movie was great and the ending was rushed", "no"][:n]
    return dict(tok(texts, ["he plays music", "it was good", "yes"][:n], padding=True, return_tensors="pt"))


@pytest.fixture(params=["bert", "roberta"])
def model_and_tok(request, tiny_bert, tiny_roberta):
    tok, make = tiny_bert if request.param == "bert" else tiny_roberta
    torch.manual_seed(0)
    model = AdapterModel(make())
    model.add_head("t", "classification", 3)
    object.__setattr__(model, "stock", make())  # the same weights, untouched by our wrappers (not a sub-module)
    return model, tok


def test_no_adapter_is_the_stock_model(model_and_tok):
    from benchmark.modeling.layers import AdaptedOutput

    model, tok = model_and_tok
    stock = model.stock.eval()
    model.eval()
    x = inputs(tok)
    assert all(isinstance(layer.output, AdaptedOutput) for layer in model.encoder.encoder.layer)
    assert not any(isinstance(layer.output, AdaptedOutput) for layer in stock.encoder.layer)
    assert set(model.encoder.state_dict()) == set(stock.state_dict())  # pretrained key names unchanged
    model.add_adapter("a", PFEIFFER)  # present but inactive
    with torch.no_grad():
        ours = model.encoder(**x).last_hidden_state
        ref = stock(**x).last_hidden_state
    assert torch.equal(ours, ref)
    model.set_active("a")  # and active, it does change the output (so the comparison above is not vacuous)
    for p in model.keys_of(Modules(adapters=["a"])):
        dict(model.named_parameters())[p].data.normal_(0, 0.1)
    with torch.no_grad():
        assert not torch.allclose(model.encoder(**x).last_hidden_state, ref, atol=1e-3)


@pytest.mark.parametrize("params", [PFEIFFER, HOULSBY], ids=["pfeiffer", "houlsby"])
def test_zero_up_projection_leaves_the_model_unchanged(model_and_tok, params):
    model, tok = model_and_tok
    model.eval()
    x = inputs(tok)
    with torch.no_grad():
        base = model(head="t", **x)
        model.add_adapter("a", params)
        model.eval()
        for mod in model.slots():
            if "a" in mod.adapters:
                mod.adapters["a"].up.weight.zero_()
                mod.adapters["a"].up.bias.zero_()
        model.set_active("a")
        assert torch.equal(model(head="t", **x), base)
        # ... and a non-zero adapter changes it
        for mod in model.slots():
            if "a" in mod.adapters:
                torch.nn.init.normal_(mod.adapters["a"].up.weight, std=0.5)
        assert not torch.allclose(model(head="t", **x), base)


def test_adapter_positions_and_bottleneck(model_and_tok):
    model, _ = model_and_tok
    model.add_adapter("p", PFEIFFER)
    model.add_adapter("h", AdapterParams(type="houlsby", reduction_factor=2))
    H = model.hidden_size
    for layer in model.encoder.encoder.layer:
        assert set(layer.output.adapters) == {"p", "h"}
        assert set(layer.attention.output.adapters) == {"h"}  # Pfeiffer: after the FFN only
        assert layer.output.adapters["p"].down.weight.shape == (H // 16, H)
        assert layer.output.adapters["h"].up.weight.shape == (H, H // 2)
        assert isinstance(layer.output.adapters["p"].act, torch.nn.ReLU)
        assert isinstance(layer.output.adapters["h"].act, torch.nn.SiLU)


def test_pfeiffer_math_matches_the_definition(model_and_tok):
    """out = up(relu(down(LN(f + x)))) + f; layer output LN(out + x) with the pretrained LN."""
    model, _ = model_and_tok
    model.add_adapter("a", PFEIFFER)
    model.set_active("a")
    model.eval()
    slot = model.encoder.encoder.layer[0].output
    torch.manual_seed(1)
    inter = torch.randn(2, 5, slot.dense.in_features)
    x = torch.randn(2, 5, model.hidden_size)
    ad = slot.adapters["a"]
    f = slot.dense(inter)
    h = slot.LayerNorm(f + x)
    want = slot.LayerNorm(ad.up(torch.relu(ad.down(h))) + f + x)
    assert torch.allclose(slot(inter, x), want, atol=1e-6)


def test_houlsby_math_matches_the_definition(model_and_tok):
    model, _ = model_and_tok
    model.add_adapter("a", HOULSBY)
    model.set_active("a")
    model.eval()
    slot = model.encoder.encoder.layer[0].attention.output
    torch.manual_seed(1)
    inp, x = torch.randn(2, 5, model.hidden_size), torch.randn(2, 5, model.hidden_size)
    ad = slot.adapters["a"]
    f = slot.dense(inp)
    want = slot.LayerNorm(f + ad.up(torch.nn.functional.silu(ad.down(f))) + x)
    assert torch.allclose(slot(inp, x), want, atol=1e-6)


def test_fusion_initialisation(model_and_tok):
    model, _ = model_and_tok
    for n in "abc":
        model.add_adapter(n, PFEIFFER)
    model.add_fusion("f", list("abc"), FusionParams())
    fus = next(model.fusion_layers("f"))
    H = model.hidden_size
    eye = torch.eye(H)
    assert fus.value.bias is None
    assert torch.allclose(fus.value.weight.diagonal(), torch.ones(H))
    assert torch.allclose(fus.value.weight[~eye.bool()], torch.full((H * H - H,), 1e-6))
    assert fus.score_dropout.p == model.config.attention_probs_dropout_prob
    assert torch.allclose(model.fusion_regularization("f"), torch.tensor(len(model.encoder.encoder.layer)
                                                                         * (H * H - H) * 1e-12), rtol=1e-3)
    static = AdapterFusion(H, ["a"], FusionParams(type="static"), 0.1)
    assert static.value is None and static.regularization().item() == 0.0


def _fusion_case(n_adapters=4, H=32, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    from benchmark.modeling.adapters import BottleneckAdapter

    adapters = [BottleneckAdapter(H, AdapterParams(reduction_factor=4)).to(dtype) for _ in range(n_adapters)]
    for a in adapters:  # non-trivial biases so every term of the algebra is exercised
        torch.nn.init.normal_(a.down.bias, std=0.3)
        torch.nn.init.normal_(a.up.bias, std=0.3)
    fusion = AdapterFusion(H, [str(i) for i in range(n_adapters)], FusionParams(), score_dropout=0.3).to(dtype)
    with torch.no_grad():
        torch.nn.init.normal_(fusion.query.weight, std=0.3)
        torch.nn.init.normal_(fusion.key.weight, std=0.3)
        torch.nn.init.normal_(fusion.key.bias, std=0.3)
        torch.nn.init.normal_(fusion.query.bias, std=0.3)
        fusion.value.weight.add_(0.05 * torch.randn(H, H))
    h = torch.randn(3, 7, H, dtype=dtype, requires_grad=True)
    res = torch.randn(3, 7, H, dtype=dtype, requires_grad=True)
    return fusion, adapters, h, res


@pytest.mark.parametrize("dropout", [False, True], ids=["eval", "score-dropout"])
@pytest.mark.parametrize("temperature", [1.0, 7.5])
def test_fast_fusion_equals_naive_fusion(dropout, temperature):
    fusion, adapters, h, res = _fusion_case(n_adapters=5)
    fusion.train(dropout)
    fusion.temperature = temperature
    params = [h, res, *fusion.parameters(), *[p for a in adapters for p in a.parameters()]]
    outs, grads = [], []
    for impl in (naive_fusion, fast_fusion):
        torch.manual_seed(123)  # the same dropout mask on the [B, T, N] scores
        o, probs = impl(fusion, h, adapters, res)
        g = torch.autograd.grad((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() + probs.square().sum(), params)
        outs.append((o, probs))
        grads.append(g)
    assert (outs[0][0] - outs[1][0]).abs().max() <= 1e-5
    assert (outs[0][1] - outs[1][1]).abs().max() <= 1e-5
    for gn, gf in zip(*grads):
        assert (gn - gf).abs().max() <= 1e-5


def fused(model, tok):
    """The model with a dynamic fusion over three Pfeiffer adapters active, in eval mode."""
    for n in "abc":
        model.add_adapter(n, PFEIFFER)
    model.add_fusion("f", list("abc"), FusionParams())
    model.set_active(Fuse("f", list("abc")))
    return model.eval(), tok


def test_fast_fusion_in_the_model_equals_naive(model_and_tok):
    model, tok = fused(*model_and_tok)
    x = inputs(tok)
    logits = {}
    for impl in ("naive", "fast"):
        for f in model.fusion_layers():
            f.params = f.params.model_copy(update={"implementation": impl})
        logits[impl] = model(head="t", **x)
    assert (logits["naive"] - logits["fast"]).abs().max() <= 1e-5


def test_only_intended_parameters_get_gradients(model_and_tok):
    model, tok = model_and_tok
    for n in "ab":
        model.add_adapter(n, PFEIFFER)
    model.add_fusion("f", ["a", "b"], FusionParams())
    model.set_active(Fuse("f", ["a", "b"]))
    model.train_only(Modules(fusions=["f"], heads=["t"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(head="t", **inputs(tok)).sum() + 0.01 * model.fusion_regularization("f")
    loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got and all(".fusions.f." in n or n.startswith("heads.t.") for n in got)
    assert all(p.grad is None for n, p in model.named_parameters() if ".adapters." in n or n.startswith("encoder.")
               and ".fusions." not in n)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    after = model.state_dict()
    frozen = [k for k in before if ".fusions." not in k and not k.startswith("heads.")]
    assert all(torch.equal(before[k], after[k]) for k in frozen)


def test_save_load_round_trip_is_bit_exact(model_and_tok, tmp_path, tiny_bert, tiny_roberta):
    model, tok = model_and_tok
    for n in "ab":
        model.add_adapter(n, PFEIFFER)
    model.add_adapter("h", HOULSBY)
    model.add_fusion("f", ["a", "b"], FusionParams())
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    save_modules(model, tmp_path, adapters=["a", "b", "h"], fusions=["f"], heads=["t"])
    meta = json.loads((tmp_path / "modules.json").read_text())
    assert set(meta["adapters"]) == {"a", "b", "h"} and meta["fusions"]["f"]["adapters"] == ["a", "b"]
    fresh = AdapterModel(type(model.encoder)(model.encoder.config))
    fresh.encoder.load_state_dict(model.encoder.state_dict(), strict=False)
    load_modules(fresh, tmp_path)
    sel = Modules(adapters=["a", "b", "h"], fusions=["f"], heads=["t"])
    want, got = model.state_of(sel), fresh.state_of(sel)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    model.eval()
    fresh.eval()
    x = inputs(tok)
    for setup in ("a", "h", Fuse("f", ["a", "b"])):
        model.set_active(setup)
        fresh.set_active(setup)
        assert torch.equal(model(head="t", **x), fresh(head="t", **x))


def test_load_into_wrong_shape_names_both_shapes(tiny_bert, tmp_path):
    tok, make = tiny_bert
    model = AdapterModel(make())
    model.add_adapter("a", AdapterParams(reduction_factor=2))
    save_modules(model, tmp_path, adapters=["a"])
    meta = json.loads((tmp_path / "modules.json").read_text())
    meta["adapters"]["a"]["reduction_factor"] = 4
    (tmp_path / "modules.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"has shape \(16,(?: 32)?\) but the model expects \(8,(?: 32)?\)"):
        load_modules(AdapterModel(make()), tmp_path)
    with pytest.raises(CheckpointError, match="missing weights.safetensors"):
        load_modules(AdapterModel(make()), tmp_path / "nowhere")
    finished = tmp_path / "finished"  # a finished run whose weights git did not keep: says so, and how to get them
    finished.mkdir()
    (finished / "result.json").write_text("{}")
    with pytest.raises(CheckpointError, match="the run finished, but its weights are not in this checkout") as e:
        load_modules(AdapterModel(make()), finished)
    assert "afbench run EXPERIMENT --force --only finished" in e.value.fix


def _adapterhub_folder(model, name, folder, prefix, config):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(to_hub(model.state_of(Modules(adapters=[name])), prefix), folder / "pytorch_adapter.bin")
    (folder / "adapter_config.json").write_text(json.dumps({"name": name, "config": config,
                                                            "hidden_size": model.hidden_size}))


@pytest.mark.parametrize("kind", ["pfeiffer", "houlsby"])
def test_load_adapterhub_adapter(tiny_bert, tmp_path, kind):
    tok, make = tiny_bert
    src = AdapterModel(make())
    src.add_adapter("sst", PFEIFFER if kind == "pfeiffer" else HOULSBY)
    for p in src.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    cfg = {"architecture": "bottleneck", "reduction_factor": 16, "original_ln_before": kind == "pfeiffer",
           "mh_adapter": kind == "houlsby", "output_adapter": True,
           "non_linearity": "relu" if kind == "pfeiffer" else "swish"}
    _adapterhub_folder(src, "sst", tmp_path / "hub", "bert", cfg)
    dst = AdapterModel(make())
    dst.encoder.load_state_dict(src.encoder.state_dict(), strict=False)
    name = load_adapterhub(dst, tmp_path / "hub")
    assert name == "sst" and dst.adapter_params["sst"].type == kind
    s, d = src.state_of(Modules(adapters=["sst"])), dst.state_of(Modules(adapters=["sst"]))
    assert all(torch.equal(s[k], d[k]) for k in s)


def test_adapterhub_errors_are_clear(tiny_bert, tmp_path):
    tok, make = tiny_bert
    model = AdapterModel(make())
    with pytest.raises(CheckpointError, match="adapter_config.json and pytorch_adapter.bin"):
        load_adapterhub(model, tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"name": "x", "config": {"reduction_factor": 16}}))
    (tmp_path / "pytorch_adapter.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_adapterhub(model, tmp_path)
    big = AdapterModel(make())
    big.add_adapter("x", AdapterParams(reduction_factor=2))
    torch.save(to_hub(big.state_of(Modules(adapters=["x"])), "bert"), tmp_path / "pytorch_adapter.bin")
    with pytest.raises(CheckpointError, match="expects"):
        load_adapterhub(AdapterModel(make()), tmp_path)


def test_capture_averages_over_real_tokens(model_and_tok):
    model, tok = fused(*model_and_tok)
    model.start_capture()
    with torch.no_grad():
        model(head="t", **inputs(tok))
    att = model.stop_capture()
    assert len(att) == len(model.encoder.encoder.layer) and all(len(r) == 3 for r in att)
    assert all(abs(sum(r) - 1.0) < 1e-5 for r in att)


def test_multiple_choice_head_shapes(tiny_bert):
    tok, make = tiny_bert
    model = AdapterModel(make())
    model.add_head("mc", "multiple_choice", 4)
    enc = tok(["q"] * 8, [f"choice {i}" for i in range(8)], padding=True, return_tensors="pt")
    batch = {k: v.view(2, 4, -1) for k, v in enc.items()}
    assert model(head="mc", **batch).shape == (2, 4)


def test_mean_pooling_ignores_padding():
    from benchmark.modeling.heads import pool

    h = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(pool(h, mask, "cls"), h[:, 0])
    assert torch.allclose(pool(h, mask, "mean"), torch.stack([h[0, :2].mean(0), h[1, 0]]))


def test_head_pooling_survives_save_and_load(tiny_bert, tmp_path):
    tok, make = tiny_bert
    model = AdapterModel(make())
    model.add_head("t", "classification", 2, pooling="mean")
    save_modules(model, tmp_path, heads=["t"])
    fresh = AdapterModel(make())
    load_modules(fresh, tmp_path)
    assert fresh.heads["t"].pooling == "mean" and fresh.head_specs["t"] == ("classification", 2, "mean")


def test_static_fusion_mixes_the_adapter_outputs_without_a_value_matrix():
    """Static fusion: o = sum_n softmax(q . k_n) z_n + residual (no V), the same in both implementations."""
    _, adapters, h, res = _fusion_case(n_adapters=3)
    static = AdapterFusion(h.shape[-1], ["0", "1", "2"], FusionParams(type="static"), score_dropout=0.0).eval()
    with torch.no_grad():
        torch.nn.init.normal_(static.query.weight, std=0.3)
        torch.nn.init.normal_(static.key.weight, std=0.3)
        z = torch.stack([a(h) for a in adapters], dim=2)  # [B, T, N, H]
        scores = (static.query(h).unsqueeze(2) * static.key(z)).sum(-1)  # [B, T, N]
        want = (torch.softmax(scores, -1).unsqueeze(-1) * z).sum(2) + res
        for impl in (naive_fusion, fast_fusion):
            o, probs = impl(static, h, adapters, res)
            assert (o - want).abs().max() <= 1e-5 and torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert not torch.allclose(want, z.mean(2) + res, atol=1e-3)  # the attention is not uniform here


def test_fuse_cannot_disagree_with_the_fusion_it_names(model_and_tok):
    model, tok = model_and_tok
    for n in "abc":
        model.add_adapter(n, PFEIFFER)
    model.add_fusion("f", list("abc"), FusionParams())
    model.set_active(Fuse("f"))  # the fusion's own list
    assert model.encoder.encoder.layer[0].output.active.fused == ["a", "b", "c"]
    model.set_active(Fuse("f", ["a", "b", "c"]))  # repeating it is a check
    for wrong in (["c", "b", "a"], ["a", "b"], ["a", "b", "x"]):
        with pytest.raises(ValueError, match="does not match the fusion's adapters"):
            model.set_active(Fuse("f", wrong))
    with pytest.raises(KeyError, match="no fusion named 'g'"):
        model.set_active(Fuse("g"))


def test_module_selection_by_name_not_key_strings(model_and_tok):
    model, _ = model_and_tok
    model.add_adapter("a", PFEIFFER)
    model.add_adapter("adapter_a", PFEIFFER)  # a name containing another name
    model.add_fusion("f", ["a", "adapter_a"], FusionParams())
    keys = model.keys_of(Modules(adapters=["a"]))
    assert keys and all(".adapters.a." in k for k in keys)
    enc = set(model.keys_of(Modules(encoder=True)))
    assert enc == {f"encoder.{k}" for k in model.stock.state_dict()}  # the backbone's own weights, nothing added
    everything = set(model.keys_of(Modules(adapters=["a", "adapter_a"], fusions=["f"], heads=["t"], encoder=True)))
    assert everything == set(model.state_dict())
    model.train_only(Modules(fusions=["f"]))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(model.keys_of(Modules(fusions=["f"])))
    with pytest.raises(KeyError, match="no adapter named 'b'"):
        model.keys_of(Modules(adapters=["b"]))
