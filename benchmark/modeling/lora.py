"""LoRA (Hu et al. 2022) as a method module: where its parameters sit, its forward, its keys and shapes.

For every layer and every target the method spec names (``LoRAParams.targets``: ``query``, ``value``,
... mapped to an ``nn.Linear`` by the family's ``layout.lora_targets``), the target linear layer W gets a
child ``lora.<name>`` holding A [r, in] and B [out, r], and one forward hook that adds the active LoRA:

    y = W x + b + (alpha / r) * B A dropout(x)         x [.., in] -> y [.., out]

exactly as Hugging Face PEFT's ``LoraLayer`` computes it (A Kaiming-uniform with a = sqrt(5), B = 0, so a
fresh LoRA leaves the model unchanged). The pretrained keys of W do not change; the LoRA tensors are
``<target path>.lora.<name>.{A,B}.weight``. The model API (``model.adapter_type``) calls the same five
functions as for bottleneck adapters: ``attach``, ``activate``, ``modules_of``, ``expected_shapes``,
``describe`` / ``params_from``; checkpoints, selection and freezing ask these, never key strings.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from benchmark.modeling.layout import Layout, get
from benchmark.spec.schema import LoRAParams

CHILD = "lora"  # the ModuleDict a target linear layer gets


class LoRA(nn.Module):
    def __init__(self, in_features: int, out_features: int, params: LoRAParams):
        super().__init__()
        self.params = params
        self.A = nn.Linear(in_features, params.rank, bias=False)  # weight [r, in]
        self.B = nn.Linear(params.rank, out_features, bias=False)  # weight [out, r]
        self.dropout = nn.Dropout(params.dropout)
        self.scaling = params.alpha / params.rank
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))  # PEFT's init_lora_weights=True
        nn.init.zeros_(self.B.weight)

    @property
    def kind(self) -> str:
        return "lora"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [.., in] -> A [.., r] -> B [.., out], scaled
        return self.B(self.A(self.dropout(x))) * self.scaling


def _hook(ctx, module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
    name = ctx.lora
    if name is None or name not in module.lora:
        return output
    return output + module.lora[name](args[0])


def _targets(model, params: LoRAParams):
    """(layer index, target name, the nn.Linear) for every adapted linear layer."""
    lay: Layout = model.layout
    for t in params.targets:
        if t not in lay.lora_targets:
            raise ValueError(f"LoRA target '{t}' is not in the '{lay.family}' layout (have {sorted(lay.lora_targets)})")
    for i, layer in enumerate(model.layers()):
        for t in params.targets:
            lin = get(layer, lay.lora_targets[t])
            if not isinstance(lin, nn.Linear):
                raise TypeError(f"LoRA target '{t}' of '{lay.family}' is a {type(lin).__name__}, not nn.Linear")
            yield i, t, lin


def attach(model, name: str, params: LoRAParams) -> None:
    for _, _, lin in _targets(model, params):
        if not hasattr(lin, CHILD):
            setattr(lin, CHILD, nn.ModuleDict())
            lin.register_forward_hook(partial(_hook, model._ctx))
        getattr(lin, CHILD)[name] = LoRA(lin.in_features, lin.out_features, params)


def activate(model, name: str) -> None:
    model._ctx.lora = name


def modules_of(model, name: str) -> list[nn.Module]:
    return [getattr(lin, CHILD)[name] for _, _, lin in _targets(model, model.adapter_params[name])]


def describe(model, name: str) -> dict:
    """What modules.json stores for this LoRA: its params and each target's (in, out) size."""
    params = model.adapter_params[name]
    dims = {t: [lin.in_features, lin.out_features] for i, t, lin in _targets(model, params) if i == 0}
    return {**params.model_dump(), "dims": dims}


def params_from(d: dict) -> LoRAParams:
    return LoRAParams(**{k: v for k, v in d.items() if k != "dims"})


def expected_shapes(layout: Layout, meta: dict, name: str, params: LoRAParams) -> dict[str, tuple[int, ...]]:
    dims = meta["adapters"][name].get("dims", {})
    out = {}
    for t in params.targets:
        n_in, n_out = dims.get(t, (meta["hidden_size"], meta["hidden_size"]))
        for i in range(meta["num_layers"]):
            prefix = f"{layout.lora_prefix(i, t)}{CHILD}.{name}."
            out[prefix + "A.weight"] = (params.rank, n_in)
            out[prefix + "B.weight"] = (n_out, params.rank)
    return out
