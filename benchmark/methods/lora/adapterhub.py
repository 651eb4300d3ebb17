"""LoRA in AdapterHub 1.3.0's format: a ``LoRAConfig`` (composition ``add``), our ``A`` / ``B`` as its
``lora_A`` / ``lora_B`` (``benchmark/adapterhub``: ``Method``)."""

from __future__ import annotations

from benchmark.adapterhub import ATTN, FFN, LORA, Method, number, targets_config
from benchmark.methods.lora.config import LoRAParams


def config(params: LoRAParams) -> dict:
    return {**LORA, **targets_config(params.targets, "a LoRA"), "r": params.rank, "alpha": number(params.alpha),
            "dropout": params.dropout}


def params(cfg: dict) -> tuple[LoRAParams, list[str]]:
    differ = [f"{k}: {cfg[k]!r} (needs {LORA[k]!r})" for k in ("composition_mode", "use_gating", "use_dora",
                                                                "vera_d", "vera_b", "leave_out")
              if k in cfg and cfg[k] != LORA[k]]
    targets = [t for t, m in ATTN.items() if cfg.get("selfattn_lora", True) and m in cfg.get("attn_matrices", ["q", "v"])]
    targets += [t for t, k in FFN.items() if cfg.get(k)]
    return LoRAParams(rank=cfg.get("r", 8), alpha=cfg.get("alpha", 8), dropout=cfg.get("dropout", 0.0),
                      targets=targets or ["query", "value"]), differ


METHOD = Method("lora", "loras", {"A.weight": "lora_A", "B.weight": "lora_B"}, config, params, architecture="lora")
