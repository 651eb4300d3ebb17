"""Find spec files by themselves: every ``*.yaml`` under ``specs/`` (and any ``--specs`` folder).

The kind of a file comes from its folder (``tasks/``, ``methods/``, ``backbones/``, ``experiments/``)
or from a ``kind:`` key. Files whose name starts with ``_`` are shared defaults for ``include`` and
are not registered. Adding a task is dropping one YAML file in: no code change, no registry edit.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.errors import SpecError
from benchmark.spec import templates
from benchmark.spec.loader import (
    default_spec_dir,
    folder_kind,
    infer_kind,
    load_with_includes,
    validate_model,
)
from benchmark.spec.schema import (
    SPEC_MODELS,
    BackboneSpec,
    ExperimentSpec,
    MethodRef,
    MethodSpec,
    TaskSpec,
    TrainParams,
    searchable,
)


@dataclass(frozen=True)
class Skipped:
    """A spec file that did not load (``load_registry(strict=False)``): the kind its folder says (None
    outside the kind folders), its name (the file's stem, which a valid spec's name equals) and why."""

    kind: str | None
    name: str
    file: Path
    error: SpecError

    def warning(self) -> str:
        why = (f"at {self.error.field}: " if self.error.field else "") + self.error.message.rstrip(".")
        return (f"warning: skipped the broken spec {self.file} ({why}); only what uses "
                f"it is blocked, afbench validate {self.file} says more")

    def is_(self, kind: str, name: str) -> bool:
        """Whether this is the file of the ``kind`` spec ``name`` (by name alone where its folder says no kind)."""
        return self.name == name and self.kind in (kind, None)


@dataclass
class Registry:
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    backbones: dict[str, BackboneSpec] = field(default_factory=dict)
    experiments: dict[str, ExperimentSpec] = field(default_factory=dict)
    files: dict[tuple[str, str], Path] = field(default_factory=dict)  # (kind, name) -> file
    # lenient loading (``load_registry(strict=False)``): (kind or None, name) -> why that spec is unusable
    broken: dict[tuple[str | None, str], SpecError] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)  # the broken files themselves, in the order found

    def table(self, kind: str) -> dict:
        return getattr(self, f"{kind}s")

    def file_of(self, kind: str, name: str) -> str:
        return str(self.files.get((kind, name), f"<{kind} {name}>"))

    def broken_error(self, kind: str, name: str) -> SpecError | None:
        """Why the spec ``name`` of ``kind`` did not load (its file is broken, or it needs one that is), if so."""
        return self.broken.get((kind, name)) or self.broken.get((None, name))

    def get(self, kind: str, name: str, *, referenced_from: str | None = None, field_path: str | None = None):
        table = self.table(kind)
        if name in table:
            return table[name]
        why = self.broken_error(kind, name)
        if why is not None:  # that file's own paragraph
            raise why
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise SpecError(
            f"unknown {kind} '{name}'; known: {', '.join(sorted(table)) or 'none'}.{hint}",
            file=referenced_from,
            field=field_path,
            fix=f"use {'an' if kind[0] in 'aeiou' else 'a'} {kind} name that exists, or add specs/{kind}s/{name}.yaml"
                f" (a spec kept outside specs/: pass its file or folder with --specs)",
        )


def spec_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.yaml") if not q.name.startswith("_")
                              and "clusters" not in q.relative_to(p).parts[:-1]))  # Slurm resources, not specs
        else:
            raise SpecError(f"path {p} does not exist", fix="pass a spec file or a folder of spec files")
    return out


NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# a run folder is <task>__<method>_rf<N>__<backbone>__s<seed>__<8 hex> (plan/identity.run_id), written as
# .tmp-<run id>-<pid>: three names of 64 characters give 243 of the file system's 255 (NAME_MAX)
MAX_NAME = 64


def check_name(kind: str, name: object, path: Path) -> None:
    """A spec's name becomes part of folder and file names (results, caches, reports): a plain identifier
    (letters, digits, ``_ - .``, not starting with a dot) and the file's own stem, so ``name: ../../x`` or
    an absolute path can never choose where anything is written."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise SpecError(
            f"the {kind} name {name!r} is not a plain identifier (letters, digits, '_', '-', '.', not starting "
            f"with a dot, at most {MAX_NAME} characters); it names folders and files",
            file=str(path), field="name", fix=f"use a plain name such as "
                                              f"'{re.sub(r'[^A-Za-z0-9_.-]', '_', path.stem).lstrip('.')[:MAX_NAME] or kind}'"
                                              " and name the file after it")
    if name != path.stem:
        raise SpecError(
            f"the {kind} is named '{name}' but its file is {path.name}; a spec's name is its file's name",
            file=str(path), field="name", fix=f"rename the file to {name}.yaml, or remove the name: key")


