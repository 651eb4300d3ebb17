"""Weight-space merges (benchmark/modeling/merging.py, issue 36).

Bottleneck adapters: TIES and DARE on small adapter-shaped tensors against a reference written here as
plain numpy loops over the flattened parameters. LoRA: every combination type offered against Hugging Face
PEFT's ``add_weighted_adapter`` on a tiny BERT, logits <= 1e-5; DARE's masks come from the same random
stream on both sides (PEFT's global generator, the state after its own injection of the new adapter)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from benchmark.modeling import merging
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.model import AdapterModel, Modules
from benchmark.spec.schema import AdapterParams, LoRAParams

TOLERANCE = 1e-5
H, R, N = 8, 2, 3  # hidden size, bottleneck, sources


def _adapter(seed: int, scale: float = 1.0) -> list[dict[str, torch.Tensor]]:
    """Two modules shaped like a bottleneck adapter's: down [R, H] + [R], up [H, R] + [H]."""
    g = torch.Generator().manual_seed(seed)
    return [{"down.weight": torch.randn(R, H, generator=g) * scale, "down.bias": torch.randn(R, generator=g) * scale,
             "up.weight": torch.randn(H, R, generator=g) * scale, "up.bias": torch.randn(H, generator=g) * scale}
            for _ in range(2)]


def _vector(states) -> np.ndarray:
    return np.concatenate([t.numpy().ravel() for s in states for t in s.values()]).astype(np.float64)


def _ties_reference(thetas: list[np.ndarray], base: np.ndarray, k: float, lam: float) -> np.ndarray:
    taus = [t - base for t in thetas]
    trimmed = []
    for tau in taus:
        keep = int(k * len(tau))
        order = sorted(range(len(tau)), key=lambda p: -abs(tau[p]))
        out = [0.0] * len(tau)
        for p in order[:keep]:
            out[p] = tau[p]
        trimmed.append(out)
    merged = np.zeros(len(base))
    for p in range(len(base)):
        total = sum(t[p] for t in trimmed)
        gamma = 1.0 if total >= 0 else -1.0
        agree = [t[p] for t in trimmed if t[p] != 0 and np.sign(t[p]) == gamma]
        merged[p] = sum(agree) / max(1, len(agree))
    return base + lam * merged


def test_ties_on_adapter_tensors_equals_a_loop_reference():
    sources, base = [_adapter(s) for s in range(N)], _adapter(99, scale=0.1)
    merged = merging.merge_adapters(sources, "ties", base=base)  # published defaults: k = 20%, lambda = 1
    expected = _ties_reference([_vector(s) for s in sources], _vector(base), 0.2, 1.0)
    assert np.allclose(_vector(merged), expected, atol=1e-6)
    assert [list(m) for m in merged] == [list(s) for s in base]  # same modules, same keys, same shapes
    assert all(m[k].shape == base[i][k].shape for i, m in enumerate(merged) for k in m)
    other = merging.merge_adapters(sources, "ties", base=base, lam=0.5, density=0.6)
    assert np.allclose(_vector(other), _ties_reference([_vector(s) for s in sources], _vector(base), 0.6, 0.5),
                       atol=1e-6)


def test_dare_on_adapter_tensors_equals_a_loop_reference():
    sources, base = [_adapter(s) for s in range(N)], _adapter(99, scale=0.1)
    p, lam = 0.3, 0.8
    merged = merging.merge_adapters(sources, "dare", base=base, lam=lam, density=1 - p,
                                    generator=torch.Generator().manual_seed(7))
    # the reference draws the same Bernoulli(1 - p) keep-masks (source by source, over the flat adapter)
    g = torch.Generator().manual_seed(7)
    theta0 = _vector(base)
    expected = theta0.copy()
    for s in sources:
        tau = _vector(s) - theta0
        keep = torch.bernoulli(torch.full((len(tau),), 1 - p), generator=g).numpy()
        for q in range(len(tau)):
            if keep[q]:
                expected[q] += lam * tau[q] / (1 - p)
    assert np.allclose(_vector(merged), expected, atol=1e-5)
    # and the drop is what DARE says: about a fraction p dropped, survivors rescaled by 1 / (1 - p)
    tau = torch.randn(20000)
    dropped = merging.drop(tau, 1 - p, torch.Generator().manual_seed(1))
    kept = dropped != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.02
    assert torch.allclose(dropped[kept], tau[kept] / (1 - p))


def test_average_and_task_arithmetic():
    sources, base = [_adapter(s) for s in range(N)], _adapter(99)
    vs = [_vector(s) for s in sources]
    assert np.allclose(_vector(merging.merge_adapters(sources, "average")), sum(vs) / N, atol=1e-6)
    ta = merging.merge_adapters(sources, "task_arithmetic", base=base)  # lambda 0.4
    assert np.allclose(_vector(ta), _vector(base) + 0.4 * sum(v - _vector(base) for v in vs), atol=1e-5)
    zero_base = merging.merge_adapters(sources, "task_arithmetic", lam=1.0)  # base None: zero
    assert np.allclose(_vector(zero_base), sum(vs), atol=1e-5)


