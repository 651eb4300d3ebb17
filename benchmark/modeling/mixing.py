"""Static mixing (issue 36): per layer, one learned softmax over the N adapters' outputs, the same for every token.

The ablation of AdapterFusion's attention (``fusion.py``): no Query, Key or Value, so nothing depends on
the token. With z_n = up_n(act(down_n(h))) the n-th adapter output [H] and learned logits w [N] per layer:

    s = softmax(w / T)          [N]        (w = 0 at init: the uniform mixture, 1 / N each)
    o = sum_n s_n z_n + residual           [H]

It is AdapterFusion with attention scores pinned to w at every token (``tests/test_mixing.py`` checks it
against ``fusion.naive_fusion`` so pinned). Same call as ``AdapterFusion.forward``, ``(h, adapters,
residual) -> (o [B, T, H], probs [B, T, N])``, and the same ``regularization()`` / ``temperature`` /
``adapter_names``, so a slot (``layers.Slot.adapt``), attention capture and the fusion objective host it
unchanged. N parameters per layer. Served (``cpu_kernels.serving`` marks it), it computes the same sum as
fusion's fast path does, the N down projections as one matmul and no z_n (``adapters.mixed_up``); trained and
evaluated, as its runs were, adapter by adapter, so their results reproduce bit for bit. The method ``specs/methods/static_mix.yaml``: ``fusion.mixing: static``, which
``fusion.build_fusion`` turns into this module wherever a fusion layer is built.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.modeling.adapters import mixed_up, stackable, stacked_down


class StaticMixing(nn.Module):
    fuses_when_serving = True  # ``cpu_kernels.serving`` sets ``serving``: ``forward`` then stacks the adapters

    def __init__(self, adapter_names: list[str]):
        super().__init__()
        self.adapter_names = list(adapter_names)
        self.logits = nn.Parameter(torch.zeros(len(self.adapter_names)))  # w [N]
        self.temperature = 1.0

    def weights(self) -> torch.Tensor:
        """s = softmax(w / T) [N]: the mixture this layer applies to every token."""
        return torch.softmax(self.logits / self.temperature, dim=-1)

    def regularization(self) -> torch.Tensor:
        """Nothing to regularise (the fusion objective asks every fusion layer)."""
        return self.logits.new_zeros(())

    def forward(self, h, adapters, residual):
        """h [B, T, H] (the adapters' input), residual [B, T, H] -> (o [B, T, H], probs [B, T, N])."""
        if len(adapters) != len(self.adapter_names):
            raise ValueError(f"static mixing over {len(self.adapter_names)} adapters got {len(adapters)}")
        if self.__dict__.get("serving") and stackable(adapters):
            a, w_up, b_up = stacked_down(h, adapters)  # [B, T, N, r], [H, N*r], [N, H]
            s = self.weights().to(a.dtype)  # [N]
            o = mixed_up(a, w_up, b_up, s)  # [B, T, H] = sum_n s_n z_n
        else:
            z = torch.stack([a(h) for a in adapters], dim=2)  # [B, T, N, H]
            s = self.weights().to(z.dtype)  # [N]
            o = torch.einsum("btnh,n->bth", z, s)  # [B, T, H] = sum_n s_n z_n
        return o + residual, s.expand(*h.shape[:2], -1)  # probs [B, T, N]: one row repeated (a view)
