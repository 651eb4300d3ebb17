"""AdapterHub ``adapters`` 1.3.0's save format, both directions, in one place: configs, state keys, heads.

* **Configs.** ``adapter_config(params)`` writes our module params as AdapterHub's config dict, or raises
  ``Inexpressible`` (the reason and the fix) for what AdapterHub cannot load; ``adapter_params(config)`` reads
  one back and refuses, with the keys that differ, any config this package does not compute exactly.
  ``methods_table()`` has one ``Method`` per module type: the bottleneck adapters here (Pfeiffer ``seq_bn``,
  Houlsby ``double_seq_bn``), and each method package's ``adapterhub.py`` (``METHOD``; the LoRAConfig helpers
  ``LORA`` / ``targets_config`` they share are here): LoRA (``LoRAConfig``, composition ``add``) and (IA)^3
  (``IA3Config``: a LoRA config in composition ``scale``, one vector per target as ``lora_B`` [out, 1]).
  Fusion: ``FUSION_CONFIGS``.
* **State keys.** Our key ``encoder.<path>.<child>.<name>.<tail>`` is AdapterHub's ``<prefix>.<path>.<its
  child>.<its name>.<its tail>`` (``to_hub`` / ``from_hub``; the paths agree in BERT-style families, whose
  slots and target linears sit where AdapterHub's do); heads: ``dense`` / ``out`` are items 1 / 4 of its
  ``Sequential``. ``mean_pooling_head.py`` is the head type export ships for a mean-pooling head.
* **Published adapters** (``fusion.adapterhub``, located by ``data/published.py``): ``fusable`` and ``check_backbone``
  refuse, at plan time, configs we cannot compute and adapters trained for another backbone.

No torch at import (the planner imports this module; the reporter plans).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from benchmark.data.published import CONFIG, WEIGHTS, Published, backbone_shape
from benchmark.errors import BenchError, CheckpointError
from benchmark.methods import registry

VERSION = "adapters.1.3.0"
MODEL_CLASS = {"bert": "BertAdapterModel", "roberta": "RobertaAdapterModel"}  # the families export writes


class Inexpressible(ValueError):
    """Something AdapterHub 1.3.0 cannot load as we compute it: ``reason`` and ``fix``, for one line."""

    def __init__(self, reason: str, fix: str):
        super().__init__(reason)
        self.reason, self.fix = reason, fix


# ------------------------------------------------------------------------------------------- LoRA
# Our target names -> AdapterHub's LoRAConfig switch (selfattn_lora with attn_matrices q/k/v, intermediate_lora,
# output_lora: BERT's attention.self.{query,key,value}, intermediate.dense, output.dense). It has none for the
# attention output projection (attention.output.dense).
ATTN = {"query": "q", "key": "k", "value": "v"}
FFN = {"intermediate": "intermediate_lora", "output": "output_lora"}
LORA = {"architecture": "lora", "selfattn_lora": False, "intermediate_lora": False, "output_lora": False,
        "leave_out": [], "r": 8, "alpha": 8, "dropout": 0.0, "attn_matrices": [], "composition_mode": "add",
        "init_weights": "lora", "init_weights_seed": None, "use_gating": False, "use_dora": False, "vera_d": None,
        "vera_b": None, "dtype": None}


def targets_config(targets: list[str], method: str) -> dict:
    odd = [t for t in targets if t not in ATTN and t not in FFN]
    if odd:
        raise Inexpressible(f"{method} on {', '.join(odd)}: AdapterHub's LoRAConfig cannot name that linear layer "
                            f"(it adapts {', '.join([*ATTN, *FFN])})",
                            fix=f"train it with targets among {', '.join([*ATTN, *FFN])} to export it")
    attn = [ATTN[t] for t in targets if t in ATTN]
    return {"selfattn_lora": bool(attn), "attn_matrices": attn, **{v: k in targets for k, v in FFN.items()}}


def number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


# --------------------------------------------------------------------------------- per module type
@dataclass(frozen=True)
class Method:
    """How one of our module types is written in AdapterHub's format."""

    child: str  # the module's child name in our state keys (``...<child>.<name>.<tail>``)
    hub_child: str  # AdapterHub's
    tails: dict[str, str]  # our key's tail -> AdapterHub's ("*": every tail)
    config: Callable  # our params -> AdapterHub's config dict (raises Inexpressible)
    params: Callable | None = None  # AdapterHub's config dict -> (our params, keys that differ)
    to_hub_shape: Callable | None = None  # our tensor -> AdapterHub's (and back: ``from_hub``'s ``shapes``)
    architecture: str = "bottleneck"  # AdapterHub's ``architecture`` this method reads (a bottleneck's is None)
    matches: Callable | None = None  # of the configs of that architecture, those that are this method (IA3Config)