def test_initial_adapter_is_the_stage1_init_of_the_seed(tiny_bert):
    """Two stage-1 runs of one seed (the recipe: seed, then add the task's adapter) start from the same
    adapter, whatever the task; ``initial_adapter`` re-creates it and leaves the global generator alone."""
    tok, encoder = tiny_bert
    params = AdapterParams(reduction_factor=16)
    starts = []
    for task in ("rte", "cb"):
        model = AdapterModel(encoder())
        torch.manual_seed(42)
        model.add_adapter(task, params)
        starts.append(merging.read(model, task))
    before = torch.random.get_rng_state()
    init = merging.initial_adapter(AdapterModel(encoder()), params, 42)
    assert torch.equal(torch.random.get_rng_state(), before)
    for start in starts:
        assert all(torch.equal(a[k], b[k]) for a, b in zip(start, init) for k in a)
    assert not torch.equal(merging.initial_adapter(AdapterModel(encoder()), params, 43)[0]["down.weight"],
                           init[0]["down.weight"])


# ------------------------------------------------------------------------------- LoRA against PEFT
WEIGHTS, ALPHAS, RANK, DENSITY, SEED = [0.7, -0.4, 1.1], [8.0, 12.0, 4.0], 4, 0.5, 1234
TARGETS = ["query", "value", "intermediate", "output"]


@pytest.fixture(scope="module")
def lora_pair(registry):
    """Our model and PEFT's with the same three trained-looking LoRAs src0..src2 (different alphas)."""
    peft = pytest.importorskip("peft", reason="Hugging Face PEFT is not installed (pip install '.[test]')")
    spec = registry.backbones["tiny-bert"]
    tok = load_tokenizer(spec)
    ours = AdapterModel(load_encoder(spec, tok))
    names = ["src0", "src1", "src2"]
    for n, alpha in zip(names, ALPHAS):
        ours.add_adapter(n, LoRAParams(rank=RANK, alpha=alpha, dropout=0.0, targets=TARGETS))
    ours.add_head("t", "classification", 3)
    torch.manual_seed(3)
    with torch.no_grad():
        named = dict(ours.named_parameters())
        for key in ours.keys_of(Modules(adapters=names, heads=["t"])):
            named[key].normal_(0, 0.3)
    ours.eval()

    lay = ours.layout
    paths = [f"{lay.layers}.{i}.{lay.linear_targets[t]}" for i in range(ours.num_layers) for t in TARGETS]
    pattern = "|".join(re.escape(p) for p in paths)
    theirs = None
    for n, alpha in zip(names, ALPHAS):
        config = peft.LoraConfig(r=RANK, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern, bias="none")
        if theirs is None:
            theirs = peft.get_peft_model(load_encoder(spec, tok), config, adapter_name=n)
        else:
            theirs.add_adapter(n, config)
    inner = theirs.base_model.model
    with torch.no_grad():
        for p in paths:
            for n in names:
                mine = ours.encoder.get_submodule(p).lora[n]
                inner.get_submodule(p).lora_A[n].weight.copy_(mine.A.weight)
                inner.get_submodule(p).lora_B[n].weight.copy_(mine.B.weight)
    theirs.eval()
    batch = dict(tok(["a short one", "and a somewhat longer second sentence here"], padding=True, return_tensors="pt"))
    return ours, theirs, names, batch


@pytest.mark.parametrize("how", merging.FACTOR_TYPES + merging.DELTA_TYPES)
def test_lora_merge_logits_equal_peft_add_weighted_adapter(lora_pair, how):
    ours, theirs, names, batch = lora_pair
    kwargs = {"density": DENSITY} if how in ("ties", "dare_linear", "dare_ties", "magnitude_prune") else {}
    # PEFT draws its new adapter's init, then (for DARE) the keep-masks, from the global generator: the
    # state after the init is measured with a deterministic type, and our generator starts there.
    torch.manual_seed(SEED)
    theirs.add_weighted_adapter(names, WEIGHTS, f"probe_{how}", combination_type="linear")
    after_init = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    theirs.add_weighted_adapter(names, WEIGHTS, f"m_{how}", combination_type=how, **kwargs)
    g = torch.Generator()
    g.set_state(after_init)

    sources = [merging.read(ours, n) for n in names]
    scalings = [a / RANK for a in ALPHAS]
    merged, rank = merging.merge_lora(sources, WEIGHTS, scalings, how, generator=g, **kwargs)
    assert rank == (3 * RANK if how == "cat" else RANK)
    ours.add_adapter(f"m_{how}", LoRAParams(rank=rank, alpha=float(rank), dropout=0.0, targets=TARGETS))
    merging.write(ours, f"m_{how}", merged)
    ours.eval()
    theirs.set_adapter(f"m_{how}")
    with torch.no_grad():
        ours.set_active(f"m_{how}")
        logits = ours(head="t", **batch)
        reference = ours.heads["t"](theirs(**batch).last_hidden_state, batch["attention_mask"], None)
        ours.set_active(None)
        plain = ours(head="t", **batch)
    assert (logits - reference).abs().max().item() <= TOLERANCE
    assert (logits - plain).abs().max().item() > 100 * TOLERANCE  # the merge really moves the logits


def test_lora_merge_refuses_unknown_type_and_mixed_ranks():
    a = [{"A.weight": torch.ones(2, 4), "B.weight": torch.ones(4, 2)}]
    b = [{"A.weight": torch.ones(3, 4), "B.weight": torch.ones(4, 3)}]
    with pytest.raises(ValueError, match="needs one rank"):
        merging.merge_lora([a, b], [1, 1], [1, 1], "ties", density=0.5)
    assert merging.merge_lora([a, b], [1, 1], [1, 1], "cat")[1] == 5
    with pytest.raises(ValueError, match="unknown LoRA combination"):
        merging.merge_lora([a, b], [1, 1], [1, 1], "slerp")
