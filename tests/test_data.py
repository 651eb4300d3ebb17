"""Data layer: the mirror loads with the row counts and label distributions its SOURCE.md files state;
rendering, tokenization, caching, subsampling and dynamic padding behave."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from benchmark.data.encode import batches, collate, encode_split, labels_of
from benchmark.data.sources import locate, mirror_path, read_rows, subsample
from benchmark.errors import DataError
from conftest import MIRROR, needs_mirror


def source_md_rows(task, split) -> int | None:
    """The 'rows written' figure of a split in the SOURCE.md tables beside (or above) its Parquet file."""
    p = mirror_path(MIRROR, task, split)
    candidates = [p.parent / "SOURCE.md", p.parent.parent / "SOURCE.md"]
    if (p.parent / f"SOURCE.{split}.md").exists():  # mnli: the train subset has its own note
        candidates.insert(0, p.parent / f"SOURCE.{split}.md")
    for md in candidates:
        if not md.exists():
            continue
        header = None
        for line in md.read_text().splitlines():
            if not line.startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if "rows written" in cells:
                header = cells
            elif header and cells[header.index("split")].split(" (")[0] == split:
                return int(cells[header.index("rows written")].replace(",", ""))
    return None


def source_md_labels(task, split) -> dict[int, int] | None:
    """Label counts from lines like '- train: 0 entailment: 1249, 1 not_entailment: 1241'."""
    p = mirror_path(MIRROR, task, split)
    md = p.parent / "SOURCE.md"
    if not md.exists():
        return None
    for line in md.read_text().splitlines():
        m = re.match(rf"- {re.escape(split)}: (.*)$", line.strip())
        if m and re.match(r"\d+ \w", m.group(1)):
            return {int(a): int(b.replace(",", "")) for a, b in re.findall(r"(-?\d+) [^:,]+: ([\d,]+)", m.group(1))}
    return None


@needs_mirror
def test_every_mirrored_task_matches_its_source_md(registry):
    checked = labels_checked = 0
    for name, task in sorted(registry.tasks.items()):
        for split in (task.splits.train, task.splits.eval):
            try:
                locate(task, split, MIRROR)
            except DataError:
                continue
            rows = read_rows(task, split, MIRROR)
            expected = source_md_rows(task, split)
            assert expected is not None, (name, split)
            assert len(rows) == expected, (name, split, len(rows), expected)
            ids = labels_of(task, rows, split)  # every label maps into the declared classes
            want = source_md_labels(task, split)
            if want:
                assert dict(Counter(ids)) == {k: v for k, v in want.items() if k >= 0}, (name, split)
                labels_checked += 1
            checked += 1
    assert checked >= 20  # 11 tasks with train + dev, 2 with dev only
    assert labels_checked >= 9  # rte, mrpc, sst2, cb (train + dev), mnli dev


@needs_mirror
def test_string_labels_map_as_source_md_says(registry):
    sci = registry.tasks["scitail"]
    assert Counter(labels_of(sci, read_rows(sci, "train", MIRROR), "train")) == {1: 14625, 0: 8472}
    sick = registry.tasks["sick"]
    assert Counter(labels_of(sick, read_rows(sick, "train", MIRROR), "train")) == {0: 1274, 1: 2524, 2: 641}


@needs_mirror
def test_missing_split_says_where_it_looked(registry):
    task = registry.tasks["boolq"]
    with pytest.raises(DataError) as e:
        locate(task, "train", MIRROR)
    msg = str(e.value)
    assert "boolq" in msg and "'train'" in msg and "aps__super_glue/boolq/train.parquet" in msg
    assert "MISSING.md" in msg and "AFBENCH_DATA_DIR" in msg


def test_subsample_is_deterministic_and_sorted():
    a, b = subsample(1000, 50, seed=3), subsample(1000, 50, seed=3)
    assert a == b and a == sorted(a) and len(set(a)) == 50
    assert subsample(1000, 50, seed=4) != a
    assert subsample(10, 50, seed=0) == list(range(10))


@needs_mirror
def test_encode_classification_and_multiple_choice(registry, tiny_bert):
    tok, _ = tiny_bert
    rte = encode_split(registry.tasks["rte"], "validation", tok, max_rows=20, max_length=64, root=MIRROR)
    assert len(rte) == 20 and rte.rows_total == 277
    assert all(len(ex["input_ids"]) <= 64 for ex in rte.examples)
    batch = collate(rte.examples[:4], tok.pad_token_id)
    L = max(len(ex["input_ids"]) for ex in rte.examples[:4])
    assert batch["input_ids"].shape == (4, L)  # padded to the batch's longest, not to max_length
    assert batch["attention_mask"].sum().item() == sum(len(ex["input_ids"]) for ex in rte.examples[:4])
    csqa = encode_split(registry.tasks["csqa"], "validation", tok, max_rows=8, max_length=64, root=MIRROR)
    mc = collate(csqa.examples[:3], tok.pad_token_id)
    assert mc["input_ids"].shape[:2] == (3, 5) and mc["labels"].shape == (3,)


@needs_mirror
def test_tokenized_cache_is_reused(registry, tiny_bert, monkeypatch):
    tok, _ = tiny_bert
    task = registry.tasks["cb"]
    first = encode_split(task, "train", tok, max_rows=30, root=MIRROR)
    import benchmark.data.encode as enc

    monkeypatch.setattr(enc, "read_rows", lambda *a, **k: pytest.fail("cache was not used"))
    again = encode_split(task, "train", tok, max_rows=30, root=MIRROR)
    assert again.examples == first.examples


def test_batches_shuffle_depends_on_seed_only():
    from benchmark.data.encode import EncodedSplit

    split = EncodedSplit("t", "train", "classification",
                         [{"input_ids": [1, 2, i + 3], "label": i % 2} for i in range(10)], "local", 10)
    order = lambda s: torch.cat([b["input_ids"][:, 2] for b in batches(split, 3, 0, mode="shuffled", seed=s)]).tolist()  # noqa: E731
    assert order(1) == order(1) and order(1) != order(2) and sorted(order(1)) == list(range(3, 13))