@cache
def methods_table() -> dict[str, Method]:
    """Our params' ``type`` -> its ``Method``: every method package's ``adapterhub.py`` (``METHOD``: ST-A's
    bottleneck adapters, LoRA, (IA)^3); a type without an entry is refused by export."""
    return {type_: part.METHOD for type_, kind in registry.module_types().items()
            if (part := registry.part(kind, "adapterhub")) is not None}


FUSION = Method("fusions", "adapter_fusion_layer", {}, lambda p: FUSION_CONFIGS[p.type])
FUSION_CONFIGS = {  # AdapterHub's "dynamic" and "static" fusion configs
    "dynamic": {"dropout_prob": None, "key": True, "query": True, "query_before_ln": False, "regularization": True,
                "residual_before": False, "temperature": False, "value": True, "value_before_softmax": True,
                "value_initialized": True},
    "static": {"dropout_prob": None, "key": True, "query": True, "query_before_ln": False, "regularization": False,
               "residual_before": False, "temperature": False, "value": False, "value_before_softmax": True,
               "value_initialized": False},
}


def adapter_config(params) -> dict:
    """Our module params as AdapterHub's full config dict (raises Inexpressible)."""
    m = methods_table().get(getattr(params, "type", None))
    if m is None:
        raise Inexpressible(f"AdapterHub {VERSION} has no equivalent of a '{getattr(params, 'type', params)}' module "
                            "here", fix="export the runs of a method AdapterHub can load (docs/adapterhub.md)")
    return m.config(params)


def adapter_params(config: dict, file: str, field: str | None = None):
    """AdapterHub's config (the ``config`` entry of adapter_config.json, or the file itself) as our params; a
    config we do not compute exactly is refused with the keys that differ (CheckpointError naming ``file`` and
    the spec ``field`` that named it)."""
    cfg = config.get("config", config) if isinstance(config, dict) else None
    if not isinstance(cfg, dict):
        raise CheckpointError("adapter_config.json holds no config object", file=file, field=field)
    arch = cfg.get("architecture") or "bottleneck"
    # of the methods reading this architecture, one whose ``matches`` accepts it, else the plain one
    mine = [m for m in methods_table().values() if m.architecture == arch]
    if not mine:  # AdapterHub's architectures we read: bottleneck, and those of the packages' methods
        archs = dict.fromkeys(m.architecture for m in methods_table().values())
        raise CheckpointError(f"this adapter's architecture {arch!r} has no module here", file=file, field=field,
                              fix=f"use an adapter of architecture {' or '.join(archs)}")
    method = next((m for m in mine if m.matches and m.matches(cfg)), None) or next(m for m in mine if not m.matches)
    params, differ = method.params(cfg)
    if differ:
        what = params.type if arch == "bottleneck" else arch
        raise CheckpointError(
            f"this {what} adapter's config cannot be represented exactly here: " + "; ".join(differ), file=file,
            field=field, fix="fuse a bottleneck adapter in the Pfeiffer (seq_bn) or Houlsby (double_seq_bn) placement, or train "
                "that source as a stage-1 run (drop it from fusion.adapterhub)")
    return params


# --------------------------------------------------------------------------------------- state keys
@cache
def _by_child() -> dict[str, Method]:
    return {m.child: m for m in [*methods_table().values(), FUSION]}


@cache
def _key() -> re.Pattern:
    children = "|".join(map(re.escape, _by_child()))
    return re.compile(rf"^encoder\.(?P<path>.+?)\.(?P<child>{children})\.(?P<name>[^.]+)\.(?P<tail>.+)$")


def hub_key(key: str, prefix: str, names: dict[str, str] | None = None) -> str | None:
    """Our encoder-module key as AdapterHub's (None for a key of no module we export); ``names``: our module
    names -> AdapterHub's (a fusion's is its sources joined by commas)."""
    m = _key().match(key)
    method = _by_child().get(m["child"]) if m else None
    if method is None:
        return None
    tail = method.tails.get(m["tail"], method.tails.get("*", m["tail"]))
    name = (names or {}).get(m["name"], m["name"])
    return f"{prefix + '.' if prefix else ''}{m['path']}.{method.hub_child}.{name}.{tail}"


def to_hub(state: dict, prefix: str, names: dict[str, str] | None = None) -> dict:
    """Our state (one module's keys) in AdapterHub's keys and shapes."""
    out = {}
    for k, v in state.items():
        h = hub_key(k, prefix, names)
        if h is not None:
            shape = _by_child()[_key().match(k)["child"]].to_hub_shape
            out[h] = shape(v) if shape else v
    return out


