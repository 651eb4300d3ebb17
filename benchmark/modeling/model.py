"""A stock transformers encoder with adapter / fusion slots and per-task heads.

    model = AdapterModel(encoder)                  # any encoder with a layout (layout.py)
    model.add_adapter("rte", AdapterParams())       # Pfeiffer rf 16
    model.add_head("rte", "classification", 2)
    model.set_active("rte")                         # one adapter
    model.set_active(Fuse("f"))                     # or a fusion layer over the adapters it was built on
    logits = model(head="rte", **batch)
    model.train_only(Modules(adapters=["rte"], heads=["rte"]))   # requires_grad on exactly these
    model.state_of(Modules(adapters=["rte"]))        # their tensors, as state-dict keys -> tensors

Transforms applied after construction change how, never what, the model computes:
``cpu_kernels.set_cpu_kernels`` and ``first_token.set_last_layer`` (``compute.Compute.apply`` does both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.methods import registry
from benchmark.methods.params import Strict
from benchmark.modeling.context import ActiveSetup, ForwardContext, Switchable
from benchmark.modeling.fusion import build_fusion
from benchmark.modeling.heads import make_head
from benchmark.modeling.layers import install_slots
from benchmark.modeling.layout import FUSION_LOCATION, layout_of
from benchmark.spec.schema import AdapterParams, FusionParams

ModuleParams = AdapterParams | Strict  # a bottleneck adapter's params, or a method package's (LoRAParams, ...)


def adapter_type(params: ModuleParams):
    """The module that owns an adapter type: where its parameters sit, its forward, its keys and shapes
    (``attach``, ``activate``, ``modules_of``, ``expected_shapes``, ``describe``, ``params_from``)."""
    return ADAPTER_TYPES[params.type]


def params_from(d: dict) -> ModuleParams:
    """Adapter params as modules.json stores them (``describe``), of whichever type."""
    return ADAPTER_TYPES[d.get("type", "pfeiffer")].params_from(d)


# params.type -> its module: each method package's ``layer.py`` (``pfeiffer`` / ``houlsby``: ST-A's), or the
# ``TUNER`` it declares (a ``tuners.TargetTuner``, which has the six functions)
ADAPTER_TYPES = {type_: getattr(layer, "TUNER", layer) for type_, kind in registry.module_types().items()
                 if (layer := registry.part(kind, "layer")) is not None}


def flat_choices(num_choices: int | None, *tensors):
    """Multiple-choice tensors [B, K, ...] -> [B*K, ...] (one sequence per choice); as they are without choices."""
    return [t.flatten(0, 1) if num_choices and t is not None else t for t in tensors]


@dataclass(frozen=True)
class Fuse:
    """Activate fusion layer ``name``. ``adapters`` may repeat the fusion's adapter list as a check; the
    order is the fusion's own (given at ``add_fusion``) and a different list is an error."""

    name: str
    adapters: tuple[str, ...] | list[str] | None = None


@dataclass(frozen=True)
class Modules:
    """A selection of a model's modules by name: for freezing, saving, loading and snapshots."""

    adapters: tuple[str, ...] | list[str] = ()
    fusions: tuple[str, ...] | list[str] = ()
    heads: tuple[str, ...] | list[str] = ()
    encoder: bool = False  # the backbone's own weights (not the adapters and fusions inside it)


