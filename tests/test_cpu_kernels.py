"""The fast CPU kernels: dropout with the same distribution as torch's (a different random stream), and
frozen linear layers on oneDNN computing the same function as F.linear."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from benchmark.modeling.cpu_kernels import (
    ATTENTION,
    CpuLinear,
    FastDropout,
    attention_math,
    fast_dropout,
    keep_mask,
    serving,
    set_cpu_kernels,
)
from benchmark.modeling.model import AdapterModel, Fuse
from benchmark.spec.schema import AdapterParams, FusionParams


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_has_the_right_rate_and_no_lane_bias(p):
    torch.manual_seed(0)
    keep = keep_mask((999, 1001), p, torch.device("cpu"))  # odd size: the last int64 draw is half used
    assert keep.shape == (999, 1001) and keep.dtype == torch.bool
    n = keep.numel()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs((1 - keep.float().mean().item()) - p) < 5 * sd
    # the two 32-bit lanes of each int64 draw (even / odd positions) are both unbiased
    flat = keep.flatten()[: n - 1].view(-1, 2).float()
    for lane in (0, 1):
        assert abs((1 - flat[:, lane].mean().item()) - p) < 5 * sd * 2 ** 0.5
    # neighbours are independent: P(both dropped) = p^2
    both = (~flat.bool()).all(1).float().mean().item()
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / flat.shape[0]) ** 0.5


def test_fast_dropout_is_inverted_dropout_with_the_right_gradient():
    torch.manual_seed(1)
    x = torch.randn(64, 128, requires_grad=True)
    y = fast_dropout(x, 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.02


def test_fast_dropout_is_seeded_and_off_in_eval():
    x = torch.randn(32, 50)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.1)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.1)
    assert torch.equal(a, b)
    assert torch.equal(fast_dropout(x, 0.1, training=False), x)
    assert torch.equal(fast_dropout(x, 0.0), x)
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    m = FastDropout(0.1).eval()
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_attention_math_equals_the_definition(mask_kind):
    torch.manual_seed(0)
    B, heads, T, d = 2, 3, 7, 4
    q, k, v = (torch.randn(B, heads, T, d) for _ in range(3))
    real = torch.ones(B, T, dtype=torch.bool)
    real[1, 5:] = False  # padding in the second example
    bool_mask = real[:, None, None, :].expand(B, 1, T, T)
    float_mask = torch.zeros(B, 1, 1, T).masked_fill(~real[:, None, None, :], torch.finfo(torch.float32).min)
    mask = {"none": None, "bool": bool_mask, "float": float_mask}[mask_kind]
    # without dropout: SDPA is the reference
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    got = attention_math(q, k, v, mask, d ** -0.5, 0.0)
    assert torch.allclose(got, want, atol=1e-6)
    # with dropout: the same keep-mask drawn from the same seed, applied by hand
    torch.manual_seed(7)
    got = attention_math(q, k, v, mask, d ** -0.5, 0.3)
    torch.manual_seed(7)
    keep = keep_mask((B, heads, T, T), 0.3, q.device)
    scores = q @ k.transpose(2, 3) * d ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~real[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, -1) * keep / 0.7
    assert torch.allclose(got, (probs @ v).transpose(1, 2), atol=1e-6)


def test_set_cpu_kernels_switches_the_whole_model_and_back(tiny_bert, tiny_roberta):
    for tok, make in (tiny_bert, tiny_roberta):
        torch.manual_seed(0)
        model = AdapterModel(make())
        model.add_adapter("a", AdapterParams())
        model.add_adapter("b", AdapterParams())
        model.add_fusion("f", ["a", "b"], FusionParams())
        model.add_head("t", "classification", 2)
        model.set_active(Fuse("f", ["a", "b"]))
        batch = dict(tok(["a short one", "a somewhat longer sentence here"], padding=True, return_tensors="pt"))
        model.eval()
        with torch.no_grad():
            before = model(head="t", **batch)
        set_cpu_kernels(model, "fast")
        drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert drops and all(type(m) is FastDropout for m in drops)
        assert all(type(m) is CpuLinear for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert model.config._attn_implementation == ATTENTION
        with torch.no_grad():  # eval: exactly the same function
            assert torch.equal(model(head="t", **batch), before)
        model.train()
        torch.manual_seed(5)
        a = model(head="t", **batch)
        torch.manual_seed(5)
        b = model(head="t", **batch)
        assert torch.equal(a, b) and not torch.allclose(a, before)  # seeded, and dropout is on
        a.sum().backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if ".fusions.f." in n)
        set_cpu_kernels(model, "stock")
        assert all(type(m) is torch.nn.Dropout for m in model.modules() if isinstance(m, torch.nn.Dropout))
        assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="fast"):
        set_cpu_kernels(model, "quick")


def test_frozen_linear_computes_f_linear_and_its_input_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 80)
    fast = CpuLinear.__new__(CpuLinear)
    fast.__dict__ = lin.__dict__.copy()
    assert fast.state_dict().keys() == lin.state_dict().keys()
    # trained weights: exactly F.linear (the oneDNN path is only for frozen layers)
    x = torch.randn(4, 9, 48)
    assert torch.equal(fast(x), F.linear(x, lin.weight, lin.bias))
    for p in lin.parameters():
        p.requires_grad = False
    x1 = torch.randn(4, 9, 48, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = fast(x1), F.linear(x2, lin.weight, lin.bias)
    assert y1.shape == (4, 9, 80) and torch.allclose(y1, y2, atol=1e-5)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
    assert lin.weight.grad is None  # frozen: no weight gradient is computed
    xt = torch.randn(9, 4, 48).transpose(0, 1)  # non-contiguous input
    assert torch.allclose(fast(xt), F.linear(xt, lin.weight, lin.bias), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(fast(x), F.linear(x, lin.weight, lin.bias), atol=1e-5)


def test_a_serving_model_prepacks_its_frozen_weights_with_the_same_outputs(tiny_bert):
    """``serving``: eval, every weight frozen, each linear layer's weight reordered once for oneDNN (per dtype);
    outputs equal the unpacked fast path's (inputs of 7 rows or more), in float32 and under bf16 autocast, and
    the packed copy is made again after the weight changes. With gradients recorded it stays unpacked."""
    torch.manual_seed(0)
    model = AdapterModel(tiny_bert[1]())
    model.add_adapter("a", AdapterParams(reduction_factor=16))
    model.set_active("a")
    set_cpu_kernels(model, "fast")
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    ids = torch.randint(5, 100, (3, 11))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = model.encode(ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_bf16 = model.encode(ids, mask)
    serving(model)
    lins = [m for m in model.modules() if isinstance(m, CpuLinear)]
    assert lins and all(m.__dict__["serving"] for m in lins)
    with torch.no_grad():
        assert torch.equal(model.encode(ids, mask), plain)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(model.encode(ids, mask), plain_bf16)
    assert all(set(m.__dict__["_packed_copies"]) == {torch.float32, torch.bfloat16} for m in lins)
    first = lins[0]
    with torch.no_grad():
        first.weight.mul_(2.0)  # a changed weight is packed again
        assert not torch.equal(model.encode(ids, mask), plain)
    assert first.__dict__["_packed_copies"][torch.float32][0][1] == first.weight._version
    out = model.encode(ids, mask)  # gradients recorded (no parameter needs one): the unpacked path
    assert out.shape == plain.shape
    # a replaced weight (not changed in place) is never served from the old one's packed copy
    for _ in range(20):
        first.weight = torch.nn.Parameter(torch.randn_like(first.weight), requires_grad=False)
        x = torch.randn(9, first.in_features)
        with torch.no_grad():
            assert torch.equal(first(x), torch.ops.mkldnn._linear_pointwise(x, first.weight, first.bias, "none", [], ""))
    set_cpu_kernels(model, "stock")  # a swap drops the serving state
    assert not any("serving" in m.__dict__ for m in model.modules())
