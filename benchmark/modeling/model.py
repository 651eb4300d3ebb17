"""A stock transformers encoder with adapter / fusion slots and per-task heads.

    model = AdapterModel(encoder)                  # any BERT-like encoder (BERT, RoBERTa, MiniLM)
    model.add_adapter("rte", AdapterParams())       # Pfeiffer rf 16
    model.add_head("rte", "classification", 2)
    model.set_active("rte")                         # one adapter
    model.set_active(Fuse("f", ["mnli", "rte"]))    # or a fusion layer over several; None = off
    logits = model(head="rte", **batch)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.modeling.adapters import BottleneckAdapter
from benchmark.modeling.first_token import LAST_LAYER, wrap_last_layer
from benchmark.modeling.fusion import AdapterFusion
from benchmark.modeling.heads import make_head
from benchmark.modeling.layers import ActiveSetup, AdaptedOutput, ForwardContext
from benchmark.spec.schema import AdapterParams, FusionParams


@dataclass(frozen=True)
class Fuse:
    name: str
    adapters: tuple[str, ...] | list[str]


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    enc = getattr(encoder, "encoder", None)
    layers = getattr(enc, "layer", None)
    if layers is None:
        raise TypeError(f"{type(encoder).__name__} has no encoder.layer list; only BERT-like encoders are supported")
    for i, layer in enumerate(layers):
        for mod in (getattr(layer, "output", None), getattr(getattr(layer, "attention", None), "output", None)):
            if mod is None or not all(hasattr(mod, a) for a in ("dense", "LayerNorm", "dropout")):
                raise TypeError(f"layer {i} of {type(encoder).__name__} does not have the BERT output structure")
    return layers


class AdapterModel(nn.Module):
    def __init__(self, encoder: nn.Module, last_layer: str = "first_token"):
        super().__init__()
        if last_layer not in LAST_LAYER:
            raise ValueError(f"last_layer must be one of {LAST_LAYER}, got {last_layer!r}")
        self.encoder = encoder
        self.last_layer = last_layer  # "first_token": position 0 only where the head reads only that
        self.heads = nn.ModuleDict()
        self.adapter_params: dict[str, AdapterParams] = {}
        self.fusion_params: dict[str, tuple[list[str], FusionParams]] = {}
        self.head_specs: dict[str, tuple[str, int, str]] = {}
        self._ctx = ForwardContext()
        for layer in encoder_layers(encoder):
            if not isinstance(layer.output, AdaptedOutput):
                layer.output = AdaptedOutput(layer.output, "output", self._ctx)
                layer.attention.output = AdaptedOutput(layer.attention.output, "attention", self._ctx)
        wrap_last_layer(encoder, self._ctx)

    # ------------------------------------------------------------------ structure
    @property
    def config(self):
        return self.encoder.config

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def slots(self, location: str | None = None):
        for layer in self.encoder.encoder.layer:
            for mod in (layer.attention.output, layer.output):
                if location is None or mod.location == location:
                    yield mod

    def add_adapter(self, name: str, params: AdapterParams) -> None:
        where = ("output",) if params.type == "pfeiffer" else ("attention", "output")
        for mod in self.slots():
            if mod.location in where:
                mod.adapters[name] = BottleneckAdapter(self.hidden_size, params)
        self.adapter_params[name] = params

    def add_fusion(self, name: str, adapter_names: list[str], params: FusionParams) -> None:
        for a in adapter_names:
            if a not in self.adapter_params:
                raise KeyError(f"fusion '{name}': no adapter named '{a}' (have {sorted(self.adapter_params)})")
            if self.adapter_params[a].type != "pfeiffer":
                raise ValueError("fusion is defined over Pfeiffer (output-position) adapters")
        drop = getattr(self.config, "attention_probs_dropout_prob", 0.1)
        for mod in self.slots("output"):
            mod.fusions[name] = AdapterFusion(self.hidden_size, adapter_names, params, drop)
        self.fusion_params[name] = (list(adapter_names), params)

    def add_head(self, name: str, task_type: str, num_labels: int, pooling: str = "cls") -> None:
        drop = getattr(self.config, "hidden_dropout_prob", 0.1)
        self.heads[name] = make_head(task_type, self.hidden_size, num_labels, drop, pooling)
        self.head_specs[name] = (task_type, num_labels, pooling)

    def set_active(self, setup: str | Fuse | None) -> None:
        """Turn adapters off (None), on (one adapter name), or activate a fusion over several."""
        for mod in self.slots():
            if setup is None:
                mod.active = None
            elif isinstance(setup, str):
                if setup not in self.adapter_params:
                    raise KeyError(f"no adapter named '{setup}'")
                mod.active = ActiveSetup(adapter=setup) if setup in mod.adapters else None
            else:
                if setup.name not in self.fusion_params:
                    raise KeyError(f"no fusion named '{setup.name}'")
                mod.active = ActiveSetup(fusion=setup.name, fused=list(setup.adapters)) \
                    if setup.name in mod.fusions else None

    # ------------------------------------------------------------------ fusion helpers
    def fusion_layers(self, name: str | None = None):
        for mod in self.slots("output"):
            for n, f in mod.fusions.items():
                if name is None or n == name:
                    yield f

    def fusion_regularization(self, name: str) -> torch.Tensor:
        """sum over layers of ||I - V||_F^2 (the paper's value regulariser, before its 0.01 weight)."""
        return torch.stack([f.regularization() for f in self.fusion_layers(name)]).sum()

    def set_fusion_temperature(self, t: float) -> None:
        for f in self.fusion_layers():
            f.temperature = t

    def start_capture(self) -> None:
        self._ctx.capture = True
        for mod in self.slots("output"):
            mod.capture_sum, mod.capture_count = None, 0

    def stop_capture(self) -> list[list[float]] | None:
        """Mean fusion attention per layer and adapter over every real token seen: [layers][N]."""
        self._ctx.capture = False
        out = []
        for mod in self.slots("output"):
            if mod.capture_sum is None:
                return None
            out.append((mod.capture_sum / max(mod.capture_count, 1)).tolist())
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids, attention_mask, head: str, token_type_ids=None, labels=None) -> torch.Tensor:
        """input_ids [B, L] (classification) or [B, K, L] (multiple choice) -> logits [B, C] / [B, K]."""
        num_choices = None
        if input_ids.dim() == 3:
            num_choices = input_ids.shape[1]
            input_ids = input_ids.flatten(0, 1)  # [B*K, L]
            attention_mask = attention_mask.flatten(0, 1)
            token_type_ids = token_type_ids.flatten(0, 1) if token_type_ids is not None else None
        pooling = getattr(self.heads[head], "pooling", "cls")
        hidden = self.encode(input_ids, attention_mask, token_type_ids, first_token_only=pooling == "cls")
        return self.heads[head](hidden, attention_mask, num_choices)

    def encode(self, input_ids, attention_mask, token_type_ids=None, first_token_only: bool = False) -> torch.Tensor:
        """[B, L] -> last hidden states [B, L, H], or [B, 1, H] (position 0) when ``first_token_only`` and
        ``self.last_layer == "first_token"`` and fusion attention is not being captured."""
        self._ctx.attention_mask = attention_mask
        self._ctx.first_token_only = first_token_only and self.last_layer == "first_token" and not self._ctx.capture
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        try:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        finally:
            self._ctx.attention_mask = None
            self._ctx.first_token_only = False