class AdapterModel(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.layout = layout_of(encoder)  # where the family keeps its layers and sub-layers
        self.heads = nn.ModuleDict()
        self.adapter_params: dict[str, ModuleParams] = {}  # adapters and tuners (any module type), by name
        self.fusion_params: dict[str, tuple[list[str], FusionParams]] = {}
        self.fusion_built_on: dict[str, list[str]] = {}  # every adapter a fusion was added over (before pruning)
        self.head_specs: dict[str, tuple[str, int, str]] = {}
        self._ctx = ForwardContext()
        self._slots = install_slots(encoder, self.layout, self._ctx)

    # ------------------------------------------------------------------ structure
    @property
    def config(self):
        return self.encoder.config

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def num_layers(self) -> int:
        return len(self.layout.layer_list(self.encoder))

    def layers(self) -> nn.ModuleList:
        return self.layout.layer_list(self.encoder)

    def slots(self, location: str | None = None):
        """The adapter slots (``layers.Slot``), layer by layer, attention before output."""
        return (mod for mod in self._slots if location is None or mod.location == location)

    def add_adapter(self, name: str, params: ModuleParams) -> None:
        """Add an adapter of any type; its module (``adapter_type``) decides where its parameters sit."""
        if name in self.adapter_params:
            raise KeyError(f"an adapter named '{name}' exists already")
        adapter_type(params).attach(self, name, params)
        self.adapter_params[name] = params

    def add_fusion(self, name: str, adapter_names: list[str], params: FusionParams) -> None:
        for a in adapter_names:
            if a not in self.adapter_params:
                raise KeyError(f"fusion '{name}': no adapter named '{a}' (have {sorted(self.adapter_params)})")
            if self.adapter_params[a].type != "pfeiffer":
                raise ValueError("fusion is defined over Pfeiffer (output-position) adapters")
        drop = getattr(self.config, "attention_probs_dropout_prob", 0.1)
        for mod in self.slots(FUSION_LOCATION):
            mod.fusions[name] = build_fusion(self.hidden_size, adapter_names, params, drop)
        self.fusion_params[name] = (list(adapter_names), params)
        self.fusion_built_on[name] = list(adapter_names)

    def add_head(self, name: str, task_type: str, num_labels: int, pooling: str = "cls") -> None:
        drop = getattr(self.config, "hidden_dropout_prob", 0.1)
        self.heads[name] = make_head(task_type, self.hidden_size, num_labels, drop, pooling)
        self.head_specs[name] = (task_type, num_labels, pooling)

    def set_active(self, setup: str | Fuse | None) -> None:
        """Turn adapters off (None), on (one adapter name), or activate a fusion over several."""
        if isinstance(setup, str) and setup not in self.adapter_params:
            raise KeyError(f"no adapter named '{setup}'")
        if isinstance(setup, Fuse):
            if setup.name not in self.fusion_params:
                raise KeyError(f"no fusion named '{setup.name}' (have {sorted(self.fusion_params)})")
            fused = list(self.fusion_params[setup.name][0])
            if setup.adapters is not None and list(setup.adapters) != fused:
                raise ValueError(f"Fuse('{setup.name}', {list(setup.adapters)}) does not match the fusion's adapters "
                                 f"{fused} (names and order are fixed when the fusion is added)")
        for mod in self.modules():  # every module owns its activation state: switch all off
            if isinstance(mod, Switchable):
                mod.switch_off()
        if isinstance(setup, str):
            adapter_type(self.adapter_params[setup]).activate(self, setup)
        elif isinstance(setup, Fuse):
            for mod in self.slots(FUSION_LOCATION):
                mod.active = ActiveSetup(fusion=setup.name, fused=fused)

    def prune_fusion(self, name: str, keep: list[str], drop_adapters: bool = False) -> list[str]:
        """Run fusion ``name`` over the adapters ``keep`` only (in the fusion's own order), its softmax
        renormalised over them (``prune.py``); returns the kept list. Any subset of the adapters the fusion
        was added over may be kept, so keeping all of them undoes a pruning. ``drop_adapters`` also removes
        the others from the model (memory; then they cannot come back) when no other fusion uses them."""
        params = self.fusion_params[name][1]
        own = [a for a in self.fusion_built_on[name] if a in self.adapter_params]
        unknown = [a for a in keep if a not in own]
        if unknown or not keep:
            raise KeyError(f"fusion '{name}' fuses {own}; cannot keep {list(keep) if keep else 'nothing'}")
        kept = [a for a in own if a in keep]
        for f in self.fusion_layers(name):
            f.adapter_names = list(kept)
        self.fusion_params[name] = (kept, params)
        for mod in self.slots("output"):
            if mod.active is not None and mod.active.fusion == name:
                mod.active = ActiveSetup(fusion=name, fused=list(kept))
        if drop_adapters:
            used = {a for adapters, _ in self.fusion_params.values() for a in adapters}
            for a in [a for a in own if a not in kept and a not in used]:
                for mod in self.slots():
                    if a in mod.adapters:
                        del mod.adapters[a]
                del self.adapter_params[a]
        return kept

    # ------------------------------------------------------------------ selecting modules
    def modules_of(self, sel: Modules) -> list[nn.Module]:
        """The nn.Modules a selection names (every layer's slot for adapters and fusions)."""
        for what, names, have in (("adapter", sel.adapters, self.adapter_params),
                                  ("fusion", sel.fusions, self.fusion_params), ("head", sel.heads, self.heads)):
            for n in names:
                if n not in have:
                    raise KeyError(f"no {what} named '{n}' (have {sorted(have)})")
        out: list[nn.Module] = []
        for a in sel.adapters:  # each adapter type knows its own modules
            out += adapter_type(self.adapter_params[a]).modules_of(self, a)
        for slot in self.slots():
            out += [slot.fusions[f] for f in sel.fusions if f in slot.fusions]
        out += [self.heads[h] for h in sel.heads]
        return out

    def _added_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of every adapter and fusion module (what is not the backbone's own)."""
        added = {id(m) for slot in self.slots() for d in (slot.adapters, slot.fusions) for m in d.values()}
        added |= {id(m) for a, p in self.adapter_params.items() for m in adapter_type(p).modules_of(self, a)}
        return tuple(f"{n}." for n, m in self.named_modules() if id(m) in added)

    def keys_of(self, sel: Modules) -> list[str]:
        """State-dict keys of the selected modules, in state-dict order."""
        chosen = {id(m) for m in self.modules_of(sel)}
        prefixes = tuple(f"{n}." for n, m in self.named_modules() if id(m) in chosen)
        added = self._added_prefixes() if sel.encoder else ()
        return [k for k in self.state_dict(keep_vars=True)
                if k.startswith(prefixes) or (sel.encoder and k.startswith("encoder.") and not k.startswith(added))]

    def state_of(self, sel: Modules) -> dict[str, torch.Tensor]:
        """Detached copies of the selected modules' tensors (state-dict keys)."""
        state = self.state_dict()
        return {k: state[k].detach().clone() for k in self.keys_of(sel)}

    def train_only(self, sel: Modules) -> None:
        """requires_grad on the selected modules' parameters, off everywhere else."""
        chosen = set(self.keys_of(sel))
        for name, p in self.named_parameters():
            p.requires_grad = name in chosen

    # ------------------------------------------------------------------ fusion helpers
    def fusion_layers(self, name: str | None = None):
        return (f for mod in self.slots("output") for n, f in mod.fusions.items() if name is None or n == name)

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
        slots = list(self.slots("output"))
        if any(mod.capture_sum is None for mod in slots):
            return None
        return [(mod.capture_sum / max(mod.capture_count, 1)).tolist() for mod in slots]

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids, attention_mask, head: str, token_type_ids=None) -> torch.Tensor:
        """input_ids [B, L] (classification) or [B, K, L] (multiple choice) -> logits [B, C] / [B, K]."""
        num_choices = input_ids.shape[1] if input_ids.dim() == 3 else None
        input_ids, attention_mask, token_type_ids = flat_choices(num_choices, input_ids, attention_mask,
                                                                 token_type_ids)  # [B*K, L]
        pooling = getattr(self.heads[head], "pooling", "cls")
        hidden = self.encode(input_ids, attention_mask, token_type_ids, first_token_only=pooling == "cls")
        return self.heads[head](hidden, attention_mask, num_choices)

    def encode(self, input_ids, attention_mask, token_type_ids=None, first_token_only: bool = False) -> torch.Tensor:
        """[B, L] -> last hidden states [B, L, H], or [B, 1, H] (position 0) when ``first_token_only``, the
        first-token transform is on (``first_token.set_last_layer``) and fusion attention is not captured."""
        self._ctx.attention_mask = attention_mask
        self._ctx.first_token_only = first_token_only and self._ctx.last_layer_first_token and not self._ctx.capture
        take = token_type_ids is not None and self.layout.token_type_ids  # DistilBERT takes none
        kwargs = {"token_type_ids": token_type_ids} if take else {}
        try:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        finally:
            self._ctx.attention_mask = None
            self._ctx.first_token_only = False
