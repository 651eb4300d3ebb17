"""The published defaults of the weight merges (issue 36): read by the fusion package's ``MergeParams`` (the
defaults of ``fusion.merge``) and by ``modeling/merging.py``'s functions (layer 0: no torch)."""

from __future__ import annotations

from typing import Literal

TIES_DENSITY = 0.2  # Yadav et al. 2023 (TIES): keep the top 20% of each task vector by magnitude ...
TIES_LAMBDA = 1.0  # ... and lambda = 1, their setting without a validation set
TASK_ARITHMETIC_LAMBDA = 0.4  # the value Yadav et al. 2023 use for task arithmetic (Ilharco et al. 2023) without validation
DARE_DROP = 0.9  # Yu et al. 2024 (DARE): drop rate p = 0.9 (density 0.1), rescale by 1 / (1 - p) ...
DARE_LAMBDA = 1.0  # ... and the merged task vectors added at lambda = 1
MergeHow = Literal["average", "task_arithmetic", "ties", "dare", "dare_ties", "svd"]
# how -> (lambda, density) when the method YAML leaves them out; None: the merge has no such parameter
MERGE_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "average": (None, None), "task_arithmetic": (TASK_ARITHMETIC_LAMBDA, None), "ties": (TIES_LAMBDA, TIES_DENSITY),
    "dare": (DARE_LAMBDA, round(1 - DARE_DROP, 12)), "dare_ties": (DARE_LAMBDA, round(1 - DARE_DROP, 12)),
    "svd": (None, None)}  # LoRA sources only: the mean of the deltas B_i A_i, truncated to the sources' rank

