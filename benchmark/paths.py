"""How a path is written into anything that may be committed or shared (results, reports): relative to
the working directory when it lies inside it, else only its last two parts, never a machine's absolute
path. Imports nothing from the package: every layer may use it."""

from __future__ import annotations

from pathlib import Path


def shown_path(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(Path(*p.parts[-2:])) if len(p.parts) >= 2 else p.name
