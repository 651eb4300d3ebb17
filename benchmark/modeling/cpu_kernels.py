"""Faster CPU kernels for the same functions: dropout, and linear layers with frozen weights.

Profiling a MiniLM training step on the CPU (``afbench perf``) shows two costs that are not the
model's math. Neither changes the function computed; ``set_cpu_kernels(model, "fast" | "stock")``
switches a whole model either way (recorded as ``cpu_kernels`` in result.json).

**Dropout.** About a fifth of the step is ``aten::bernoulli_``, and attention dropout pushes SDPA
off its fused kernel onto a slower math path. Here the keep-mask comes from 32-bit random integers
(``random_`` on int64, two lanes per draw, from torch's seeded generator) compared with a threshold:

    P(drop) = floor(p * 2**32) / 2**32        (|error| < 2.4e-10; stock: float uniform, ~6e-8)
    out = x * keep / (1 - p)                   backward: grad * keep / (1 - p)

i.e. inverted dropout with the same distribution, drawn from a different random stream (a seeded CPU
run is still repeatable; its numbers differ from a stock run). Attention dropout gets the same mask
in a small math-path attention function registered with transformers' ``AttentionInterface``;
without dropout (eval) or off the CPU it hands over to SDPA.

**Frozen linear layers.** On this project's AMD CPUs torch's float32 ``addmm`` (MKL) reaches ~70 %
of the throughput of oneDNN's GEMM for the encoder's shapes. A linear layer whose weight and bias
are frozen (the whole encoder for ST-A, Fusion and Head) computes ``y = x Wᵀ + b`` and, in the
backward, only ``dx = dy W``, both with oneDNN (``torch.ops.mkldnn._linear_pointwise``). Trained
weights, other dtypes and other devices use ``F.linear`` unchanged. Results agree with MKL to float32
rounding (different summation order). Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (``precision:
bf16``, ``compute.py``) a frozen layer runs the same oneDNN kernels in bf16 on a bf16 copy of its weight
and bias, made on first use and remade only when the weight changes (its version counter), instead of
casting the frozen weight on every call as autocast's ``F.linear`` would. A model that serves (``serving``: eval,
every weight frozen) also reorders each weight once into oneDNN's blocked layout and computes without autograd;
measured on the AMD EPYC, that gives the same outputs (float32 inputs of one row aside) 20-35 % faster per
layer at batch 1, 5-18 % at batch 64.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

KERNELS = ("fast", "stock")
ATTENTION = "afbench_cpu_dropout"  # name registered with transformers' AttentionInterface


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Bool tensor of ``shape``, each element True with probability 1 - p, independently."""
    n = torch.Size(shape).numel()
    lanes = torch.empty((n + 1) // 2, dtype=torch.int64, device=device)
    bits = lanes.random_(-(2**63), None).view(torch.int32)[:n]  # uniform over all 2**32 values
    threshold = int(p * 2**32) - 2**31  # P(bits < threshold) = floor(p * 2**32) / 2**32
    return (bits >= threshold).view(shape)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the keep-mask from :func:`keep_mask` on the CPU."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    if p == 1.0:
        return x * 0.0
    scale = torch.where(keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p), 0.0).to(x.dtype)
    return x * scale  # autograd keeps `scale` for the backward: grad * keep / (1 - p)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with :func:`fast_dropout`; no state, so it swaps in and out freely."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention_math(query, key, value, attention_mask, scaling: float, dropout: float, training: bool = True):
    """Softmax attention with fast dropout on the probabilities.

    query/key/value [B, heads, T, d]; attention_mask None, bool [B, 1, T, T] (True = attend) or additive
    float broadcastable to [B, heads, T, T]. Returns [B, T, heads, d] (what transformers' attention
    functions return).
    """
    scores = torch.matmul(query * scaling, key.transpose(2, 3))  # [B, heads, T, T]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device) \
                .masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        scores = scores + attention_mask
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout, training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()  # [B, T, heads, d]


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """transformers attention function: the math path above when dropping out on the CPU, else SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0 or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    return attention_math(query, key, value, attention_mask, scaling, dropout), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # bool mask, or None when nothing is masked


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _FrozenLinear(torch.autograd.Function):
    """y = x Wᵀ + b with W and b frozen: the backward is dx = dy W only."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # x [..., in], weight [out, in] -> [..., out]
        ctx.save_for_backward(weight)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # grad [..., out] -> dx [..., in]
        (weight,) = ctx.saved_tensors
        return _onednn_linear(grad, weight.t(), None), None, None