def from_hub(state: dict, ours: dict, names: dict[str, str] | None = None) -> dict:
    """AdapterHub's tensors (keys with any model prefix, or none) for our keys ``ours`` ({key: shape}), reshaped
    to ours; keys it does not hold are left out (the caller names what is missing)."""
    want = {hub_key(k, "", names): k for k in ours}
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        hit = next((want[s] for s in (".".join(parts[i:]) for i in range(len(parts))) if s in want), None)
        if hit is not None:
            out[hit] = v.reshape(ours[hit]) if _by_child()[_key().match(hit)["child"]].to_hub_shape else v
    return out


# ------------------------------------------------------------------------------------------- heads
def head_state(state: dict, name: str) -> dict:
    """Our head ``heads.<name>.{dense|out}.*`` as AdapterHub's ``Sequential`` [Dropout, Linear, Tanh, Dropout, Linear]."""
    return {f"heads.{name}.{ {'dense': 1, 'out': 4}[k.split('.')[-2]] }.{k.split('.')[-1]}": v for k, v in state.items()}


def head_config(task, pooling: str) -> dict:
    """AdapterHub's head config for a task spec; a head that reads the masked mean has a type of its own, which
    ``mean_pooling_head.py`` registers (AdapterHub's heads read the first token)."""
    if task.type == "classification":
        cfg = {"activation_function": "tanh", "bias": True, "dropout_prob": None, "head_type": "classification",
               "label2id": {n: i for i, n in enumerate(task.label.names)}, "layers": 2,
               "num_labels": task.num_labels, "use_pooler": False}
    else:
        cfg = {"activation_function": "tanh", "dropout_prob": None, "head_type": "multiple_choice",
               "label2id": {f"LABEL_{i}": i for i in range(task.num_labels)}, "layers": 2,
               "num_choices": task.num_labels, "use_pooler": False}
    if pooling != "cls":
        cfg["head_type"] = f"afbench_mean_{cfg['head_type']}"
    return cfg


MEAN_POOLING_HEAD = Path(__file__).with_name("mean_pooling_head.py")


def meta(name: str, hidden: int, model_class: str, model_type: str, model_name: str) -> dict:
    """The keys around ``config`` in every config file AdapterHub writes."""
    return {"hidden_size": hidden, "model_class": model_class, "model_name": model_name, "model_type": model_type,
            "name": name, "version": VERSION}


# ------------------------------------------------------------------------------ published adapters
def read_config(folder: Path, field: str | None = None) -> dict:
    try:
        return json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"cannot read the adapter config ({type(e).__name__}: {str(e)[:160]})",
                              file=str(Path(folder) / CONFIG), field=field,
                              fix="point at the folder that save_adapter() wrote") from None


def fusable(pub: Published, where: str, field: str) -> Published:
    """A published adapter's config, refused at plan time where we cannot compute it exactly or it is not a
    Pfeiffer adapter (what AdapterFusion fuses)."""
    params = adapter_params(read_config(pub.folder, field), str(Path(pub.folder) / CONFIG), field)
    if params.type != "pfeiffer":
        raise BenchError(f"{pub.folder} holds a {params.type} adapter; AdapterFusion fuses Pfeiffer (seq_bn) adapters, "
                         "which sit after the feed-forward block only", file=where, field=field,
                         fix="fuse a Pfeiffer adapter for this task, or train it as a stage-1 run")
    return replace(pub, adapter_type=params.type)


def read_weights(folder: Path, field: str | None = None) -> tuple[Path, dict]:
    """(file, {name: tensor}) of an AdapterHub adapter folder's weights (pytorch_adapter.bin, else
    adapter.safetensors), read safely (weights_only); anything else is one CheckpointError naming the file (and
    the spec ``field`` that named the folder). The
    planner (``check_backbone``) and the run's load (``modeling/checkpoint.load_adapterhub``) both read through
    it, so a weights file the run could not load is refused at plan time, before any stage-1 run trains."""
    import torch

    folder = Path(folder)
    wfile = folder / WEIGHTS[0]
    if not wfile.exists() and (folder / WEIGHTS[1]).exists():
        wfile = folder / WEIGHTS[1]  # save_adapter(..., use_safetensors=True)
    try:
        if wfile.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(wfile))
        else:
            state = torch.load(wfile, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused, truncated or foreign file: one paragraph
        raise CheckpointError(f"cannot read the weights safely ({type(e).__name__}: {str(e)[:200]})", file=str(wfile),
                              field=field, fix="only plain tensor state dicts are accepted (weights_only=True)") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"the weights file holds a {type(state).__name__}, not a state dict of named tensors",
                              file=str(wfile), field=field, fix="point at the pytorch_adapter.bin that save_adapter() wrote "
                                                   "(torch.save of model.state_dict()-style {name: tensor})")
    return wfile, state


