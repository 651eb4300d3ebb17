"""The tiny offline tokenizers of the ``random_init`` backbones: trained once, shipped as JSON files.

The ``tokenizers`` trainers do not give the same vocabulary on every machine (ties between equally
frequent merges are broken differently; on two machines 780 of 1,036 ids of the tiny-bert vocabulary
differed), so smoke weights trained on two machines were not comparable although their run ids were
the same. The tokenizer files are therefore built once by this module and committed as package data
under ``benchmark/modeling/tokenizers/``; ``backbone.offline_tokenizer`` loads them and trains only
for a tokenizer spec no shipped file matches (with a message saying so).

Rebuild the shipped files (after changing the corpus or a shipped tokenizer spec)::

    python -m benchmark.modeling.tokenizer_files
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmark.data.sources import digest
from benchmark.hashing import file_sha256
from benchmark.paths import write_atomic
from benchmark.spec.schema import TokenizerSpec

CORPUS = Path(__file__).with_name("tiny_corpus.txt")
SHIPPED = Path(__file__).with_name("tokenizers")
SPECIAL = {"wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
           "bytelevel_bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}


def file_name(tspec: TokenizerSpec) -> str:
    """``<kind>-<digest of the spec and the corpus>.json``: a changed corpus or spec never matches."""
    key = digest([tspec.model_dump(), CORPUS.read_text(encoding="utf-8")])[:16]
    return f"{tspec.kind}-{key}.json"


def shipped_file(tspec: TokenizerSpec) -> Path | None:
    p = SHIPPED / file_name(tspec)
    return p if p.is_file() else None


def fingerprint_file(path: Path) -> str:
    """sha256 (16 hex digits) of a tokenizer file: the same file, the same ids on every machine."""
    return file_sha256(path)[:16]


def train_tokenizer(tspec: TokenizerSpec, out: Path) -> Path:
    """Train a tokenizer of ``tspec`` on the bundled corpus and save it to ``out`` (atomically)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    lines = [ln for ln in CORPUS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    special = SPECIAL[tspec.kind]
    if tspec.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=tspec.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        alphabet = [chr(c) for c in range(33, 127)]
        trainer = trainers.WordPieceTrainer(vocab_size=tspec.vocab_size, special_tokens=special,
                                            initial_alphabet=alphabet, show_progress=False)
        tok.train_from_iterator(lines, trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
        tok.decoder = decoders.WordPiece()
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=tspec.vocab_size, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(lines, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        tok.decoder = decoders.ByteLevel()
    write_atomic(out, tok.to_str(pretty=True))  # the bytes Tokenizer.save(path, pretty=True) writes
    return out


def build_shipped(spec_dir: Path | None = None) -> list[Path]:
    """Write the tokenizer file of every ``random_init`` backbone under ``spec_dir`` (default: specs/)."""
    from benchmark.spec import load_registry

    reg = load_registry() if spec_dir is None else load_registry([spec_dir], include_default=False)
    out = []
    for b in reg.backbones.values():
        if b.source == "random_init" and b.tokenizer is not None:
            path = SHIPPED / file_name(b.tokenizer)
            if path not in out:
                out.append(train_tokenizer(b.tokenizer, path))
    return out


if __name__ == "__main__":
    for p in build_shipped(Path(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(f"wrote {p} ({fingerprint_file(p)})")
