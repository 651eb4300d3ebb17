"""The one FLOP model: what ``afbench plan --estimate`` (``cost.py``) prices per token and what ``afbench perf
--mode roofline`` divides by a measured step time, from the encoder's shape. Pure arithmetic (no torch).

Per token (the estimate): ``encoder_per_token`` is the encoder's forward, ``method_per_token`` what the
method's modules add to it, priced by the spec sections the method declares (each method package prices its
own section in its ``config.py``: ``adapter``, ``fusion``, ``lora`` ...; a new method built from known modules
needs nothing), and
``train_per_token`` what a training step computes from those by what the method trains.

Per step (the roofline): ``step_flops``, op by op. Counted: every matrix product (``mm``/``addmm``/``bmm``
— what ``torch.utils.flop_counter.FlopCounterMode`` counts, 2 FLOPs per multiply-add), forward and backward. Elementwise work (softmax, LayerNorm, GELU,
dropout, the optimiser) and matrix-vector products (``mv``: O(H²) per layer and step) are not counted.

The backward computes what autograd really computes for the setup, op by op:

* a weight gradient (``dW = dYᵀ X``, the forward's FLOPs) only for trained weights;
* an input gradient (``dX = dY W``, the forward's FLOPs) only where the input requires grad: above the
  lowest trained module. With a frozen encoder (ST-A, Fusion) the gradient of layer 0 stops at its
  adapter or fusion: no input gradients below it, none through the embeddings;
* both operands of an attention product (QKᵀ, PV) get a gradient once the hidden states require grad.

Shapes, per layer, M = B·T tokens, H hidden, I intermediate, r = H / rf bottleneck, N fused adapters:

    encoder    Q, K, V, attention-out: 4 · 2MH²; QKᵀ and PV: 2 · 2BT²H; FFN: 2 · 2MHI
    adapter    down + up: 2 · 2MHr (Pfeiffer after the FFN; Houlsby also after attention)
    fusion     ours (``fusion.fast_fusion``): N down projections in one 2MHNr; Q·K merged per step
               (WqᵀWk: 2H³, bq·Wk: 2H²), k = h(WqᵀWk): 2MH², q·b_k: 2MH, k W_up: 2MHNr, k b_upᵀ: 2MHN,
               mixing through W_up: 2MNrH, s b_up: 2MNH, V: 2MH²
               reference (AdapterHub ``BertFusion``): N adapters 2 · 2MHNr, Q: 2MH², K and V on every
               adapter output: 2 · 2MNH², scores and context: 2 · 2MNH
    static mixing (``mixing.StaticMixing``, the estimate only): N adapters 2 · 2MHNr, the weighted sum 2MNH
    weight merge (``fusion.mixing: merge``, the estimate only): the one merged adapter 2 · 2MHr; trained as a Head
               run (head only) or an ST-A run (``merge.train_adapter``), not as a fusion (``trains_of``)
    head       mean-pooled two-layer head: 2BH² + 2BHC
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.methods import registry

SETUPS = ("st_a", "houlsby", "full", "fusion", "head")


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    batch: int = 1
    length: int = 1
    num_labels: int = 3

    @classmethod
    def of(cls, config, batch: int, length: int, num_labels: int = 3) -> Shape:
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, batch, length, num_labels)


@dataclass
class Count:
    """FLOPs of one step by part (encoder, adapters, fusion, head) and direction."""

    forward: dict[str, int] = field(default_factory=dict)
    backward: dict[str, int] = field(default_factory=dict)

    def op(self, part: str, flops: int, grads: int) -> None:
        """A product of ``flops`` forward FLOPs whose backward computes ``grads`` gradients of that size."""
        self.forward[part] = self.forward.get(part, 0) + flops
        self.backward[part] = self.backward.get(part, 0) + flops * grads

    @property
    def total(self) -> int:
        return sum(self.forward.values()) + sum(self.backward.values())


def _adapter(c: Count, M: int, H: int, r: int, input_grad: bool, trained: bool, part: str = "adapters") -> None:
    c.op(part, 2 * M * H * r, int(input_grad) + int(trained))  # down: [M, H] x [H, r]
    c.op(part, 2 * M * r * H, int(input_grad or trained) + int(trained))  # up: its input requires grad if either


def _fusion_ours(c: Count, M: int, H: int, r: int, N: int, input_grad: bool) -> None:
    """``fusion.fast_fusion`` with a trained fusion over frozen adapters."""
    c.op("fusion", 2 * M * H * N * r, int(input_grad))  # the N down projections at once (frozen)
    c.op("fusion", 2 * H * H * H, 2)  # Wqᵀ Wk, once per layer and step
    c.op("fusion", 2 * H * H, 2)  # bq Wk ([1, H] x [H, H])
    c.op("fusion", 2 * M * H * H, 1 + int(input_grad))  # k = h (WqᵀWk)ᵀ + bq Wk: dW, dX
    c.op("fusion", 2 * M * H, 1 + int(input_grad))  # q . b_k = h (Wqᵀ b_k) + bq . bk
    c.op("fusion", 2 * M * H * N * r, 1)  # k W_up -> [M, N*r]: dk only (W_up frozen)
    c.op("fusion", 2 * M * H * N, 1)  # k b_upᵀ -> [M, N]
    c.op("fusion", 2 * M * N * r * H, 1)  # [s_n a_n] W_upᵀ -> [M, H]
    c.op("fusion", 2 * M * N * H, 1)  # s b_up -> [M, H]
    c.op("fusion", 2 * M * H * H, 2)  # V: dW, dX


def step_flops(shape: Shape, setup: str, *, n: int = 0, rf: int = 16, impl: str = "ours") -> Count:
    """FLOPs of one training step of ``setup`` (st_a, houlsby, full, fusion over ``n`` adapters, head only)."""
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
    B, T, H, inter = shape.batch, shape.length, shape.hidden, shape.intermediate
    M, r = B * T, shape.hidden // rf
    enc = setup == "full"
    c = Count()
    g = enc  # does the residual stream entering this layer require grad? (trained embeddings: from layer 0)
    for _ in range(shape.layers):
        for _ in range(4):  # attention block: Q, K, V and the output dense
            c.op("encoder", 2 * M * H * H, int(g) + int(enc))
        c.op("encoder", 2 * B * T * T * H, 2 * int(g))  # Q Kᵀ over all heads
        c.op("encoder", 2 * B * T * T * H, 2 * int(g))  # P V
        if setup == "houlsby":
            _adapter(c, M, H, r, input_grad=g, trained=True)
            g = True
        c.op("encoder", 2 * M * H * inter, int(g) + int(enc))  # FFN in
        c.op("encoder", 2 * M * inter * H, int(g) + int(enc))  # FFN out
        if setup in ("st_a", "houlsby"):
            _adapter(c, M, H, r, input_grad=g, trained=True)
            g = True
        elif setup == "fusion":
            (_fusion_ours if impl == "ours" else _fusion_reference)(c, M, H, r, n, input_grad=g)
            g = True
    C = shape.num_labels
    c.op("head", 2 * B * H * H, 1 + int(g))  # dense on the pooled [B, H]
    c.op("head", 2 * B * H * C, 2)  # out projection
    return c


def _fusion_reference(c: Count, M: int, H: int, r: int, N: int, input_grad: bool) -> None:
    """As ``_fusion_reference`` with the gradient flags of a layer whose input does or does not require grad:
    the adapters are frozen, so their outputs z_n require grad only when the layer input does."""
    for _ in range(N):
        _adapter(c, M, H, r, input_grad, trained=False, part="fusion")
    c.op("fusion", 2 * M * H * H, 1 + int(input_grad))  # Q: dW, dh
    c.op("fusion", 2 * M * N * H * H, 1 + int(input_grad))  # K on every z_n: dW, dz
    c.op("fusion", 2 * M * N * H * H, 1 + int(input_grad))  # V on every z_n
    c.op("fusion", 2 * M * N * H, 2)  # scores q . k_n
    c.op("fusion", 2 * M * N * H, 2)  # context sum_n s_n v_n


# --------------------------------------------------------------------------------------- per token (the estimate)
def encoder_per_token(shape: Shape, seq: float) -> float:
    """Forward FLOPs per token of the encoder (``step_flops``'s forward ``encoder`` over B·T tokens at T = seq):
    Q, K, V, O (8H²) and the FFN (4HI), plus attention scores and the weighted sum over ``seq`` positions (4 seq H)."""
    H, inter = shape.hidden, shape.intermediate
    return shape.layers * (2 * (4 * H * H + 2 * H * inter) + 4 * seq * H)


def method_per_token(method, shape: Shape, sources: int = 0) -> float:
    """Forward FLOPs per token of what ``method`` (a MethodSpec) adds to every layer: each module it declares, at
    the price its method package declares for that spec section (``registry.section(..., flops=...)``)."""
    return shape.layers * sum(s.flops(p, shape, sources) for s in registry.sections()
                              if s.flops is not None and (p := getattr(method, s.name, None)) is not None)


def trains_of(method) -> frozenset[str]:
    """What a run of ``method`` (a MethodSpec) trains: its kind's ``trains``, except a weight merge's (``fusion.mixing:
    merge``), which builds no fusion layer and trains the head (and, with ``merge.train_adapter``, the merged
    adapter)."""
    fusion = getattr(method, "fusion", None)
    if fusion is not None and fusion.mixing == "merge":
        return frozenset({"head", "adapter"} if fusion.merge.train_adapter else {"head"})
    if fusion is not None and fusion.mixing == "lorahub":  # the search's forwards are a few rows: not priced
        return frozenset({"head"})
    return method.method_kind.trains


def train_per_token(trains, shape: Shape, seq: float, extra: float) -> float:
    """Training FLOPs per token given what the method ``trains`` and its modules' forward ``extra``."""
    fwd = encoder_per_token(shape, seq)
    if "encoder" in trains:  # Full, MT-A: input and weight gradients of every layer
        return 3 * (fwd + extra)
    if set(trains) & {"adapter", "fusion"}:  # frozen encoder: input gradients through it, weight grads of modules
        return 2 * fwd + 3 * extra
    return fwd + extra  # Head: nothing flows back into the encoder
