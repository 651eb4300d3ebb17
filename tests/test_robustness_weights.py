"""Robustness of weights, caches, tokenizers and result writes (issue 13): strict module loading that
names the file, ``verify_weights`` for the runner, unreadable caches rebuilt, the same tiny tokenizer
on every machine, and a full disk as one StorageError with finished results intact."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmark.errors import CheckpointError, StorageError
from benchmark.modeling.checkpoint import MODULES, WEIGHTS, load_modules, save_modules, verify_weights
from benchmark.modeling.model import AdapterModel
from benchmark.spec.schema import AdapterParams, FusionParams
from conftest import ROOT


@pytest.fixture
def stage1(tiny_bert, tmp_path):
    """A run folder as a finished ST-A run writes it: adapter 'rte' + head 'rte'."""
    tok, make = tiny_bert
    m = AdapterModel(make())
    m.add_adapter("rte", AdapterParams())
    m.add_head("rte", "classification", 2)
    save_modules(m, tmp_path / "run", adapters=["rte"], heads=["rte"])
    return tmp_path / "run", make


def _rewrite(folder: Path, keep) -> None:
    state = load_file(str(folder / WEIGHTS))
    save_file({k: v for k, v in state.items() if keep(k)}, str(folder / WEIGHTS))


def test_good_folder_verifies_and_loads(stage1):
    folder, make = stage1
    assert verify_weights(folder) is None
    m = AdapterModel(make())
    load_modules(m, folder, adapters=["rte"], heads=[], fusions=[], encoder=False)
    assert "rte" in m.adapter_params


def test_stripped_adapter_tensors_are_refused_and_reported(stage1):
    folder, make = stage1
    _rewrite(folder, lambda k: ".adapters." not in k)  # the probe of issue 13: adapter tensors removed
    why = verify_weights(folder)
    assert why is not None and why.startswith("partial:") and ".adapters.rte." in why
    with pytest.raises(CheckpointError) as e:
        load_modules(AdapterModel(make()), folder, adapters=["rte"], heads=[], fusions=[], encoder=False)
    assert str(folder / WEIGHTS) in str(e.value) and "not in the file" in str(e.value) and "--force" in str(e.value)


def test_one_missing_tensor_is_partial(stage1):
    folder, make = stage1
    _rewrite(folder, lambda k: not k.endswith("layer.1.output.adapters.rte.up.bias"))
    assert "1 of" in verify_weights(folder)
    with pytest.raises(CheckpointError, match="layer.1.output.adapters.rte.up.bias"):
        load_modules(AdapterModel(make()), folder, adapters=["rte"], heads=[], fusions=[], encoder=False)


def test_misshapen_tensor_is_partial(stage1):
    folder, _ = stage1
    state = load_file(str(folder / WEIGHTS))
    k = next(k for k in state if k.endswith("adapters.rte.down.weight"))
    state[k] = torch.zeros(3, 3)
    save_file(state, str(folder / WEIGHTS))
    why = verify_weights(folder)
    assert why.startswith("partial:") and "(3, 3)" in why


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_weights_name_the_file(stage1, damage):
    folder, make = stage1
    w = folder / WEIGHTS
    data = w.read_bytes()
    w.write_bytes({"garbage": b"\x00not a safetensors file at all" * 10, "truncated": data[: len(data) // 2],
                   "empty": b""}[damage])
    why = verify_weights(folder)
    assert why is not None and why.startswith("unreadable:") and WEIGHTS in why
    with pytest.raises(CheckpointError) as e:
        load_modules(AdapterModel(make()), folder, adapters=["rte"], heads=[], fusions=[], encoder=False)
    assert str(w) in str(e.value) and "Traceback" not in str(e.value)


@pytest.mark.parametrize("text", ["{not json", "{}", '{"hidden_size": "x"}'])
def test_unreadable_module_list_names_the_file(stage1, text):
    folder, make = stage1
    (folder / MODULES).write_text(text)
    assert verify_weights(folder).startswith("unreadable: modules.json")
    with pytest.raises(CheckpointError) as e:
        load_modules(AdapterModel(make()), folder)
    assert str(folder / MODULES) in str(e.value)


def test_missing_files_are_reported(stage1):
    folder, _ = stage1
    (folder / WEIGHTS).unlink()
    assert verify_weights(folder) == f"missing: {WEIGHTS} is not in run"
    assert verify_weights(folder.parent / "nowhere").startswith("missing:")


def test_verify_weights_knows_fusion_and_houlsby_layouts(tiny_bert, tmp_path):
    _, make = tiny_bert
    m = AdapterModel(make())
    for a in ("a", "b"):
        m.add_adapter(a, AdapterParams())
    m.add_adapter("h", AdapterParams(type="houlsby", reduction_factor=4))
    m.add_fusion("fusion", ["a", "b"], FusionParams())
    m.add_head("t", "multiple_choice", 3)
    save_modules(m, tmp_path / "f", adapters=["a", "b", "h"], fusions=["fusion"], heads=["t"])
    assert verify_weights(tmp_path / "f") is None
    _rewrite(tmp_path / "f", lambda k: ".fusions.fusion.value." not in k)
    assert ".fusions.fusion.value.weight" in verify_weights(tmp_path / "f")


# ------------------------------------------------------------------------------------------ caches
def test_poisoned_tokenized_cache_is_rebuilt_with_a_message(tiny_bert, capsys, tmp_path, monkeypatch):
    from benchmark.data.encode import encode_split
    from benchmark.spec import load_registry

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "dev.csv").write_text("a,b,y\n" + "".join(f"first {i},second {i},{i % 2}\n" for i in range(12)))
    (tmp_path / "tasks" / "cached.yaml").write_text(
        "data_files: {train: dev.csv, validation: dev.csv}\ntype: classification\n"
        "input: {text: '{{ a }}', text_pair: '{{ b }}'}\nlabel: {column: y, names: [n, p], map: {'0': 0, '1': 1}}\n")
    task = load_registry([tmp_path]).tasks["cached"]
    monkeypatch.setenv("AFBENCH_CACHE_DIR", str(tmp_path / "cache"))
    tok = tiny_bert[0]
    first = encode_split(task, "validation", tok, max_rows=8)
    (cache,) = (tmp_path / "cache" / "tokenized").glob("cached-validation-*.pt")
    for poison in (b"\x80\x04garbage", cache.read_bytes()[:40], b""):  # poisoned, truncated, empty
        cache.write_bytes(poison)
        again = encode_split(task, "validation", tok, max_rows=8)
        out = capsys.readouterr().out
        assert f"tokenized cache {cache} cannot be read" in out and "rebuilding it" in out
        assert again.examples == first.examples
        assert cache.stat().st_size > 100  # rewritten
    encode_split(task, "validation", tok, max_rows=8)
    assert "cannot be read" not in capsys.readouterr().out  # and read back without a word


def test_cache_that_cannot_be_written_costs_only_the_cache(tmp_path, capsys, monkeypatch):
    from benchmark.data import encode

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)  # encode imports torch where it saves
    encode.write_cache(tmp_path / "x.pt", {"examples": [], "rows_total": 0})
    assert "could not write the tokenized cache" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------------- tokenizers
def test_tiny_tokenizers_are_the_shipped_files(registry):
    from benchmark.modeling import tokenizer_files
    from benchmark.modeling.backbone import load_tokenizer, offline_tokenizer_file

    for name in ("tiny-bert", "tiny-roberta"):
        spec = registry.backbones[name].tokenizer
        shipped = tokenizer_files.shipped_file(spec)
        assert shipped is not None and shipped.parent == ROOT / "benchmark" / "modeling" / "tokenizers"
        vocab = json.loads(shipped.read_text())["model"]["vocab"]
        assert load_tokenizer(registry.backbones[name]).get_vocab() == vocab
        assert offline_tokenizer_file(spec) == shipped  # the file a tiny backbone loads
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "modeling/tokenizers/*.json" in pyproject  # installed with the package


def test_two_fresh_loads_give_identical_ids(tmp_path):
    code = ("import json\n"
            "from benchmark.spec import load_registry\n"
            "from benchmark.modeling.backbone import load_tokenizer\n"
            "reg = load_registry()\n"
            "out = {}\n"
            "for b in ('tiny-bert', 'tiny-roberta'):\n"
            "    t = load_tokenizer(reg.backbones[b])\n"
            "    out[b] = [t('The cat sat on the mat; Observation Text: 42 entails it.', 'no')['input_ids'],\n"
            "              sorted(t.get_vocab().items())]\n"
            "print(json.dumps(out))\n")
    outs = []
    for i in range(2):
        cache = tmp_path / f"cache{i}"
        env = {**os.environ, "AFBENCH_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        outs.append(json.loads(p.stdout.strip().splitlines()[-1]))
        assert not (cache / "tokenizers").exists(), "nothing trained: the shipped file is used"
    assert outs[0] == outs[1]


# ----------------------------------------------------------------------------------------- storage
def test_disk_full_while_writing_a_result_is_one_storage_error(tmp_path, monkeypatch):
    from benchmark.runner import results

    target = tmp_path / "exp" / "run" / "result.json"
    results.write_json_atomic(target, {"status": "finished"})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    from benchmark import paths

    monkeypatch.setattr(paths.os, "fsync", full)  # results.write_json_atomic writes through paths.write_atomic
    with pytest.raises(StorageError) as e:
        results.write_json_atomic(target, {"status": "failed"})
    text = e.value.render()
    assert "the disk is full" in text and "ENOSPC" in text and str(target.parent) in text
    assert "finished before are intact" in text and "--results-dir" in text
    assert len(text.splitlines()) == 1
    assert json.loads(target.read_text()) == {"status": "finished"}  # the old file is intact
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temp file left


def test_disk_full_while_saving_weights_is_a_storage_error(tiny_bert, tmp_path, monkeypatch):
    m = AdapterModel(tiny_bert[1]())
    m.add_head("t", "classification", 2)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(StorageError) as e:
        patch.setattr(os, "fsync", full)  # where a full disk shows (the bytes were only buffered until then)
        save_modules(m, tmp_path / "w", heads=["t"])
    assert "weights.safetensors" in str(e.value) and "the disk is full" in str(e.value)
    assert not list((tmp_path / "w").iterdir())


def test_bench_errors_cross_a_process_pool_intact():
    """--jobs runs train in worker processes: a StorageError raised there must arrive as one paragraph."""
    import pickle

    e = StorageError.from_os_error(Path("/r/exp/run/result.json"), OSError(errno.ENOSPC, "No space left on device"))
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is StorageError and back.render() == e.render() and back.render().count("Error") == 1
