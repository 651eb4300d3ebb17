"""The encoders ``afbench perf`` times: MiniLM-L6 from its package (what the committed runs train) or
a randomly initialised BERT-base (12 layers, 768 wide: the paper's shapes, no Hub needed, e.g. for the
GPU table). Both sides of a comparison build the same one: ours here, the reference from the JSON
description in ``reference.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PERF_BACKBONES = ("minilm-l6", "bert-base-random")
# transformers' BertConfig defaults = bert-base-uncased's shapes; spelled out so the report is explicit
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "vocab_size": 30522, "max_position_embeddings": 512}


@dataclass(frozen=True)
class PerfBackbone:
    name: str
    label: str  # for the report
    pooling: str  # the head pooling the committed runs use on it
    reference: dict  # how reference.py builds the same encoder
    make: Callable[[], nn.Module]


def perf_backbone(name: str) -> PerfBackbone:
    if name == "minilm-l6":
        from benchmark.modeling.backbone import load_encoder, model_path
        from benchmark.spec import load_registry

        spec = load_registry().backbones["minilm-l6"]
        return PerfBackbone(name, "MiniLM-L6 (all-MiniLM-L6-v2)", spec.pooling, {"path": model_path(spec)},
                            lambda: load_encoder(spec))
    if name == "bert-base-random":
        def make() -> nn.Module:
            from transformers import BertConfig, BertModel

            torch.manual_seed(0)
            return BertModel(BertConfig(**BERT_BASE), add_pooling_layer=False)

        return PerfBackbone(name, "BERT-base shapes (random init from BertConfig: 12 layers, 768 wide)", "cls",
                            {"bert_config": BERT_BASE}, make)
    raise ValueError(f"perf backbone must be one of {PERF_BACKBONES}, got {name!r}")
