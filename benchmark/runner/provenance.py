"""What a result records about the machine and the environment it ran in, beyond versions and git.

- ``cpu_model()``: the processor's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere).
- ``environment()``: the sha256 of the lock file (``requirements.lock``, everything but torch) and
  whether the installed packages match it, with the ones that differ.
- ``PeakMemory``: the peak resident memory of one run in a process that may have run others before
  (pool workers are reused, so the process's ``ru_maxrss`` would be the peak of all its runs). On
  Linux the kernel's high-water mark is reset at the start of the run (``/proc/self/clear_refs``,
  value 5) and read at its end (``VmHWM``); where that is not possible a thread samples ``VmRSS``
  every 50 ms (a lower bound: a peak shorter than that can be missed), and the record says which.
  On CUDA ``torch.cuda.max_memory_allocated`` is reset and read the same way.
"""

from __future__ import annotations

import hashlib
import platform
import re
import threading
from contextlib import suppress
from functools import lru_cache
from pathlib import Path

from benchmark.paths import read_regular
from benchmark.runner.results import installed

LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"
MAX_LOCK_BYTES = 16 << 20
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@lru_cache(maxsize=1)
def cpu_model() -> str | None:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def lock_pins(text: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a pip/uv lock file (names normalised as PEP 503's)."""
    return {re.sub(r"[-_.]+", "-", m.group(1)).lower(): m.group(2) for line in text.splitlines()
            if (m := _PIN.match(line.strip()))}


def environment(lock_file: Path | None = None) -> dict:
    """``{"lock": "requirements.lock", "lock_sha256", "matches_lock", "drift": [...]}``; the lock's
    fields are None when the program runs without its checkout (a plain ``pip install``). The lock is read
    as bytes (``paths.read_regular``; the hash is of its bytes): a lock that is not UTF-8 text, or cannot be
    read, adds ``lock_note`` saying so instead of failing the run being recorded."""
    lock_file = lock_file or LOCK_FILE
    try:
        raw = read_regular(lock_file, MAX_LOCK_BYTES)
    except OSError as e:
        missing = isinstance(e, FileNotFoundError)
        return {"lock": None, "lock_sha256": None, "matches_lock": None, "drift": []} | (
            {} if missing else {"lock_note": f"{lock_file.name} could not be read ({e.strerror}); the environment "
                                             "was not compared with it"})
    note = {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        note = {"lock_note": f"{lock_file.name} is not UTF-8 text ({e.reason} at byte {e.start}); its sha256 is of "
                             "its bytes and only its readable name==version lines were compared"}
    drift = [f"{name} {have or 'not installed'} (lock: {want})"
             for name, want in sorted(lock_pins(text).items()) if (have := installed(name)) != want]
    return {"lock": lock_file.name, "lock_sha256": hashlib.sha256(raw).hexdigest(),
            "matches_lock": not drift, "drift": drift} | note


def _status_kib(field: str) -> int | None:
    with suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


class PeakMemory:
    """``with PeakMemory(device) as peak: ...; peak.record()`` -> the run's memory figures."""

    def __init__(self, device=None):
        self.device, self.method = device, None
        self._cuda = device is not None and device.type == "cuda"
        self._stop, self._thread, self._sampled = threading.Event(), None, 0

    def __enter__(self) -> PeakMemory:
        self.start_kib = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM reset at run start"
        except OSError:
            self.method = "VmRSS sampled every 50 ms"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self._cuda:
            import torch
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._sampled = max(self._sampled, _status_kib("VmRSS") or 0)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_kib = max(self._sampled, _status_kib("VmRSS") or 0) or None
        else:
            self.peak_kib = _status_kib("VmHWM")
        self.cuda_bytes = None
        if self._cuda:
            import torch
            self.cuda_bytes = int(torch.cuda.max_memory_allocated(self.device))

    def record(self) -> dict:
        kib = lambda v: None if v is None else v * 1024  # noqa: E731
        return {"peak_rss_bytes": kib(self.peak_kib), "rss_at_start_bytes": kib(self.start_kib),
                "peak_rss_method": self.method, "cuda_max_allocated_bytes": self.cuda_bytes}
