"""Result files: ``results/<experiment>/<run id>/result.json`` (+ weights beside it), with provenance: the
results root, atomic JSON writes, versions and the git revision. The record itself (what result.json
holds, how older schemas are read) is ``benchmark/records.py``.

Writes are atomic (temp file + rename) and ``result.json`` is written last, so a run interrupted at
any point (Ctrl-C, kill -9, power loss) never leaves a result that looks finished.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from benchmark.paths import write_atomic


def results_root(explicit: str | Path | None = None) -> Path:
    """The results root: ``explicit`` (the CLI passes --results-dir, else $AFBENCH_RESULTS_DIR), else ./results."""
    return Path(explicit or "results")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict, *, root: Path | None = None) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename (``paths.write_atomic``; checked to lie
    under ``root`` when given). An OS failure (disk full) leaves ``path`` as it was, removes the temp file
    and raises one StorageError naming the file."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", root=root)


def installed(name: str) -> str | None:
    # imported here, not at the top (nor platform, subprocess below): every afbench command imports this module
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def versions() -> dict:
    import platform

    pkgs = ("adapterfusion-bench", "torch", "transformers", "datasets", "tokenizers", "scikit-learn", "numpy")
    return {"python": sys.version.split()[0], "platform": platform.platform(), **{p: installed(p) for p in pkgs}}


@lru_cache(maxsize=1)
def git_revision() -> dict:
    import subprocess

    root = Path(__file__).resolve().parents[2]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        rev = git("rev-parse", "HEAD")
        if rev.returncode != 0:
            return {"revision": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "benchmark", "specs")
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
