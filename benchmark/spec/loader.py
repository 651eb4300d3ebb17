"""Read spec YAML files: safe loader, ``include`` of shared defaults, clear validation errors."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from benchmark.errors import SpecError


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read the file ({e.strerror})", file=str(path), fix="check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"the file is not valid YAML{pos} ({getattr(e, 'problem', None) or e})",
            file=str(path),
            fix="correct the YAML syntax (indentation, quotes, colons); only plain YAML data is accepted",
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            f"the file holds a {type(data).__name__}, not a mapping of keys to values",
            file=str(path),
            fix="write the spec as 'key: value' lines at the top level",
        )
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """Mappings merge key by key; any other value (lists included) in ``override`` replaces."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_with_includes(path: Path, _stack: tuple[Path, ...] = ()) -> dict:
    """Load ``path``; ``include: FILE`` (or a list) names shared defaults it overrides, recursively."""
    path = path.resolve()
    if path in _stack:
        chain = " -> ".join(p.name for p in (*_stack, path))
        raise SpecError(f"include cycle {chain}", file=str(_stack[0]), field="include", fix="remove the cycle")
    data = read_yaml(path)
    inc = data.pop("include", None)
    if inc is None:
        return data
    incs = [inc] if isinstance(inc, str) else inc
    if not isinstance(incs, list) or not all(isinstance(i, str) for i in incs):
        raise SpecError("'include' must be a file name or a list of file names", file=str(path), field="include",
                        fix="write e.g. 'include: _defaults.yaml'")
    merged: dict = {}
    for name in incs:
        target = (path.parent / name).resolve()
        if not target.exists():
            raise SpecError(f"included file {name!r} does not exist (looked at {target})", file=str(path),
                            field="include", fix="give a path relative to this spec file")
        merged = deep_merge(merged, load_with_includes(target, (*_stack, path)))
    return deep_merge(merged, data)


def _fix_for(err: dict, model_fields: list[str]) -> str:
    t = err["type"]
    loc = err["loc"]
    if t == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, model_fields, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{hint}remove the key or rename it to one the schema knows"
    if t == "missing":
        return "add this field"
    if t.startswith("literal_error"):
        return f"use one of {err.get('ctx', {}).get('expected', 'the allowed values')}"
    if t in ("value_error", "assertion_error"):
        return "see the message"
    return f"give a value of the expected type ({err['msg'].lower()})"


def _known_fields(model: type, loc: tuple) -> list[str]:
    """Field names of the sub-model that an error location points into (for spelling hints)."""
    fields = list(getattr(model, "model_fields", {}))
    cur = model
    for part in loc[:-1]:
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            break
        ann = f.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            if hasattr(cand, "model_fields"):
                cur = cand
                fields = list(cand.model_fields)
                break
    return fields


def validate_model(model: type, data: dict, *, file: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # an unknown key is usually the cause of a "missing" one (a typo): report it first
        errs = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        first = errs[0]
        loc = tuple(first["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        more = f" ({len(errs) - 1} more problem(s) in this file after this one)" if len(errs) > 1 else ""
        raise SpecError(
            f"{msg}{more}", file=file, field=field, fix=_fix_for(first, _known_fields(model, loc))
        ) from None
