"""Each added module owns its activation state (``context.Switchable``): with every method's modules added
and given real (non-zero) values, ``set_active(None)`` gives back the stock encoder's hidden states exactly,
for every module type on every tiny family; and the same modules, switched on, do move them (so the equality
is not vacuous). ``set_active`` names no method: a new type is covered by being in ``model.ADAPTER_TYPES``."""

from __future__ import annotations

import pytest
import torch

from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.model import ADAPTER_TYPES, AdapterModel, Fuse, Modules
from benchmark.spec.schema import AdapterParams, FusionParams, IA3Params, LoRAParams

FAMILIES = ["tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-electra", "tiny-deberta-v2"]
ALL_LINEARS = ["query", "key", "value", "attention_output", "intermediate", "output"]
# one params object per module type (model.ADAPTER_TYPES); "fusion": a dynamic fusion over two Pfeiffer adapters
PARAMS = {"pfeiffer": AdapterParams(), "houlsby": AdapterParams(type="houlsby"),
          "lora": LoRAParams(rank=2, targets=ALL_LINEARS), "ia3": IA3Params(targets=ALL_LINEARS)}
METHODS = [*PARAMS, "fusion"]


def test_every_module_type_is_covered():
    assert set(PARAMS) == set(ADAPTER_TYPES), "add the new module type's params to PARAMS"


@pytest.fixture(scope="module")
def backbones(registry):
    out = {}
    for name in FAMILIES:
        tok = load_tokenizer(registry.backbones[name])
        out[name] = (tok, lambda name=name, tok=tok: load_encoder(registry.backbones[name], tok))
    return out


def _add(model: AdapterModel, method: str):
    """Add the method's modules with real values; returns what ``set_active`` switches on."""
    if method == "fusion":
        for a in ("a", "b"):
            model.add_adapter(a, AdapterParams())
        model.add_fusion("f", ["a", "b"], FusionParams())
        sel, setup = Modules(adapters=["a", "b"], fusions=["f"]), Fuse("f")
    else:
        model.add_adapter("x", PARAMS[method])
        sel, setup = Modules(adapters=["x"]), "x"
    torch.manual_seed(5)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for key in model.keys_of(sel):
            named[key].normal_(1.0, 0.3)  # away from every identity init (LoRA's B = 0, (IA)^3's ones)
    return setup


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FAMILIES)
def test_everything_switched_off_is_the_stock_encoder(backbones, name, method):
    tok, make = backbones[name]
    stock = make().eval()
    model = AdapterModel(make()).eval()
    setup = _add(model, method)
    batch = dict(tok(["a short one", "and a somewhat longer second sentence here"], padding=True,
                     return_tensors="pt"))
    kwargs = {"token_type_ids": batch["token_type_ids"]} if model.layout.token_type_ids and "token_type_ids" in batch \
        else {}
    with torch.no_grad():
        want = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).last_hidden_state
        model.set_active(setup)
        on = model.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        model.set_active(None)
        off = model.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    assert (on - want).abs().max().item() > 1e-3  # switched on, the method changes the forward
    assert torch.equal(off, want)  # switched off: exactly the stock encoder