def load_file(path: Path, roots: list[Path], memo: dict | None = None):
    data = load_with_includes(path, memo=memo)
    # a kind: key, else its folder's kind, else (outside the kind folders) from its keys (input+label: a task, ...)
    kind = data["kind"] if isinstance(data.get("kind"), str) else folder_kind(path, roots) or infer_kind(data)
    if kind not in SPEC_MODELS:
        raise SpecError(
            f"cannot tell what kind of spec this is (kind: {data.get('kind')!r})",
            file=str(path),
            field="kind",
            fix="put it under tasks/, methods/, backbones/ or experiments/, or add 'kind: task' (method, ...)",
        )
    data.setdefault("name", path.stem)
    check_name(kind, data["name"], path)
    spec = validate_model(SPEC_MODELS[kind], data, file=str(path))
    if kind == "task":
        templates.check_task_templates(spec.templates, file=str(path))
        if spec.data_files:
            spec.data_files = {k: str((path.parent / v).resolve()) for k, v in spec.data_files.items()}
    if kind == "backbone" and spec.path:
        spec.path = str((path.parent / spec.path).resolve())
    return kind, spec


def load_registry(extra: list[Path] | None = None, *, include_default: bool = True, strict: bool = True,
                  warn=None) -> Registry:
    """Every spec under ``specs/`` and the ``extra`` folders. ``strict`` (``afbench validate``, the
    default): the first broken file is an error. Otherwise (the commands that use specs): a broken file
    blocks only what needs it; it is listed in ``Registry.skipped`` (by kind and name) and ``warn`` gets
    one line naming it (default: stderr), the specs that need it are left out and
    using one raises that file's paragraph."""
    roots = ([default_spec_dir()] if include_default else []) + [Path(p) for p in (extra or [])]
    reg = Registry()
    warn = warn or (lambda line: print(line, file=sys.stderr))
    memo: dict = {}  # each file (shared defaults above all) is read and merged once
    for path in spec_files(roots):
        try:
            kind, spec = load_file(path, roots, memo)
        except SpecError as e:
            if strict:
                raise
            skipped = Skipped(folder_kind(path, roots), path.stem, path, e)
            reg.broken[(skipped.kind, skipped.name)] = e
            reg.skipped.append(skipped)
            warn(skipped.warning())
            continue
        table = reg.table(kind)
        if spec.name in table and reg.files[(kind, spec.name)].resolve() != path.resolve():
            raise SpecError(
                f"{kind} '{spec.name}' is defined twice (also in {reg.files[(kind, spec.name)]})",
                file=str(path),
                field="name",
                fix="give one of them another name",
            )
        table[spec.name] = spec
        reg.files[(kind, spec.name)] = path
    if strict:
        check_references(reg)
        return reg
    for name in list(reg.experiments):  # an experiment that needs a broken spec, or names one that does not
        try:                            # exist, is blocked, not the others
            check_references(reg, only=name)
        except SpecError as e:
            if not any(e is b for b in reg.broken.values()):  # its own mistake (the broken file it needs is warned about)
                skipped = Skipped("experiment", name, reg.files[("experiment", name)], e)
                reg.skipped.append(skipped)
                warn(skipped.warning())
            del reg.experiments[name]
            reg.broken[("experiment", name)] = e
    return reg


def method_name(entry: str | MethodRef) -> str:
    return entry.method if isinstance(entry, MethodRef) else entry


def _check_names(reg: Registry, kind: str, names: list[str] | None, f: str | None, field_path: str) -> None:
    for i, name in enumerate(names or []):  # every name of the list at field_path is a known spec of that kind
        reg.get(kind, name, referenced_from=f, field_path=f"{field_path}[{i}]")


