"""Our (IA)^3 (benchmark/modeling/ia3.py) against Hugging Face PEFT's IA3 on the same weights.

The placement is AdapterHub 1.3.0's ``IA3Config`` (specs/methods/ia3.yaml says why): the outputs of key,
value and the FFN's intermediate projection are rescaled. PEFT's default BERT map scales the input of the
FFN's output projection instead, so PEFT is configured to our placement: ``target_modules`` the three
linears of every layer, ``feedforward_modules`` none (PEFT then scales each target's output). Same base
encoder, same vectors in both, eval mode: logits agree to <= 1e-5. PEFT is in the ``test`` extra; the test
skips without it."""

from __future__ import annotations

import re

import pytest
import torch

from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.model import AdapterModel, Modules
from benchmark.spec.schema import IA3Params

peft = pytest.importorskip("peft", reason="Hugging Face PEFT is not installed (pip install '.[test]'); "
                                          "(IA)^3 parity against it is skipped")

TOLERANCE = 1e-5


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-distilbert", "tiny-deberta-v2"])
def test_ia3_logits_equal_peft_ia3(registry, name):
    spec = registry.backbones[name]
    tok = load_tokenizer(spec)
    params = registry.methods["ia3"].ia3  # the shipped placement
    assert params == IA3Params() and params.targets == ["key", "value", "intermediate"]
    ours = AdapterModel(load_encoder(spec, tok))
    ours.add_adapter("l", params)
    ours.add_head("t", "classification", 3)
    torch.manual_seed(3)
    with torch.no_grad():  # the vectors start at 1: give them real values
        named = dict(ours.named_parameters())
        for key in ours.keys_of(Modules(adapters=["l"], heads=["t"])):
            named[key].normal_(1.0, 0.5)
    ours.set_active("l")
    ours.eval()

    lay = ours.layout
    names = [f"{lay.layers}.{i}.{lay.linear_targets[t]}" for i in range(ours.num_layers) for t in params.targets]
    base = load_encoder(spec, tok)  # the same seeded "pretrained" weights
    config = peft.IA3Config(target_modules="|".join(re.escape(n) for n in names), feedforward_modules=[])
    theirs = peft.get_peft_model(base, config)
    inner = theirs.base_model.model
    with torch.no_grad():
        for n in names:
            target = inner.get_submodule(n)
            assert not target.is_feedforward  # PEFT scales this layer's output, as AdapterHub and we do
            target.ia3_l["default"].copy_(ours.encoder.get_submodule(n).ia3["l"].scale.view(-1, 1))
    theirs.eval()

    batch = dict(tok(["a short one", "and a somewhat longer second sentence here"], padding=True, return_tensors="pt"))
    if not lay.token_type_ids:
        batch.pop("token_type_ids", None)
    with torch.no_grad():
        logits = ours(head="t", **batch)
        hidden = theirs(**batch).last_hidden_state
        reference = ours.heads["t"](hidden, batch["attention_mask"], None)
        ours.set_active(None)
        plain = ours(head="t", **batch)
    assert (logits - reference).abs().max().item() <= TOLERANCE
    assert (logits - plain).abs().max().item() > 100 * TOLERANCE  # the vectors really move the logits
