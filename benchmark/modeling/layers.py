"""Host adapters and fusion inside a stock transformers encoder without copying its modeling file.

BERT-like encoders (BERT, RoBERTa, MiniLM, ...) end both sub-layers of every layer with an output
module ``LN(dropout(dense(h)) + x)`` (``BertSelfOutput`` after attention, ``BertOutput`` after the
FFN). ``AdaptedOutput`` replaces each such module, keeps its ``dense`` / ``LayerNorm`` / ``dropout``
sub-modules under the same names (so pretrained state-dict keys are unchanged) and adds slots for
adapters and fusion layers. With nothing active it computes exactly the original function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.modeling.fusion import AdapterFusion


@dataclass
class ForwardContext:
    """Shared by the adapted modules of one model: the current attention mask, capture and last-layer state."""

    attention_mask: torch.Tensor | None = None  # [B, T]
    capture: bool = False
    first_token_only: bool = False  # this forward: the last layer computes position 0 only (first_token.py)
    last_layer_first_token: bool = False  # the first-token transform is on (first_token.set_last_layer)


@dataclass
class ActiveSetup:
    adapter: str | None = None  # one adapter
    fusion: str | None = None  # or a fusion layer over several
    fused: list[str] = field(default_factory=list)


class AdaptedOutput(nn.Module):
    def __init__(self, base: nn.Module, location: str, ctx: ForwardContext):
        super().__init__()
        self.dense = base.dense
        self.LayerNorm = base.LayerNorm
        self.dropout = base.dropout
        self.location = location  # "attention" | "output"
        self.adapters = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.active: ActiveSetup | None = None
        self._ctx = ctx
        self.capture_sum: torch.Tensor | None = None  # [N] sum of fusion probs over real tokens
        self.capture_count = 0

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        f = self.dropout(self.dense(hidden_states))  # [B, T, H] sub-layer output
        x = input_tensor  # [B, T, H] sub-layer input (residual stream)
        act = self.active
        if act is None:
            return self.LayerNorm(f + x)
        if act.fusion is None:
            adapter = self.adapters[act.adapter]
            if adapter.kind == "pfeiffer":
                out = adapter(self.LayerNorm(f + x)) + f  # query = h = LN(f + x), residual = f
            else:
                out = adapter(f) + f  # Houlsby: on the raw sub-layer output
            return self.LayerNorm(out + x)
        fusion: AdapterFusion = self.fusions[act.fusion]
        h = self.LayerNorm(f + x)  # [B, T, H]
        out, probs = fusion(h, [self.adapters[n] for n in act.fused], residual=f)
        if self._ctx.capture:
            self._record(probs.detach())
        return self.LayerNorm(out + x)

    def _record(self, probs: torch.Tensor) -> None:
        mask = self._ctx.attention_mask
        weights = torch.ones(probs.shape[:2], device=probs.device) if mask is None else mask.float()
        s = (probs.float() * weights.unsqueeze(-1)).sum((0, 1)).cpu()  # [N], summed in float32 under any precision
        self.capture_sum = s if self.capture_sum is None else self.capture_sum + s
        self.capture_count += int(weights.sum().item())
