"""The forward context of one model, what a slot runs, and the activation switch every added module owns (a
leaf: the slots, the method modules and the model import it, and it imports none of them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class ForwardContext:
    """Shared by the adapted modules of one model: the current attention mask, capture and last-layer state.
    It names no method: what is active is each module's own state (``Switchable``)."""

    attention_mask: torch.Tensor | None = None  # [B, T]
    capture: bool = False
    first_token_only: bool = False  # this forward: the last layer computes position 0 only (first_token.py)
    last_layer_first_token: bool = False  # the first-token transform is on (first_token.set_last_layer)


@dataclass
class ActiveSetup:
    adapter: str | None = None  # one adapter
    fusion: str | None = None  # or a fusion layer over several
    fused: list[str] = field(default_factory=list)


class Switchable:
    """A module that holds its own activation state, as PEFT's layers do: ``switch_off`` returns it to the
    stock function (it adds nothing to the forward). ``AdapterModel.set_active(None)`` calls it on every
    such module of the model, so no method needs a line there, and a method's ``activate`` switches on its
    own modules."""

    def switch_off(self) -> None:
        raise NotImplementedError
