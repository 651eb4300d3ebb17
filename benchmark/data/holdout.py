"""A held-out slice of a training split, for model selection that never looks at dev (``selection: heldout``).

The slice is stratified by label (each class keeps its share of the split, largest remainders first),
fixed by the data seed (the same rows for every run seed and method, so all columns select on the same
rows), and carved out of the full split before any row cap: capped training rows come from the rest.
"""

from __future__ import annotations

import random
from collections import defaultdict


def heldout_size(n: int, fraction: float, max_rows: int) -> int:
    return min(max_rows, max(1, round(fraction * n))) if n > 1 else 0


def heldout_indices(labels: list[int], fraction: float, max_rows: int, seed: int) -> list[int]:
    """Sorted row indices of the held-out slice of a split whose rows have these labels."""
    k = heldout_size(len(labels), fraction, max_rows)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    classes = sorted(by_class)
    exact = {c: k * len(by_class[c]) / len(labels) for c in classes}
    take = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: (-(exact[c] - take[c]), c))[: k - sum(take.values())]:
        take[c] += 1  # largest remainders get the rows left over
    rng = random.Random(seed)
    return sorted(i for c in classes for i in rng.sample(by_class[c], take[c]))