class CpuLinear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) computing frozen CPU float32 layers with oneDNN (in bf16 under
    bf16 autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
        if frozen and x.device.type == "cpu" and self.weight.dtype == torch.float32:
            bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            if bf16 and x.dtype in (torch.float32, torch.bfloat16):
                w, b = self._low_precision_copy(torch.bfloat16)
                x = x.to(torch.bfloat16)  # [..., out] in bf16, as autocast's F.linear
            elif not bf16 and x.dtype == torch.float32:
                w, b = self.weight, self.bias
            else:
                return F.linear(x, self.weight, self.bias)
            if self.__dict__.get("serving") and not torch.is_grad_enabled():
                return _onednn_linear(x, self._packed(w), b)
            return _FrozenLinear.apply(x, w, b)
        return F.linear(x, self.weight, self.bias)

    def _packed(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` reordered once into oneDNN's blocked layout (``serving`` only: forward, no autograd), cached per
        dtype while ``w`` is unchanged. Same outputs as the plain weight for inputs of 7 rows or more (float32 with
        one row takes a GEMV whose sums may differ in the last bits); 20-35 % faster per layer at batch 1 x 128
        tokens on the AMD EPYC, 5-18 % at batch 64."""
        key = (w.data_ptr(), w._version)
        cache = self.__dict__.setdefault("_packed_copies", {})
        if cache.get(w.dtype, (None,))[0] != key:  # the entry holds w: its address is never reused while cached
            cache[w.dtype] = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach()), w.detach())
        return cache[w.dtype][1]

    def _low_precision_copy(self, dtype: torch.dtype):
        """(weight, bias) in ``dtype``, cached while the float32 weight is unchanged (not in the state dict)."""
        key = (dtype, self.weight.data_ptr(), self.weight._version,
               None if self.bias is None else (self.bias.data_ptr(), self.bias._version))
        cached = self.__dict__.get("_low_copy")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                w = self.weight.detach().to(dtype)
                b = None if self.bias is None else self.bias.detach().to(dtype)
            # the entry holds the float32 tensors it was made from, so a replaced weight never finds its address
            # (and the same version) reused by a new one while the copy is cached
            self.__dict__["_low_copy"] = cached = (key, w, b, self.weight.detach(),
                                                   None if self.bias is None else self.bias.detach())
        return cached[1], cached[2]


def serving(*modules: nn.Module) -> None:
    """Eval mode, every parameter frozen: how a model serves (``runner/serve.py``, ``afbench perf --mode
    inference``), so with the fast kernels every linear layer takes the frozen oneDNN path above, with its weight
    prepacked (``CpuLinear._packed``) wherever no gradient is being recorded. Call after ``set_cpu_kernels``."""
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        for mod in m.modules():  # a frozen linear layer, or a layer that computes otherwise when serving
            if isinstance(mod, CpuLinear) or getattr(mod, "fuses_when_serving", False):
                mod.__dict__["serving"] = True


def _swap(model: nn.Module, old: type, make) -> None:
    """Replace every child of exactly type ``old`` (not its subclasses) by ``make(child)``."""
    for mod in model.modules():
        for name, child in list(mod.named_children()):
            if type(child) is old:
                swapped = make(child)
                swapped.train(child.training)
                setattr(mod, name, swapped)


def _relinear(cls: type, lin: nn.Linear) -> nn.Linear:
    new = cls.__new__(cls)
    new.__dict__ = lin.__dict__.copy()  # the same Parameter objects: optimiser and state dict unchanged
    for key in ("serving", "_packed_copies", "_low_copy"):  # CpuLinear's state: a swap starts without it
        new.__dict__.pop(key, None)
    return new


def set_cpu_kernels(model: nn.Module, kernels: str) -> None:
    """Use the fast (default) or the stock CPU kernels everywhere in ``model``. Call after adding heads."""
    if kernels not in KERNELS:
        raise ValueError(f"cpu kernels must be one of {KERNELS}, got {kernels!r}")
    fast = kernels == "fast"
    if fast:
        _swap(model, nn.Dropout, lambda d: FastDropout(d.p, d.inplace))
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            _swap(model, nn.Linear, lambda m: _relinear(CpuLinear, m))
    else:
        _swap(model, FastDropout, lambda d: nn.Dropout(d.p, d.inplace))
        _swap(model, CpuLinear, lambda m: _relinear(nn.Linear, m))
    for mod in model.modules():
        config = getattr(mod, "config", None)
        if getattr(mod, "set_attn_implementation", None) is None or config is None:
            continue
        current = config._attn_implementation
        if fast and current == "sdpa":
            _register()
            mod.set_attn_implementation(ATTENTION)
        elif not fast and current == ATTENTION:
            mod.set_attn_implementation("sdpa")
