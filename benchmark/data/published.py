"""Published AdapterHub adapters as fusion sources (``fusion.adapterhub: {TASK: folder or Hub id[@revision]}``).

``resolve`` turns one reference into a local folder, the sha256 of its content (what the fusion run's id
holds, so a different adapter is a different run) and, for a Hub id, the pinned commit. A folder is read
as it is (relative to the experiment spec, else to the working directory); a Hub id is downloaded through
``huggingface_hub`` when the Hub is reachable, read from its cache under ``HF_HUB_OFFLINE=1``, and fails at
once when the Hub is unreachable (the probe of ``hub.py``), never after minutes of retries.

``adapter_params`` reads an ``adapter_config.json`` into our AdapterParams and refuses, with the keys
that differ, any bottleneck config this package does not compute exactly (Pfeiffer / ``seq_bn`` and
Houlsby / ``double_seq_bn`` with any reduction factor and relu / swish / gelu / tanh).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from benchmark.data import hub
from benchmark.errors import BenchError, CheckpointError
from benchmark.hashing import feed_file
from benchmark.spec.schema import AdapterParams

CONFIG = "adapter_config.json"
WEIGHTS = ("pytorch_adapter.bin", "adapter.safetensors")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")

# Keys of AdapterHub's bottleneck config that change what the adapter computes, with the value each of
# our two placements needs. Keys only about initialisation or training (init_weights, dropout,
# stochastic_depth, phm_* while phm_layer is off) are not compared.
_COMMON = {"architecture": "bottleneck", "output_adapter": True, "original_ln_after": True, "residual_before_ln": True,
           "adapter_residual_before_ln": False, "ln_before": False, "ln_after": False, "is_parallel": False,
           "scaling": 1.0, "use_gating": False, "phm_layer": False, "inv_adapter": None, "cross_adapter": False,
           "leave_out": []}
_NEEDS = {"pfeiffer": {**_COMMON, "mh_adapter": False, "original_ln_before": True},
          "houlsby": {**_COMMON, "mh_adapter": True, "original_ln_before": False}}
_NON_LINEARITY = {"relu": "relu", "swish": "swish", "silu": "swish", "gelu": "gelu", "tanh": "tanh"}


# Every other key AdapterHub's bottleneck config (BnConfig) writes: initialisation, training, PHM while off.
_KNOWN = {*_COMMON, "mh_adapter", "original_ln_before", "reduction_factor", "non_linearity", "init_weights",
          "init_weights_seed", "dropout", "stochastic_depth", "inv_adapter_reduction_factor", "hypercomplex_nonlinearity",
          "factorized_phm_W", "factorized_phm_rule", "learn_phm", "phm_bias", "phm_c_init", "phm_dim", "phm_init_range",
          "phm_rank", "shared_W_phm", "shared_phm_rule"}


def adapter_params(config: dict, file: str) -> AdapterParams:
    """AdapterHub's config (the ``config`` entry of adapter_config.json, or the file itself) as AdapterParams."""
    cfg = config.get("config", config) if isinstance(config, dict) else None
    if not isinstance(cfg, dict):
        raise CheckpointError("adapter_config.json holds no config object", file=file)
    kind = "houlsby" if cfg.get("mh_adapter") else "pfeiffer"
    differ = [f"{k}: {cfg[k]!r} (needs {v!r})" for k, v in _NEEDS[kind].items() if k in cfg and cfg[k] != v]
    differ += [f"{k}: {cfg[k]!r} (a key AdapterHub's bottleneck config does not have)" for k in sorted(set(cfg) - _KNOWN)]
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
    if differ:
        raise CheckpointError(
            f"this {kind} adapter's config cannot be represented exactly here: " + "; ".join(differ), file=file,
            fix="fuse a bottleneck adapter in the Pfeiffer (seq_bn) or Houlsby (double_seq_bn) placement, or train "
                "that source as a stage-1 run (drop it from fusion.adapterhub)")
    return AdapterParams(type=kind, reduction_factor=int(rf), non_linearity=_NON_LINEARITY[nl])


def _shape(config: dict) -> tuple[str | None, int | None, int | None]:
    """(model_type, hidden size, layers) of a transformers config, whichever names the family uses."""
    pick = lambda *ks: next((config[k] for k in ks if isinstance(config.get(k), int)), None)  # noqa: E731
    return config.get("model_type"), pick("hidden_size", "dim", "d_model"), pick("num_hidden_layers", "n_layers")


def backbone_shape(spec) -> tuple[str | None, int | None, int | None, list[str]]:
    """(model_type, hidden size, layers, names) of a backbone spec without loading it: its own config
    (random_init) or its config.json (a local folder, a package's folder, the Hugging Face cache); None
    where it is not at hand (the run's own load then checks the weights)."""
    names = [n for n in (spec.model_id, spec.package) if n]
    if spec.source == "random_init":
        return (spec.model_type, *_shape(spec.config)[1:], names)
    folder = None
    try:
        if spec.source == "local":
            folder = Path(spec.path)
        elif spec.source == "python_package":
            import importlib
            folder = Path(importlib.import_module(spec.package).get_model_path())
        elif spec.source == "hub":
            from huggingface_hub import try_to_load_from_cache
            hit = try_to_load_from_cache(spec.model_id, "config.json")
            folder = Path(hit).parent if isinstance(hit, str) else None
        config = json.loads((folder / "config.json").read_text()) if folder else {}
    except (ImportError, OSError, ValueError, AttributeError):
        config = {}
    if isinstance(config.get("_name_or_path"), str) and config["_name_or_path"]:
        names.append(config["_name_or_path"])
    return (*_shape(config), names)


