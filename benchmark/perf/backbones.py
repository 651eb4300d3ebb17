"""The encoders ``afbench perf`` times: MiniLM-L6 from its package (what the committed runs train) or
a randomly initialised BERT-base (12 layers, 768 wide: the paper's shapes, no Hub needed, e.g. for the
GPU table). Both sides of a comparison build the same one: ours here, the reference from the JSON
description in ``reference.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PERF_BACKBONES = ("minilm-l6", "bert-base-random", "bert-tiny-random")
# transformers' BertConfig defaults = bert-base-uncased's shapes; spelled out so the report is explicit
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "vocab_size": 30522, "max_position_embeddings": 512}
# a 2-layer, 64-wide BERT: smoke runs of every perf mode and their tests (seconds, not minutes)
BERT_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
             "vocab_size": 2048, "max_position_embeddings": 512}


@dataclass(frozen=True)
class PerfBackbone:
    name: str
    label: str  # for the report
    pooling: str  # the head pooling the committed runs use on it
    reference: dict  # how reference.py builds the same encoder
    make: Callable[[], nn.Module]

    def config(self):
        """The encoder's transformers config (its shapes), read without building the model."""
        from transformers import AutoConfig, BertConfig

        if "bert_config" in self.reference:
            return BertConfig(**self.reference["bert_config"])
        return AutoConfig.from_pretrained(self.reference["path"])


def perf_backbone(name: str) -> PerfBackbone:
    if name == "minilm-l6":
        from benchmark.modeling.backbone import load_encoder, model_path
        from benchmark.spec import load_registry

        spec = load_registry().backbones["minilm-l6"]
        return PerfBackbone(name, "MiniLM-L6 (all-MiniLM-L6-v2)", spec.pooling, {"path": model_path(spec)},
                            lambda: load_encoder(spec))
    if name in ("bert-base-random", "bert-tiny-random"):
        shape = BERT_BASE if name == "bert-base-random" else BERT_TINY

        def make() -> nn.Module:
            from transformers import BertConfig, BertModel

            torch.manual_seed(0)
            return BertModel(BertConfig(**shape), add_pooling_layer=False)

        label = ("BERT-base shapes (random init from BertConfig: 12 layers, 768 wide)" if name == "bert-base-random"
                 else "tiny BERT (random init: 2 layers, 64 wide; smoke runs only)")
        return PerfBackbone(name, label, "cls", {"bert_config": shape}, make)
    raise ValueError(f"perf backbone must be one of {PERF_BACKBONES}, got {name!r}")
