"""glibc malloc settings for CPU training: keep freed activation buffers in the heap instead of
handing them back to the kernel after every step.

Why: a training step allocates and frees the same tens of MB of activations each time. glibc serves
blocks above ``M_MMAP_THRESHOLD`` (dynamic, starting at 128 KiB) with fresh ``mmap`` calls and trims
the heap top above ``M_TRIM_THRESHOLD``, so every step pays page faults and zeroing for memory it
just released. A session's notes saw a MiniLM step with the full last layer go from 0.63 to 0.78
steps/s with the environment setting

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296

``tune_malloc()`` makes the same choice at run time with ``mallopt`` (through ctypes): blocks up to
32 MiB (glibc's largest allowed mmap threshold on 64-bit) come from the heap, and the heap is never
trimmed below 2 GiB - 1 (``mallopt`` takes a C int, so 4 GiB as in the tunable cannot be passed;
both are "never" for this workload). Only the process's memory reuse changes, never a number it
computes. It is **not** called by default: ``afbench perf --mode malloc`` measures it (with and
without, each in its own process) so that the choice is made on a measurement.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # = glibc's HEAP_MAX_SIZE / 2 on 64-bit, the largest it accepts
TRIM_THRESHOLD = 2**31 - 1  # the largest C int
TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"  # the env equivalent


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None  # musl has no mallopt


def tune_malloc() -> bool:
    """Set the two thresholds in this process; True if glibc accepted both (False elsewhere: no-op)."""
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
