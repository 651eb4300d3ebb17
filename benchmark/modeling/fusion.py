"""AdapterFusion (Pfeiffer et al. 2021, Sec. 3.2): per-layer attention over N adapters' outputs.

Per token, with h the query input [H], z_n = up_n(act(down_n(h))) the n-th adapter output [H] and
``residual`` the sub-layer output f:

    score_n = (h Q + b_q) . (z_n K + b_k)          s = softmax(dropout(score) / T)
    o       = sum_n s_n (z_n V) + residual         (dynamic; "static" has no V)

Two implementations of the same function:

* ``naive_fusion``: literally the above (K and V applied to every adapter output); the test oracle,
  and what AdapterHub does.
* ``fast_fusion``: the algebra of ``shared/design/fast-fusion.md``: k = q Kᵀ once (Q and K merged),
  k . z_n = (k W_up,n) . a_n + k . b_up,n, sum_n s_n z_n = [s_n a_n]_n W_up + sum_n s_n b_up,n, V once,
  and the N down projections as one matmul. z_n never exists; only [B, T, N, r] tensors are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.modeling.adapters import mixed_up, stackable, stacked_down
from benchmark.modeling.mixing import StaticMixing
from benchmark.spec.schema import FusionParams


def build_fusion(hidden_size: int, adapter_names: list[str], params: FusionParams,
                 score_dropout: float) -> AdapterFusion | StaticMixing:
    """The fusion layer ``params`` asks for: AdapterFusion (``mixing: attention``, the default) or static mixing
    (``mixing: static``, ``mixing.py``: N logits, no Q, K, V; no score dropout). Where a model adds a fusion and
    where a checkpoint lists its tensors, so both always build the same module."""
    if params.mixing == "static":
        return StaticMixing(adapter_names)
    return AdapterFusion(hidden_size, adapter_names, params, score_dropout)


class AdapterFusion(nn.Module):
    def __init__(self, hidden_size: int, adapter_names: list[str], params: FusionParams, score_dropout: float):
        super().__init__()
        self.params = params
        self.adapter_names = list(adapter_names)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        for lin in (self.query, self.key):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        if params.type == "dynamic":
            self.value = nn.Linear(hidden_size, hidden_size, bias=False)
            with torch.no_grad():  # identity with 1e-6 off the diagonal
                self.value.weight.fill_(1e-6).fill_diagonal_(1.0)
        else:
            self.value = None
        self.score_dropout = nn.Dropout(score_dropout)
        self.temperature = 1.0

    def no_decay(self) -> list[nn.Parameter]:
        """This module's parameters whose role takes no weight decay (``training.loop.make_optimizer``): V, which
        the value regulariser pulls towards the identity (decay would pull it towards 0)."""
        return [self.value.weight] if self.value is not None else []

    def regularization(self) -> torch.Tensor:
        """||I - V||_F^2 of this layer (0 for static fusion)."""
        if self.value is None:
            return self.query.weight.new_zeros(())
        eye = torch.eye(self.value.weight.shape[0], device=self.value.weight.device, dtype=self.value.weight.dtype)
        return ((eye - self.value.weight) ** 2).sum()

    def forward(self, h, adapters, residual):
        if self.params.implementation == "fast" and stackable(adapters):
            return fast_fusion(self, h, adapters, residual)
        return naive_fusion(self, h, adapters, residual)


def naive_fusion(fusion: AdapterFusion, h, adapters, residual):
    """Returns (o [B, T, H], probs [B, T, N])."""
    z = torch.stack([a(h) for a in adapters], dim=2)  # [B, T, N, H]
    q = fusion.query(h)  # [B, T, H]
    k = fusion.key(z)  # [B, T, N, H]
    v = fusion.value(z) if fusion.value is not None else z  # [B, T, N, H]
    scores = (q.unsqueeze(2) * k).sum(-1)  # [B, T, N]
    probs = torch.softmax(fusion.score_dropout(scores) / fusion.temperature, dim=-1)
    o = (probs.unsqueeze(-1) * v).sum(2)  # [B, T, H]
    return o + residual, probs


def fast_fusion(fusion: AdapterFusion, h, adapters, residual):
    """Same function as ``naive_fusion`` without per-adapter K and V. Returns (o, probs)."""
    B, T, H = h.shape
    N, r = len(adapters), adapters[0].bottleneck
    a4, w_up, b_up = stacked_down(h, adapters)  # [B, T, N, r], [H, N*r], [N, H]: all down projections in one matmul
    # q . (z W_kᵀ + b_k) with q = h W_qᵀ + b_q: merge Q and K into one [H, H] matrix per step, so
    # k = q W_k = h (W_qᵀ W_k) + b_q W_k costs one H x H matmul per token instead of two.
    wq, bq, wk, bk = fusion.query.weight, fusion.query.bias, fusion.key.weight, fusion.key.bias
    k = F.linear(h, (wq.T @ wk).T, bq @ wk)  # [B, T, H]
    q_bk = F.linear(h, (wq.T @ bk).unsqueeze(0), (bq @ bk).unsqueeze(0))  # [B, T, 1] = q . b_k
    ku = (k @ w_up).view(B, T, N, r)  # [B, T, N, r]
    scores = (ku * a4).sum(-1) + k @ b_up.T + q_bk  # [B, T, N]
    probs = torch.softmax(fusion.score_dropout(scores) / fusion.temperature, dim=-1)
    mixed = mixed_up(a4, w_up, b_up, probs)  # [B, T, H] = sum_n s_n z_n
    o = fusion.value(mixed) if fusion.value is not None else mixed
    return o + residual, probs
