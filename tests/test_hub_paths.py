"""The real Hub code paths (datasets.load_dataset, from_pretrained) are kept and exercised here with
the Hub calls replaced by fakes: this machine cannot reach the Hub, real users can."""

from __future__ import annotations

import pytest

from benchmark.data import sources
from benchmark.errors import BenchError, DataError


def test_read_rows_uses_datasets_load_dataset_without_a_mirror(registry, monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}])

    monkeypatch.delenv("AFBENCH_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    rows = sources.read_rows(registry.tasks["rte"], "validation")
    assert calls == [("nyu-mll/glue", "rte", "validation")]
    assert rows == [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}]
    assert sources.locate(registry.tasks["rte"], "train").kind == "hub"


def test_hub_failure_is_a_clear_error(registry, monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.delenv("AFBENCH_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        sources.read_rows(registry.tasks["rte"], "train")
    msg = str(e.value)
    assert "rte" in msg and "Hugging Face Hub failed" in msg and "AFBENCH_DATA_DIR" in msg


def test_hub_backbone_loads_by_model_id(registry, monkeypatch):
    import transformers

    from benchmark.modeling import backbone

    seen = {}

    def fake_from_pretrained(model_id, **kwargs):
        seen["id"], seen["kwargs"] = model_id, kwargs
        raise OSError("no network")

    config = transformers.BertConfig()
    monkeypatch.setattr(backbone.hub, "unreachable_reason", lambda: None)  # as online: no cache-only retry
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda model_id, **kw: config)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake_from_pretrained)
    with pytest.raises(BenchError, match="cannot load backbone 'bert-base-uncased'"):
        backbone.load_encoder(registry.backbones["bert-base-uncased"])
    # the config read first gives the family's layout; BERT's model class takes add_pooling_layer
    assert seen == {"id": "google-bert/bert-base-uncased", "kwargs": {"config": config, "add_pooling_layer": False}}


def test_minilm_backbone_is_offline(registry):
    from benchmark.modeling.backbone import load_encoder, load_tokenizer

    spec = registry.backbones["minilm-l6"]
    tok = load_tokenizer(spec)
    enc = load_encoder(spec, tok)
    assert enc.config.hidden_size == 384 and enc.config.num_hidden_layers == 6
    assert tok("Hello world")["input_ids"] == [101, 7592, 2088, 102]
