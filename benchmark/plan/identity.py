"""What a run id is made of: exactly the settings that change a run's result.

In: the resolved method (kind, modules, training hyper-parameters, batching), the backbone's weights and
tokenizer, each task's rendering (templates, label mapping, splits, max length) and a fingerprint of its
data (content hash of a mirrored or local file; the Hub id otherwise), caps, seed, fused sources, the ids of
the runs it depends on, the selection protocol and the compute switches that change numerics (with a
[CLS] head only: ``last_layer`` has no effect under mean pooling; ``compile`` only when on). A ``local`` backbone is identified by a
content hash of its folder, not by its path. Spec fields added later (a LoRA block, a local path) are
left out of the dumps while unset, so the ids of existing runs do not move. Fused sources taken from
published adapters (``fusion.adapterhub``) enter by their content hash, only when there is one.

Out: names, descriptions, notes, paper metadata, file paths, key order. Editing prose never changes an
id; editing a learning rate always does. ``ID_SCHEME`` is stored with every result.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from benchmark.data.sources import digest
from benchmark.errors import SpecError
from benchmark.hashing import feed_file
from benchmark.spec.schema import BackboneSpec, Caps, ComputeSpec, MethodSpec, Selection, TaskSpec

ID_SCHEME = 2
PROSE = {"kind", "name", "description", "notes", "paper"}


def backbone_identity(backbone: BackboneSpec) -> dict:
    out = backbone.model_dump(mode="json", exclude=PROSE | {"paper_backbone", "path", "aliases"})
    if backbone.source == "local":  # a local checkpoint is its content, wherever the folder lies
        out["weights"] = folder_fingerprint(backbone.path)
    return out


_FOLDER_FINGERPRINTS: dict[tuple, str] = {}


def folder_fingerprint(path: str) -> str:
    """sha256 over every file of a checkpoint folder (relative names and contents), cached per process by
    (name, size, mtime) of its files; a folder that is not there is a SpecError naming it."""
    folder = Path(path)
    if not folder.is_dir():
        raise SpecError(f"the local backbone folder {path} does not exist", field="path",
                        fix="point 'path' (relative to the backbone's spec file) at a folder that save_pretrained() wrote")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    key = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _FOLDER_FINGERPRINTS:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(folder).as_posix()).encode() + b"\0")
            feed_file(h, p)
            h.update(b"\0")
        _FOLDER_FINGERPRINTS[key] = h.hexdigest()[:16]
    return _FOLDER_FINGERPRINTS[key]


def compute_identity(compute: ComputeSpec, backbone: BackboneSpec) -> dict:
    out = {"cpu_kernels": compute.cpu_kernels}
    if backbone.pooling == "cls":  # the first-token last layer exists only for a first-token head
        out["last_layer"] = compute.last_layer
    if compute.precision not in (None, "auto"):  # auto (today's behaviour) leaves the ids of earlier runs as they were
        out["precision"] = compute.precision
    if compute.compile:  # only when on: every eager run keeps its id
        out["compile"] = True
    return out


def run_identity(*, method: MethodSpec, backbone: BackboneSpec, tasks: dict[str, TaskSpec],
                 data: dict[str, dict[str, str]], seed: int, sources: list[str], caps: Caps,
                 task_caps: dict[str, Caps], deps: list[str], selection: Selection, compute: ComputeSpec,
                 published: dict[str, str] | None = None) -> dict:
    out = {
        "scheme": ID_SCHEME,
        "method": method.model_dump(mode="json", exclude=PROSE),
        "backbone": backbone_identity(backbone),
        # where a task's rows come from is identified by their fingerprint (``data``), never by a path
        "tasks": {t: s.model_dump(mode="json", exclude=PROSE | {"dataset", "data_files"}) for t, s in tasks.items()},
        "data": {t: data.get(t, {}) for t in tasks},
        "seed": seed,
        "sources": list(sources),
        "caps": caps.model_dump(mode="json"),
        "task_caps": {t: c.model_dump(mode="json") for t, c in sorted(task_caps.items())},
        "deps": list(deps),
        "selection": {"protocol": "dev"} if selection.protocol == "dev" else selection.model_dump(mode="json"),
        "compute": compute_identity(compute, backbone),
    }
    if published:  # fused sources taken from published adapters: their content hash (only when any, so the
        out["published"] = dict(sorted(published.items()))  # ids of every run without one stay as they were)
    return out


def run_id(who: str, label: str, backbone: str, seed: int, identity: dict) -> str:
    return f"{who}__{label}__{backbone}__s{seed}__{digest(identity)[:8]}"
