"""Read spec YAML files: safe loader, ``include`` of shared defaults, clear validation errors.

The loader is YAML's safe loader with refusals of its own: a key given twice in one mapping
(plain YAML lets the last one win silently), a file that is not a regular file or is over ``MAX_SPEC_BYTES``
(``paths.read_regular``: a spec is a page of settings; a huge file, /dev/zero or a FIFO is a mistake or an
attack), nesting over ``MAX_SPEC_DEPTH`` levels (100,000 ``[`` overflow the parser's stack: one paragraph,
not a traceback) and more than ``MAX_SPEC_VALUES`` values once aliases are expanded (a 796-byte "billion
laughs" file), counted on the parsed node graph before anything is expanded. Includes are resolved once
per file (``memo``) and at most ``MAX_INCLUDE_DEPTH`` deep, so a fan-out of includes costs its files, not
the paths through them.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from benchmark.errors import SpecError
from benchmark.paths import read_regular

MAX_SPEC_BYTES = 1_000_000
MAX_SPEC_DEPTH = 50  # lists and mappings inside each other; deeper is an attack (100,000 '[' overflow the parser)
MAX_SPEC_VALUES = 100_000  # scalars, lists and mappings once aliases are expanded (a spec holds a few hundred)
MAX_INCLUDE_DEPTH = 8  # a spec includes defaults that include defaults...; deeper is a mistake
KIND_FOLDERS = {"task": "tasks", "method": "methods", "backbone": "backbones", "experiment": "experiments"}
FOLDER_KIND = {folder: kind for kind, folder in KIND_FOLDERS.items()}


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key, first_line: int, line: int, column: int):
        self.key, self.first_line, self.line, self.column = key, first_line, line, column
        super().__init__(f"duplicate key {key!r}")


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (``<<`` merges may override)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line, key_node.start_mark.column)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _key_path(text: str, line: int, column: int) -> str | None:
    """Dotted path of the mapping key that starts at ``line`` (1-based), ``column``, e.g. 'label.map.x'."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None

    def walk(node, trail):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                here = [*trail, str(k.value)]
                if (k.start_mark.line + 1, k.start_mark.column) == (line, column):
                    return here
                found = walk(v, here)
                if found:
                    return found
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                found = walk(v, [*trail[:-1], f"{trail[-1]}[{i}]"] if trail else [f"[{i}]"])
                if found:
                    return found
        return None

    found = walk(root, [])
    return ".".join(found) if found else None


