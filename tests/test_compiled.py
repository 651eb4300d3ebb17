"""The compiled path (``compute.compile`` / ``afbench run --compile``, benchmark/modeling/compiled.py): its run ids,
its bucketing, and the tiny smoke grid trained compiled against eager.

Tolerance (docs/perf.md, "Compiled path"): with dropout off (a tiny-bert copy at dropout 0, so eager and inductor
draw no random masks from their different streams) the two paths compute the same function with other kernels,
so every run's per-epoch training loss agrees to 1e-3 (absolute) and its dev accuracy to at most one dev row
(a logit pair within rounding of a tie may flip); in practice they agree exactly on this grid.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.modeling.compiled import bucket_length, compiler_missing, pad_batch
from conftest import needs_mirror, tiny_experiment, write_experiments

LOSS_TOLERANCE = 1e-3


def test_bucket_lengths_are_powers_of_two_within_the_position_limit():
    assert [bucket_length(n) for n in (1, 8, 9, 16, 17, 100, 128)] == [8, 8, 16, 16, 32, 128, 128]
    assert bucket_length(300, limit=512) == 512 and bucket_length(300, limit=320) == 320
    assert bucket_length(600, limit=512) == 600  # never shorter than the batch (the model refuses it, not us)
    # a [B, 300] batch anywhere in 257..512 is one of 7 shapes from 8 to 512: recompiles stay bounded
    assert len({bucket_length(n, 512) for n in range(1, 513)}) == 7


def test_padding_masks_the_new_positions_and_keeps_the_labels():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]]), "attention_mask": torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), "token_type_ids": torch.zeros(2, 5, dtype=torch.long),
        "labels": torch.tensor([1, 0])}
    out = pad_batch(batch, pad_id=3)
    assert out["input_ids"].shape == (2, 8) and out["input_ids"][:, 5:].eq(3).all()
    assert out["attention_mask"][:, 5:].eq(0).all() and out["attention_mask"][:, :5].equal(batch["attention_mask"])
    assert out["labels"] is batch["labels"]
    mc = {"input_ids": torch.ones(2, 4, 9, dtype=torch.long), "attention_mask": torch.ones(2, 4, 9, dtype=torch.long),
          "labels": torch.tensor([0, 3])}  # multiple choice [B, K, L]
    assert pad_batch(mc, pad_id=0)["input_ids"].shape == (2, 4, 16)


def test_compile_enters_the_run_id_only_when_on(registry):
    from benchmark.errors import SpecError
    from benchmark.plan.build import Options, build_plan
    from benchmark.spec.schema import ExperimentSpec

    exp = ExperimentSpec.model_validate({"name": "c", "backbones": ["tiny-bert"], "seeds": [1], "groups": [
        {"tasks": ["rte"], "methods": ["st_a"]}]})
    eager = build_plan(registry, exp).runs[0]
    off = build_plan(registry, exp.model_copy(update={"compute": exp.compute.model_copy(update={"compile": False})})
                     ).runs[0]
    on = build_plan(registry, exp, options=Options(compile=True)).runs[0]
    assert off.id == eager.id and "compile" not in eager.identity(registry)["compute"]
    assert "compile" not in eager.config(registry)["compute"]  # an eager run's stored config reads as before
    assert on.id != eager.id and on.identity(registry)["compute"]["compile"] is True
    assert on.compute.cpu_kernels == "stock" and eager.compute.cpu_kernels == "fast"
    stock = build_plan(registry, exp, options=Options(cpu_kernels="stock")).runs[0]
    assert on.id != stock.id  # compiled is not the stock eager run under another name
    with pytest.raises(SpecError, match="cpu_kernels is fast"):
        build_plan(registry, exp, options=Options(compile=True, cpu_kernels="fast"))


NO_DROPOUT = """description: tiny-bert without dropout (eager and inductor draw dropout masks from different streams)
source: random_init
model_type: bert
config: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64,
         max_position_embeddings: 512, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}
tokenizer: {kind: wordpiece, vocab_size: 2000, lowercase: true}
"""


@needs_mirror
@pytest.mark.slow
@pytest.mark.skipif(compiler_missing(torch.device("cpu")) is not None,
                    reason=f"torch.compile on the CPU needs a C++ compiler: {compiler_missing(torch.device('cpu'))}")
def test_the_compiled_path_trains_the_tiny_grid_as_eager_does(tmp_path):
    from benchmark.cli import main

    specs = write_experiments(tmp_path / "specs", tiny_compiled=tiny_experiment(epochs=2).replace(
        "backbones: [tiny-bert]", "backbones: [tiny-bert-nodrop]"))
    (specs / "backbones").mkdir()
    (specs / "backbones" / "tiny-bert-nodrop.yaml").write_text(NO_DROPOUT)
    args = ["--specs", str(specs), "--results-dir", str(tmp_path / "r")]
    # eager with the stock kernels: the compiled path computes with them, so only compilation differs
    assert main(["run", "tiny_compiled", "--cpu-kernels", "stock", *args]) == 0
    assert main(["run", "tiny_compiled", "--compile", *args]) == 0
    everything = [json.loads(f.read_text()) for f in (tmp_path / "r" / "tiny_compiled").glob("[!.]*/result.json")]
    assert len(everything) == 12 and all(r["status"] == "finished" for r in everything)  # 6 runs, twice
    eager = {(r["task"], r["label"], r["role"]): r for r in everything if "compile" not in r}
    compiled = {(r["task"], r["label"], r["role"]): r for r in everything if "compile" in r}
    assert set(eager) == set(compiled) and len(eager) == 6 and len({r["run_id"] for r in everything}) == 12
    for key, c in compiled.items():
        e = eager[key]
        assert c["config"]["compute"]["compile"] is True and c["cpu_kernels"] == e["cpu_kernels"] == "stock"
        rec = c["compile"]
        assert rec["backend"] == "inductor" and rec["graphs"] >= 2  # a training and an evaluation graph at least
        assert rec["recompiles"] == rec["graphs"] - 1  # no graph breaks: one graph per (mode, shape)
        assert rec["graphs"] == len(rec["shapes"])  # one graph per (mode, bucketed shape): bounded by the buckets
        assert all(int(s.split()[1].split("x")[-1]) in (8, 16, 32) for s in rec["shapes"])  # power-of-two lengths
        assert c["padding"]["computed_tokens"] >= e["padding"]["computed_tokens"]  # padded up to the buckets
        assert c["padding"]["real_tokens"] == e["padding"]["real_tokens"]
        assert len(c["history"]) == len(e["history"]) == 2
        for hc, he in zip(c["history"], e["history"]):
            assert abs(hc["train_loss"] - he["train_loss"]) <= LOSS_TOLERANCE, (key, hc, he)
            rows = c["data"]["eval_rows"]
            assert abs(hc["dev_accuracy"] - he["dev_accuracy"]) <= 100.0 / rows + 1e-9, (key, hc, he)
