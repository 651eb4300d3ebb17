"""Our LoRA (benchmark/modeling/lora.py) against Hugging Face PEFT's LoRA on the same weights.

PEFT is in the ``test`` extra (it moves no pinned version); where it is not installed the test skips
with the reason. Same base encoder, same A and B in both, eval mode: logits agree to <= 1e-5."""

from __future__ import annotations

import re

import pytest
import torch

from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.model import AdapterModel, Modules
from benchmark.spec.schema import LoRAParams

peft = pytest.importorskip("peft", reason="Hugging Face PEFT is not installed (pip install '.[test]'); "
                                          "LoRA parity against it is skipped")

TOLERANCE = 1e-5


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-distilbert", "tiny-deberta-v2"])
def test_lora_logits_equal_peft_lora(registry, name):
    spec = registry.backbones[name]
    tok = load_tokenizer(spec)
    params = LoRAParams(rank=4, alpha=12.0, dropout=0.0, targets=["query", "value", "intermediate", "output"])
    ours = AdapterModel(load_encoder(spec, tok))
    ours.add_adapter("l", params)
    ours.add_head("t", "classification", 3)
    torch.manual_seed(3)
    with torch.no_grad():  # B starts at 0: give both A and B real values
        named = dict(ours.named_parameters())
        for key in ours.keys_of(Modules(adapters=["l"], heads=["t"])):
            named[key].normal_(0, 0.3)
    ours.set_active("l")
    ours.eval()

    lay = ours.layout
    names = [f"{lay.layers}.{i}.{lay.linear_targets[t]}" for i in range(ours.num_layers) for t in params.targets]
    base = load_encoder(spec, tok)  # the same seeded "pretrained" weights
    config = peft.LoraConfig(r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout,
                             target_modules="|".join(re.escape(n) for n in names), bias="none")
    theirs = peft.get_peft_model(base, config)
    inner = theirs.base_model.model
    with torch.no_grad():
        for n in names:
            mine = ours.encoder.get_submodule(n).lora["l"]
            target = inner.get_submodule(n)
            target.lora_A["default"].weight.copy_(mine.A.weight)
            target.lora_B["default"].weight.copy_(mine.B.weight)
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
    assert (logits - plain).abs().max().item() > 100 * TOLERANCE  # the LoRA really moves the logits
