"""What a run id is made of: exactly the settings that change a run's result.

In: the resolved method (kind, modules, training hyper-parameters, batching), the backbone's weights and
tokenizer, each task's rendering (templates, label mapping, splits, max length) and a fingerprint of its
data (content hash of a mirrored or local file; the Hub id otherwise), caps, seed, fused sources, the ids of
the runs it depends on, the selection protocol and the compute switches that change numerics (with a
[CLS] head only: ``last_layer`` has no effect under mean pooling), and for fused sources taken from
published adapters (``fusion.adapterhub``) their content hash, entered only when there is one.

Out: names, descriptions, notes, paper metadata, file paths, key order. Editing prose never changes an
id; editing a learning rate always does. ``ID_SCHEME`` is stored with every result.
"""

from __future__ import annotations

from benchmark.data.sources import digest
from benchmark.spec.schema import BackboneSpec, Caps, ComputeSpec, MethodSpec, Selection, TaskSpec

ID_SCHEME = 2
PROSE = {"kind", "name", "description", "notes", "paper"}


def task_identity(task: TaskSpec) -> dict:
    # where the rows come from is identified by their fingerprint (``data``), never by a path
    return task.model_dump(mode="json", exclude=PROSE | {"dataset", "data_files"})


def backbone_identity(backbone: BackboneSpec) -> dict:
    return backbone.model_dump(mode="json", exclude=PROSE | {"paper_backbone"})


def method_identity(method: MethodSpec) -> dict:
    return method.model_dump(mode="json", exclude=PROSE)


def selection_identity(selection: Selection) -> dict:
    return {"protocol": "dev"} if selection.protocol == "dev" else selection.model_dump(mode="json")


def compute_identity(compute: ComputeSpec, backbone: BackboneSpec) -> dict:
    out = {"cpu_kernels": compute.cpu_kernels}
    if backbone.pooling == "cls":  # the first-token last layer exists only for a first-token head
        out["last_layer"] = compute.last_layer
    return out


def run_identity(*, method: MethodSpec, backbone: BackboneSpec, tasks: dict[str, TaskSpec],
                 data: dict[str, dict[str, str]], seed: int, sources: list[str], caps: Caps,
                 task_caps: dict[str, Caps], deps: list[str], selection: Selection, compute: ComputeSpec,
                 published: dict[str, str] | None = None) -> dict:
    out = {
        "scheme": ID_SCHEME,
        "method": method_identity(method),
        "backbone": backbone_identity(backbone),
        "tasks": {t: task_identity(s) for t, s in tasks.items()},
        "data": {t: data.get(t, {}) for t in tasks},
        "seed": seed,
        "sources": list(sources),
        "caps": caps.model_dump(mode="json"),
        "task_caps": {t: c.model_dump(mode="json") for t, c in sorted(task_caps.items())},
        "deps": list(deps),
        "selection": selection_identity(selection),
        "compute": compute_identity(compute, backbone),
    }
    if published:  # fused sources taken from published adapters: their content hash (only when any, so the
        out["published"] = dict(sorted(published.items()))  # ids of every run without one stay as they were)
    return out


def run_id(who: str, label: str, backbone: str, seed: int, identity: dict) -> str:
    return f"{who}__{label}__{backbone}__s{seed}__{digest(identity)[:8]}"
