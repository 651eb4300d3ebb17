"""Timed training steps shared by both sides of ``afbench perf``. Imports only torch, so the
reference environment (transformers 4.57 + adapters 1.3.0) can run it too."""

import time
from pathlib import Path

import torch

POOLINGS = ("mean", "cls")


def setup_kind(config) -> str:
    """(name, n) or (name, n, kind): n = 0 is ST-A, n > 0 fusion over n adapters unless a kind is given."""
    return config[2] if len(config) > 2 else ("st_a" if config[1] == 0 else "fusion")


def random_ids(g: torch.Generator, vocab_size: int, batch: int, length: int, device: torch.device | str):
    """(input_ids [batch, length] drawn from ids >= 1000 with [CLS] (101) first, attention mask of ones)."""
    x = torch.randint(1000, vocab_size, (batch, length), generator=g)
    x[:, 0] = 101
    return x.to(device), torch.ones_like(x).to(device)


def make_batch(vocab_size: int, batch: int, length: int, num_labels: int = 3, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    ids, mask = random_ids(g, vocab_size, batch, length, device)
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.randint(0, num_labels, (batch,), generator=g).to(device)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step, warmup: int, steps: int, device: str = "cpu") -> float:
    """Seconds per training step (mean over ``steps`` after ``warmup``)."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


class Head(torch.nn.Module):
    """The same two-layer tanh head on both sides, so only the encoder + adapters differ. ``mean``: the
    masked mean of the last layer (what the committed MiniLM runs train, ``benchmark/modeling/heads.py``);
    ``cls``: the first token (BERT/RoBERTa as in the paper)."""

    def __init__(self, hidden: int, num_labels: int = 3, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.net = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                                       torch.nn.Dropout(0.1), torch.nn.Linear(hidden, num_labels))

    def forward(self, hidden_states, attention_mask=None):
        if self.pooling == "cls" or attention_mask is None:
            return self.net(hidden_states[:, 0])  # [B, H] -> [B, C]
        m = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # [B, T, 1]
        return self.net((hidden_states * m).sum(1) / m.sum(1).clamp(min=1.0))


def peak_mib(device: str) -> float:
    """CUDA: max memory allocated since the last reset; CPU: the process's peak resident set (VmHWM)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
