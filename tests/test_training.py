"""Pieces of the training loop: schedule, optimizer groups, MT-A sampling, temperature annealing."""

from __future__ import annotations

import pytest
import torch

from benchmark.data.encode import EncodedSplit
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.spec.schema import AdapterParams, FusionParams, LoRAParams, MtaParams, TrainParams
from benchmark.training.loop import Objective, linear_schedule, make_optimizer, train
from benchmark.training.mt_a import alpha_at, sampling_probs


def test_linear_schedule_with_warmup():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = linear_schedule(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0]) and lrs[-1] == pytest.approx(0.125)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_weight_decay_by_role_not_by_name(tiny_bert):
    """Vectors and fusion's V (declared by AdapterFusion.no_decay) take no decay; every other matrix does,
    the encoder's value projection and a LoRA on it included (a name rule once spared anything called value)."""
    _, make = tiny_bert
    model = AdapterModel(make())
    for n in "ab":
        model.add_adapter(n, AdapterParams())
    model.add_fusion("f", ["a", "b"], FusionParams())
    model.add_adapter("l", LoRAParams(targets=["query", "value"]))
    model.add_head("t", "classification", 2)
    model.train_only(Modules(adapters=["l"], fusions=["f"], heads=["t"], encoder=True))
    opt = make_optimizer(model, TrainParams(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = ({id(p) for p in g["params"]} for g in opt.param_groups)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fusion_v = {n for n in named if ".fusions.f.value." in n}
    assert fusion_v and all(id(named[n]) in no_decay for n in fusion_v)
    for name, p in named.items():
        assert (id(p) in no_decay) == (p.ndim < 2 or name in fusion_v), name
    assert id(named["encoder.encoder.layer.0.attention.self.value.weight"]) in decay
    assert id(named["encoder.encoder.layer.0.attention.self.value.lora.l.A.weight"]) in decay
    assert len(decay) + len(no_decay) == len(named)


def test_mt_a_annealed_sampling():
    mt = MtaParams(alpha_start=1.0, alpha_end=0.2)
    assert [alpha_at(e, 5, mt) for e in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    p1 = sampling_probs({"big": 900, "small": 100}, 1.0)
    assert p1 == pytest.approx({"big": 0.9, "small": 0.1})
    p02 = sampling_probs({"big": 900, "small": 100}, 0.2)
    assert p02["big"] == pytest.approx(900 ** 0.2 / (900 ** 0.2 + 100 ** 0.2)) and p02["big"] < 0.65


def _toy_split(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    exs = [{"input_ids": [2] + torch.randint(5, 200, (6,), generator=g).tolist() + [3], "label": i % 2}
           for i in range(n)]
    return EncodedSplit("toy", "train", "classification", exs, "local", n)


def test_temperature_anneals_from_50_to_1_during_training_only(tiny_bert, monkeypatch):
    tok, make = tiny_bert
    torch.manual_seed(0)
    model = AdapterModel(make())
    for n in "ab":
        model.add_adapter(n, AdapterParams())
    model.add_fusion("f", ["a", "b"], FusionParams(temperature=True))
    model.add_head("t", "classification", 2)
    model.set_active(Fuse("f", ["a", "b"]))
    model.train_only(Modules(fusions=["f"], heads=["t"]))
    seen = []
    real = model.set_fusion_temperature
    monkeypatch.setattr(model, "set_fusion_temperature", lambda t: (seen.append(t), real(t)))
    params = TrainParams(lr=1e-3, epochs=2, batch_size=8, patience=None)
    out = train(model, "t", _toy_split(), _toy_split(8, 1), params, pad_id=tok.pad_token_id,
                device=torch.device("cpu"), seed=0, objective=Objective("f", 0.01, True),
                snapshot=lambda: model.state_of(Modules(fusions=["f"], heads=["t"])))
    # 3 steps per epoch, 6 in all: T = 50 - 49 * step / 5 on training steps, back to 1 for each evaluation
    t = [50 - 49 * k / 5 for k in range(6)]
    assert seen == pytest.approx([t[0], t[1], t[2], 1.0, t[3], t[4], t[5], 1.0])
    assert len(out.history) == 2 and out.best_state is not None
    assert all(f.temperature == 1.0 for f in model.fusion_layers())


def test_step_progress_in_logs_where_the_bar_is_hidden(tiny_bert, monkeypatch, capsys):
    """Without a terminal (a log file) a line with steps, examples/s and the epoch's ETA comes at least every
    PROGRESS_SECONDS; here every step (the interval set to 0)."""
    from benchmark.training import loop

    tok, make = tiny_bert
    torch.manual_seed(0)
    model = AdapterModel(make())
    model.add_head("t", "classification", 2)
    model.train_only(Modules(heads=["t"]))
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    params = TrainParams(lr=1e-3, epochs=1, batch_size=8, patience=None)
    train(model, "t", _toy_split(), _toy_split(8, 1), params, pad_id=tok.pad_token_id, device=torch.device("cpu"),
          seed=0, snapshot=lambda: model.state_of(Modules(heads=["t"])), desc="toy")
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if "step " in ln and "epoch ETA" in ln]
    assert [ln.split("step ")[1].split(",")[0] for ln in lines] == ["1/3", "2/3", "3/3"], lines
    assert "train ex/s" in lines[0] and lines[-1].endswith("epoch ETA 0m00s")
