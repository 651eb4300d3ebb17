"""Timed inference shared by both sides of ``afbench perf --mode inference``. Imports only torch (the
reference environment runs it too): latency of batch 1 and throughput of a large batch, forward only,
under ``torch.inference_mode`` and optional bf16 autocast, plus this process's peak memory."""

import statistics
import time

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_inference(forward, vocab_size: int, length: int, batch: int, reps: int, device: str,
                   precision: str | None) -> dict:
    """forward(input_ids, attention_mask) -> logits. Returns latency_ms (median of ``reps`` batch-1 calls)
    and examples_per_second (``reps`` calls at ``batch``), after one warm-up call of each."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)

    def ids(b):
        x = torch.randint(1000, vocab_size, (b, length), generator=g)
        x[:, 0] = 101
        return x.to(dev), torch.ones_like(x).to(dev)

    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else \
        (lambda: torch.autocast(dev.type, enabled=False))
    one, big = ids(1), ids(batch)
    with torch.inference_mode(), ctx():
        forward(*one)
        forward(*big)
        _sync(device)
        lat = []
        for _ in range(reps):
            t = time.perf_counter()
            forward(*one)
            _sync(device)
            lat.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(reps):
            forward(*big)
        _sync(device)
        through = batch * reps / (time.perf_counter() - t)
    return {"latency_ms": statistics.median(lat), "examples_per_second": through}
