"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021).

An adapter maps a hidden state h [.., H] to up(act(down(h))) [.., H] with a bottleneck of width
r = H / reduction_factor. Where it sits is ``layout.PLACEMENT``; what it adds to is decided by the
adapter slot that hosts it (``layers.Slot.adapt``):

* Pfeiffer (AdapterHub ``seq_bn``, the paper's ST-A): after the FFN only;
  h = LN(f + x), out = adapter(h) + f, layer output LN(out + x), with the pretrained LN.
* Houlsby (``double_seq_bn``): after attention and after the FFN, on the raw sub-layer output;
  layer output LN(f + adapter(f) + x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.modeling.context import ActiveSetup
from benchmark.modeling.layout import PLACEMENT, Layout
from benchmark.spec.schema import AdapterParams

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden_size: int, params: AdapterParams):
        super().__init__()
        if hidden_size % params.reduction_factor:
            raise ValueError(f"hidden size {hidden_size} is not divisible by reduction factor {params.reduction_factor}")
        self.params = params
        self.bottleneck = hidden_size // params.reduction_factor
        self.down = nn.Linear(hidden_size, self.bottleneck)  # weight [r, H]
        self.act = ACTIVATIONS[params.activation]()
        self.up = nn.Linear(self.bottleneck, hidden_size)  # weight [H, r]
        # AdapterHub "bert" init: normal(0, 0.02) weights, zero biases.
        for lin in (self.down, self.up):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h: [B, T, H] -> down [B, T, r] -> up [B, T, H]
        return self.up(self.act(self.down(h)))


# ------------------------------------------------------------------ N adapters at once (fusion.fast_fusion, mixing)
def stackable(adapters: list) -> bool:
    """Whether N adapters can run as one (``stacked_down``): bottlenecks of one width and one non-linearity."""
    first = adapters[0]
    return all(isinstance(a, BottleneckAdapter) and a.bottleneck == first.bottleneck
               and a.params.activation == first.params.activation for a in adapters)


def stacked_down(h: torch.Tensor, adapters: list[BottleneckAdapter]):
    """The N down projections and their non-linearity as one matmul, and the up projections side by side:
    (a [B, T, N, r], w_up [H, N*r], b_up [N, H]), so that z_n = a_n W_up,nᵀ + b_up,n."""
    B, T, _ = h.shape
    N, r = len(adapters), adapters[0].bottleneck
    w_down = torch.cat([a.down.weight for a in adapters], 0)  # [N*r, H]
    b_down = torch.cat([a.down.bias for a in adapters], 0)  # [N*r]
    act = ACTIVATIONS[adapters[0].params.activation]()
    a = act(F.linear(h, w_down, b_down)).view(B, T, N, r)
    return a, torch.cat([a.up.weight for a in adapters], 1), torch.stack([a.up.bias for a in adapters], 0)


def mixed_up(a: torch.Tensor, w_up: torch.Tensor, b_up: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sum_n s_n z_n [B, T, H] with no z_n formed: [s_n a_n]_n W_upᵀ + sum_n s_n b_up,n, for mixing weights
    s [B, T, N] (fusion's attention) or [N] (static mixing); a, w_up, b_up from ``stacked_down``."""
    B, T, N, r = a.shape
    return (s.unsqueeze(-1) * a).reshape(B, T, N * r) @ w_up.T + s @ b_up


# ------------------------------------------------------------------ the adapter type's side of the model API
# (``model.adapter_type`` dispatches here for pfeiffer / houlsby; the tuners of ``tuners.py`` have the same six functions)
def attach(model, name: str, params: AdapterParams) -> None:
    """One bottleneck per slot the placement rule (``layout.PLACEMENT``) names."""
    for slot in model.slots():
        if slot.location in PLACEMENT[params.type]:
            slot.adapters[name] = BottleneckAdapter(model.hidden_size, params)


def activate(model, name: str) -> None:
    for slot in model.slots():
        slot.active = ActiveSetup(adapter=name) if name in slot.adapters else None


def modules_of(model, name: str) -> list[nn.Module]:
    return [slot.adapters[name] for slot in model.slots() if name in slot.adapters]


def expected_shapes(layout: Layout, meta: dict, name: str, params: AdapterParams) -> dict[str, tuple[int, ...]]:
    """Every tensor of adapter ``name`` in a model of ``layout`` with ``meta``'s size (built on the meta device)."""
    with torch.device("meta"):
        module = BottleneckAdapter(meta["hidden_size"], params)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return {f"{layout.slot_prefix(i, loc)}adapters.{name}.{k}": s
            for i in range(meta["num_layers"]) for loc in PLACEMENT[params.type] for k, s in shapes.items()}


def params_from(d: dict) -> AdapterParams:
    return AdapterParams(**d)


def describe(model, name: str) -> dict:
    """What modules.json stores for this adapter."""
    return model.adapter_params[name].model_dump()
