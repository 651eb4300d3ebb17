"""A shared base for tuners on target linear layers (LoRA, (IA)^3, the weight-space merges): PEFT's
``BaseTuner`` / ``BaseTunerLayer`` for our layouts.

A tuner names linear layers of every encoder layer by the layout's neutral names (``Layout.linear_targets``:
``query``, ``key``, ``value``, ``attention_output``, ``intermediate``, ``output``; ``layout.py`` is the only
place that spells their paths). Each target ``nn.Linear`` W gets a child ``ModuleDict`` named after the
tuner (``lora``, ``ia3``) holding one ``TunerModule`` per adapter name, and one forward hook per tuner that
lets each of that tuner's *active* modules rewrite the linear's output:

    y = W x + b          ->   y' = module.update(x, y)       x [.., in], y [.., out]

The pretrained keys of W do not change; a tuner's tensors are ``<target path>.<child>.<name>.<tail>``.
Each module owns its activation state (``context.Switchable``): ``activate`` switches on the modules of one
name, ``switch_off`` returns a module to the stock function. A method's ``layer.py`` subclasses ``TunerModule``
and ``TargetTuner`` (ARCHITECTURE.md, "A new method").
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from benchmark.modeling.context import Switchable
from benchmark.modeling.layout import Layout


class TunerModule(Switchable, nn.Module):
    """One tuner's module on one target linear layer (``in_features`` -> ``out_features``)."""

    def __init__(self):
        super().__init__()
        self.active = False

    def switch_off(self) -> None:
        self.active = False

    def update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [.., in] the linear's input, y [.., out] its output (so far) -> the adapted output [.., out]."""
        raise NotImplementedError


def _hook(child: str, module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
    for tuner in getattr(module, child).values():
        if tuner.active:
            output = tuner.update(args[0], output)
    return output


class TargetTuner:
    """The model-API side of one tuner: where its modules sit, which are active, their keys and shapes."""

    child: str  # the ModuleDict a target linear layer gets ("lora", "ia3")
    title: str  # the method's name in messages ("LoRA")
    module: type[TunerModule]  # built as module(in_features, out_features, params)
    params_model: type  # the method's params (a params.Strict)

    def make(self, in_features: int, out_features: int, params) -> TunerModule:
        return self.module(in_features, out_features, params)

    def params_from(self, d: dict):
        """The params as modules.json stores them (``describe``: the params and the ``dims`` of each target)."""
        return self.params_model(**{k: v for k, v in d.items() if k != "dims"})

    # ------------------------------------------------------------------ where the modules sit
    def targets(self, model, params):
        """(layer index, target name, the nn.Linear) for every adapted linear layer."""
        lay: Layout = model.layout
        for t in params.targets:
            if t not in lay.linear_targets:
                raise ValueError(f"{self.title} target '{t}' is not in the '{lay.family}' layout "
                                 f"(have {sorted(lay.linear_targets)})")
        for i, layer in enumerate(model.layers()):
            for t in params.targets:
                lin = layer.get_submodule(lay.linear_targets[t])
                if not isinstance(lin, nn.Linear):
                    raise TypeError(f"{self.title} target '{t}' of '{lay.family}' is a {type(lin).__name__}, "
                                    "not nn.Linear")
                yield i, t, lin

    def attach(self, model, name: str, params) -> None:
        for _, _, lin in self.targets(model, params):
            if not hasattr(lin, self.child):
                setattr(lin, self.child, nn.ModuleDict())
                lin.register_forward_hook(partial(_hook, self.child))
            getattr(lin, self.child)[name] = self.make(lin.in_features, lin.out_features, params)

    def activate(self, model, name: str) -> None:
        for m in self.modules_of(model, name):
            m.active = True

    def modules_of(self, model, name: str) -> list[nn.Module]:
        return [getattr(lin, self.child)[name] for _, _, lin in self.targets(model, model.adapter_params[name])]

    # ------------------------------------------------------------------ what a checkpoint holds
    def describe(self, model, name: str) -> dict:
        """What modules.json stores: the params and each target's (in, out) size."""
        params = model.adapter_params[name]
        dims = {t: [lin.in_features, lin.out_features] for i, t, lin in self.targets(model, params) if i == 0}
        return {**params.model_dump(), "dims": dims}

    def expected_shapes(self, layout: Layout, meta: dict, name: str, params) -> dict[str, tuple[int, ...]]:
        """Every tensor of tuner ``name`` in a model of ``layout`` with ``meta``'s size (built on the meta device)."""
        dims = meta["adapters"][name].get("dims", {})
        out = {}
        for t in params.targets:
            n_in, n_out = dims.get(t, (meta["hidden_size"], meta["hidden_size"]))
            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in self.make(n_in, n_out, params).state_dict().items()}
            for i in range(meta["num_layers"]):
                prefix = f"{layout.target_prefix(i, t)}{self.child}.{name}."
                out.update({prefix + k: s for k, s in shapes.items()})
        return out
