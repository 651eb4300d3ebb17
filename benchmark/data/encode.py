"""Render rows through the task templates, tokenize, cache on disk, and batch with dynamic padding."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.data.batching import epoch_batches, row_lengths
from benchmark.data.holdout import heldout_indices
from benchmark.data.labels import label_id, labels_of  # noqa: F401 - also read from here
from benchmark.data.sources import digest, locate, read_rows, subsample
from benchmark.errors import DataError, SpecError, StorageError
from benchmark.paths import under, write_atomic
from benchmark.predictions import ID_COLUMNS
from benchmark.spec.schema import TaskSpec
from benchmark.spec.templates import render

if TYPE_CHECKING:
    import torch

CACHE_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("AFBENCH_CACHE_DIR", Path.home() / ".cache" / "afbench"))


def capped_length(task: TaskSpec, cap: int | None) -> int:
    """Tokens per sequence of ``task`` under a run's ``max_length`` cap (a cap only shortens)."""
    return min(cap, task.max_length) if cap else task.max_length


def render_row(task: TaskSpec, row: dict, task_file: str = "") -> dict:
    """Model inputs of one row as strings: {'text', 'text_pair'} or {'text', 'choices'}."""
    r = lambda fld, src: render(src, row, file=task_file, field=fld)  # noqa: E731
    if task.type == "classification":
        return {"text": r("input.text", task.input.text),
                "text_pair": r("input.text_pair", task.input.text_pair) if task.input.text_pair else None}
    return {"text": r("input.text", task.input.text) if task.input.text else None,
            "choices": [r(f"input.choices[{i}]", c) for i, c in enumerate(task.input.choices)]}


@lru_cache(maxsize=8)
def tokenizer_fingerprint(tok) -> str:
    try:
        state = tok.backend_tokenizer.to_str()
    except Exception:  # noqa: BLE001 - slow tokenizers: fall back to the vocab
        state = str(sorted(tok.get_vocab().items()))
    return digest([type(tok).__name__, state])[:16]


@dataclass
class EncodedSplit:
    task: str
    split: str
    type: str
    examples: list[dict]  # {'input_ids': [...] or [[...]*K], 'token_type_ids': ... , 'label': int}
    source: str
    rows_total: int
    rows: list[int] | None = None  # each example's index in the split file as loaded (file order)
    ids: list[str | None] | None = None  # its dataset id (ID_COLUMNS), where the dataset has one

    def __len__(self) -> int:
        return len(self.examples)


def tokenize_row(tok, rendered: dict, task: TaskSpec, max_length: int) -> dict:
    """One rendered row -> ``input_ids`` (and ``token_type_ids``): one sequence, or one per choice."""
    if task.type == "classification":
        pairs = [(rendered["text"], rendered["text_pair"])]
    else:  # each choice paired with the text, or alone where the task has no text
        pairs = [(rendered["text"], c) if rendered["text"] is not None else (c, None) for c in rendered["choices"]]
    encs = [tok(text, pair, truncation=True, max_length=max_length) for text, pair in pairs]
    out = {k: [e[k] for e in encs] for k in ("input_ids", "token_type_ids") if k in encs[0]}
    return out if task.type != "classification" else {k: v[0] for k, v in out.items()}


def encode_split(
    task: TaskSpec,
    split: str,
    tokenizer,
    *,
    max_length: int | None = None,
    max_rows: int | None = None,
    data_seed: int = 0,
    root: Path | None = None,
    task_file: str = "",
    use_cache: bool = True,
    heldout: tuple[float, int] | None = None,
    part: str = "rest",
) -> EncodedSplit:
    """Rendered + tokenized rows of a split (capped deterministically), cached on disk.

    ``heldout=(fraction, max_rows)`` carves a stratified slice out of the split first (``holdout.py``,
    seeded by ``data_seed``): ``part="heldout"`` returns that slice, ``part="rest"`` the other rows, to
    which ``max_rows`` then applies.
    """
    max_length = capped_length(task, max_length)
    src = locate(task, split, root, task_file=task_file)
    key = digest({"v": CACHE_VERSION, "task": task.model_dump(mode="json"), "split": split,
                  "src": src.fingerprint(), "tok": tokenizer_fingerprint(tokenizer), "len": max_length,
                  "rows": max_rows, "seed": data_seed, "heldout": heldout, "part": part})[:24]
    path = under(cache_root() / "tokenized", f"{task.name}-{split}-{key}.pt")  # a name never leads out
    if use_cache and path.exists():
        blob = read_cache(path)
        if blob is not None and "rows" in blob:  # a cache from before row identities is rebuilt once
            return EncodedSplit(task.name, split, task.type, blob["examples"], src.kind, blob["rows_total"],
                                blob["rows"], blob.get("ids"))
    rows = read_rows(task, split, root, task_file=task_file)  # never empty (a DataError)
    pool = list(range(len(rows)))
    if heldout is not None:
        held = heldout_indices(labels_of(task, rows, split, task_file), *heldout, seed=data_seed)
        pool = held if part == "heldout" else sorted(set(pool) - set(held))
    idx = [pool[i] for i in subsample(len(pool), None if part == "heldout" else max_rows, data_seed)]
    rows_sel = [rows[i] for i in idx]
    labels = labels_of(task, rows_sel, split, task_file)
    examples = [tokenize_row(tokenizer, render_row_at(task, row, split, i, task_file), task, max_length) | {"label": y}
                for i, row, y in zip(idx, rows_sel, labels)]
    if not examples:  # guards the loops downstream: no split may train "finished" on nothing
        raise DataError(f"task '{task.name}', split '{split}' gave no examples", file=task_file,
                        field=f"splits ({split})", fix="check the split and the row caps")
    id_col = next((c for c in ID_COLUMNS if c in rows_sel[0]), None)
    ids = [None if id_col is None or r.get(id_col) is None else str(r[id_col]) for r in rows_sel]
    if use_cache:
        write_cache(path, {"examples": examples, "rows_total": len(pool), "rows": idx, "ids": ids})
    return EncodedSplit(task.name, split, task.type, examples, src.kind, len(pool), idx, ids)


