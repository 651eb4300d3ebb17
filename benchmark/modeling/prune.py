"""Pruned fusion after training (AdapterDrop, Rücklé et al., EMNLP 2021, Sec. 5): keep the k adapters a
trained fusion attends to most, the same k in every layer, and drop the rest.

    rank    = argsort_desc( mean over layers l and real tokens t of s_{l,t,n} )      (n over the N adapters)
    kept    = the top k of rank, in the fusion's own order
    s'_{l,t} = softmax over kept of score_{l,t,n}  = s_{l,t,kept} / sum_kept s_{l,t,n}   (renormalised)

Q, K and V of a fusion layer do not depend on N, so a pruned fusion is the same layer run over fewer
adapters (``AdapterModel.prune_fusion``): the dropped adapters are never computed, which is what saves
time; with k = N it is the unpruned model, bit for bit. The same k adapters in every layer (not per
layer) keeps the N down-projections of the kept adapters one stacked matmul in every layer.
"""

from __future__ import annotations


def mean_attention(layers: list[list[float]]) -> list[float]:
    """[layers][N] mean fusion attention per layer -> [N] mean over layers."""
    if not layers:
        raise ValueError("no fusion attention captured (was the fusion active while capturing?)")
    return [sum(column) / len(layers) for column in zip(*layers)]


def rank_adapters(names: list[str], layers: list[list[float]]) -> list[str]:
    """Adapter names by mean attention, highest first (ties: the fusion's order)."""
    mean = mean_attention(layers)
    if len(mean) != len(names):
        raise ValueError(f"attention over {len(mean)} adapters, but the fusion has {len(names)}")
    order = sorted(range(len(names)), key=lambda i: (-mean[i], i))
    return [names[i] for i in order]


def top_k(names: list[str], layers: list[list[float]], k: int) -> list[str]:
    """The k adapters with the highest mean attention, in the fusion's own order (k >= N keeps all)."""
    if k < 1:
        raise ValueError(f"keep at least one adapter, got k = {k}")
    chosen = set(rank_adapters(names, layers)[:k])
    return [n for n in names if n in chosen]
