"""Host adapters and fusion inside a stock transformers encoder without copying its modeling file.

Every post-LN layer ends both sub-layers with ``LN(f + x)``: f the sub-layer's output (after its
dropout), x its input. An adapter slot replaces f by f' (``Slot.adapt``) so that the family's own
``LN(f' + x)`` is what the adapter placement asks for; with nothing active f' = f, exactly the
original function. Where f is reached is the family's layout (``layout.py``):

* ``AdaptedOutput`` replaces an output-style module (``BertSelfOutput``, ``BertOutput``, ...), keeping its
  ``dense`` / ``LayerNorm`` / ``dropout`` under the same names (pretrained keys unchanged).
* ``HookSlot`` sits beside a hook-style module (DistilBERT's ``attention`` and ``ffn``) as its child
  ``adapter_slot`` and rewrites that module's output in a forward hook, before the layer's add.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.modeling.context import ActiveSetup, ForwardContext, Switchable
from benchmark.modeling.layout import SLOT, Layout


class Slot(Switchable, nn.Module):
    """Adapters and fusion layers of one sub-layer, and what they do to its output; ``active`` is its own
    activation state (what it runs; None: nothing, f' = f)."""

    def switch_off(self) -> None:
        self.active = None

    def _init_slot(self, location: str, ctx: ForwardContext, norm: nn.Module) -> None:
        self.location = location  # "attention" | "output"
        self.adapters = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.active: ActiveSetup | None = None
        self._ctx = ctx
        object.__setattr__(self, "_norm", norm)  # the family's LayerNorm of f + x (not a second copy of its keys)
        self.capture_sum: torch.Tensor | None = None  # [N] sum of fusion probs over real tokens
        self.capture_count = 0

    def adapt(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f [B, T, H] sub-layer output, x [B, T, H] its input -> f' with LN(f' + x) the adapted layer output."""
        act = self.active
        if act is None:
            return f
        if act.fusion is None:
            adapter = self.adapters[act.adapter]
            if adapter.params.type == "pfeiffer":
                return adapter(self._norm(f + x)) + f  # query = h = LN(f + x), residual = f
            return adapter(f) + f  # Houlsby: on the raw sub-layer output
        fusion = self.fusions[act.fusion]  # AdapterFusion or StaticMixing: (o [B, T, H], probs [B, T, N])
        h = self._norm(f + x)  # [B, T, H]
        out, probs = fusion(h, [self.adapters[n] for n in act.fused], residual=f)
        if self._ctx.capture:
            self._record(probs.detach())
        return out

    def _record(self, probs: torch.Tensor) -> None:
        mask = self._ctx.attention_mask
        weights = torch.ones(probs.shape[:2], device=probs.device) if mask is None else mask.float()
        s = (probs.float() * weights.unsqueeze(-1)).sum((0, 1)).cpu()  # [N], summed in float32 under any precision
        self.capture_sum = s if self.capture_sum is None else self.capture_sum + s
        self.capture_count += int(weights.sum().item())


class AdaptedOutput(Slot):
    """An output-style module ``LN(dropout(dense(h)) + x)`` with an adapter slot."""

    def __init__(self, base: nn.Module, location: str, ctx: ForwardContext):
        super().__init__()
        self.dense = base.dense
        self.LayerNorm = base.LayerNorm
        self.dropout = base.dropout
        self._init_slot(location, ctx, self.LayerNorm)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        f = self.dropout(self.dense(hidden_states))  # [B, T, H] sub-layer output
        return self.LayerNorm(self.adapt(f, input_tensor) + input_tensor)


class HookSlot(Slot):
    """The slot of a hook-style sub-layer: its host returns f (or (f, ...)) from its first argument x."""

    def __init__(self, location: str, ctx: ForwardContext, norm: nn.Module):
        super().__init__()
        self._init_slot(location, ctx, norm)

    def hook(self, module: nn.Module, args: tuple, output):
        x = args[0]  # [B, T, H] the sub-layer input (the residual)
        if isinstance(output, tuple):
            return (self.adapt(output[0], x), *output[1:])
        return self.adapt(output, x)


def install_slots(encoder: nn.Module, layout: Layout, ctx: ForwardContext) -> list[Slot]:
    """Put one slot on each sub-layer of every layer (idempotent); returns them in layer, location order."""
    slots: list[Slot] = []
    for layer in layout.layer_list(encoder):
        for loc in ("attention", "output"):
            sub = layout.sublayer(loc)
            host = layout.host(layer, loc)
            if sub.style == "output":
                if not isinstance(host, AdaptedOutput):
                    host = AdaptedOutput(host, loc, ctx)
                    layout.set_host(layer, loc, host)
                slots.append(host)
            else:
                slot = getattr(host, SLOT, None)
                if slot is None:
                    slot = HookSlot(loc, ctx, layout.norm_of(layer, loc))
                    setattr(host, SLOT, slot)
                    host.register_forward_hook(slot.hook)
                slots.append(slot)
    return slots
