"""Prediction heads, AdapterHub-style (two layers, tanh, on the first token)."""

from __future__ import annotations

import torch
from torch import nn


class _TwoLayer(nn.Module):
    def __init__(self, hidden_size: int, out: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, out)
        for lin in (self.dense, self.out):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def score(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states[:, 0]  # [B, H] first token ([CLS] / <s>)
        x = self.dropout(torch.tanh(self.dense(self.dropout(x))))
        return self.out(x)


class ClassificationHead(_TwoLayer):
    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__(hidden_size, num_labels, dropout)
        self.num_labels = num_labels

    def forward(self, hidden_states: torch.Tensor, num_choices: int | None = None) -> torch.Tensor:
        return self.score(hidden_states)  # [B, num_labels]


class MultipleChoiceHead(_TwoLayer):
    """One score per (context, choice) sequence; the loss is a softmax over the K choices."""

    def __init__(self, hidden_size: int, num_choices: int, dropout: float):
        super().__init__(hidden_size, 1, dropout)
        self.num_labels = num_choices

    def forward(self, hidden_states: torch.Tensor, num_choices: int | None = None) -> torch.Tensor:
        return self.score(hidden_states).view(-1, num_choices)  # [B*K, 1] -> [B, K]


def make_head(task_type: str, hidden_size: int, num_labels: int, dropout: float) -> nn.Module:
    cls = ClassificationHead if task_type == "classification" else MultipleChoiceHead
    return cls(hidden_size, num_labels, dropout)