def _weights_shape(folder: Path) -> tuple[int | None, int | None]:
    """(hidden size, layers) the adapter's weights were saved for: the down projection's input, the layer indexes."""
    import torch

    try:
        if (folder / WEIGHTS[0]).is_file():
            state = torch.load(folder / WEIGHTS[0], map_location="cpu", weights_only=True)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
        else:
            from safetensors import safe_open
            with safe_open(str(folder / WEIGHTS[1]), framework="pt") as fh:
                shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception:  # noqa: BLE001 - an unreadable file is the run's own load error, with its paragraph
        return None, None
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
        meta = json.loads((folder / CONFIG).read_text())
        mtype, hidden, layers, names = backbone_shape(spec)
        w_hidden, w_layers = _weights_shape(folder)
        a_hidden = meta.get("hidden_size") if isinstance(meta.get("hidden_size"), int) else w_hidden
        base = meta.get("model_name") or ""
        short = lambda n: str(n).rstrip("/").rsplit("/", 1)[-1].lower()  # noqa: E731 - google-bert/x == x
        differ = []
        if mtype and meta.get("model_type") and meta["model_type"] != mtype:
            differ.append(f"model_type {meta['model_type']!r} (the backbone is {mtype!r})")
        for what, a, b in (("hidden_size", a_hidden, hidden), ("layers", w_layers, layers)):
            if a and b and a != b:
                differ.append(f"{what} {a} (the backbone has {b})")
        other = f"model_name {base!r} (the backbone is {names[0]!r})" \
            if base and names and short(base) not in {short(n) for n in names} else None
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


# (adapter content, backbone) -> (shape differences, another base model named, backbone names), once per process
_CHECKED: dict[tuple[str, str], tuple[list[str], str | None, list[str]]] = {}


@dataclass(frozen=True)
class Published:
    ref: str  # as the spec wrote it
    folder: str  # local folder with adapter_config.json and the weights
    sha256: str  # content of the config and the weights file
    revision: str | None = None  # the Hub commit a Hub id was pinned to
    adapter_type: str = "pfeiffer"  # our AdapterParams.type of it
    other_base: str | None = None  # the other base model it names, fused anyway (fusion.adapterhub_allow_other_base)

    def identity(self) -> str:
        return f"sha256:{self.sha256}"


def content_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (CONFIG, *WEIGHTS):
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0")
            feed_file(h, p)
    return h.hexdigest()


def _check_folder(folder: Path, where: str, field: str) -> Published:
    if not (folder / CONFIG).is_file() or not any((folder / w).is_file() for w in WEIGHTS):
        raise BenchError(f"{folder} is not an AdapterHub adapter folder (it needs {CONFIG} and one of "
                         f"{', '.join(WEIGHTS)})", file=where, field=field,
                         fix="point at a folder written by save_adapter() or afbench export (adapters/<name>)")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {CONFIG} ({type(e).__name__}: {str(e)[:160]})", file=str(folder)) from None
    try:  # refuse what we cannot compute exactly, at plan time
        params = adapter_params(config, str(folder / CONFIG))
    except CheckpointError as e:
        raise CheckpointError(e.message, file=e.file, field=field, fix=e.fix) from None
    if params.type != "pfeiffer":
        raise BenchError(f"{folder} holds a {params.type} adapter; AdapterFusion fuses Pfeiffer (seq_bn) adapters, "
                         "which sit after the feed-forward block only", file=where, field=field,
                         fix="fuse a Pfeiffer adapter for this task, or train it as a stage-1 run")
    return Published(ref="", folder=str(folder), sha256=content_hash(folder), adapter_type=params.type)


def resolve(ref: str, spec_file: str | None, task: str) -> Published:
    """One ``fusion.adapterhub`` entry -> a checked local folder with its content hash."""
    field = f"fusion.adapterhub.{task}"
    where = spec_file or "the experiment spec"
    candidates = [Path(spec_file).parent / ref] if spec_file else []
    candidates.append(Path(ref))
    for c in candidates:
        if c.is_dir():
            p = _check_folder(c.resolve(), where, field)
            return Published(ref, p.folder, p.sha256)
    if not HUB_ID.match(ref):
        raise BenchError(f"{ref!r} is neither a folder nor a Hub id (owner/name[@revision])", file=where, field=field,
                         fix="give the folder of an AdapterHub adapter (relative to the spec) or a Hub id, e.g. "
                             "AdapterHub/bert-base-uncased-pf-rte")
    repo, _, revision = ref.partition("@")
    down = hub.unreachable_reason()
    if down:
        raise BenchError(f"cannot resolve the published adapter {ref!r}: {down}", file=where, field=field,
                         fix="restore the network, set HF_HUB_OFFLINE=1 to use the Hugging Face cache, or download "
                             "the adapter once and give its folder instead of the Hub id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo, revision=revision or None, allow_patterns=[CONFIG, *WEIGHTS],
                                      local_files_only=hub.offline_mode()))
    except LocalEntryNotFoundError:
        raise BenchError(f"the published adapter {ref!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                         file=where, field=field,
                         fix="unset HF_HUB_OFFLINE on a machine with the network to download it once, or give "
                             "the adapter's folder instead of the Hub id") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise BenchError(f"cannot download the published adapter {ref!r}: {type(e).__name__}: {str(e)[:200]}",
                         file=where, field=field, fix="check the Hub id and the revision") from None
    p = _check_folder(path, where, field)
    return Published(ref, p.folder, p.sha256, revision=path.name)  # snapshots/<commit>: the pinned revision