def render_row_at(task: TaskSpec, row: dict, split: str, index: int, task_file: str = "") -> dict:
    """``render_row`` whose errors say which split and row (0-based, in file order) failed."""
    try:
        return render_row(task, row, task_file)
    except SpecError as e:
        raise SpecError(f"split '{split}', row {index}: {e.message}", file=e.file, field=e.field, fix=e.fix) from None


def read_cache(path: Path) -> dict | None:
    """A tokenized cache file, or None (and a message naming it) when it cannot be read: it is rebuilt."""
    import torch

    try:
        blob = torch.load(path, weights_only=True)
        if not isinstance(blob, dict) or not isinstance(blob.get("examples"), list) or "rows_total" not in blob:
            raise ValueError("not a tokenized-split cache")
        return blob
    except Exception as e:  # noqa: BLE001 - truncated, poisoned (refused by weights_only), foreign: rebuild
        why = type(e).__name__ + (f": {str(e).splitlines()[0][:80]}" if str(e).strip() else "")
        print(f"tokenized cache {path} cannot be read ({why}); rebuilding it", flush=True)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def write_cache(path: Path, blob: dict) -> None:
    """Write a cache file atomically (``paths.write_atomic``); a failure (disk full) costs only the cache,
    with a message."""
    import torch

    buf = io.BytesIO()
    try:
        torch.save(blob, buf)
        write_atomic(path, buf.getvalue())
    except (OSError, StorageError) as e:
        why = getattr(e, "strerror", None) or (e.args[0] if isinstance(e, StorageError) and e.args else e)
        print(f"could not write the tokenized cache {path} ({why}); continuing without it", flush=True)


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (not to a fixed length).

    Classification -> input_ids [B, L]; multiple choice -> input_ids [B, K, L].
    """
    import torch

    mc = isinstance(examples[0]["input_ids"][0], list)
    keys = [k for k in ("input_ids", "token_type_ids") if k in examples[0]]
    seqs = {k: [s for ex in examples for s in (ex[k] if mc else [ex[k]])] for k in keys}
    L = max(len(s) for s in seqs["input_ids"])
    batch = {k: torch.full((len(seqs["input_ids"]), L), pad_id if k == "input_ids" else 0, dtype=torch.long)
             for k in ("input_ids", "attention_mask", *keys[1:])}
    for i, s in enumerate(seqs["input_ids"]):
        batch["attention_mask"][i, : len(s)] = 1
        for k in keys:
            batch[k][i, : len(s)] = torch.tensor(seqs[k][i])
    if mc:
        B, K = len(examples), len(examples[0]["input_ids"])
        batch = {k: v.view(B, K, L) for k, v in batch.items()}
    batch["labels"] = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)
    return batch


def batches(split: EncodedSplit, batch_size: int, pad_id: int, *, mode: str = "shuffled", seed: int = 0):
    """Padded batches of ``split``. Training: ``shuffled`` or ``grouped`` by length (``batching.py``;
    ``seed`` is the epoch's). Evaluation: ``by_length`` sorts rows by length to cut padding (the metric
    does not depend on the order)."""
    for idx in batch_rows(split, batch_size, mode=mode, seed=seed):
        yield collate([split.examples[j] for j in idx], pad_id)


def batch_rows(split: EncodedSplit, batch_size: int, *, mode: str = "shuffled", seed: int = 0) -> list[list[int]]:
    """The row indices of each batch ``batches`` yields (what per-row predictions are keyed by)."""
    lengths = row_lengths(split.examples)
    if mode == "by_length":
        order = sorted(range(len(split)), key=lambda i: lengths[i] if isinstance(lengths[i], int) else max(lengths[i]))
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    return epoch_batches(lengths, batch_size, mode=mode, seed=seed)
