"""What every perf report carries: revision, date, versions, machine, and each target marked met or missed."""

from __future__ import annotations

import json
import os
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.paths import write_atomic
from benchmark.runner.provenance import cpu_model
from benchmark.runner.results import git_revision, now, versions

REPORTS = {"steps": "reports/perf.md", "epochs": "reports/perf_epochs.md",
           "roofline": "reports/perf_roofline.md", "inference": "reports/perf_inference.md",
           "compiled": "reports/perf_compiled.md"}


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model() or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def shown_command(argv: list[str]) -> str:
    """``afbench`` + ``argv`` as a report shows it: the reference interpreter as ``<reference env python>``
    and any other absolute path relative to the working directory (or ``<path>``): no machine paths."""
    out, cwd = [], Path.cwd()
    for i, a in enumerate(argv):
        flag, eq, val = a.partition("=")
        if i and argv[i - 1] == "--reference-python":
            a = "<reference env python>"
        elif eq and flag == "--reference-python":
            a = f"{flag}=<reference env python>"
        elif os.path.isabs(val if eq else a):
            path = Path(val if eq else a)
            shown = os.path.relpath(path, cwd) if path.is_relative_to(cwd) else "<path>"
            a = f"{flag}={shown}" if eq else shown
        out.append(a)
    return shlex.join(["afbench", *out])


def provenance(device: str = "cpu", argv: list[str] | None = None, reference: str | None = None) -> dict:
    """Revision (and whether benchmark/ or specs/ had uncommitted edits), UTC date, package versions (the
    reference's adapters version when it ran), CPU model, threads, machine, and the command that measured it
    (``argv``: the afbench arguments, when known)."""
    return {"git": git_revision(), "date": now(), "versions": {**versions(), "adapters": reference},
            "device": device, "cpu": cpu_model(), "threads": torch.get_num_threads(), "machine": machine(device),
            **({"command": shown_command(argv)} if argv is not None else {})}


def provenance_lines(p: dict) -> list[str]:
    g, v = p["git"], p["versions"]
    rev = (g.get("revision") or "unknown")[:12] + (" (uncommitted edits)" if g.get("dirty") else "")
    return [f"Revision {rev}, {p['date']}; torch {v.get('torch')}, transformers {v.get('transformers')}, "
            f"Python {v.get('python')}"
            + (f", adapters {v['adapters']} (reference)" if v.get("adapters") else "") + f"; {p['machine']}." + (f" Ran as `{p['command']}`." if p.get("command") else "")]


@dataclass(frozen=True)
class Target:
    """One stated target and whether this measurement met it (None: not measured in this run)."""

    text: str
    met: bool | None
    measured: str = ""

    def line(self) -> str:
        mark = "not measured" if self.met is None else "met" if self.met else "MISSED"
        return f"- {self.text}: **{mark}**" + (f" ({self.measured})" if self.measured else "")


def target_lines(targets: list[Target]) -> list[str]:
    return ["## Targets", "", *[t.line() for t in targets]] if targets else []


def write_report(md_path: Path, lines: list[str], raw: dict, quiet: bool = False) -> None:
    """``<name>.md`` and the raw numbers beside it as ``<name>.json`` (no machine paths in either), each
    through ``paths.write_atomic`` (temp file, fsync, rename; an OS failure is one StorageError)."""
    for path, text in ((md_path, "\n".join(lines) + "\n"), (md_path.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")):
        write_atomic(path, text)
    if not quiet:
        print("\n".join(lines))
    print(f"wrote {md_path} and {md_path.with_suffix('.json').name}")
