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


def adapter_params(config: dict, file: str) -> AdapterParams:
    """AdapterHub's config (the ``config`` entry of adapter_config.json, or the file itself) as AdapterParams."""
    cfg = config.get("config", config) if isinstance(config, dict) else None
    if not isinstance(cfg, dict):
        raise CheckpointError("adapter_config.json holds no config object", file=file)
    kind = "houlsby" if cfg.get("mh_adapter") else "pfeiffer"
    differ = [f"{k}: {cfg[k]!r} (needs {v!r})" for k, v in _NEEDS[kind].items() if k in cfg and cfg[k] != v]
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


@dataclass(frozen=True)
class Published:
    ref: str  # as the spec wrote it
    folder: str  # local folder with adapter_config.json and the weights
    sha256: str  # content of the config and the weights file
    revision: str | None = None  # the Hub commit a Hub id was pinned to
    adapter_type: str = "pfeiffer"  # our AdapterParams.type of it

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
