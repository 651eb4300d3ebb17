"""(IA)^3's modules (Liu et al. 2022): a tuner on target linear layers (``tuners.py``): its module and its forward.

For every layer and every target the method spec names (``IA3Params.targets``, by the layout's neutral names),
the target linear layer W gets a child ``ia3.<name>`` holding one vector l [out] (ones at init, so a fresh
(IA)^3 leaves the model unchanged) which, while active, rescales the linear's output, bias included:

    y = (W x + b) * l          x [.., in] -> y [.., out]

as PEFT's ``IA3Layer`` computes it for a target that is not a feed-forward module, and as AdapterHub 1.3.0's
``IA3Config`` does (a LoRA module in ``scale`` composition whose ``lora_B`` [out, 1] is l). The default
targets are AdapterHub's placement (key, value, the FFN's ``intermediate``); the tensor is
``<target path>.ia3.<name>.scale``. It is a vector, so it takes no weight decay (``loop.make_optimizer``).
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.methods.ia3.config import IA3Params
from benchmark.modeling.tuners import TargetTuner, TunerModule


class IA3(TunerModule):
    def __init__(self, in_features: int, out_features: int, params: IA3Params):
        super().__init__()
        self.params = params
        self.scale = nn.Parameter(torch.ones(out_features))  # [out]

    def update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale


class IA3Tuner(TargetTuner):
    child = "ia3"
    title = "(IA)^3"
    module = IA3
    params_model = IA3Params


TUNER = IA3Tuner()  # the adapter type's side of the model API (``model.adapter_type`` dispatches here for ``ia3``)
