"""Result files: ``results/<experiment>/<run id>/result.json`` (+ weights beside it), with provenance.

Writes are atomic (temp file + rename) and ``result.json`` is written last, so a run interrupted at
any point (Ctrl-C, kill -9, power loss) never leaves a result that looks finished.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from benchmark.errors import StorageError

SCHEMA = 1
RESULT = "result.json"


def results_root(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("AFBENCH_RESULTS_DIR", "results"))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename. An OS failure (disk full) leaves
    ``path`` as it was, removes the temp file and raises one StorageError naming the file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StorageError.from_os_error(path, e) from None


def read_result(run_dir: Path) -> dict | None:
    f = run_dir / RESULT
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


def is_finished(run_dir: Path) -> bool:
    r = read_result(run_dir)
    return bool(r) and r.get("status") == "finished"


@lru_cache(maxsize=1)
def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("adapterfusion-bench", "torch", "transformers", "datasets", "tokenizers", "scikit-learn", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


@lru_cache(maxsize=1)
def git_revision() -> dict:
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


def load_experiment_results(root: Path, experiment: str) -> list[dict]:
    folder = root / experiment
    out = []
    if not folder.exists():
        return out
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        r = read_result(d)
        if r is not None:
            out.append(r)
    return out
