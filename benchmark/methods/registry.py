"""The one registry of method packages: the core (spec schema, model wrapper, recipe, checkpoint, FLOP model,
AdapterHub format, report) finds every method here and names none of them.

A method package (``benchmark/methods/<name>/`` or under a folder of ``AFBENCH_METHODS``) holds ``config.py``,
``layer.py``, ``setup.py`` and ``adapterhub.py``, each at its own layer: ARCHITECTURE.md, "A new method", is the
one list of what each holds. The parts above layer 0 are imported only when a core module of their layer asks
for them (``part``), so importing the registry never loads torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.methods import kinds

ENV = "AFBENCH_METHODS"  # a folder (or several, os.pathsep-separated) of the user's method packages
USER_PACKAGE = "afbench_methods"  # the Python package the user's method packages are imported under
PARTS = ("config", "layer", "setup", "adapterhub")


@dataclass(frozen=True)
class Section:
    """A section of the method YAML that a method package declares (e.g. ``lora:``)."""

    name: str
    params: type  # its parameter model (a params.Strict); its ``type`` field's default names the module type
    flops: Callable | None  # (params, shape, sources) -> forward FLOPs per token and layer of its modules
    package: str  # the Python package that declared it
    late: bool = True  # left out of a dump while unset (every section after the paper's: their run ids never move)


SECTIONS: dict[str, Section] = {}
PACKAGES: dict[str, str] = {}  # method kind -> the Python package that registered it
_loading: list[str] = []  # the package whose config.py is being imported


def section(name: str, params: type, flops: Callable | None = None, *, late: bool = True) -> None:
    """Declare a section of the method YAML (called from a package's ``config.py``). ``late=False`` only for the
    paper's sections (``adapter``, ``fusion``, ``mt_a``), which every committed run id has hashed as null while unset."""
    if name in SECTIONS and SECTIONS[name].params is not params:
        raise ValueError(f"method section '{name}' is declared twice ({SECTIONS[name].package} and "
                         f"{params.__module__}); give the new method's section another name")
    package = _loading[-1] if _loading else params.__module__.rpartition(".")[0]
    SECTIONS[name] = Section(name, params, flops, package, late)


def _packages() -> list[tuple[str, Path]]:
    """(Python package name, folder) of every method package: the shipped ones, then the user's."""
    own = Path(__file__).parent
    out = [(f"{__package__}.{d.name}", d) for d in sorted(own.iterdir()) if (d / "config.py").is_file()]
    folders = [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"{ENV}={os.environ[ENV]}: '{folder}' is not a folder; point it at a folder that holds "
                             "method packages (<name>/config.py ...), or unset it")
    if folders:
        pkg = sys.modules.get(USER_PACKAGE)
        if pkg is None:  # a package whose path is the user's folders: afbench_methods.<name>.config
            pkg = types.ModuleType(USER_PACKAGE, "the user's method packages (AFBENCH_METHODS)")
            pkg.__path__ = []
            sys.modules[USER_PACKAGE] = pkg
        pkg.__path__[:] = [str(f) for f in folders]
        out += [(f"{USER_PACKAGE}.{d.name}", d) for f in folders for d in sorted(f.iterdir())
                if (d / "config.py").is_file() and d.name.isidentifier()]
    return out


def discover(first: tuple[str, ...] = ()) -> None:
    """Import every method package's ``config.py`` (its kinds and sections register themselves): the shipped
    packages named in ``first`` in that order (the paper's, in its column order), then the rest by folder name."""
    found = _packages()
    rank = {f"{__package__}.{n}": i for i, n in enumerate(first)}
    for name, folder in sorted(found, key=lambda nf: rank.get(nf[0], len(rank))):
        if name in PACKAGES.values():
            continue
        before = set(kinds.KINDS)
        _loading.append(name)
        try:
            importlib.import_module(f"{name}.config")
        finally:
            _loading.pop()
        new = [k for k in kinds.KINDS if k not in before]
        clash = [k for k in new if k in PACKAGES]
        if clash:
            raise ValueError(f"{folder / 'config.py'} registers the method kind(s) {clash}, which "
                             f"{PACKAGES[clash[0]]} registers already; give the method another name")
        PACKAGES.update({k: name for k in new})


def part(kind: str, name: str):
    """The module ``name`` (``layer``, ``setup``, ``adapterhub``) of the package of method ``kind``; None when the
    kind has no package or the package no such file."""
    if name not in PARTS:
        raise ValueError(f"a method package has no part '{name}' (parts: {PARTS})")
    pkg = PACKAGES.get(kind)
    if pkg is None:
        return None
    try:
        return importlib.import_module(f"{pkg}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{pkg}.{name}":
            return None
        raise


def sections() -> list[Section]:
    """The declared sections: the paper's in the order they were declared, then the later ones in the report order
    of the kinds that declared them (LoRA before (IA)^3)."""
    rank = {k.name: i for i, k in enumerate(kinds.report_order())}
    first = {pkg: min(rank.get(k, len(rank)) for k, p in PACKAGES.items() if p == pkg) for pkg in PACKAGES.values()}
    # sorted is stable and SECTIONS is in declaration order: the paper's sections (key 0) keep it, ties too
    return sorted(SECTIONS.values(), key=lambda s: (s.late, first.get(s.package, len(rank)) if s.late else 0))


def module_types() -> dict[str, str]:
    """A module type (each value the ``type`` of a section's params can take: ``pfeiffer``, ``houlsby``, ``lora``)
    -> the first method kind of the package that declared it, for packages with a ``layer.py`` (it owns the type;
    fusion's ``type`` names no module)."""
    out = {}
    for s in SECTIONS.values():
        field = s.params.model_fields.get("type")
        kinds = [k for k, p in PACKAGES.items() if p == s.package]
        if field is not None and kinds and importlib.util.find_spec(f"{s.package}.layer") is not None:
            out.update(dict.fromkeys(typing.get_args(field.annotation) or (field.default,), kinds[0]))
    return out