def _depth(data) -> int:
    """How deeply lists and mappings nest (iterative: a deep value must not overflow the stack here)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d > MAX_SPEC_DEPTH:
                return d
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _expanded_values(root) -> int:
    """How many values the YAML node graph holds once every alias is expanded, counted without expanding it
    (each node once, its size memoised); a node that contains itself counts as over ``MAX_SPEC_VALUES``."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        kids = [x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        if done:
            open_.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(k)] for k in kids), MAX_SPEC_VALUES + 1)
        elif id(node) in open_:
            return MAX_SPEC_VALUES + 1  # an alias inside its own anchor: a recursive structure
        elif id(node) not in sizes:
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def read_yaml(path: Path) -> dict:
    try:
        text = read_regular(path, MAX_SPEC_BYTES).decode("utf-8")
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise SpecError(
                f"{e.strerror} for a spec file", file=str(path),
                fix="a spec holds settings, not data: put rows in data files (data_files) and keep the spec small",
            ) from None
        raise SpecError(f"cannot read the file ({e.strerror})", file=str(path),
                        fix="check the path; a spec is a regular file of YAML text") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"the file is not UTF-8 text ({e.reason} at byte {e.start})", file=str(path),
                        fix="save the spec as UTF-8") from None
    loader = _StrictSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_values(node) > MAX_SPEC_VALUES:
            raise SpecError(
                f"the file holds over {MAX_SPEC_VALUES:,} values (scalars, lists and mappings, each YAML alias "
                "*name counted as what it expands to)", file=str(path),
                fix="a spec is a page of settings: keep it to a few hundred values (seeds: at most 100) and use "
                    "aliases only for a few small blocks")
        data = loader.construct_document(node) if node is not None else None
    except DuplicateKeyError as e:
        raise SpecError(
            f"the key {e.key!r} is given twice in one mapping (lines {e.first_line} and {e.line}); YAML would "
            "silently keep the last one",
            file=str(path), field=_key_path(text, e.line, e.column) or str(e.key), fix="keep one of them",
        ) from None
    except RecursionError:
        raise SpecError(
            "the file nests lists or mappings too deeply to read (thousands of levels)", file=str(path),
            fix=f"a spec is a few levels of settings: keep nesting under {MAX_SPEC_DEPTH} levels") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"the file is not valid YAML{pos} ({getattr(e, 'problem', None) or e})",
            file=str(path),
            fix="correct the YAML syntax (indentation, quotes, colons); only plain YAML data is accepted",
        ) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if _depth(data) > MAX_SPEC_DEPTH:
        raise SpecError(f"the file nests lists or mappings over {MAX_SPEC_DEPTH} levels deep", file=str(path),
                        fix=f"a spec is a few levels of settings: keep nesting under {MAX_SPEC_DEPTH} levels")
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
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def infer_kind(data: dict) -> str | None:
    """The kind of a spec from its keys, for a file with no ``kind:`` key outside the kind folders."""
    if isinstance(data.get("kind"), str):
        return data["kind"]
    for key, kind in (("groups", "experiment"), ("method", "method"), ("source", "backbone")):
        if key in data:
            return kind
    return "task" if "input" in data and ("label" in data or "type" in data) else None


def default_spec_dir() -> Path:
    """Where the project's own specs are: $AFBENCH_SPECS; else ``specs/`` of the checkout we run from (the
    current folder, or the one this package was installed from in editable mode); else the copy shipped
    inside the package (``benchmark.bundled_specs``, from ``pip install .``)."""
    env = os.environ.get("AFBENCH_SPECS")
    if env:
        return Path(env)
    for folder in (Path.cwd(), Path(__file__).resolve().parents[2]):
        pyproject = folder / "pyproject.toml"
        if (folder / "specs" / "tasks").is_dir() and pyproject.is_file() and \
                'name = "adapterfusion-bench"' in pyproject.read_text(encoding="utf-8", errors="replace"):
            return folder / "specs"
    bundled = importlib.util.find_spec("benchmark.bundled_specs")  # a namespace package: data files only
    return Path(list(bundled.submodule_search_locations)[0])


def folder_kind(path: Path, roots: list[Path] | tuple = ()) -> str | None:
    """The kind a spec's folder says (its nearest kind folder, not looking above ``roots``); None outside the
    kind folders: the kind then comes from its keys."""
    resolved = [r.resolve() for r in roots]
    for parent in path.resolve().parents:
        if parent.name in FOLDER_KIND:
            return FOLDER_KIND[parent.name]
        if parent in resolved:
            break
    return None


def _shared_default(name: str, kind: str | None) -> Path | None:
    """``specs/<kind folder>/NAME`` of the project, for an include that is not beside the spec."""
    if "/" in name or "\\" in name:
        return None
    folders = [KIND_FOLDERS[kind]] if kind in KIND_FOLDERS else list(KIND_FOLDERS.values())
    hits = [default_spec_dir() / f / name for f in folders if (default_spec_dir() / f / name).is_file()]
    return hits[0].resolve() if len(hits) == 1 else None


