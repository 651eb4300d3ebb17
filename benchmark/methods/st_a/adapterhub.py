"""Bottleneck adapters in AdapterHub 1.3.0's format: ``SeqBnConfig`` (Pfeiffer, the paper's ST-A) and
``DoubleSeqBnConfig`` (Houlsby); our ``down`` / ``up`` as its ``adapter_down.0`` / ``adapter_up``
(``benchmark/adapterhub``: ``Method``). Read back, a config that computes anything else is refused with the keys
that differ."""

from __future__ import annotations

from benchmark.adapterhub import Method
from benchmark.methods.st_a.config import AdapterParams

# AdapterHub's SeqBnConfig ("pfeiffer", the paper's ST-A) as save_adapter writes it; DoubleSeqBnConfig
# ("houlsby") differs in the three keys of HOULSBY. Its ``architecture`` is None (we also read "bottleneck").
SEQ_BN = {
    "adapter_residual_before_ln": False, "architecture": None, "cross_adapter": False, "dropout": 0.0,
    "factorized_phm_W": True, "factorized_phm_rule": False, "hypercomplex_nonlinearity": "glorot-uniform",
    "init_weights": "bert", "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None,
    "is_parallel": False, "learn_phm": True, "leave_out": [], "ln_after": False, "ln_before": False,
    "mh_adapter": False, "non_linearity": "relu", "original_ln_after": True, "original_ln_before": True,
    "output_adapter": True, "phm_bias": True, "phm_c_init": "normal", "phm_dim": 4, "phm_init_range": 0.0001,
    "phm_layer": False, "phm_rank": 1, "reduction_factor": 16, "residual_before_ln": True, "scaling": 1.0,
    "shared_W_phm": False, "shared_phm_rule": True, "stochastic_depth": 0.0, "use_gating": False,
}
HOULSBY = {"mh_adapter": True, "original_ln_before": False, "non_linearity": "swish"}
# The keys that change what a bottleneck adapter computes, with the value each placement needs; the others
# (initialisation, training, PHM while off) are not compared.
_COMPUTES = ("output_adapter", "original_ln_after", "residual_before_ln", "adapter_residual_before_ln",
             "ln_before", "ln_after", "is_parallel", "scaling", "use_gating", "phm_layer", "inv_adapter",
             "cross_adapter", "leave_out", "mh_adapter", "original_ln_before")
_NEEDS = {"pfeiffer": {k: SEQ_BN[k] for k in _COMPUTES}, "houlsby": {k: {**SEQ_BN, **HOULSBY}[k] for k in _COMPUTES}}
_NON_LINEARITY = {"relu": "relu", "swish": "swish", "silu": "swish", "gelu": "gelu", "tanh": "tanh"}


def _bottleneck_config(params: AdapterParams) -> dict:
    return {**SEQ_BN, **(HOULSBY if params.type == "houlsby" else {}), "reduction_factor": params.reduction_factor,
            "non_linearity": params.activation}


def _bottleneck_params(cfg: dict) -> tuple[AdapterParams, list[str]]:
    kind = "houlsby" if cfg.get("mh_adapter") else "pfeiffer"
    differ = [f"{k}: {cfg[k]!r} (needs {v!r})" for k, v in _NEEDS[kind].items() if k in cfg and cfg[k] != v]
    differ += [f"{k}: {cfg[k]!r} (a key AdapterHub's bottleneck config does not have)" for k in sorted(set(cfg) - set(SEQ_BN))]
    rf = cfg.get("reduction_factor", 16)
    if isinstance(rf, dict):  # per-layer factors: representable only when they are all one value
        values = set(rf.values())
        rf = values.pop() if len(values) == 1 else None
        if rf is None:
            differ.append(f"reduction_factor: {cfg['reduction_factor']!r} (needs one value for every layer)")
    nl = str(cfg.get("non_linearity", "relu" if kind == "pfeiffer" else "swish")).lower()
    if nl not in _NON_LINEARITY:
        differ.append(f"non_linearity: {nl!r} (needs one of {sorted(_NON_LINEARITY)}; gelu_new is not gelu)")
    if not isinstance(rf, int | float) or isinstance(rf, bool) or rf < 1 or rf != int(rf):
        differ.append(f"reduction_factor: {rf!r} (needs a positive integer)")
        rf = 16
    return AdapterParams(type=kind, reduction_factor=int(rf), non_linearity=_NON_LINEARITY.get(nl)), differ


METHOD = Method("adapters", "adapters", {f"{a}.{w}": f"adapter_{b}.{w}" for a, b in (("down", "down.0"), ("up", "up"))
                                         for w in ("weight", "bias")}, _bottleneck_config, _bottleneck_params)
