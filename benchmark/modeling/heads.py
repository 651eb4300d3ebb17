"""Prediction heads, AdapterHub-style: two layers with tanh on a pooled sentence vector.

Pooling is the first token (``cls``; the paper and AdapterHub) unless the backbone spec says the
encoder was pretrained to produce a masked mean (``mean``; e.g. sentence-transformers' MiniLM).
"""

from __future__ import annotations

import torch
from torch import nn


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the first token, or the mean over real (unmasked) tokens."""
    if pooling == "cls" or attention_mask is None:
        return hidden_states[:, 0]
    m = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # [B, T, 1]
    return (hidden_states * m).sum(1) / m.sum(1).clamp(min=1.0)


class ClassificationHead(nn.Module):
    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_labels)
        for lin in (self.dense, self.out):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, hidden_states, attention_mask=None, num_choices: int | None = None) -> torch.Tensor:
        x = pool(hidden_states, attention_mask, self.pooling)  # [B, H]
        x = self.dropout(torch.tanh(self.dense(self.dropout(x))))
        return self.out(x)  # [B, num_labels]


class MultipleChoiceHead(ClassificationHead):
    """One score per (context, choice) sequence; the loss is a softmax over the K choices."""

    def __init__(self, hidden_size: int, num_choices: int, dropout: float, pooling: str = "cls"):
        super().__init__(hidden_size, 1, dropout, pooling)

    def forward(self, hidden_states, attention_mask=None, num_choices: int | None = None) -> torch.Tensor:
        return super().forward(hidden_states, attention_mask).view(-1, num_choices)  # [B*K, 1] -> [B, K]


def make_head(task_type: str, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls") -> nn.Module:
    cls = ClassificationHead if task_type == "classification" else MultipleChoiceHead
    return cls(hidden_size, num_labels, dropout, pooling)
