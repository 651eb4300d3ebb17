"""The encoder's last layer computed at position 0 only, when the head reads nothing else.

A first-token head (``cls`` pooling: classification and multiple choice, as in the paper and
AdapterHub) reads only the final hidden state of position 0. In the last layer, everything that
acts per position — the query projection, the attention output block, the FFN, the adapter or fusion
— then matters at position 0 alone; keys and values still come from every position. Computing just
that row gives the same logits, loss and gradients (to float32 rounding: other matmul shapes) and
skips most of the last layer, forward and backward (``afbench perf`` shows the effect).

Dropout inside the last layer then draws masks for one row instead of T, so a seeded run draws a
different random stream than with the full layer: the runner records the choice (``last_layer`` in
result.json, ``afbench run --last-layer first_token|full``). Mean pooling and fusion-attention
capture (Figures 4 and 6 average over all tokens) always compute every position.

A transform applied after construction, like ``cpu_kernels.set_cpu_kernels``:
``set_last_layer(model, "first_token" | "full")``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from benchmark.modeling.layout import FirstToken

LAST_LAYER = ("first_token", "full")


class FirstTokenLastLayer(nn.Module):
    """Wraps a BERT-style layer (``layout.FirstToken`` says where its parts are); keeps every sub-module under
    its name (state-dict keys unchanged)."""

    def __init__(self, layer: nn.Module, ctx, parts: FirstToken):
        super().__init__()
        for name, child in layer.named_children():
            self.add_module(name, child)
        self._ctx = ctx  # ForwardContext: first_token_only says which rows to compute
        self._parts = parts
        object.__setattr__(self, "original", layer)  # not a sub-module: no second copy of the keys

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs) -> torch.Tensor:
        if not self._ctx.first_token_only:  # the stock layer (an encoder: no cross-attention, no chunking)
            return self.original(hidden_states, attention_mask, *args, **kwargs)  # [B, T, H]
        p = self._parts
        sa = self.get_submodule(p.self_attention)
        B, T, _ = hidden_states.shape
        d = sa.attention_head_size
        first = hidden_states[:, :1]  # [B, 1, H]
        query = sa.query(first).view(B, 1, -1, d).transpose(1, 2)  # [B, heads, 1, d]
        key = sa.key(hidden_states).view(B, T, -1, d).transpose(1, 2)  # [B, heads, T, d]
        value = sa.value(hidden_states).view(B, T, -1, d).transpose(1, 2)  # [B, heads, T, d]
        if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] == T:
            attention_mask = attention_mask[:, :, :1]  # [B, 1, 1, T]: the first query row
        attend = _attention_function(sa)
        context, _ = attend(sa, query, key, value, attention_mask,
                            dropout=sa.dropout.p if sa.training else 0.0, scaling=sa.scaling, **kwargs)
        context = context.reshape(B, 1, -1)  # [B, 1, H]
        attended = self.get_submodule(p.attention_output)(context, first)  # [B, 1, H]
        return self.get_submodule(p.output)(self.get_submodule(p.intermediate)(attended), attended)  # [B, 1, H]


_SAID: set[str] = set()


def _say_once(family: str, why: str) -> None:
    if family not in _SAID:
        _SAID.add(family)
        print(f"last_layer first_token: the '{family}' encoder computes its full last layer ({why}); same "
              "numbers, no speed-up", flush=True)


def _attention_function(self_attention: nn.Module):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = self_attention.config._attn_implementation
    if impl in (None, "eager"):
        return sys.modules[type(self_attention).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[impl]


def set_last_layer(model, mode: str) -> None:
    """``first_token``: the last layer of ``model`` (an AdapterModel) computes position 0 only whenever its
    head reads nothing else; ``full``: the stock layer. Same logits and gradients either way."""
    if mode not in LAST_LAYER:
        raise ValueError(f"last_layer must be one of {LAST_LAYER}, got {mode!r}")
    layers = model.layers()
    last = layers[-1]
    if mode == "full":
        if isinstance(last, FirstTokenLastLayer):
            layers[-1] = last.original
        model._ctx.last_layer_first_token = False
        return
    if not isinstance(last, FirstTokenLastLayer):
        parts = model.layout.first_token
        if parts is None:  # e.g. DeBERTa's relative attention: cannot be recomputed for one query row
            _say_once(model.layout.family, "its layout declares no first-token parts: e.g. relative attention "
                      "cannot be recomputed for one query row")
            return
        if getattr(last, "chunk_size_feed_forward", 0) or getattr(last, "is_decoder", False) \
                or getattr(model.encoder.config, "position_embedding_type", "absolute") != "absolute":
            _say_once(model.layout.family, "this configuration is not the plain encoder layer it reproduces")
            return  # not the plain encoder layer this module reproduces: keep the stock layer
        layers[-1] = FirstTokenLastLayer(last, model._ctx, parts)
    model._ctx.last_layer_first_token = True
