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

import functools
import random
import string
import sys
from pathlib import Path

from benchmark.data.sources import digest
from benchmark.hashing import file_sha256
from benchmark.paths import write_atomic
from benchmark.spec.schema import TokenizerSpec

# The tiny tokenizers' training text is generated, not shipped: common English words, then made-up words built from
# English-like syllables, drawn with Zipf-like frequencies into sentences with digits and punctuation, from a fixed
# seed. No dataset's text is in the package, the vocabulary fills the specs' 2,000 ids, and common words stay whole
# (RTE dev: 139 tokens a pair, 135 with the earlier hand-written corpus). Its digest names the shipped tokenizer
# files, so changing anything here needs ``python -m benchmark.modeling.tokenizer_files`` (then commit the files).
_COMMON = """the of and to a in is it you that he was for on are with as his they be at one have this from or had by
not but what all were we when your can said there use an each which she do how their if will up other about out many
then them these so some her would make like him into time has look two more write go see number no way could people
my than first water been call who oil its now find long down day did get come made may part over new after also only
little work know place year live me back give most very good man think say great where help through much before line
right too mean old any same tell boy follow came want show around form three small set put end does another well large
must big even such because turn here why ask went men read need land different home us move try kind hand picture
again change off play spell air away animal house point page letter mother answer found study still learn should world
high every near add food between own below country plant last school father keep tree never start city earth eye light
thought head under story saw left few while along might close something seem next hard open example begin life always
those both paper together got group often run important until children side feet car mile night walk white sea began
grow took river four carry state once book hear stop without second later miss idea enough eat face watch far real
almost let above girl sometimes mountain cut young talk soon list song being leave family true false yes""".split()
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z",
           "bl", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gr", "pl", "pr", "sh", "sl", "st", "str", "th", "tr", "wh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "rt", "x", "q"]
CORPUS_SEED, WORDS, LINES = 0, 4000, 1500


@functools.cache
def corpus() -> str:
    """The tiny tokenizers' training text: the same string on every machine (one sentence per line)."""
    rng = random.Random(CORPUS_SEED)
    made_up = sorted({"".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                              for _ in range(rng.randint(1, 3))) for _ in range(WORDS)} - set(_COMMON))
    rng.shuffle(made_up)
    lexicon = _COMMON + made_up
    weights = [1 / (rank + 1) for rank in range(len(lexicon))]
    lines = []
    for _ in range(LINES):
        words = rng.choices(lexicon, weights, k=rng.randint(5, 15))
        words = [str(rng.randint(0, 2026)) if rng.random() < 0.05 else w for w in words]
        words = [w + rng.choice(",;:") if rng.random() < 0.08 else w for w in words]
        lines.append(" ".join(words).capitalize() + rng.choice(".....?!"))
    lines.append(" ".join(f"x{c}y" for c in string.ascii_letters + string.digits))  # every ## continuation
    lines.append(string.punctuation)
    return "\n".join(lines) + "\n"


SHIPPED = Path(__file__).with_name("tokenizers")
SPECIAL = {"wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
           "bytelevel_bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}


def file_name(tspec: TokenizerSpec) -> str:
    """``<kind>-<digest of the spec and the corpus>.json``: a changed corpus or spec never matches."""
    key = digest([tspec.model_dump(), corpus()])[:16]
    return f"{tspec.kind}-{key}.json"


def shipped_file(tspec: TokenizerSpec) -> Path | None:
    p = SHIPPED / file_name(tspec)
    return p if p.is_file() else None


def fingerprint_file(path: Path) -> str:
    """sha256 (16 hex digits) of a tokenizer file: the same file, the same ids on every machine."""
    return file_sha256(path)[:16]


def train_tokenizer(tspec: TokenizerSpec, out: Path) -> Path:
    """Train a tokenizer of ``tspec`` on the generated corpus (``corpus``) and save it to ``out`` (atomically)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    lines = corpus().splitlines()
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
