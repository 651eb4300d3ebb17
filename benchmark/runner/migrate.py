"""``afbench migrate EXPERIMENT``: rename result folders made under an older run-id scheme.

Scheme 1 hashed the whole task, method and backbone specs, prose included, so editing a description
changed the ids. Scheme 2 (``benchmark/plan/identity.py``) hashes only what changes a result. A result's
new id is computed from what it stored — its resolved config, and what it recorded of batching,
selection and compute (scheme-1 results predate grouped batching, held-out selection and the
``last_layer`` record: shuffled, dev and the full layer) — plus the fingerprints of its data in the
current data folder. So the renaming never trusts the current specs: a result whose config no longer
matches the plan keeps being reported as stale under its new id.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.data.sources import locate
from benchmark.errors import BenchError
from benchmark.plan.identity import ID_SCHEME, run_id, run_identity
from benchmark.plan.run import Plan
from benchmark.runner.execute import plan_record
from benchmark.runner.results import RESULT, read_result, write_json_atomic
from benchmark.spec.registry import Registry
from benchmark.spec.schema import BackboneSpec, Caps, ComputeSpec, MethodSpec, Selection, TaskSpec


def _fingerprints(task: TaskSpec, data_root) -> dict[str, str]:
    out = {}
    for split in dict.fromkeys((task.splits.train, task.splits.eval)):
        try:
            out[split] = locate(task, split, data_root).fingerprint()
        except (BenchError, OSError):
            out[split] = "unavailable"
    return out


def new_id(result: dict, deps: list[str], data_root) -> str:
    """The scheme-2 id of a stored result (``deps``: its dependencies' scheme-2 ids)."""
    cfg = result["config"]
    method = MethodSpec.model_validate(cfg["method"])
    if method.train.batching is None:
        method.train = method.train.model_copy(update={"batching": result.get("batching", "shuffled")})
    backbone = BackboneSpec.model_validate(cfg["backbone"])
    tasks = {t: TaskSpec.model_validate(d) for t, d in cfg["tasks"].items()}
    compute = ComputeSpec.model_validate(cfg.get("compute") or {
        "cpu_kernels": result.get("cpu_kernels", "stock"), "last_layer": result.get("last_layer", "full")})
    selection = Selection.model_validate(cfg.get("selection") or {"protocol": result.get("selection", "dev")})
    identity = run_identity(
        method=method, backbone=backbone, tasks=tasks, data={t: _fingerprints(s, data_root) for t, s in tasks.items()},
        seed=cfg["seed"], sources=cfg["sources"], caps=Caps.model_validate(cfg["caps"]),
        task_caps={t: Caps.model_validate(c) for t, c in cfg.get("task_caps", {}).items()}, deps=deps,
        selection=selection, compute=compute)
    return run_id(result["task"] or "multi", result["label"], result["backbone"], result["seed"], identity)


def migrate_experiment(plan: Plan, reg: Registry, results_dir: Path, data_root, *, dry_run: bool = False,
                       log=print) -> dict[str, str]:
    """Rename every scheme-1 result folder of the experiment; returns {old id: new id}."""
    exp_dir = results_dir / plan.experiment.name
    stored = {}
    for d in sorted(p for p in exp_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if exp_dir.exists() else []:
        r = read_result(d)
        if r is not None and r.get("id_scheme", 1) < ID_SCHEME and r.get("run_id") == d.name:
            stored[d.name] = r
    mapping: dict[str, str] = {}
    while len(mapping) < len(stored):  # dependencies first: a result's id hashes its deps' new ids
        ready = [rid for rid, r in stored.items() if rid not in mapping and all(
            d in mapping or d not in stored for d in r.get("deps", []))]
        if not ready:
            raise BenchError("results depend on each other in a cycle", file=str(exp_dir))
        for rid in ready:
            r = stored[rid]
            mapping[rid] = new_id(r, [mapping.get(d, d) for d in r.get("deps", [])], data_root)
    planned = {r.id for r in plan.runs}
    for old, new in mapping.items():
        state = "in the current plan" if new in planned else "not in the current plan (stale)"
        log(f"  {old} -> {new} ({state})")
        if dry_run or old == new:
            continue
        if (exp_dir / new).exists():
            raise BenchError(f"cannot rename {old}: {new} exists already", file=str(exp_dir / new),
                             fix="remove one of the two folders")
        r = stored[old]
        r.update(run_id=new, deps=[mapping.get(d, d) for d in r.get("deps", [])], id_scheme=ID_SCHEME,
                 migrated_from=old)
        write_json_atomic(exp_dir / old / RESULT, r)
        (exp_dir / old).rename(exp_dir / new)
    if mapping and not dry_run:
        write_json_atomic(exp_dir / "plan.json", plan_record(plan))
    found = sum(new in planned for new in mapping.values())
    log(f"{plan.experiment.name}: {found} of {len(plan.runs)} planned runs found among {len(mapping)} older results")
    return mapping


__all__ = ["migrate_experiment", "new_id"]
