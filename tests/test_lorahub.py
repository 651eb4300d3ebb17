"""LoraHub-style search (benchmark/modeling/lorahub.py, issue 36) on a tiny problem whose optimum is known:
K = 3 LoRAs on one 6 -> 5 linear layer, a few-shot batch whose targets come from a known composition w*."""

from __future__ import annotations

import pytest
import torch

from benchmark.modeling import lorahub

pytest.importorskip("nevergrad", reason="nevergrad is not installed (pip install '.[composition]')")

W_STAR = [1.0, -0.5, 0.25]


def _problem():
    g = torch.Generator().manual_seed(0)
    sources = [[{"A.weight": torch.randn(2, 6, generator=g), "B.weight": torch.randn(5, 2, generator=g)}]
               for _ in W_STAR]
    x = torch.randn(16, 6, generator=g)  # the few-shot batch [16, in]
    star = lorahub.compose(sources, W_STAR)[0]
    y = x @ (star["B.weight"] @ star["A.weight"]).T  # [16, out]

    def loss(states) -> float:  # mean squared error of the composed LoRA's update on the batch
        delta = states[0]["B.weight"] @ states[0]["A.weight"]  # [out, in]
        return ((x @ delta.T - y) ** 2).mean().item()

    return sources, loss


def test_compose_is_lorahubs_weighted_sum_of_both_factors():
    sources, _ = _problem()
    out = lorahub.compose(sources, [2.0, 0.0, -1.0])[0]
    assert torch.allclose(out["A.weight"], 2 * sources[0][0]["A.weight"] - sources[2][0]["A.weight"])
    assert torch.allclose(out["B.weight"], 2 * sources[0][0]["B.weight"] - sources[2][0]["B.weight"])
    assert lorahub.l1_penalty([1.0, -0.5, 0.0]) == pytest.approx(0.05 * 1.5 / 3)


def test_search_finds_the_known_weights():
    """(sum w B)(sum w A) is unchanged by w -> -w, so the optimum is +-w*; without the L1 term its loss is 0.
    (Budget 100: NGOpt picks Cobyla here. At K = 3 and budget 400 it picks a metamodel that nevergrad 1.0.12
    breaks on numpy >= 2.4: ``float()`` of a 1-element array; see lorahub.py.)"""
    sources, loss = _problem()
    found = lorahub.search(sources, loss, budget=100, l1=0.0, seed=1)
    w = torch.tensor(found.weights)
    star = torch.tensor(W_STAR)
    assert min((w - star).abs().max(), (w + star).abs().max()) < 0.05
    assert found.objective < 1e-2 * loss(lorahub.compose(sources, [0.0, 0.0, 0.0]))
    assert len(found.history) == 100 and all(abs(v) <= lorahub.BOUND for ws, _ in found.history for v in ws)


def test_search_defaults_are_lorahubs_and_repeatable():
    sources, loss = _problem()
    first = lorahub.search(sources, loss, seed=3)
    again = lorahub.search(sources, loss, seed=3)
    assert first.weights == again.weights
    assert len(first.history) == lorahub.BUDGET == 40
    assert first.history[0][0] == [0.0, 0.0, 0.0]  # NGOpt starts at LoraHub's init, w = 0
    assert first.objective == pytest.approx(loss(lorahub.compose(sources, first.weights))
                                            + 0.05 * sum(abs(v) for v in first.weights) / 3)
    assert first.objective < first.history[0][1]  # 40 evaluations already beat the start
