"""File content hashes: the one place a file's bytes are fed to sha256.

``file_sha256(path)``: the hex digest of one file (a run's ``weights_sha256``, a mirrored split's
fingerprint, a shipped tokenizer file's fingerprint take a prefix of it). ``feed_file(h, path)``: stream
one file into a hash the caller builds over several files and names (a local backbone's folder
fingerprint, a published adapter's content hash). Both read in 1 MiB blocks, so a multi-GB checkpoint
never sits in memory. Imports nothing of the package (layer 0): every layer may use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def feed_file(h, path: str | Path):
    """Update the hash object ``h`` with every byte of ``path``, in order; returns ``h``."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h


def file_sha256(path: str | Path) -> str:
    """sha256 of the file's bytes, 64 hex digits."""
    return feed_file(hashlib.sha256(), path).hexdigest()