def _weights_shape(folder: Path, field: str) -> tuple[int | None, int | None]:
    """(hidden size, layers) the adapter's weights were saved for: the down projection's input, the layer indexes.
    An unreadable weights file is refused here (``read_weights``), with ``field`` the spec field naming it."""
    _, state = read_weights(folder, field)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    layers = {int(m.group(1)) for k in shapes if (m := re.search(r"\.layers?\.(\d+)\.", k))}
    hidden = next((s[1] for k, s in shapes.items() if "adapter_down" in k and k.endswith("weight") and len(s) == 2), None)
    return hidden, (max(layers) + 1 if layers else None)


def check_backbone(pub: Published, spec, where: str, field: str, allow_other_base: bool = False) -> str | None:
    """Refuse a published adapter that was not trained for backbone ``spec``: another family (model_type),
    hidden size or layer count, or another base model named in its adapter_config.json. The last one alone
    is allowed with ``allow_other_base`` (fusion.adapterhub_allow_other_base) and returned, for the plan and
    the report to state; None when the adapter names this backbone (or none)."""
    key = (pub.sha256, repr(spec))
    if key not in _CHECKED:
        folder = Path(pub.folder)
        config = read_config(folder, field)
        mtype, hidden, layers, names = backbone_shape(spec)
        w_hidden, w_layers = _weights_shape(folder, field)
        c_hidden = config.get("hidden_size") if isinstance(config.get("hidden_size"), int) else None
        base = config.get("model_name") or ""
        differ = []
        if mtype and config.get("model_type") and config["model_type"] != mtype:
            differ.append(f"model_type {config['model_type']!r} (the backbone is {mtype!r})")
        # the config's hidden_size, else the weights' own width: a config that understates its weights must
        # not let them reach the run (which would fail after its stage-1 runs, naming an inner tensor)
        if c_hidden and hidden and c_hidden != hidden:
            differ.append(f"hidden_size {c_hidden} (the backbone has {hidden})")
        elif w_hidden and hidden and w_hidden != hidden:
            differ.append(f"weights of hidden size {w_hidden} (the backbone has {hidden}"
                          + (f"; the adapter's config says {c_hidden})" if c_hidden else ")"))
        if w_layers and layers and w_layers != layers:
            differ.append(f"layers {w_layers} (the backbone has {layers})")
        other = f"model_name {base!r} (the backbone is {names[0]!r})" \
            if base and names and not any(_same_model(base, n) for n in names) else None
        if base and spec.source == "random_init":  # no checkpoint at all: an adapter naming one was trained on another
            other = f"model_name {base!r} (the backbone '{spec.name}' is randomly initialised, not that checkpoint)"
        _CHECKED[key] = (differ, other, names)
    differ, other, names = _CHECKED[key]
    if differ or (other and not allow_other_base):
        only_base = not differ
        raise BenchError(f"the published adapter {pub.ref!r} ({Path(pub.folder) / CONFIG}) was not trained for "
                         f"backbone '{spec.name}': " + "; ".join(differ + ([other] if other else [])),
                         file=where, field=field,
                         fix=f"fuse an adapter trained on {names[0] if names else spec.name}, or drop this source "
                             "from fusion.adapterhub to train it as a stage-1 run on this backbone"
                             + (f", or, to fuse it anyway (same family and shape), add {field.rsplit('.', 1)[-1]} to "
                                "fusion.adapterhub_allow_other_base" if only_base else ""))
    return other


def _same_model(base: str, name: str) -> bool:
    """Whether an adapter's model_name names the backbone known as ``name``: a folder by its resolved path (a
    folder's last part, e.g. "model", says nothing), a Hub id or package by its last part (google-bert/x == x)."""
    if Path(name).is_absolute() or Path(base).is_absolute():
        return Path(name).is_absolute() and Path(base).is_absolute() and Path(base).resolve() == Path(name).resolve()
    short = [str(n).rstrip("/").rsplit("/", 1)[-1].lower() for n in (base, name)]  # google-bert/x == x
    return short[0] == short[1]


# (adapter content, backbone) -> (shape differences, another base model named, backbone names), once per process
_CHECKED: dict[tuple[str, str], tuple[list[str], str | None, list[str]]] = {}
