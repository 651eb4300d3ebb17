"""``afbench migrate EXPERIMENT``: rename result folders made under an older run-id scheme, and rewrite
predictions files of an older format (``upgrade_predictions``).

Scheme 1 hashed the whole task, method and backbone specs, prose included, so editing a description
changed the ids. Scheme 2 (``benchmark/plan/identity.py``) hashes only what changes a result. A result's
new id is computed from what it stored — its resolved config, and what it recorded of batching,
selection and compute (scheme-1 results predate grouped batching, held-out selection and the
``last_layer`` record: shuffled, dev and the full layer) — plus the fingerprints of its data in the
current data folder. So the renaming never trusts the current specs: a result whose config no longer
matches the plan keeps being reported as stale under its new id.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmark import predictions
from benchmark.data.sources import task_fingerprints
from benchmark.errors import BenchError
from benchmark.paths import read_regular, swap_in, under
from benchmark.plan.identity import ID_SCHEME, run_id, run_identity
from benchmark.plan.run import Plan
from benchmark.records import (
    MAX_RECORD_BYTES,
    PLAN,
    RESULT,
    SCHEMA,
    RecordError,
    RunRecord,
    load_plan,
    parse_run,
    write_plan,
    write_run,
)
from benchmark.spec.registry import NAME, Registry
from benchmark.spec.schema import BackboneSpec, Caps, ComputeSpec, MethodSpec, Selection, TaskSpec


def new_id(result: RunRecord, deps: list[str], data_root) -> str:
    """The scheme-2 id of a stored result (``deps``: its dependencies' scheme-2 ids)."""
    cfg = result.config
    method = MethodSpec.model_validate(cfg["method"])
    if method.train.batching is None:  # a schema-1 result without it reads as "shuffled" (records.upgrade)
        method.train = method.train.model_copy(update={"batching": result.batching})
    backbone = BackboneSpec.model_validate(cfg["backbone"])
    tasks = {t: TaskSpec.model_validate(d) for t, d in cfg["tasks"].items()}
    compute = ComputeSpec.model_validate(result.compute_config)
    selection = Selection.model_validate(cfg.get("selection") or {"protocol": result.selection})
    identity = run_identity(
        method=method, backbone=backbone, tasks=tasks, data={t: task_fingerprints(s, data_root) for t, s in tasks.items()},
        seed=cfg["seed"], sources=cfg["sources"], caps=Caps.model_validate(cfg["caps"]),
        task_caps={t: Caps.model_validate(c) for t, c in cfg.get("task_caps", {}).items()}, deps=deps,
        selection=selection, compute=compute)
    return run_id(result.task or "multi", result.label, result.backbone, result.seed, identity)


def _folders(exp_dir: Path) -> list[Path]:
    """The experiment's run folders (not its dot-folders: locks, Slurm, tracking), sorted."""
    return sorted(p for p in exp_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if exp_dir.exists() else []


def _raw(folder: Path) -> RunRecord | None:
    """The folder's result as stored (its run id may differ from the folder's name: a rename interrupted);
    None for one this version cannot use, a record of a newer schema included (never rewritten here)."""
    try:
        r = parse_run(json.loads(read_regular(folder / RESULT, MAX_RECORD_BYTES)), file=folder / RESULT)
    except (OSError, ValueError, RecordError, RecursionError):  # RecursionError: JSON nested too deeply
        return None
    return r if r.schema_ <= SCHEMA else None


def _check_names(folder: Path, r: RunRecord) -> None:
    """The names a new id is made of come from the record, not a spec: each must be a plain name (as a spec's,
    ``spec/registry.py``), so a crafted ``"task": "../../x"`` can never choose where a folder is renamed to."""
    for key in ("task", "label", "backbone"):
        value = getattr(r, key)
        if value is not None and not NAME.fullmatch(value):
            raise BenchError(f"its '{key}' {value!r} is not a plain name (letters, digits, '_', '-', '.'), so no "
                             "run id can be made from it; nothing was renamed", file=str(folder / RESULT),
                             field=key, fix="restore the file from git (git checkout -- <file>), or move its run "
                                            "folder out of the results, then rerun afbench migrate")


def migrate_experiment(plan: Plan, reg: Registry, results_dir: Path, data_root, *, dry_run: bool = False,
                       log=print) -> dict[str, str]:
    """Rename every scheme-1 result folder of the experiment; returns {old id: new id}.

    Safe to rerun after an interruption: the folder is renamed first and its result.json rewritten
    second, and folders already renamed (by ``migrated_from``, or a scheme-1 result whose folder no
    longer carries its id) give their dependents' hashes the new ids.
    """
    exp_dir = under(results_dir, plan.experiment.name)
    stored, mapping, interrupted = {}, {}, []  # old id -> result to migrate; old id -> new id
    for d in _folders(exp_dir):
        r = _raw(d)
        if r is None:
            continue
        if r.id_scheme >= ID_SCHEME:
            if r.migrated_from:
                mapping[r.migrated_from] = d.name
        elif r.run_id == d.name:
            _check_names(d, r)
            stored[d.name] = r
        else:  # renamed, but interrupted before its result.json was rewritten
            mapping[r.run_id] = d.name
            interrupted.append((d.name, r))
    for name, r in interrupted if not dry_run else ():
        _rewrite(exp_dir / name, r, name, r.run_id, mapping)
    done_before = set(mapping)
    while any(rid not in mapping for rid in stored):  # dependencies first: an id hashes its deps' new ids
        ready = [rid for rid, r in stored.items() if rid not in mapping and all(
            d in mapping or d not in stored for d in r.deps)]
        if not ready:
            raise BenchError("results depend on each other in a cycle", file=str(exp_dir))
        for rid in ready:
            r = stored[rid]
            mapping[rid] = new_id(r, [mapping.get(d, d) for d in r.deps], data_root)
    planned = {r.id for r in plan.runs}
    for old, new in mapping.items():
        if old in done_before:
            continue
        state = "in the current plan" if new in planned else "not in the current plan (stale)"
        log(f"  {old} -> {new} ({state})")
        if dry_run or old == new:
            continue
        target = under(exp_dir, new)  # checked to stay inside the experiment's folder, as every writer's path
        if target.exists() or target.is_symlink():
            raise BenchError(f"cannot rename {old}: {new} exists already", file=str(target),
                             fix="remove one of the two folders, then rerun afbench migrate")
        swap_in(under(exp_dir, old), target)
        _rewrite(target, stored[old], new, old, mapping)
    renamed = interrupted or any(old != new for old, new in mapping.items() if old not in done_before)
    # plan.json is rewritten when this call renamed something or it lists other ids (a crash before it was
    # written); otherwise the folder, an older plan.json included, is left as it was
    if mapping and not dry_run and (renamed or not _plan_lists(exp_dir / PLAN, plan)):
        write_plan(exp_dir / PLAN, plan.record(), root=exp_dir)
    found = sum(new in planned for new in mapping.values())
    log(f"{plan.experiment.name}: {found} of {len(plan.runs)} planned runs found among {len(mapping)} older results")
    return {old: new for old, new in mapping.items() if old not in done_before}


def _plan_lists(path: Path, plan: Plan) -> bool:
    """Whether the plan.json at ``path`` lists exactly the plan's run ids."""
    try:
        return {r.id for r in load_plan(path).runs} == {r.id for r in plan.runs}
    except (RecordError, OSError):  # missing or unreadable
        return False


def _rewrite(folder: Path, result: RunRecord, new: str, old: str, mapping: dict[str, str]) -> None:
    """Rewrite the renamed folder's result.json (the one command that rewrites a result: as the current
    schema, the old keys kept)."""
    write_run(folder / RESULT, result.model_copy(update={
        "run_id": new, "deps": [mapping.get(d, d) for d in result.deps], "id_scheme": ID_SCHEME, "migrated_from": old}))


def upgrade_predictions(exp_dir: Path, *, dry_run: bool = False, log=print) -> list[str]:
    """Rewrite every predictions file of the experiment written before 2026-12-08 (with ``pred``, and ``gold`` in
    place of ``correct`` before 2026-12-07: ``predictions.upgrade``) with its record's hash; returns the run ids. A file that fails its
    record's check is left as it is (``afbench predict --force`` remakes it)."""
    done = []
    for d in _folders(exp_dir):
        r = _raw(d)
        if r is None or r.predictions is None or not predictions.is_legacy(d):
            continue
        try:
            predictions.read(d, r.predictions)  # checked in a dry run too: a file that fails is never counted
            if not dry_run:
                predictions.upgrade(d, r.predictions, root=exp_dir)
        except predictions.PredictionsError as e:
            log(f"  {d.name}: predictions left as they are ({e.message})")
            continue
        done.append(d.name)
    return done
