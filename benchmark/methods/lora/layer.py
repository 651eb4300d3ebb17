"""LoRA's modules (Hu et al. 2022): a tuner on target linear layers (``tuners.py``): its module and its forward.

For every layer and every target the method spec names (``LoRAParams.targets``: ``query``, ``value``,
... mapped to an ``nn.Linear`` by the family's ``layout.linear_targets``), the target linear layer W gets a
child ``lora.<name>`` holding A [r, in] and B [out, r], which, while active, adds

    y = W x + b + (alpha / r) * B A dropout(x)         x [.., in] -> y [.., out]

exactly as Hugging Face PEFT's ``LoraLayer`` computes it (A Kaiming-uniform with a = sqrt(5), B = 0, so a
fresh LoRA leaves the model unchanged). The pretrained keys of W do not change; the LoRA tensors are
``<target path>.lora.<name>.{A,B}.weight``. Where the modules sit, which are active, what modules.json
stores and which keys a checkpoint holds are the shared base's (``tuners.TargetTuner``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from benchmark.methods.lora.config import LoRAParams
from benchmark.modeling.tuners import TargetTuner, TunerModule


class LoRA(TunerModule):
    def __init__(self, in_features: int, out_features: int, params: LoRAParams):
        super().__init__()
        self.params = params
        self.A = nn.Linear(in_features, params.rank, bias=False)  # weight [r, in]
        self.B = nn.Linear(params.rank, out_features, bias=False)  # weight [out, r]
        self.dropout = nn.Dropout(params.dropout)
        self.scaling = params.alpha / params.rank
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))  # PEFT's init_lora_weights=True
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [.., in] -> A [.., r] -> B [.., out], scaled
        return self.B(self.A(self.dropout(x))) * self.scaling

    def update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self(x)


class LoRATuner(TargetTuner):
    child = "lora"
    title = "LoRA"
    module = LoRA
    params_model = LoRAParams


TUNER = LoRATuner()  # the adapter type's side of the model API (``model.adapter_type`` dispatches here for ``lora``)
