"""(IA)^3 in AdapterHub 1.3.0's format: an ``IA3Config``, a LoRA config in composition ``scale`` (r = alpha = 1,
no dropout). Our one vector per target (``<target path>.ia3.<name>.scale``, [out]) scales that linear's output,
as AdapterHub's IA3 module does with its ``lora_B`` [out, 1] (``benchmark/adapterhub``: ``Method``)."""

from __future__ import annotations

from benchmark.adapterhub import ATTN, FFN, LORA, Method, targets_config
from benchmark.methods.ia3.config import IA3Params


def config(params: IA3Params) -> dict:
    return {**LORA, **targets_config(list(params.targets), "an (IA)^3"), "r": 1, "alpha": 1,
            "composition_mode": "scale", "init_weights": "ia3"}


def params(cfg: dict) -> tuple[IA3Params, list[str]]:
    """An IA3Config (a LoRA config in ``scale`` composition) as our params: one vector on each target's output."""
    differ = [f"{k}: {cfg[k]!r} (needs {v!r})" for k, v in (("r", 1), ("alpha", 1), ("dropout", 0.0))
              if k in cfg and cfg[k] != v]
    differ += [f"{k}: {cfg[k]!r} (needs {LORA[k]!r})" for k in ("use_gating", "use_dora", "vera_d", "vera_b",
                                                                "leave_out") if k in cfg and cfg[k] != LORA[k]]
    targets = [t for t, m in ATTN.items() if cfg.get("selfattn_lora", True) and m in cfg.get("attn_matrices", ["k", "v"])]
    targets += [t for t, k in FFN.items() if cfg.get(k, k == "intermediate_lora")]
    return IA3Params(targets=targets or ["key", "value", "intermediate"]), differ


METHOD = Method("ia3", "loras", {"*": "lora_B"}, config, params, lambda v: v.reshape(-1, 1), architecture="lora",
                matches=lambda cfg: cfg.get("composition_mode") == "scale")
