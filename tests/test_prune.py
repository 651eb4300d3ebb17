"""Pruned fusion (``benchmark/modeling/prune.py``, ``afbench prune``, ``fusion.prune: {keep: k}``): keeping all
adapters is the unpruned model bit for bit, keeping one is that adapter alone through the fusion path, the
softmax is renormalised over the kept ones, and both the command and the method option run end to end."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from benchmark.analysis.prune import ks_for
from benchmark.modeling.fusion import AdapterFusion, fast_fusion, naive_fusion
from benchmark.modeling.model import AdapterModel, Fuse
from benchmark.modeling.prune import mean_attention, rank_adapters, top_k
from benchmark.records import RESULT, load_run
from benchmark.spec.schema import AdapterParams, FusionParams
from conftest import needs_mirror

NAMES = list("abcd")


def _model(make, seed=0):
    torch.manual_seed(seed)
    model = AdapterModel(make())
    for n in NAMES:
        model.add_adapter(n, AdapterParams(reduction_factor=4))
    model.add_fusion("f", NAMES, FusionParams())
    model.add_head("t", "classification", 2)
    with torch.no_grad():  # away from the near-identity init so every adapter matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.set_active(Fuse("f"))
    return model.eval()


def _inputs(vocab):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_ranking_and_top_k():
    layers = [[0.1, 0.5, 0.3, 0.1], [0.3, 0.3, 0.3, 0.1]]
    assert mean_attention(layers) == pytest.approx([0.2, 0.4, 0.3, 0.1])
    assert rank_adapters(NAMES, layers) == ["b", "c", "a", "d"]
    assert top_k(NAMES, layers, 2) == ["b", "c"] and top_k(NAMES, layers, 3) == ["a", "b", "c"]  # fusion order
    assert top_k(NAMES, layers, 9) == NAMES
    assert rank_adapters(["x", "y"], [[0.5, 0.5]]) == ["x", "y"]  # ties: the fusion's order
    assert ks_for(16) == [1, 2, 4, 8, 16] and ks_for(3) == [1, 2, 3] and ks_for(11) == [1, 2, 4, 8, 11]
    with pytest.raises(ValueError):
        top_k(NAMES, layers, 0)


@torch.no_grad()
def test_keeping_all_is_the_unpruned_model_exactly_and_pruning_is_undone(tiny_bert):
    tok, make = tiny_bert
    model = _model(make)
    x = _inputs(model.config.vocab_size)
    before = model(head="t", **x)
    assert model.prune_fusion("f", list(reversed(NAMES))) == NAMES  # the fusion's own order
    assert torch.equal(model(head="t", **x), before)
    model.prune_fusion("f", ["c"])
    assert not torch.equal(model(head="t", **x), before)
    model.prune_fusion("f", NAMES)  # back to all of them
    assert torch.equal(model(head="t", **x), before)
    with pytest.raises(KeyError):
        model.prune_fusion("f", ["zz"])


@torch.no_grad()
@pytest.mark.parametrize("impl", ["fast", "naive"])
def test_keeping_one_is_that_adapter_alone_through_the_fusion_path(tiny_bert, impl):
    tok, make = tiny_bert
    model = _model(make)
    for f in model.fusion_layers("f"):
        f.params = f.params.model_copy(update={"implementation": impl})
    x = _inputs(model.config.vocab_size)
    model.prune_fusion("f", ["b"])
    model.start_capture()
    pruned = model(head="t", **x)
    layers = model.stop_capture()
    assert all(row == pytest.approx([1.0]) for row in layers)  # one adapter: all the attention
    # the same layers computed by hand: o = V(z_b(h)) + f, then LN(o + x), with z_b the adapter's output
    seen = []

    def by_hand(mod, args, out):
        hidden, residual_in = args
        f_out = mod.dropout(mod.dense(hidden))
        h = mod.LayerNorm(f_out + residual_in)
        fusion = mod.fusions["f"]
        seen.append(True)
        return mod.LayerNorm(fusion.value(mod.adapters["b"](h)) + f_out + residual_in)

    hooks = [m.register_forward_hook(by_hand) for m in model.slots("output")]
    manual = model(head="t", **x)
    for h in hooks:
        h.remove()
    assert seen and torch.allclose(pruned, manual, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_the_softmax_is_renormalised_over_the_kept_adapters(tiny_bert):
    tok, make = tiny_bert
    torch.manual_seed(0)
    from benchmark.modeling.adapters import BottleneckAdapter

    adapters = [BottleneckAdapter(32, AdapterParams(reduction_factor=4)) for _ in NAMES]
    for a in adapters:
        for p in a.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fusion = AdapterFusion(32, NAMES, FusionParams(), 0.1).eval()
    h, res = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    _, full = naive_fusion(fusion, h, adapters, res)
    keep = [0, 2]
    o_naive, part = naive_fusion(fusion, h, [adapters[i] for i in keep], res)
    o_fast, part_fast = fast_fusion(fusion, h, [adapters[i] for i in keep], res)
    expect = full[..., keep] / full[..., keep].sum(-1, keepdim=True)
    assert torch.allclose(part, expect, atol=1e-6) and torch.allclose(part_fast, expect, atol=1e-6)
    assert torch.allclose(o_naive, o_fast, atol=1e-5)


@needs_mirror
@pytest.mark.slow
def test_afbench_prune_and_the_keep_option_end_to_end(tmp_path):
    from benchmark.cli import main

    d = tmp_path / "specs" / "experiments"
    d.mkdir(parents=True)
    (d / "tiny_prune.yaml").write_text(textwrap.dedent("""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{tasks: [rte], methods: [fusion_st_a, fusion_st_a_keep2]}]
        fusion: {sources: [rte, cb, socialiqa]}
        caps: {max_train_rows: 24, max_eval_rows: 16, max_epochs: 1, max_length: 32}
        selection: heldout
    """))
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_prune", *args]) == 0
    res = {r["label"]: r for r in (json.loads(f.read_text()) for f in (tmp_path / "r" / "tiny_prune").glob("*/result.json"))}
    kept = res["fusion_st_a_keep2_rf16"]
    assert len(kept["prune"]["kept"]) == 2 and kept["prune"]["ranked_on"] == "heldout"
    assert kept["best_metric"] == kept["prune"]["dev_accuracy"]
    assert set(kept["prune"]["ranking"]) == {"rte", "cb", "socialiqa"}
    meta = json.loads((tmp_path / "r" / "tiny_prune" / kept["run_id"] / "modules.json").read_text())
    assert sorted(meta["adapters"]) == sorted(kept["prune"]["kept"]) == sorted(meta["fusions"]["fusion"]["adapters"])

    # its predictions are the pruned model's, and afbench predict rebuilds that model from the saved modules
    from benchmark import predictions

    folder = tmp_path / "r" / "tiny_prune" / kept["run_id"]
    assert predictions.accuracy(predictions.read(folder, kept["predictions"])) == kept["best_metric"]
    written = (folder / predictions.FILE).read_bytes()
    (folder / predictions.FILE).unlink()
    assert main(["predict", "tiny_prune", "--only", kept["run_id"], *args]) == 0
    assert (folder / predictions.FILE).read_bytes() == written

    # the pruned model is a column of its own in the report, beside F. w/ ST-A
    assert main(["report", "tiny_prune", "--out-dir", str(tmp_path / "reports"), *args]) == 0
    assert "fusion_st_a_keep2" in (tmp_path / "reports" / "tiny_prune.md").read_text()

    out = tmp_path / "rep"
    assert main(["prune", "tiny_prune", "--only", "rte__fusion_st_a_rf16*", "--rounds", "1", "--out-dir", str(out),
                 *args]) == 0
    table = json.loads((out / "prune_tiny_prune_rte.json").read_text())
    (run,) = table["runs"]
    assert sorted(run["k"], key=int) == ["1", "2", "3"]
    unpruned = res["fusion_st_a_rf16"]
    assert run["k"]["3"]["dev_accuracy"] == unpruned["best_metric"]  # k = all: the trained model's number
    assert [len(run["k"][k]["kept"]) for k in ("1", "2", "3")] == [1, 2, 3]
    assert run["k"]["1"]["examples_per_second"] > 0
    md = (out / "prune_tiny_prune_rte.md").read_text()
    assert "| all |" in md and "Revision" in md and (out / "prune_tiny_prune_rte.png").stat().st_size > 0
    # afbench speed times finished runs of any kind as they serve (here rte's stage-1 adapter, fusion and pruned
    # fusion) into the experiment folder, where the composition table reads it
    assert main(["speed", "tiny_prune", "--only", "rte__*", "--rounds", "2", "--threads", "1", *args]) == 0
    timed = json.loads((tmp_path / "r" / "tiny_prune" / "inference_speed.json").read_text())
    assert set(timed["runs"]) == {r["run_id"] for r in res.values() if r["task"] == "rte"}
    assert all(len(x["rounds"]) == 2 and x["examples_per_second"] > 0 and x["dev_rows"] == 16
               for x in timed["runs"].values())
    # each timed as it evaluated: the fusion runs with their fusion active, the stage-1 run with its adapter
    assert {x["label"]: x["active"] for x in timed["runs"].values()} == {
        "fusion_st_a_rf16": "fusion", "fusion_st_a_keep2_rf16": "fusion", "st_a_rf16": "rte"}
    assert timed["provenance"]["threads"] == 1 and timed["weights"] == "frozen"  # as runner/serve.py serves
    assert timed["drift_guard"]["verdict"] in ("trustworthy", "untrustworthy") and "afbench speed" in \
        timed["provenance"]["command"]
    # a run without weights: one paragraph naming the fix
    (tmp_path / "r" / "tiny_prune" / unpruned["run_id"] / "weights.safetensors").unlink()
    assert main(["speed", "tiny_prune", "--only", unpruned["run_id"], *args]) == 2  # nothing left to time
    assert main(["speed", "tiny_prune", "--only", "rte__*", "--rounds", "0", *args]) == 2
    assert main(["speed", "tiny_prune", "--only", "rte__*", "--rounds", "1", *args]) == 0  # the others are
    assert unpruned["run_id"] not in json.loads((tmp_path / "r" / "tiny_prune" / "inference_speed.json").read_text())["runs"]
    assert main(["prune", "tiny_prune", "--only", "rte__fusion_st_a_rf16*", "--out-dir", str(out), *args]) == 2


def test_prune_reports_rerender_from_their_json_and_say_why_these_seeds(tmp_path):
    """`afbench prune EXP --rerender` rebuilds every committed prune report from its stored JSON (nothing loaded,
    nothing timed): the Markdown comes out byte for byte as committed, the JSON is untouched, and each report says
    from the records why it pruned seeds 43 and 44 (the matched runs whose weights were there) and which finished
    Fusion w/ ST-A runs it left out."""
    import shutil

    from benchmark.cli import main
    from conftest import ROOT

    committed = sorted((ROOT / "reports").glob("prune_minilm_table1_*.json"))
    if not committed or not (ROOT / "results" / "minilm_table1").is_dir():
        pytest.skip("needs the committed prune reports and minilm_table1 results")
    out = tmp_path / "reports"
    out.mkdir()
    for js in committed:
        shutil.copy(js, out / js.name)
    assert main(["prune", "minilm_table1", "--rerender", "--out-dir", str(out),
                 "--results-dir", str(ROOT / "results")]) == 0
    for js in committed:
        md = js.with_suffix(".md")
        assert (out / js.name).read_bytes() == js.read_bytes()
        assert (out / md.name).read_text() == md.read_text(), md.name
        text = md.read_text()
        assert "Why these seeds:" in text and "Pruned: seed 43 (its own seed's adapters" in text
        assert "seed 42 (its own seed's adapters" in text and "the seed-42 adapters" in text
        # a pruned run retrained after the measurement is described by the training that was pruned
        raw = json.loads(js.read_text())
        recs = [load_run(ROOT / "results" / "minilm_table1" / r["run_id"] / RESULT) for r in raw["runs"]]
        retrained = [r for r in recs if r.finished_at > raw["provenance"]["date"]]
        assert text.count("retrained since under the same id") == len(retrained)
        for r in retrained:
            assert f"finished {r.previous_result['finished_at'][:16].replace('T', ' ')} UTC" in text
    empty = tmp_path / "none"
    empty.mkdir()
    assert main(["prune", "minilm_table1", "--rerender", "--out-dir", str(empty)]) != 0
