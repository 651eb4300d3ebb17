"""Timed inference shared by both sides of ``afbench perf --mode inference``. Imports only torch (the
reference environment runs it too): latency of batch 1 and throughput of a large batch, forward only,
under ``torch.no_grad`` and optional bf16 autocast, plus this process's peak memory.

Why ``torch.no_grad`` and not ``torch.inference_mode``: ``no_grad`` is what transformers' pipelines
(``Pipeline.get_inference_context``) and our own evaluation (``training/loop.py``) run under. And on the
CPU, PyTorch (2.13) under ``inference_mode`` + bf16 autocast does not fold a non-contiguous 3-D+ input of
``nn.Linear`` into one GEMM: the autocast's bf16 weight does not require grad there, so ``matmul`` takes
its ``bmm`` path and copies the weight once per batch row. AdapterHub's fusion (query/key/value over a
transposed stack of adapter outputs) hits it: its bf16 forward ran several times slower than its fp32
forward. ``linear_context_check`` measures that effect on one layer; the report prints it."""

import re
import statistics
import time

import torch

if __package__:  # ours: benchmark.perf.inference_steps; the reference side imports it from this folder
    from benchmark.perf.steps import random_ids, sync
else:
    from steps import random_ids, sync


def _autocast(device_type: str, precision: str | None):
    return torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bf16" else \
        torch.autocast(device_type, enabled=False)


def _median_ms(fn, reps: int, device: str) -> float:
    """Median wall milliseconds of ``reps`` calls of ``fn()``, each timed from a synchronised device to one."""
    ts = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(1000 * (time.perf_counter() - t))
    return statistics.median(ts)


def time_inference(forward, vocab_size: int, length: int, batch: int, reps: int, device: str,
                   precision: str | None) -> dict:
    """forward(input_ids, attention_mask) -> logits. Returns latency_ms (median of ``reps`` batch-1 calls)
    and examples_per_second (``reps`` calls at ``batch``), after one warm-up call of each."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    one, big = random_ids(g, vocab_size, 1, length, dev), random_ids(g, vocab_size, batch, length, dev)
    with torch.no_grad(), _autocast(dev.type, precision):
        forward(*one)
        forward(*big)
        latency = _median_ms(lambda: forward(*one), reps, device)
        t = time.perf_counter()
        for _ in range(reps):
            forward(*big)
        sync(device)
        through = batch * reps / (time.perf_counter() - t)
    return {"latency_ms": latency, "examples_per_second": through}


def linear_context_check(shape: tuple[int, ...], precisions: list[str], device: str = "cpu",
                         reps: int = 5) -> dict:
    """Milliseconds of one ``nn.Linear(width, width)`` on ``shape`` = (rows, tokens, adapters, width) laid out
    as AdapterHub's fusion builds it (a stack over adapters, permuted: not contiguous), per grad context and
    precision: {"no_grad": {"fp32": ms, ...}, "inference_mode": {...}} (median of ``reps`` after a warm-up)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    rows, tokens, n, width = shape
    lin = torch.nn.Linear(width, width).to(dev)
    x = torch.randn(n, rows, tokens, width, device=dev).permute(1, 2, 0, 3)  # [rows, tokens, n, width]
    out: dict[str, dict[str, float]] = {}
    for name, ctx in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
        for p in precisions:
            with ctx(), _autocast(dev.type, p):
                lin(x)
                out.setdefault(name, {})[p] = _median_ms(lambda: lin(x), reps, device)
    return out


OP_KINDS = {  # what an operator's self time counts towards in a profile: a regex searched in its lower-cased name
    "attention": r"scaled_dot_product|attention|^aten::bmm$|^aten::_?softmax(_backward_data)?$",
    "linear": r"linear|^aten::(addmm|mm|matmul)$",
    "dropout masks": r"^aten::(random_|where|ge|bernoulli_?)$",
}


def op_kind(name: str) -> str:
    """The kind of ``OP_KINDS`` an operator (profiler event name) counts towards, else ``other``."""
    return next((k for k, rx in OP_KINDS.items() if re.search(rx, name.lower())), "other")


def profile_ms(fn, reps: int = 3) -> dict:
    """Where ``fn()`` spends its time (CPU): torch.profiler's self CPU time per operator summed by ``op_kind``
    (attention: SDPA or the batched matmuls and softmax of the math path; linear: the GEMMs, with their autograd
    wrappers' small self time; dropout masks; other: LayerNorm, GELU, adds, casts, the optimizer), in ms per call
    over ``reps`` calls after a warm-up call."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
    out = dict.fromkeys([*OP_KINDS, "other"], 0.0)
    for ev in prof.key_averages():
        out[op_kind(ev.key)] += ev.self_cpu_time_total / 1000 / reps
    return out


def profile_table(profiles: dict[str, dict], label: str) -> list[str]:
    """Markdown rows of ``{row name: profile_ms(...)}``: ms and share per kind (kinds at zero everywhere left out)."""
    kinds = [k for k in [*OP_KINDS, "other"] if any(v[k] for v in profiles.values())]
    return [f"| {label} | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds),
            *(f"| {name} | " + " | ".join(f"{v[k]:.1f} ({100 * v[k] / sum(v.values()):.0f}%)" for k in kinds) + " |"
              for name, v in profiles.items())]
