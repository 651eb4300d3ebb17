"""LoraHub-style search (Huang et al. 2023, issue 36): mixing weights over K LoRAs found without gradients.

LoraHub composes K LoRA modules with one weight each, on **both** factors (so the delta is
(sum_i w_i B_i)(sum_i w_i A_i), not sum_i w_i B_i A_i):

    A = sum_i w_i A_i   [r, in]        B = sum_i w_i B_i   [out, r]        (``compose``)

and picks w [K] to minimise  loss(compose(w)) + 0.05 * mean_i |w_i|  on a few-shot batch, with nevergrad's
NGOpt over the box [-1.5, 1.5]^K starting at w = 0, for a budget of loss evaluations (40 in LoraHub's
example). Those are the defaults here (``lorahub.algorithm`` of the ``lorahub`` package: ``ng.p.Array(init=0,
lower=-1.5, upper=1.5)``, ``NGOpt``, ``default_l1_regularization``); the optimiser is seeded through its own
parametrisation's random state, so a search is repeatable and leaves numpy's global generator alone.

The caller owns the model: ``loss`` receives the composed per-module states (``merging.read`` layout: one
dict ``{A.weight, B.weight}`` per module) and returns a float, typically after ``merging.write`` into a
LoRA of the sources' rank and alpha and a forward over the few-shot rows under ``torch.no_grad``. nevergrad
is the optional extra ``composition``, imported only here, when a search runs. The method is
``fusion.mixing: lorahub`` (``methods/fusion/setup.py``: ``_lorahub``, its head protocol and scoring).

Known limit: nevergrad 1.0.12's metamodel optimisers call ``float()`` on a 1-element array, an error under
numpy >= 2.4; NGOpt picks one only for small K with large budgets (K = 3, budget 400), never for the box
above at K = 11 and budgets 40-400 (Cobyla), nor at K = 3 up to budget 100. The error leaves nevergrad's
helper threads waiting, so a run hitting it would not exit: keep budgets in that range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

L1 = 0.05  # LoraHub's default_l1_regularization: 0.05 * mean |w|
BOUND = 1.5  # weights in [-1.5, 1.5]
BUDGET = 40  # loss evaluations (LoraHub's example: max_inference_step=40)


def compose(sources: list[list[dict[str, torch.Tensor]]], weights) -> list[dict[str, torch.Tensor]]:
    """K sources (per-module states, same keys and shapes) -> sum_i w_i source_i, tensor by tensor."""
    return [{k: sum(float(w) * s[j][k] for w, s in zip(weights, sources)) for k in sources[0][j]}
            for j in range(len(sources[0]))]


def l1_penalty(weights, strength: float = L1) -> float:
    return strength * sum(abs(float(w)) for w in weights) / len(weights)


@dataclass
class Found:
    weights: list[float]  # w [K], the optimiser's recommendation
    objective: float  # loss + penalty at ``weights``
    history: list[tuple[list[float], float]] = field(default_factory=list)  # every evaluation, in order


def search(sources: list[list[dict[str, torch.Tensor]]], loss: Callable[[list[dict[str, torch.Tensor]]], float], *,
           budget: int = BUDGET, l1: float = L1, seed: int = 0) -> Found:
    """Gradient-free weights over the K ``sources`` minimising ``loss(compose(w)) + l1 * mean |w|``."""
    try:
        import nevergrad as ng
        import numpy as np
    except ImportError as exc:  # pragma: no cover - the extra is installed wherever the search runs
        raise ImportError("LoraHub-style search needs nevergrad: pip install '.[composition]'") from exc
    k = len(sources)
    space = ng.p.Array(init=[0.0] * k, lower=[-BOUND] * k, upper=[BOUND] * k)
    space.random_state = np.random.RandomState(seed)
    history: list[tuple[list[float], float]] = []

    def objective(w) -> float:
        value = float(loss(compose(sources, w))) + l1_penalty(w, l1)
        history.append(([float(x) for x in w], value))
        return value

    opt = ng.optimizers.NGOpt(parametrization=space, budget=budget)
    best = [float(x) for x in opt.minimize(objective).value]
    return Found(best, float(loss(compose(sources, best))) + l1_penalty(best, l1), history)
