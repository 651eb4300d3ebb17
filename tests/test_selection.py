"""Model selection: early stopping keeps the best epoch's weights; held-out selection carves a fixed,
stratified slice of train, disjoint from the training rows, and keeps the held-out argmax."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from benchmark.data.encode import EncodedSplit, encode_split
from benchmark.data.holdout import heldout_indices
from benchmark.modeling.model import AdapterModel, Modules
from benchmark.spec.schema import AdapterParams, TrainParams
from benchmark.training import loop
from conftest import MIRROR, needs_mirror


def test_heldout_slice_is_stratified_fixed_and_capped():
    labels = [0] * 700 + [1] * 200 + [2] * 100
    a = heldout_indices(labels, 0.1, 1000, seed=0)
    assert a == heldout_indices(labels, 0.1, 1000, seed=0) != heldout_indices(labels, 0.1, 1000, seed=1)
    assert len(a) == 100 and Counter(labels[i] for i in a) == {0: 70, 1: 20, 2: 10}
    assert len(heldout_indices(labels, 0.5, 60, seed=0)) == 60  # at most max_rows
    odd_labels = [0] * 5 + [1] * 4
    odd = heldout_indices(odd_labels, 0.34, 100, seed=3)  # 3 rows: 1.67 and 1.33 -> the larger remainder wins
    assert Counter(odd_labels[i] for i in odd) == {0: 2, 1: 1}


@needs_mirror
def test_heldout_rows_are_disjoint_from_training_rows(registry):
    from benchmark.modeling.backbone import load_tokenizer

    tok = load_tokenizer(registry.backbones["tiny-bert"])
    task = registry.tasks["rte"]
    kw = dict(data_seed=0, heldout=(0.1, 100), max_length=32, root=MIRROR)
    train = encode_split(task, "train", tok, max_rows=500, **kw)
    held = encode_split(task, "train", tok, part="heldout", **kw)
    full = encode_split(task, "train", tok, max_length=32, root=MIRROR)
    assert len(held) == 100 and len(train) == 500 and train.rows_total == len(full) - 100
    key = lambda ex: (tuple(ex["input_ids"]), ex["label"])  # noqa: E731
    assert not {key(e) for e in held.examples} & {key(e) for e in train.examples}
    shares = Counter(e["label"] for e in held.examples)
    all_shares = Counter(e["label"] for e in full.examples)
    assert abs(shares[0] / 100 - all_shares[0] / len(full)) < 0.01  # stratified
    assert held.examples == encode_split(task, "train", tok, part="heldout", **kw).examples  # fixed


def _split(n, seed):
    g = torch.Generator().manual_seed(seed)
    exs = [{"input_ids": [2] + torch.randint(5, 200, (6,), generator=g).tolist() + [3], "label": i % 2}
           for i in range(n)]
    return EncodedSplit("toy", "train", "classification", exs, "local", n)


def _toy_model(tiny_bert):
    tok, make = tiny_bert
    torch.manual_seed(0)
    model = AdapterModel(make())
    model.add_adapter("t", AdapterParams(reduction_factor=4))
    model.add_head("t", "classification", 2)
    model.set_active("t")
    model.train_only(Modules(adapters=["t"], heads=["t"]))
    return tok, model


@pytest.mark.parametrize("heldout", [False, True])
def test_early_stopping_keeps_the_selected_epoch(tiny_bert, monkeypatch, heldout):
    """Scripted metrics: selection peaks in epoch 2, patience 2 of 6 epochs -> stop after epoch 4 and
    keep epoch 2's weights and its dev accuracy (under held-out selection: the held-out argmax)."""
    tok, model = _toy_model(tiny_bert)
    dev_scores = iter([50.0, 55.0, 70.0, 52.0, 51.0, 99.0])  # dev peaks in epoch 3
    held_scores = iter([60.0, 80.0, 61.0, 62.0, 99.0, 99.0])  # held-out peaks in epoch 2
    snaps = []

    def fake_predict(model_, split, head, pad_id, bs, device, *compute):  # train reads its accuracy
        return SimpleNamespace(accuracy=next(held_scores) if split.split == "heldout" else next(dev_scores))

    monkeypatch.setattr(loop, "predict", fake_predict)

    def snapshot():
        state = model.state_of(Modules(adapters=["t"], heads=["t"]))
        snaps.append(state)
        return state

    held = EncodedSplit("toy", "heldout", "classification", _split(8, 2).examples, "local", 8)
    params = TrainParams(lr=1e-2, epochs=6, patience=2, batch_size=8)
    out = loop.train(model, "t", _split(24, 0), _split(8, 1), params, pad_id=tok.pad_token_id,
                     device=torch.device("cpu"), seed=0, snapshot=snapshot, heldout=held if heldout else None)
    if heldout:  # held-out: 60, 80, 61, 62 -> kept epoch 2, stopped after epoch 4; dev of epoch 2 reported
        assert (out.best_epoch, out.best_selection, out.best_metric, len(out.history)) == (2, 80.0, 55.0, 4)
        assert [h["heldout_accuracy"] for h in out.history] == [60.0, 80.0, 61.0, 62.0]
    else:  # dev: 50, 55, 70, 52, 51 -> kept epoch 3, stopped after epoch 5 (epoch 6's 99 never runs)
        assert (out.best_epoch, out.best_metric, len(out.history)) == (3, 70.0, 5)
        assert all("heldout_accuracy" not in h for h in out.history)
    assert out.best_state is snaps[-1]  # the state snapshotted at the kept epoch
    assert out.best_predictions["t"].accuracy == out.best_metric  # the kept epoch's dev predictions, not the last
    assert all("predictions" not in h for h in out.history)
    assert out.stopped_early.startswith(f"stopped after epoch {len(out.history)}: no gain in "
                                        + ("heldout accuracy" if heldout else "dev accuracy"))
    assert 0 < out.padding["real_tokens"] <= out.padding["computed_tokens"]


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(tiny_bert, monkeypatch):
    tok, model = _toy_model(tiny_bert)
    scores = iter([50.0, 70.0, 60.0, 60.0, 90.0])
    monkeypatch.setattr(loop, "predict", lambda *a, **k: SimpleNamespace(accuracy=next(scores)))
    sel = Modules(adapters=["t"], heads=["t"])
    states = []
    params = TrainParams(lr=1e-2, epochs=5, patience=2, batch_size=8)
    out = loop.train(model, "t", _split(24, 0), _split(8, 1), params, pad_id=tok.pad_token_id,
                     device=torch.device("cpu"), seed=0, snapshot=lambda: states.append(model.state_of(sel))
                     or states[-1])
    assert (out.best_epoch, out.best_metric, len(out.history)) == (2, 70.0, 4)  # epoch 5 (90) never runs
    assert out.stopped_early.startswith("stopped after epoch 4: no gain in dev accuracy for 2 epochs")
    last = model.state_of(sel)
    assert any(not torch.equal(last[k], out.best_state[k]) for k in last)  # epochs 3-4 moved the weights
    model.load_state_dict(out.best_state, strict=False)  # what the recipe does before saving
    assert all(torch.equal(model.state_of(sel)[k], states[1][k]) for k in last)
