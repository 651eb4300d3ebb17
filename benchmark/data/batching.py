"""Which training rows go into which batch, per epoch: ``shuffled`` (uniformly random batches) or
``grouped`` (rows of similar length together, as the HF Trainer's ``group_by_length``).

Why: a batch is padded to its longest row, so with random batches most computed tokens are padding
(on the mirror with the MiniLM tokenizer, batch 32: 1.9x the real tokens on RTE, up to ~10x on
SST-2). Grouping keeps the batches random (which rows meet, in which order) but lets a batch hold
rows of about one length:

1. shuffle all rows (one torch generator seeded by ``seed``),
2. cut the permutation into mega-batches of ``MEGA`` batches (``MEGA * batch_size`` rows),
3. sort each mega-batch by length, longest first (stable: ties keep their random order),
4. cut each mega-batch into batches of ``batch_size`` rows,
5. shuffle the batches (the same generator), so neither lengths nor mega-batches come in order.

Multiple-choice rows are ``[B, K, L]`` padded to their longest choice, so they are grouped by it.

Everything here is pure (lists and ints in, lists out; a torch generator for the random draws, imported
only when drawn, or any ``randperm`` passed in: the cost model's), so the training loop, the epoch benchmark,
the cost model and the tests share it. ``shuffled`` is bit-identical to the
order ``benchmark.data.encode.batches(..., shuffle=True, seed=seed)`` has always drawn, so results
committed before grouping existed keep their batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

MODES = ("grouped", "shuffled")
MEGA = 50  # batches per mega-batch (the HF Trainer's default mega-batch multiplier)

Length = int | Sequence[int]  # one row: its token count, or (multiple choice) one count per choice


def epoch_seed(run_seed: int, epoch: int) -> int:
    """The generator seed of one epoch of a run (or, in MT-A, of one task's stream): the one place the
    formula lives. ``training/loop.py`` and ``training/mt_a.py`` both call it; it must never change,
    or committed results stop being reproducible (``tests/test_batching.py`` pins its values)."""
    return run_seed * 100_003 + epoch


def row_lengths(examples: Sequence[dict]) -> list[Length]:
    """Token counts of encoded examples (``EncodedSplit.examples``): an int per classification row, a
    list of per-choice counts per multiple-choice row."""
    ids = [ex["input_ids"] for ex in examples]
    return [[len(s) for s in x] if x and isinstance(x[0], list) else len(x) for x in ids]


def _longest(length: Length) -> int:
    return length if isinstance(length, int) else max(length, default=0)


def epoch_batches(lengths: Sequence[Length], batch_size: int, *, mode: str, seed: int,
                  randperm: Callable[[int], list[int]] | None = None) -> list[list[int]]:
    """Row indices of every training batch of one epoch; each row exactly once.

    ``seed`` is the epoch's generator seed (``epoch_seed(run_seed, epoch)``); the same arguments give
    the same batches. The last batch of ``shuffled`` (and one batch of ``grouped``) may be short.
    ``randperm(n)``: the random permutations (default: torch's, from one generator seeded by ``seed``).
    """
    if mode not in MODES:
        raise ValueError(f"batching mode must be one of {MODES}, got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(lengths)
    if randperm is None:
        import torch

        g = torch.Generator().manual_seed(seed)
        randperm = lambda k: torch.randperm(k, generator=g).tolist()  # noqa: E731
    order = randperm(n)  # step 1; alone, exactly encode.batches(shuffle=True)
    if mode == "shuffled":
        return [order[i: i + batch_size] for i in range(0, n, batch_size)]
    longest = [_longest(x) for x in lengths]
    rows = MEGA * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, rows):  # steps 2-4
        block = sorted(order[start: start + rows], key=lambda i: -longest[i])
        batches += [block[i: i + batch_size] for i in range(0, len(block), batch_size)]
    return [batches[i] for i in randperm(len(batches))]  # step 5


def padding_cost(lengths: Sequence[Length], batches: Sequence[Sequence[int]],
                 pad_to: int | None = None) -> tuple[int, int]:
    """(real tokens, computed tokens) of these batches.

    Computed = rows x longest row of the batch (with ``pad_to``: rows x max(pad_to, longest), every
    batch padded to at least a fixed length); for multiple choice rows x choices x longest choice of
    the batch, because ``collate`` pads all choices of all rows to one length ([B, K, L]).
    """
    real = computed = 0
    for batch in batches:
        if not batch:
            continue
        rows = [lengths[i] for i in batch]
        width = max([_longest(x) for x in rows] + ([pad_to] if pad_to is not None else []))
        for x in rows:
            choices = [x] if isinstance(x, int) else x  # a classification row is one sequence
            real += sum(choices)
            computed += width * len(choices)
    return real, computed
