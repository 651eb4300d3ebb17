"""The one measurement harness every perf mode (steps, epochs, roofline, inference) and ``afbench prune``
(``analysis/prune.py``) uses:

* the reference (AdapterHub) side in its own interpreter, read from the JSON of its last stdout line
  (``reference``; a failure is one ``ReferenceFailed``, which ``afbench perf`` prints and exits 1 on);
* alternating rounds (``rounds``: the order of ours and the reference flips every round) and medians;
* the memory pass: each side, setup and precision in a fresh process (``memory``);
* the drift guard: the fp32 GEMM peak (``gemm_peak``, the roofline's measurement, ~1 s) measured when the
  harness starts and again when it writes; a change of more than ``DRIFT_LIMIT`` means the machine got
  busier or quieter mid-run, and the report says so on its first line, the JSON records the verdict;
* provenance (``meta.provenance``: revision and dirty flag, UTC date, CPU model, threads, versions, the
  command) and the targets, met or missed, in every report it writes (``write``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.errors import BenchError
from benchmark.modeling.compute import bf16_unsupported
from benchmark.perf.backbones import PerfBackbone, perf_backbone
from benchmark.perf.meta import REPORTS, Target, provenance, provenance_lines, target_lines, write_report
from benchmark.perf.steps import sync

DRIFT_LIMIT = 0.10
DRIFT_SHAPES = {"cpu": ((1024, 1024, 1024), (4096, 384, 1536)), "cuda": ((4096, 4096, 4096),)}


class ReferenceFailed(RuntimeError):
    """The reference interpreter exited non-zero (its output is the message)."""


def precisions(args, device: str) -> list[str]:
    """``--precision``: fp32, plus bf16 where the device has it natively (auto); bf16 is refused without it."""
    why_not, want = bf16_unsupported(torch.device(device)), getattr(args, "precision", None) or "auto"
    if want == "bf16" and why_not:
        raise BenchError(f"bf16 asked for, but {why_not}", field="--precision", fix="use --precision auto or fp32")
    return ["fp32"] + (["bf16"] if want != "fp32" and why_not is None else [])


def command_line(args) -> tuple[PerfBackbone, str, list[int]]:
    """What the steps, roofline and inference modes read alike: the backbone, the device (``--device``, else CUDA
    where there is one) and the fusion sizes of ``--adapters``."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return perf_backbone(getattr(args, "backbone", "minilm-l6")), device, [int(x) for x in args.adapters.split(",") if x]


def gemm_libraries(device: str) -> dict:
    """The GEMMs the peak is the best of, {name: mm(a [m, k], b) -> [m, n]}: ``torch.mm`` everywhere (b [k, n]) and,
    on the CPU, oneDNN's linear (b [n, k], the weight layout; what the fast CPU kernels compute frozen layers with). On this
    project's AMD EPYC torch's float32 ``mm`` (MKL) reaches about half of oneDNN's GFLOP/s, so a peak of
    ``torch.mm`` alone would understate the machine and put a step's achieved fraction above 100 %."""
    libs = {"torch.mm": torch.mm}
    if device == "cpu" and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        libs["oneDNN"] = lambda a, b: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return libs


def gemm_peak(dtype: torch.dtype, device: str, shapes, min_seconds: float = 0.3) -> dict:
    """Best GFLOP/s over ``shapes`` and ``gemm_libraries`` (each pair timed for at least ``min_seconds`` after a
    warm-up): ``gflops``, the best per shape (``per_shape``) and which library gave it (``library``)."""
    dev = torch.device(device)
    per_shape, library = {}, {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=dev).to(dtype), torch.randn(k, n, device=dev).to(dtype)
        for name, mm in gemm_libraries(device).items():
            rhs = b if name == "torch.mm" else b.t().contiguous()  # oneDNN's linear takes the weight [n, k]
            mm(a, rhs)
            reps, t = 0, 0.0
            sync(device)
            t0 = time.perf_counter()
            while t < min_seconds or reps < 2:
                mm(a, rhs)
                reps += 1
                sync(device)
                t = time.perf_counter() - t0
            key, gflops = f"{m}x{k}x{n}", 2 * m * k * n * reps / t / 1e9
            if gflops > per_shape.get(key, 0.0):
                per_shape[key], library[key] = gflops, name
    return {"gflops": max(per_shape.values()), "per_shape": per_shape, "library": library}


