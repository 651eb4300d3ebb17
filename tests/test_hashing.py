"""The one file-hash helper (benchmark/hashing.py): every file content hash the package records (a run's
weights_sha256, a split's fingerprint, a shipped tokenizer's fingerprint, a local backbone's folder
fingerprint, a published adapter's content hash) goes through it and gives the same value as the three
inline copies it replaced (committed run ids and results hold these values)."""

from __future__ import annotations

import hashlib
import os

from benchmark.data.published import content_hash
from benchmark.data.sources import SplitSource
from benchmark.hashing import BLOCK, feed_file, file_sha256
from benchmark.modeling import tokenizer_files
from benchmark.plan.identity import folder_fingerprint
from conftest import ROOT


def _blob(n: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def test_file_sha256_is_sha256_of_the_bytes_across_block_boundaries(tmp_path):
    for n in (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 17):
        p = tmp_path / f"f{n}"
        p.write_bytes(_blob(n))
        assert file_sha256(p) == hashlib.sha256(_blob(n)).hexdigest()
    h = feed_file(feed_file(hashlib.sha256(b"x"), tmp_path / "f1"), tmp_path / f"f{BLOCK}")
    assert h.hexdigest() == hashlib.sha256(b"x" + _blob(1) + _blob(BLOCK)).hexdigest()


def test_every_recorded_file_hash_keeps_its_value(tmp_path):
    data = _blob(BLOCK + 5)
    split = tmp_path / "train.jsonl"
    split.write_bytes(data)
    assert SplitSource("local", str(split)).fingerprint() == "sha256:" + hashlib.sha256(data).hexdigest()[:16]
    shipped = next(tokenizer_files.SHIPPED.iterdir())
    assert tokenizer_files.fingerprint_file(shipped) == hashlib.sha256(shipped.read_bytes()).hexdigest()[:16]

    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "w.bin").write_bytes(data)
    (folder / ".hidden").write_text("not hashed")
    want = hashlib.sha256(b"config.json\0" + b'{"a": 1}' + b"\0" + b"sub/w.bin\0" + data + b"\0").hexdigest()[:16]
    assert folder_fingerprint(str(folder)) == want

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"x": 2}')
    (adapter / "pytorch_adapter.bin").write_bytes(data)
    want = hashlib.sha256(b"adapter_config.json\0" + b'{"x": 2}' + b"pytorch_adapter.bin\0" + data).hexdigest()
    assert content_hash(adapter) == want


def test_no_module_hashes_a_file_by_itself():
    """A module may build a hash over several things (it names them), but a file's bytes are read for a
    hash only in hashing.py."""
    own = []
    for p in (ROOT / "benchmark").rglob("*.py"):
        text = p.read_text(encoding="utf-8")
        if p.name != "hashing.py" and "hashlib" in text and ('"rb"' in text or "read_bytes()" in text):
            own.append(os.fspath(p.relative_to(ROOT)))
    assert own == []