def check_references(reg: Registry, only: str | None = None) -> None:
    """Experiments may only name tasks, methods and backbones that exist, with valid overrides."""
    train_fields = set(TrainParams.model_fields)
    for name, exp in reg.experiments.items():
        if only is not None and name != only:
            continue
        f = reg.file_of("experiment", name)
        _check_names(reg, "backbone", exp.backbones, f, "backbones")
        for gi, g in enumerate(exp.groups):
            _check_names(reg, "task", g.tasks, f, f"groups[{gi}].tasks")
            for mi, m in enumerate(g.methods):
                mname = method_name(m)
                spec = reg.get("method", mname, referenced_from=f, field_path=f"groups[{gi}].methods[{mi}]")
                if isinstance(m, MethodRef) and m.reduction_factor and spec.adapter is None:
                    raise SpecError(
                        f"method '{mname}' has no adapter, so a reduction_factor sweep means nothing",
                        file=f, field=f"groups[{gi}].methods[{mi}].reduction_factor",
                        fix="remove reduction_factor or use an adapter method (st_a, st_a_houlsby)",
                    )
                check_sources(reg, mname, spec, exp, f)
                if isinstance(m, MethodRef) and m.adapter_seed is not None and not spec.method_kind.depends_on:
                    raise SpecError(
                        f"method '{mname}' reads no other run's adapters, so adapter_seed means nothing",
                        file=f, field=f"groups[{gi}].methods[{mi}].adapter_seed",
                        fix="remove adapter_seed, or use it on a fusion method (fusion_st_a, fusion_mt_a)",
                    )
            _check_names(reg, "backbone", g.backbones, f, f"groups[{gi}].backbones")
        _check_names(reg, "task", None if exp.fusion.sources == "all" else exp.fusion.sources, f, "fusion.sources")
        _check_names(reg, "task", exp.mt_a.tasks, f, "mt_a.tasks")
        for di, other in enumerate(exp.dependencies_from):  # whose finished stage-1 runs are read (runner/borrowed.py)
            if other == name:
                raise SpecError(f"experiment '{name}' names itself in dependencies_from", file=f,
                                field=f"dependencies_from[{di}]",
                                fix="name other experiments whose finished stage-1 runs this one should read, or "
                                    "drop the field")
            reg.get("experiment", other, referenced_from=f, field_path=f"dependencies_from[{di}]")
        for mname, params in exp.overrides.items():
            spec = reg.get("method", mname, referenced_from=f, field_path=f"overrides.{mname}")
            for key in params:
                if key not in train_fields:
                    close = difflib.get_close_matches(key, sorted(train_fields), n=1)
                    raise SpecError(
                        f"'{key}' is not a training hyper-parameter"
                        + (f" (did you mean '{close[0]}'?)" if close else ""),
                        file=f, field=f"overrides.{mname}.{key}",
                        fix=f"use one of {', '.join(sorted(train_fields))}",
                    )
            try:  # the values too, through the method's own model: the bounds of its train block
                validate_model(type(spec.train), {**spec.train.model_dump(), **params}, file=f)
            except SpecError as e:
                raise SpecError(e.message, file=f, field=f"overrides.{mname}.{e.field}", fix=e.fix) from None
        if exp.sweep is not None:
            check_sweep(reg, exp, f)