def last_json(cmd: list[str], what: str):
    """Run ``cmd``; the JSON of its last stdout line (``ReferenceFailed`` with its output if it fails)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReferenceFailed(f"{what} failed:\n{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(rounds: list[dict], *keys: str) -> float | None:
    """Median over the rounds of ``round[k1][k2]...`` (None where no round has it)."""
    vals = []
    for r in rounds:
        for k in keys:
            r = r.get(k) if isinstance(r, dict) else None
        if r is not None:
            vals.append(r)
    return statistics.median(vals) if vals else None


@dataclass(frozen=True)
class Drift:
    """The fp32 GEMM peak (GFLOP/s) when the measurement began and when it ended."""

    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after / self.before - 1

    @property
    def trustworthy(self) -> bool:
        return abs(self.change) <= DRIFT_LIMIT

    def as_dict(self) -> dict:
        return {"gemm_fp32_gflops_before": round(self.before, 1), "gemm_fp32_gflops_after": round(self.after, 1),
                "change": round(self.change, 4), "limit": DRIFT_LIMIT, "trustworthy": self.trustworthy,
                "verdict": "trustworthy" if self.trustworthy else "untrustworthy"}

    def line(self) -> str:
        return (f"Drift guard: fp32 GEMM peak {self.before:.0f} GFLOP/s before, {self.after:.0f} after "
                f"({self.change:+.1%}; limit ±{DRIFT_LIMIT:.0%}): "
                + ("trustworthy." if self.trustworthy else "UNTRUSTWORTHY."))

    def banner(self) -> str:
        return (f"> **UNTRUSTWORTHY: the machine's fp32 GEMM peak moved {self.change:+.1%} during this run** "
                f"({self.before:.0f} -> {self.after:.0f} GFLOP/s; limit ±{DRIFT_LIMIT:.0%}): it got busier or "
                "quieter mid-run, so these timings cannot tell a slow program from a slow machine. Rerun on a "
                "quiet machine.")


class Harness:
    """One measurement: started (first GEMM peak) when built, finished (second peak) at the first ``write``."""

    def __init__(self, mode: str, device: str = "cpu", *, argv: list[str] | None = None,
                 reference_python: str | None = None, gemm_seconds: float | None = None,
                 peak: Callable[[], float] | None = None):
        self.mode, self.device, self.argv, self.reference_python = mode, device, argv, reference_python
        self.ref_version: str | None = None
        shapes = DRIFT_SHAPES["cuda" if device.startswith("cuda") else "cpu"]
        self.peak = peak or (lambda: gemm_peak(torch.float32, device, shapes, gemm_seconds or 0.3)["gflops"])
        print("drift guard: fp32 GEMM peak ...", flush=True)
        self.before = self.peak()
        self.drift: Drift | None = None

    @classmethod
    def of(cls, args, mode: str, device: str = "cpu") -> Harness:
        return cls(mode, device, argv=getattr(args, "argv", None),
                   reference_python=getattr(args, "reference_python", None),
                   gemm_seconds=getattr(args, "gemm_seconds", None))

    def reference(self, script: str, *payload):
        """Results of ``benchmark/perf/<script>`` run by the reference interpreter (str arguments as they are,
        others as JSON); its adapters version is kept for the report."""
        cmd = [self.reference_python, str(Path(__file__).with_name(script)),
               *(p if isinstance(p, str) else json.dumps(p) for p in payload)]
        got = last_json(cmd, "the reference side")
        self.ref_version = got["adapters_version"]
        return got["results"]

    def rounds(self, n: int, ours: Callable[[int, dict], None],
               reference: Callable[[int, dict], None] | None = None) -> list[dict]:
        """``n`` rounds; each side fills the round's dict; the reference runs only with a reference python,
        and who goes first alternates."""
        out = []
        sides = [ours] + ([reference] if reference and self.reference_python else [])
        for r in range(n):
            got: dict = {}
            for side in sides if r % 2 == 0 else sides[::-1]:
                side(r, got)
            out.append(got)
        return out

    def rounds_per_precision(self, n: int, precisions: list[str], ours: Callable[[str], dict],
                             reference: Callable[[str], dict]) -> list[dict]:
        """``rounds`` where each side runs once per precision p and fills "ours_<p>" / "reference_<p>"."""
        def side(who: str, key: str, run: Callable[[str], dict]) -> Callable[[int, dict], None]:
            def one_round(r, got):
                for p in precisions:
                    print(f"round {r + 1}/{n}: {who} {p} ...", flush=True)
                    got[f"{key}_{p}"] = run(p)
            return one_round

        return self.rounds(n, side("ours", "ours", ours), side("the reference", "reference", reference))

    def memory(self, module: str, precisions: list[str], configs, cfg: dict,
               reference: Callable[[tuple, str], float] | None = None) -> dict:
        """Peak MiB per side, precision and setup, each in a fresh process: ours via ``python -m
        benchmark.perf.<module> CFG`` (its last line: MiB), the reference via ``reference(config, precision)``:
        {"ours_fp32": {setup: MiB}, "reference_fp32": ...}."""
        out: dict[str, dict[str, float]] = {}
        for p in precisions:
            for c in configs:
                cmd = [sys.executable, "-m", f"benchmark.perf.{module}", json.dumps({**cfg, "config": list(c),
                                                                                     "precision": p})]
                for side, get in (("ours", lambda: last_json(cmd, "our memory child")),
                                  ("reference", reference and self.reference_python and (lambda: reference(c, p)))):
                    if not get:
                        continue
                    try:
                        out.setdefault(f"{side}_{p}", {})[c[0]] = get()
                    except ReferenceFailed as e:
                        print(str(e)[-2000:], file=sys.stderr)
        return out

    def finish(self) -> Drift:
        if self.drift is None:
            print("drift guard: fp32 GEMM peak again ...", flush=True)
            self.drift = Drift(self.before, self.peak())
        return self.drift

    def write(self, lines: list[str], raw: dict, targets: list[Target] = (), out: str | Path | None = None,
              quiet: bool = False) -> Path:
        """The report: the drift banner first when untrustworthy, the mode's lines, its targets (met or missed),
        provenance and the drift guard's line; the JSON gets ``provenance``, ``drift_guard`` and ``targets``."""
        drift = self.finish()
        prov = provenance(self.device, self.argv, reference=self.ref_version)
        head = [] if drift.trustworthy else [drift.banner(), ""]
        tl = target_lines(list(targets))
        if tl and not drift.trustworthy:
            tl[0] += " (measured during a drift: see the top)"
        body = head + lines + (["", *tl] if tl else []) + ["", *provenance_lines(prov), "", drift.line()]
        raw = {**raw, "reference": f"adapters {self.ref_version}" if self.ref_version else None, "provenance": prov, "drift_guard": drift.as_dict(),
               "targets": [{"text": t.text, "met": t.met, "measured": t.measured} for t in targets]}
        path = Path(out or REPORTS[self.mode])
        write_report(path, body, raw, quiet=quiet)
        return path


def memory_lines(memory: dict, names: list[str], device: str, what: str) -> list[str]:
    """The peak-memory table (``Harness.memory``'s result), one row per setup."""
    if not memory:
        return []
    keys = sorted(memory)
    return ["", f"Peak memory, MiB ({what}; " + ("CUDA: max allocated" if device.startswith("cuda") else
                                               "CPU: peak resident set, interpreter and libraries included") + "):",
            "", "| setup | " + " | ".join(k.replace("_", " ") for k in keys) + " |", "|---|" + "---:|" * len(keys),
            *(f"| {n} | " + " | ".join(f"{memory[k][n]:.0f}" if n in memory[k] else "-" for k in keys) + " |"
              for n in names)]
