"""Weight-space merging of trained modules (issue 36): N sources -> one module, pure torch.

The merges are methods (``fusion.mixing: merge``, ``specs/methods/merge_*.yaml``: the fusion package's setup,
``methods/fusion/setup.py``, calls ``merge_adapters`` with ``initial_adapter`` as the base for bottleneck sources and
``merge_loras`` for LoRA sources, ``fusion.source_method``). Every function takes the sources as
lists of tensors or of **per-module state dicts** (``read``: one dict per module of an adapter, in the
model's module order, keys local to the module: ``down.weight`` ... or ``A.weight`` / ``B.weight``),
so sources saved under different adapter names line up by module position, never by key strings.

Tensor-level steps, on task tensors tau_i [*] stacked as T [N, *] (the names of Yadav et al. 2023):

    trim(tau, d)            keep the round(d * numel) largest |tau| (k = 20% in TIES: d = 0.2)
    drop(tau, d)            DARE (Yu et al. 2024): tau * m / d, m ~ Bernoulli(d), d = 1 - p
    elect(T)                gamma = sign(sum_i T_i) [*] (ties at 0 count as +); mask_i = sign(T_i) == gamma
    disjoint_mean(T, mask)  sum_i mask_i T_i / max(1, sum_i mask_i)      [*]

``combine`` chains them as PEFT's ``merge_utils`` does (weights w_i multiply tau_i before the sum or the
disjoint mean), under the same five names: ``linear``, ``ties``, ``dare_linear``, ``dare_ties``,
``magnitude_prune``. PEFT draws DARE's masks with ``torch.bernoulli`` on the global generator; here the
caller passes a ``torch.Generator`` (seeded), drawn in the same order (tensor by tensor, source by source).

**Bottleneck adapters** (``merge_adapters``): ``average`` (AdapterSoup, Chronopoulou et al. 2023: the
mean of the weights), ``task_arithmetic`` (Ilharco et al. 2023: base + lambda sum_i tau_i), ``ties``
(base + lambda disjoint_mean(elect(trim(tau)))), ``dare`` (base + lambda sum_i drop(tau_i), DARE with
task arithmetic) and ``dare_ties``. A task vector is tau_i = theta_i - base. What is the base of an
adapter? Not zero in general: the stage-1 ST-A runs of one seed all start from the same random
initialisation (``training/recipe.py`` seeds the run just before the setup adds the adapter, and the
draws do not depend on the task or the adapter's name), so the exact base is that init, re-created by
``initial_adapter`` (seed, then add the same adapter to a fresh model of the same backbone). Adapters
of different seeds share no init and are not merged together. ``base=None`` treats zero as the base
(the task vector is the adapter itself), which is the only choice for sources whose init is unknown
(published adapters). TIES trims over the whole flattened task vector of an adapter (every module and
tensor together), as the paper does over a model; PEFT trims per tensor.

**LoRA** (``merge_lora``) follows PEFT's ``LoraModel.add_weighted_adapter`` for the types it defines on
the factors (A [r, in] and B [out, r] merged separately, with weights sqrt(|w_i s_i|), the sign on A
only, s_i = alpha_i / r_i) and two types on the deltas Delta_i = s_i B_i A_i [out, in]: ``cat`` (exact:
A = [w_i s_i A_i] stacked [sum r_i, in], B = [B_i] side by side [out, sum r_i]) and ``svd`` (sum_i w_i
Delta_i, truncated SVD to the sources' largest rank: B = U S, A = Vh). The
merged LoRA has alpha = rank (scaling 1), as PEFT's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Published defaults, the defaults of ``merge_adapters`` and of the method's spec (``fusion.merge``)
# (TIES: density 0.2, lambda 1; task arithmetic: lambda 0.4; DARE: p 0.9, lambda 1).
from benchmark.methods.merge_defaults import MERGE_DEFAULTS

FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")  # PEFT, A and B separately
DELTA_TYPES = ("cat", "svd")  # PEFT, on B A
ADAPTER_MERGES = ("average", "task_arithmetic", "ties", "dare", "dare_ties")
# The method's merge names (``fusion.merge.how``) -> PEFT's combination type (over LoRA sources: on the factors;
# over bottleneck adapters, ``merge_adapters``: on the flattened task vectors)
LORA_MERGES = {"average": "linear", "task_arithmetic": "linear", "ties": "ties", "dare": "dare_linear",
               "dare_ties": "dare_ties", "svd": "svd"}



# ------------------------------------------------------------------------------- tensor steps
def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """tau [*] with all but the int(density * numel) largest magnitudes set to 0 (PEFT's ``magnitude``)."""
    if density >= 1:
        return tau
    k = int(density * tau.numel())
    keep = torch.zeros(tau.numel(), dtype=tau.dtype, device=tau.device)
    keep[torch.topk(tau.abs().reshape(-1), k=k).indices] = 1
    return tau * keep.view_as(tau)


def drop(tau: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's random drop: keep each entry with probability ``density`` (= 1 - p), rescale by 1 / density."""
    if density >= 1:
        return tau
    mask = torch.bernoulli(torch.full_like(tau, density), generator=generator)  # [*] in {0, 1}
    return tau * mask / density


def elect(stacked: torch.Tensor) -> torch.Tensor:
    """stacked [N, *] -> bool mask [N, *]: where each source agrees with the elected sign (PEFT's "total" method:
    the sign of the summed mass)."""
    gamma = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)  # [*]
    return stacked.sign() == gamma


def disjoint_mean(stacked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the sources [N, *] that agree with the elected sign -> [*] (0 where none does)."""
    return (stacked * mask).sum(0) / mask.sum(0).clamp(min=1)


def combine(tensors: list[torch.Tensor], weights: list[float] | torch.Tensor, how: str, *, density: float = 1.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """N task tensors [*] and weights [N] -> one tensor [*], as PEFT's merge_utils type ``how``."""
    if how not in FACTOR_TYPES:
        raise ValueError(f"unknown combination '{how}' (have {', '.join(FACTOR_TYPES)})")
    if how in ("ties", "magnitude_prune"):
        tensors = [trim(t, density) for t in tensors]
    elif how.startswith("dare"):
        tensors = [drop(t, density, generator) for t in tensors]
    stacked = torch.stack(tensors)  # [N, *]
    w = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
    weighted = stacked * w.view(-1, *[1] * (stacked.dim() - 1))  # [N, *]
    if how.endswith("ties"):
        return disjoint_mean(weighted, elect(stacked))
    return weighted.sum(0)


# ------------------------------------------------------------------------------- per-module states
def modules_in_order(model, name: str) -> list[nn.Module]:
    """The modules of adapter ``name`` in the model's module (= state-dict) order."""
    from benchmark.modeling.model import Modules

    chosen = {id(m) for m in model.modules_of(Modules(adapters=[name]))}
    return [m for m in model.modules() if id(m) in chosen]


def read(model, name: str) -> list[dict[str, torch.Tensor]]:
    """Detached copies of each module's own state dict (``down.weight``, ... / ``A.weight``, ``B.weight``)."""
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules_in_order(model, name)]


def write(model, name: str, states: list[dict[str, torch.Tensor]]) -> None:
    """Load per-module states (from ``read`` or a merge) into adapter ``name`` (strict: same keys, shapes)."""
    modules = modules_in_order(model, name)
    if len(modules) != len(states):
        raise ValueError(f"adapter '{name}' has {len(modules)} modules, the merge gives {len(states)}")
    for module, state in zip(modules, states):
        module.load_state_dict(state, strict=True)


def initial_adapter(fresh_model, params, seed: int) -> list[dict[str, torch.Tensor]]:
    """The initialisation every stage-1 adapter of ``seed`` started from: the recipe's ``torch.manual_seed(seed)``
    followed by adding the adapter, on ``fresh_model`` (the same backbone, nothing added yet). The global
    generator is restored afterwards."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        fresh_model.add_adapter("_init", params)
        return read(fresh_model, "_init")
    finally:
        torch.random.set_rng_state(state)


# ------------------------------------------------------------------------------- bottleneck adapters
def _flat(states: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for s in states for t in s.values()])  # [P] every tensor of the adapter


def _unflat(vector: torch.Tensor, like: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    chunks = iter(vector.split([t.numel() for s in like for t in s.values()]))  # in _flat's order
    return [{k: next(chunks).view_as(t).clone() for k, t in s.items()} for s in like]


def merge_adapters(sources: list[list[dict[str, torch.Tensor]]], how: str, *,
                   base: list[dict[str, torch.Tensor]] | None = None, lam: float | None = None,
                   density: float | None = None,
                   generator: torch.Generator | None = None) -> list[dict[str, torch.Tensor]]:
    """N adapters (each a list of per-module states, same structure) -> one, by ``how`` (``ADAPTER_MERGES``).

    ``base``: the init the task vectors are taken from (``initial_adapter``; None = zero). ``lam`` and
    ``density`` default to the published values of ``how`` (``density`` is 1 - p for DARE)."""
    if how not in ADAPTER_MERGES:
        raise ValueError(f"unknown merge '{how}' (have {', '.join(ADAPTER_MERGES)})")
    thetas = torch.stack([_flat(s) for s in sources])  # [N, P]
    if how == "average":
        return _unflat(thetas.mean(0), sources[0])
    theta0 = _flat(base) if base is not None else torch.zeros_like(thetas[0])  # [P]
    taus = list(thetas - theta0)  # N x [P]
    lam_default, density_default = MERGE_DEFAULTS[how]  # density None: every entry kept
    lam = lam_default if lam is None else lam
    density = (density_default or 1.0) if density is None else density
    merged = combine(taus, [lam] * len(taus), LORA_MERGES[how], density=density, generator=generator)  # [P]
    return _unflat(theta0 + merged, sources[0])


# ------------------------------------------------------------------------------- LoRA
def merge_lora(sources: list[list[dict[str, torch.Tensor]]], weights: list[float], scalings: list[float], how: str, *,
               density: float = 1.0,
               generator: torch.Generator | None = None) -> tuple[list[dict[str, torch.Tensor]], int]:
    """N LoRAs (per-module {A.weight [r, in], B.weight [out, r]}) with weights w_i and scalings s_i = alpha_i / r_i
    -> (merged per-module states, merged rank); the merged LoRA has alpha = rank. PEFT's random draws happen
    module by module (A of every source, then B), and so do these."""
    if how not in FACTOR_TYPES + DELTA_TYPES:
        raise ValueError(f"unknown LoRA combination '{how}' (have {', '.join(FACTOR_TYPES + DELTA_TYPES)})")
    ranks = [s[0]["A.weight"].shape[0] for s in sources]
    if len(sources) == 1:
        how = "linear"  # as PEFT: one source merges linearly
    if how in FACTOR_TYPES and len(set(ranks)) != 1:
        raise ValueError(f"'{how}' merges A and B factor-wise and needs one rank; the sources have {ranks}")
    rank = {"cat": sum(ranks), "svd": max(ranks)}.get(how, ranks[0])
    ws = [w * s for w, s in zip(weights, scalings)]
    w_a = [math.copysign(math.sqrt(abs(x)), 1.0 if x >= 0 else -1.0) for x in ws]  # sign on A only
    w_b = [math.sqrt(abs(x)) for x in ws]
    merged = []
    for j in range(len(sources[0])):
        a = [s[j]["A.weight"] for s in sources]  # N x [r_i, in]
        b = [s[j]["B.weight"] for s in sources]  # N x [out, r_i]
        if how == "cat":
            new_a = torch.cat([x * y for x, y in zip(a, ws)], 0)  # [sum r_i, in]
            new_b = torch.cat(b, 1)  # [out, sum r_i]
        elif how == "svd":
            delta = combine([(bi @ ai) * s for ai, bi, s in zip(a, b, scalings)], weights, "linear")  # [out, in]
            u, sv, vh = torch.linalg.svd(delta, full_matrices=True)
            new_b = u[:, :rank] @ torch.diag(sv[:rank])  # [out, rank]
            new_a = vh[:rank, :]  # [rank, in]
        else:
            new_a = combine(a, w_a, how, density=density, generator=generator)  # [r, in]
            new_b = combine(b, w_b, how, density=density, generator=generator)  # [out, r]
        merged.append({"A.weight": new_a.contiguous(), "B.weight": new_b.contiguous()})
    return merged, rank


def merge_loras(sources: list[list[dict[str, torch.Tensor]]], how: str, *, scalings: list[float],
                lam: float | None = None, density: float | None = None,
                generator: torch.Generator | None = None) -> tuple[list[dict[str, torch.Tensor]], int]:
    """The method's merges (``fusion.merge.how``) over N LoRA sources, as PEFT's ``add_weighted_adapter`` computes
    them (``LORA_MERGES``: ``merge_lora``): every source weighted by lambda, or by 1 / N for ``average`` and ``svd``
    (the mean of the deltas s_i B_i A_i, truncated to the sources' rank). No task vector is subtracted: as in PEFT,
    a LoRA's B starts at 0, so B A is its change of the weights."""
    if how not in LORA_MERGES:
        raise ValueError(f"unknown merge '{how}' for LoRA sources (have {', '.join(LORA_MERGES)})")
    n = len(sources)
    weights = [1.0 / n] * n if lam is None else [lam] * n
    return merge_lora(sources, weights, scalings, LORA_MERGES[how], density=1.0 if density is None else density,
                      generator=generator)
