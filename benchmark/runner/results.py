"""Result files: ``results/<experiment>/<run id>/result.json`` (+ weights beside it), with provenance.

Writes are atomic (temp file + rename) and ``result.json`` is written last, so a run interrupted at
any point (Ctrl-C, kill -9, power loss) never leaves a result that looks finished.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from benchmark.paths import under, write_atomic

SCHEMA = 1
RESULT = "result.json"


def results_root(explicit: str | Path | None = None) -> Path:
    """The results root: ``explicit`` (the CLI passes --results-dir, else $AFBENCH_RESULTS_DIR), else ./results."""
    return Path(explicit or "results")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def experiment_dir(root: Path, experiment: str) -> Path:
    """``root/<experiment>``, refused (``PathOutsideRoot``) unless it lies inside the results root."""
    return under(root, experiment)


def write_json_atomic(path: Path, data: dict, *, root: Path | None = None) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename (``paths.write_atomic``; checked to lie
    under ``root`` when given). An OS failure (disk full) leaves ``path`` as it was, removes the temp file
    and raises one StorageError naming the file."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", root=root)


STATUSES = ("finished", "failed")
# key -> the types a readable result must have there (checked by ``check_result``). Only what a
# reader relies on: the runner, ``afbench plan`` and the reporter index results by these keys.
REQUIRED: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "run_id": (str,),
    "experiment": (str,),
    "label": (str,),
    "backbone": (str,),
    "seed": (int,),
}


@dataclass(frozen=True)
class ResultFile:
    """One ``result.json`` as read from disk: ``state`` is "ok", "missing" or "corrupt" (with why).

    A corrupt file (not JSON, or JSON of the wrong shape such as ``{}``) is never a finished run:
    the runner retrains it and ``plan`` / ``report`` name it, so a damaged results folder is seen
    instead of being silently shown as pending or crashing the reporter.
    """

    path: Path
    state: str
    data: dict | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def finished(self) -> bool:
        return self.ok and self.data["status"] == "finished"

    def where(self, root: Path) -> str:
        """The file relative to the results root (reports hold no machine paths)."""
        try:
            return str(self.path.relative_to(root))
        except ValueError:
            return f"{self.path.parent.name}/{self.path.name}"


def check_result(data: object, folder_name: str | None = None) -> str:
    """Why ``data`` is not a usable result ("" when it is)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, found {type(data).__name__}"
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        return "missing " + ", ".join(f"'{k}'" for k in missing)
    for k, types in REQUIRED.items():
        if not isinstance(data[k], types) or isinstance(data[k], bool):
            return f"'{k}' is {type(data[k]).__name__}, expected {types[0].__name__}"
    if data["status"] not in STATUSES:
        return f"'status' is {data['status']!r}, expected one of {', '.join(STATUSES)}"
    if folder_name is not None and data["run_id"] != folder_name:
        return f"'run_id' {data['run_id']!r} does not match its folder {folder_name!r}"
    if not data.get("task") and not data.get("tasks"):
        return "neither 'task' nor 'tasks' is set"
    if data["status"] == "finished":
        per_task = data.get("per_task")
        if per_task is not None:
            bad = [t for t, v in per_task.items() if not _is_number((v or {}).get("best_metric"))] \
                if isinstance(per_task, dict) else ["(not an object)"]
            if bad:
                return "'per_task' has no numeric best_metric for " + ", ".join(bad)
        elif not _is_number(data.get("best_metric")):
            return f"finished but 'best_metric' is {_what(data.get('best_metric'))}, not a finite number"
    return ""


def _is_number(x: object) -> bool:
    """A real, finite number: NaN or inf in a finished result is damage (JSON allows neither; Python
    writes them), not a measurement."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _what(x: object) -> str:
    return "missing" if x is None else repr(x) if isinstance(x, float) else type(x).__name__


def read_result_file(run_dir: Path) -> ResultFile:
    """Read and check ``run_dir/result.json``; never raises for a damaged file."""
    f = run_dir / RESULT
    if not f.exists():
        return ResultFile(f, "missing")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return ResultFile(f, "corrupt", reason=f"not readable JSON ({e})")
    why = check_result(data, run_dir.name)
    return ResultFile(f, "corrupt", reason=why) if why else ResultFile(f, "ok", data)


def read_result(run_dir: Path) -> dict | None:
    """The result of a run folder if it is there and well-formed, else None."""
    r = read_result_file(run_dir)
    return r.data if r.ok else None


def is_finished(run_dir: Path) -> bool:
    """Well-formed and finished: a corrupt or failed result is retrained by the runner."""
    return read_result_file(run_dir).finished


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


@dataclass
class ExperimentScan:
    """Everything under ``results/<experiment>/``, sorted into what a reader can use and what not.

    ``plan``, ``report`` (and a status command) call ``scan_experiment`` so all of them name the same
    damaged files and ignore results that belong to another experiment.
    """

    root: Path
    experiment: str
    results: list[dict] = field(default_factory=list)  # well-formed results of this experiment
    corrupt: list[ResultFile] = field(default_factory=list)
    foreign: list[ResultFile] = field(default_factory=list)  # well-formed, but another experiment's

    def problems(self) -> list[str]:
        """One line per file a reader should know about, paths relative to the results root."""
        out = [f"corrupt result {r.where(self.root)}: {r.reason}; treated as not finished" for r in self.corrupt]
        out += [f"result {r.where(self.root)} belongs to experiment '{r.data['experiment']}', not "
                f"'{self.experiment}'; left out" for r in self.foreign]
        return out


def scan_experiment(root: Path, experiment: str) -> ExperimentScan:
    scan = ExperimentScan(root, experiment)
    folder = root / experiment
    if not folder.exists():
        return scan
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        r = read_result_file(d)
        if r.state == "corrupt":
            scan.corrupt.append(r)
        elif r.ok and r.data["experiment"] != experiment:
            scan.foreign.append(r)
        elif r.ok:
            scan.results.append(r.data)
    return scan


def load_experiment_results(root: Path, experiment: str) -> list[dict]:
    """The well-formed results of ``experiment`` (see ``scan_experiment`` for what was left out)."""
    return scan_experiment(root, experiment).results
