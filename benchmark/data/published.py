"""Published AdapterHub adapters as fusion sources (``fusion.adapterhub: {TASK: folder or Hub id[@revision]}``).

``resolve`` turns one reference into a local folder, the sha256 of its content (what the fusion run's id
holds, so a different adapter is a different run) and, for a Hub id, the pinned commit. A folder is read
as it is (relative to the experiment spec, else to the working directory); a Hub id is downloaded through
``huggingface_hub`` when the Hub is reachable, read from its cache under ``HF_HUB_OFFLINE=1``, and fails at
once when the Hub is unreachable (the probe of ``hub.py``), never after minutes of retries.

Reading the adapter's config (what it computes, which backbone it was trained for) is AdapterHub's format,
``benchmark/adapterhub``: the planner checks each resolved folder there.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from benchmark.data import hub
from benchmark.errors import BenchError
from benchmark.hashing import feed_file

CONFIG = "adapter_config.json"
WEIGHTS = ("pytorch_adapter.bin", "adapter.safetensors")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def _shape(config: dict) -> tuple[str | None, int | None, int | None]:
    """(model_type, hidden size, layers) of a transformers config, whichever names the family uses."""
    pick = lambda *ks: next((config[k] for k in ks if isinstance(config.get(k), int)), None)  # noqa: E731
    return config.get("model_type"), pick("hidden_size", "dim", "d_model"), pick("num_hidden_layers", "n_layers")


def backbone_shape(spec) -> tuple[str | None, int | None, int | None, list[str]]:
    """(model_type, hidden size, layers, names) of a backbone spec without loading it: its own config
    (random_init) or its config.json (a local folder, a package's folder, the Hugging Face cache); None
    where it is not at hand (the run's own load then checks the weights)."""
    names = [n for n in (spec.model_id, spec.package, *spec.aliases) if n]
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
    if folder is not None:  # the folder itself: what ``adapters`` writes as model_name for a checkpoint loaded from it
        names.append(str(folder))
    return (*_shape(config), names)


@dataclass(frozen=True)
class Published:
    ref: str  # as the spec wrote it
    folder: str  # local folder with adapter_config.json and the weights
    sha256: str  # content of the config and the weights file
    revision: str | None = None  # the Hub commit a Hub id was pinned to
    adapter_type: str = "pfeiffer"  # our AdapterParams.type of it (adapterhub.fusable reads it)
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


def _checked(ref: str, folder: Path, where: str, field: str, revision: str | None = None) -> Published:
    if not (folder / CONFIG).is_file() or not any((folder / w).is_file() for w in WEIGHTS):
        raise BenchError(f"{folder} is not an AdapterHub adapter folder (it needs {CONFIG} and one of "
                         f"{', '.join(WEIGHTS)})", file=where, field=field,
                         fix="point at a folder written by save_adapter() or afbench export (adapters/<name>)")
    return Published(ref, str(folder), content_hash(folder), revision)


def resolve(ref: str, spec_file: str | None, task: str) -> Published:
    """One ``fusion.adapterhub`` entry -> a checked local folder with its content hash."""
    field = f"fusion.adapterhub.{task}"
    where = spec_file or "the experiment spec"
    candidates = [Path(spec_file).parent / ref] if spec_file else []
    candidates.append(Path(ref))
    for c in candidates:
        if c.is_dir():
            return _checked(ref, c.resolve(), where, field)
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
    return _checked(ref, path, where, field, revision=path.name)  # snapshots/<commit>: the pinned revision