def check_sources(reg: Registry, name: str, spec, exp, f: str | None) -> None:
    """A fusion method's ``source_method``: a single-task method that trains one module per task, of a type the
    method can compose (AdapterFusion and static mixing: Pfeiffer adapters; merges: bottleneck adapters or LoRA)."""
    fusion = getattr(spec, "fusion", None)
    if fusion is None:
        return
    mf, field, mtype = reg.file_of("method", name), "fusion.source_method", "pfeiffer"  # default: ST-A sources
    if fusion.source_method is not None:
        if spec.method_kind.depends_on != "stage1":
            raise SpecError(f"fusion.source_method names the runs a {spec.method} method would train as its sources, "
                            f"and {spec.method} reads another run's modules", file=mf, field=field,
                            fix="remove source_method (it applies to fusion_st_a and its variants)")
        src = reg.get("method", fusion.source_method, referenced_from=mf, field_path=field)
        kind = src.method_kind
        if kind.multitask or kind.depends_on or "adapter" not in kind.trains or "encoder" in kind.trains:
            raise SpecError(f"fusion.source_method '{fusion.source_method}' is a {kind.name} method, not one that "
                            "trains one module per task over the frozen encoder, so it gives no sources to compose",
                            file=mf, field=field, fix="name an adapter or LoRA method (st_a, lora)")
        # the module type its runs add: its first section's type (pfeiffer, houlsby, lora ...), if any
        mtype = getattr(getattr(src, kind.needs[0], None), "type", None) if kind.needs else None
        if mtype in ("pfeiffer", "houlsby"):
            raise SpecError(f"fusion.source_method '{fusion.source_method}' names adapter sources, which are the default "
                            "(ST-A at fusion.source_reduction_factor) and would lose the reduction factor from the run "
                            "label", file=mf, field=field, fix="remove source_method (set source_reduction_factor "
                            "for other adapter sources)")
        if exp.fusion.adapterhub:
            raise SpecError(f"method '{name}' reads its sources from '{fusion.source_method}' runs, and "
                            "fusion.adapterhub puts published bottleneck adapters among them", file=f,
                            field="fusion.adapterhub", fix=f"drop fusion.adapterhub, or '{name}' from this experiment")
    lora = mtype == "lora"
    if fusion.mixing == "lorahub" and not lora:
        raise SpecError(f"fusion.mixing: lorahub composes LoRA modules, and the sources of this method are {mtype} "
                        "modules", file=mf, field="fusion.source_method",
                        fix="set 'source_method: lora' (a LoRA method spec) in the method YAML's fusion section")
    if fusion.mixing in ("attention", "static") and mtype != "pfeiffer":
        raise SpecError(f"fusion.mixing: {fusion.mixing} fuses Pfeiffer adapters, and the sources of "
                        f"'{fusion.source_method}' are {mtype} modules", file=mf, field="fusion.mixing",
                        fix="set 'mixing: merge' to merge those sources, or take Pfeiffer sources (drop source_method)")
    if fusion.mixing == "merge" and mtype not in ("pfeiffer", "houlsby", "lora"):
        raise SpecError(f"fusion.mixing: merge merges bottleneck adapters or LoRA, and the sources of "
                        f"'{fusion.source_method}' are {mtype} modules", file=mf, field=field,
                        fix="name an adapter or LoRA method as source_method")
    if fusion.mixing == "merge" and lora and fusion.merge.how in ("average", "task_arithmetic", "dare"):
        raise SpecError(f"fusion.merge.how: {fusion.merge.how} over LoRA sources is PEFT's factor-wise linear sum: the "
                        "stage-1 LoRAs of a seed share their A init, so (sum w B_i)(sum w A_i) is about N times the "
                        "mean of the deltas its name suggests", file=mf, field="fusion.merge.how",
                        fix="use svd (the mean of the deltas B A, truncated to the sources' rank), ties or dare_ties "
                            "(disjoint means) over LoRA sources")
    if fusion.mixing == "merge" and fusion.merge.how == "svd" and not lora:
        raise SpecError("fusion.merge.how: svd truncates the LoRA deltas B A; bottleneck adapters have none",
                        file=mf, field="fusion.merge.how", fix="use another merge, or LoRA sources (source_method: lora)")


def check_sweep(reg: Registry, exp, f: str | None) -> None:
    """An experiment's ``sweep:`` block: a method of its groups, numeric train fields, bounds the method accepts."""
    sw = exp.sweep
    spec = reg.get("method", sw.method, referenced_from=f, field_path="sweep.method")
    listed = {method_name(m) for g in exp.groups for m in g.methods}
    if sw.method not in listed:
        raise SpecError(f"sweep.method '{sw.method}' is not a method of this experiment's groups, so no run of it "
                        "would be trained", file=f, field="sweep.method",
                        fix=f"name one of {', '.join(sorted(listed))}, or add it to a group")
    fields = searchable(type(spec.train))
    for key, rng in sw.space.items():
        if key not in fields:
            raise SpecError(f"'{key}' is not a numeric train hyper-parameter of method '{sw.method}'",
                            file=f, field=f"sweep.space.{key}", fix=f"search one of {', '.join(sorted(fields))}")
        for bound in (rng.low, rng.high):
            value = round(bound) if fields[key] else bound
            try:
                validate_model(type(spec.train), {**spec.train.model_dump(), **exp.overrides.get(sw.method, {}),
                                                  key: value}, file=f)
            except SpecError as e:
                raise SpecError(f"{bound:g} is outside what the method accepts: {e.message}", file=f,
                                field=f"sweep.space.{key}", fix=e.fix) from None
