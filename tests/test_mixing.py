"""Static mixing (benchmark/modeling/mixing.py, issue 36): AdapterFusion's output with the attention pinned to
constant weights, trainable through its mixing logits only, and hosted by the fusion slot of a real model."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.modeling.adapters import BottleneckAdapter
from benchmark.modeling.fusion import AdapterFusion, naive_fusion
from benchmark.modeling.mixing import StaticMixing
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.spec.schema import AdapterParams, FusionParams

H, N = 16, 3


class _Pinned(nn.Module):
    """Stands in for fusion's score dropout: replaces every token's scores by the logits w [N]."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, scores):  # scores [B, T, N]
        return self.w.expand_as(scores)


def _adapters() -> list[BottleneckAdapter]:
    torch.manual_seed(0)
    out = []
    for _ in range(N):
        a = BottleneckAdapter(H, AdapterParams(reduction_factor=4))
        with torch.no_grad():
            for p in a.parameters():
                p.normal_(0, 0.5)
        out.append(a)
    return out


def test_static_mixing_is_fusion_with_constant_attention():
    adapters, names = _adapters(), [f"a{i}" for i in range(N)]
    mixing = StaticMixing(names)
    with torch.no_grad():
        mixing.logits.copy_(torch.tensor([0.3, -1.2, 0.8]))
    fusion = AdapterFusion(H, names, FusionParams(type="static"), score_dropout=0.0)
    fusion.score_dropout = _Pinned(mixing.logits.detach())
    h, residual = torch.randn(2, 5, H), torch.randn(2, 5, H)
    out, probs = mixing(h, adapters, residual)
    expected, expected_probs = naive_fusion(fusion, h, adapters, residual)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(probs, expected_probs, atol=1e-7)
    assert probs.shape == (2, 5, N) and torch.allclose(probs[1, 3], torch.softmax(mixing.logits, -1))


def test_static_mixing_trains_its_logits_only_towards_the_best_mixture():
    """Frozen adapters, target = a known mixture of their outputs: gradients reach the logits alone, and the
    learned softmax recovers the mixture."""
    adapters, names = _adapters(), [f"a{i}" for i in range(N)]
    for a in adapters:
        a.requires_grad_(False)
    mixing = StaticMixing(names)
    assert torch.allclose(mixing.weights(), torch.full((N,), 1 / N))  # uniform at init
    target_s = torch.tensor([0.6, 0.3, 0.1])
    h, residual = torch.randn(4, 6, H), torch.randn(4, 6, H)
    with torch.no_grad():
        target = torch.einsum("btnh,n->bth", torch.stack([a(h) for a in adapters], 2), target_s) + residual
    opt = torch.optim.Adam(mixing.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = ((mixing(h, adapters, residual)[0] - target) ** 2).mean()
        loss.backward()
        opt.step()
    assert mixing.logits.grad is not None and mixing.logits.grad.abs().sum() > 0
    assert all(p.grad is None for a in adapters for p in a.parameters())
    assert torch.allclose(mixing.weights(), target_s, atol=1e-3)
    assert mixing.regularization().item() == 0.0


def test_the_fusion_slot_hosts_static_mixing(tiny_bert):
    """In a real tiny BERT: mixing sits where a fusion layer does, attention capture reads its weights, and a
    one-hot mixture is exactly that adapter alone."""
    tok, encoder = tiny_bert
    model = AdapterModel(encoder())
    names = ["x", "y", "z"]
    torch.manual_seed(1)
    for n in names:
        model.add_adapter(n, AdapterParams(reduction_factor=16))
    with torch.no_grad():
        named = dict(model.named_parameters())
        for key in model.keys_of(Modules(adapters=names)):
            named[key].normal_(0, 0.3)
    model.add_fusion("f", names, FusionParams(type="static"))
    layers = list(model.slots("output"))
    for slot in layers:
        slot.fusions["f"] = StaticMixing(names)
    model.add_head("t", "classification", 2)
    model.eval()
    batch = dict(tok(["one sentence", "and another, longer one"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        model.set_active(Fuse("f"))
        model.start_capture()
        model(head="t", **batch)
        captured = model.stop_capture()
        assert len(captured) == len(layers)
        assert all(abs(v - 1 / 3) < 1e-6 for row in captured for v in row)
        for slot in layers:
            slot.fusions["f"].logits.copy_(torch.tensor([-60.0, 60.0, -60.0]))  # all of "y"
        mixed = model(head="t", **batch)
        model.set_active("y")
        alone = model(head="t", **batch)
        model.set_active(None)
        plain = model(head="t", **batch)
    assert (mixed - alone).abs().max().item() <= 1e-6
    assert (mixed - plain).abs().max().item() > 1e-3
