"""The last layer computed at position 0 only gives the same logits and gradients as the full layer."""

from __future__ import annotations

import pytest
import torch

from benchmark.modeling.cpu_kernels import set_cpu_kernels
from benchmark.modeling.first_token import FirstTokenLastLayer, set_last_layer
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.spec.schema import AdapterParams, FusionParams


def _batch(tok, choices=False):
    a = ["a man is playing a guitar on the street", "the movie was great", "no"]
    b = ["he plays music", "it was good and the ending was rushed", "yes"]
    x = dict(tok(a, b, padding=True, return_tensors="pt"))  # padded: the mask matters
    if choices:  # [B=1, K=3, L]
        x = {k: v.unsqueeze(0) for k, v in x.items()}
    return x


def _model(make, setup, task_type="classification", pooling="cls"):
    torch.manual_seed(0)
    model = AdapterModel(make())
    kind = "houlsby" if setup == "houlsby" else "pfeiffer"
    for name in ("a", "b", "c"):
        model.add_adapter(name, AdapterParams(type=kind, reduction_factor=4))
    model.add_head("t", task_type, 3, pooling)
    if setup == "fusion":
        model.add_fusion("f", ["a", "b", "c"], FusionParams())
        model.set_active(Fuse("f"))
        model.train_only(Modules(fusions=["f"], heads=["t"]))
    else:
        model.set_active("a")
        model.train_only(Modules(adapters=["a"], heads=["t"]))
    trained = [p for p in model.parameters() if p.requires_grad]
    set_last_layer(model, "first_token")
    params = dict(model.named_parameters())
    with torch.no_grad():  # non-zero up-projections, so every adapter changes the output
        for n in model.keys_of(Modules(adapters=["a", "b", "c"])):
            if n.endswith("up.weight"):
                params[n].normal_(0, 0.05)
    return model.eval(), trained  # eval: no dropout, so both ways compute one function


def _logits_and_grads(model, trained, x):
    for p in trained:
        p.grad = None
    logits = model(head="t", **x)
    (logits.float() ** 2).sum().backward()
    return logits.detach(), [p.grad.clone() for p in trained]


@pytest.mark.parametrize("setup", ["st_a", "houlsby", "fusion"])
@pytest.mark.parametrize("task_type", ["classification", "multiple_choice"])
def test_first_token_last_layer_equals_the_full_layer(tiny_bert, tiny_roberta, setup, task_type):
    for tok, make in (tiny_bert, tiny_roberta):
        model, trained = _model(make, setup, task_type)
        assert isinstance(model.encoder.encoder.layer[-1], FirstTokenLastLayer)
        x = _batch(tok, choices=task_type == "multiple_choice")
        for kernels in ("stock", "fast"):
            set_cpu_kernels(model, kernels)
            set_last_layer(model, "full")
            assert not isinstance(model.encoder.encoder.layer[-1], FirstTokenLastLayer)
            ref, ref_grads = _logits_and_grads(model, trained, x)
            set_last_layer(model, "first_token")
            out, grads = _logits_and_grads(model, trained, x)
            assert torch.allclose(out, ref, atol=1e-5), (kernels, (out - ref).abs().max())
            assert all(g.abs().sum() > 0 for g in ref_grads[:2])
            for g, r in zip(grads, ref_grads):
                assert torch.allclose(g, r, atol=1e-5, rtol=1e-4), (kernels, (g - r).abs().max())


def test_first_token_only_where_the_head_reads_position_0(tiny_bert):
    tok, make = tiny_bert
    model, _ = _model(make, "fusion")
    x = _batch(tok)
    assert model.encode(x["input_ids"], x["attention_mask"], first_token_only=True).shape[1] == 1
    assert model.encode(x["input_ids"], x["attention_mask"]).shape[1] == x["input_ids"].shape[1]
    set_last_layer(model, "full")
    assert model.encode(x["input_ids"], x["attention_mask"], first_token_only=True).shape[1] == x["input_ids"].shape[1]
    set_last_layer(model, "first_token")
    # capture (Figures 4/6) averages over every token: the last layer then computes them all
    model.start_capture()
    with torch.no_grad():
        model(head="t", **x)
    capture = model.stop_capture()
    assert model._ctx.first_token_only is False
    per_layer = model.encoder.encoder.layer[-1].output
    assert per_layer.capture_count == int(x["attention_mask"].sum())
    assert len(capture) == model.config.num_hidden_layers
    # mean pooling reads every position: logits equal the full layer's
    mean, _ = _model(make, "st_a", pooling="mean")
    with torch.no_grad():
        a = mean(head="t", **x)
        set_last_layer(mean, "full")
        assert torch.equal(a, mean(head="t", **x))


def test_wrapped_last_layer_keeps_keys_and_trains_with_dropout(tiny_bert):
    tok, make = tiny_bert
    wrapped = AdapterModel(make())
    set_last_layer(wrapped, "first_token")
    assert isinstance(wrapped.encoder.encoder.layer[-1], FirstTokenLastLayer)
    assert set(wrapped.encoder.state_dict()) == set(make().state_dict())
    model, trained = _model(make, "st_a")
    set_cpu_kernels(model, "fast")
    model.train()
    torch.manual_seed(1)
    loss = model(head="t", **_batch(tok)).logsumexp(-1).sum()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    with pytest.raises(ValueError, match="last_layer"):
        set_last_layer(model, "cls")


def test_compute_options_are_validated_and_recorded():
    from benchmark.modeling.compute import Compute

    assert Compute().record(torch.device("cpu")) == {"cpu_kernels": "fast", "last_layer": "first_token",
                                                     "precision": "auto", "matmul_dtype": "float32"}
    assert Compute("fast", "full").record(torch.device("cuda")) == {"cpu_kernels": "stock", "last_layer": "full",
                                                                   "precision": "auto", "matmul_dtype": "bfloat16"}
    with pytest.raises(ValueError, match="last_layer"):
        Compute(last_layer="cls")
    with pytest.raises(ValueError, match="cpu_kernels"):
        Compute(cpu_kernels="quick")