def load_with_includes(path: Path, _stack: tuple[Path, ...] = (), *, memo: dict | None = None) -> dict:
    """Load ``path``; ``include: FILE`` (or a list) names shared defaults it overrides, recursively.

    A bare file name that is not beside the spec falls back to the project's shared defaults of the
    spec's kind (``specs/tasks/_defaults.yaml`` for a task), so a task folder outside ``specs/`` can
    ``include: _defaults.yaml`` as the shipped tasks do. ``memo`` (resolved path -> merged mapping, shared
    by every spec a registry loads) resolves each file once; the mappings in it are never changed.
    """
    memo = {} if memo is None else memo
    path = path.resolve()
    chain = " -> ".join(p.name for p in (*_stack, path))
    if path in _stack:
        raise SpecError(f"include cycle {chain}", file=str(_stack[0]), field="include", fix="remove the cycle")
    if path in memo:
        return dict(memo[path])
    if len(_stack) > MAX_INCLUDE_DEPTH:
        raise SpecError(f"includes nest over {MAX_INCLUDE_DEPTH} levels deep ({chain})", file=str(_stack[0]),
                        field="include", fix="include shared defaults directly instead of through a long chain")
    data = read_yaml(path)
    inc = data.pop("include", None)
    incs = [] if inc is None else [inc] if isinstance(inc, str) else inc
    if not isinstance(incs, list) or not all(isinstance(i, str) for i in incs):
        raise SpecError("'include' must be a file name or a list of file names", file=str(path), field="include",
                        fix="write e.g. 'include: _defaults.yaml'")
    merged: dict = {}
    for name in incs:
        target = (path.parent / name).resolve()
        if not target.exists():
            target = _shared_default(name, folder_kind(path) or infer_kind(data)) or target
        if not target.exists():
            raise SpecError(f"included file {name!r} does not exist (looked at {target} and in the project's "
                            "specs/ folders)", file=str(path),
                            field="include", fix="give a path relative to this spec file, or the name of a shared "
                                                 "defaults file of specs/tasks (methods, ...)")
        if not target.is_file():  # /dev/zero, a FIFO, a folder: never opened (read_regular checks again)
            raise SpecError(f"included file {name!r} is not a regular file", file=str(path), field="include",
                            fix="include a YAML file of shared defaults")
        merged = deep_merge(merged, load_with_includes(target, (*_stack, path), memo=memo))
    memo[path] = deep_merge(merged, data)
    return dict(memo[path])


def _fix_for(err: dict, model_fields: list[str]) -> str:
    t = err["type"]
    if t == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), model_fields, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{hint}remove the key or rename it to one the schema knows"
    if t == "missing":
        return "add this field"
    if t.startswith("literal_error"):
        return f"use one of {err.get('ctx', {}).get('expected', 'the allowed values')}"
    if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "too_long"):
        return f"give a value within the bounds ({err['msg'].lower()})"
    if t in ("value_error", "assertion_error"):
        return "see the message"
    if t == "string_type" and isinstance(err.get("input"), bool):
        return ("quote it: YAML reads unquoted yes / no / on / off / true / false as booleans, "
                "write e.g. [\"yes\", \"no\"]")
    return f"give a value of the expected type ({err['msg'].lower()})"


def _known_fields(model: type, loc: tuple) -> list[str]:
    """Field names of the sub-model that an error location points into (for spelling hints)."""
    cur = model
    for part in loc[:-1]:
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            break
        cur = next((c for c in getattr(f.annotation, "__args__", (f.annotation,)) if hasattr(c, "model_fields")), cur)
    return list(getattr(cur, "model_fields", {}))


_UNION_TAGS = {"int", "float", "str", "bool", "none", "constrained-int", "constrained-float", "constrained-str"}


def validate_model(model: type, data: dict, *, file: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # an unknown key is usually the cause of a "missing" one (a typo): report it first
        errs = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        first = errs[0]
        loc = tuple(first["loc"])
        while loc and isinstance(loc[-1], str) and (loc[-1] in _UNION_TAGS or loc[-1].startswith("literal[")):
            loc = loc[:-1]  # which member of a union (int | "matched") failed: not a field the user wrote
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        more = f" ({len(errs) - 1} more problem(s) in this file after this one)" if len(errs) > 1 else ""
        raise SpecError(
            f"{msg}{more}", file=file, field=field, fix=_fix_for(first, _known_fields(model, loc))
        ) from None
