"""The forward context of one model and what a slot runs (a leaf: the slots, the method modules and the model
import it, and it imports none of them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class ForwardContext:
    """Shared by the adapted modules of one model: the current attention mask, capture and last-layer state."""

    attention_mask: torch.Tensor | None = None  # [B, T]
    capture: bool = False
    first_token_only: bool = False  # this forward: the last layer computes position 0 only (first_token.py)
    last_layer_first_token: bool = False  # the first-token transform is on (first_token.set_last_layer)
    lora: str | None = None  # the active LoRA (lora.py), if any


@dataclass
class ActiveSetup:
    adapter: str | None = None  # one adapter
    fusion: str | None = None  # or a fusion layer over several
    fused: list[str] = field(default_factory=list)
