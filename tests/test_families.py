"""Encoder families beyond BERT: one layout each (benchmark/modeling/layout.py) and a tiny random backbone
YAML each; adapters, fusion, LoRA, checkpoints, the first-token last layer and local checkpoints on all."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch

from benchmark import methods
from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.modeling import first_token, layout
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.checkpoint import load_modules, save_modules, verify_weights
from benchmark.modeling.first_token import FirstTokenLastLayer, set_last_layer
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.spec.schema import AdapterParams, BackboneSpec, FusionParams, LoRAParams
from benchmark.training import recipe
from conftest import needs_mirror

FAMILIES = ["tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-electra", "tiny-deberta-v2"]


@pytest.fixture(scope="module")
def backbones(registry):
    out = {}
    for name in FAMILIES:
        spec = registry.backbones[name]
        tok = load_tokenizer(spec)
        out[name] = (tok, lambda spec=spec, tok=tok: load_encoder(spec, tok))
    return out


def _batch(tok):
    return dict(tok(["a short one", "and a somewhat longer second sentence here"], padding=True, return_tensors="pt"))


def _full_model(make) -> AdapterModel:
    model = AdapterModel(make())
    for n in "abc":
        model.add_adapter(n, AdapterParams(reduction_factor=4))
    model.add_adapter("h", AdapterParams(type="houlsby", reduction_factor=4))
    model.add_adapter("l", LoRAParams(rank=4, targets=["query", "value", "intermediate", "output"]))
    model.add_fusion("f", ["a", "b", "c"], FusionParams())
    model.add_head("t", "classification", 3)
    with torch.no_grad():  # no term trivially zero (B of LoRA and the up-projections start at 0)
        for key in model.keys_of(Modules(adapters=["a", "b", "c", "h", "l"], fusions=["f"])):
            dict(model.named_parameters())[key].add_(0.2 * torch.randn_like(dict(model.named_parameters())[key]))
    return model.eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_the_stock_encoder_until_something_is_active(backbones, name):
    tok, make = backbones[name]
    stock = make().eval()
    model = _full_model(make)
    batch = _batch(tok)
    if not model.layout.token_type_ids:
        batch.pop("token_type_ids", None)
    with torch.no_grad():
        ref = stock(**batch).last_hidden_state
        model.set_active(None)
        ours = model.encode(**batch)
        assert torch.equal(ours, ref)
        moved = {}
        for setup in ["a", "h", "l", Fuse("f")]:
            model.set_active(setup)
            moved[str(setup)] = (model.encode(**batch) - ref).abs().max().item()
    assert all(v > 1e-4 for v in moved.values()), moved  # each setup really changes the output


def test_distilbert_hooks_place_pfeiffer_and_houlsby_as_defined(backbones):
    """DistilBERT adds and normalises inside its layer: the hook rewrites f before that add."""
    _, make = backbones["tiny-distilbert"]
    model = _full_model(make)
    layer = model.layers()[0]
    slot_att, slot_out = list(model.slots())[:2]
    x = torch.randn(2, 5, model.hidden_size)
    with torch.no_grad():
        model.set_active("a")
        got_pf = layer(x)
        model.set_active("h")
        got_ho = layer(x)
        model.set_active(None)
        f_att, _ = layer.attention(x)
        sa = layer.sa_layer_norm(f_att + x)
        f = layer.ffn(sa)
        pf = slot_out.adapters["a"]
        want_pf = layer.output_layer_norm(pf(layer.output_layer_norm(f + sa)) + f + sa)  # LN(adapter(LN(f+x)) + f + x)
        ha, ho = slot_att.adapters["h"], slot_out.adapters["h"]
        sa_h = layer.sa_layer_norm(ha(f_att) + f_att + x)
        f_h = layer.ffn(sa_h)
        want_ho = layer.output_layer_norm(ho(f_h) + f_h + sa_h)
    assert torch.allclose(got_pf, want_pf, atol=1e-6)
    assert torch.allclose(got_ho, want_ho, atol=1e-6)
    assert set(slot_att.adapters) == {"h"} and set(slot_out.adapters) == {"a", "b", "c", "h"}  # layout.PLACEMENT


def test_lora_is_w_x_plus_scaled_b_a_x(backbones):
    _, make = backbones["tiny-bert"]
    model = _full_model(make)
    lin = model.layers()[1].get_submodule(model.layout.linear_targets["value"])
    lora = lin.lora["l"]
    x = torch.randn(3, 7, lin.in_features)
    with torch.no_grad():
        model.set_active("l")
        got = lin(x)
        want = x @ lin.weight.T + lin.bias + (lora.params.alpha / lora.params.rank) * (x @ lora.A.weight.T @ lora.B.weight.T)
        model.set_active("a")
        plain = lin(x)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(plain, x @ lin.weight.T + lin.bias, atol=1e-6)
    assert lora.A.weight.shape == (4, lin.in_features) and lora.B.weight.shape == (lin.out_features, 4)


def test_a_fresh_lora_leaves_the_model_unchanged_and_trains_only_itself(backbones):
    tok, make = backbones["tiny-electra"]
    model = AdapterModel(make())
    model.add_adapter("l", LoRAParams())
    model.add_head("t", "classification", 2)
    model.eval()
    batch = _batch(tok)
    with torch.no_grad():
        model.set_active(None)
        off = model(head="t", **batch)
        model.set_active("l")
        on = model(head="t", **batch)
    assert torch.equal(off, on)  # B = 0 at init, as in PEFT
    model.train_only(Modules(adapters=["l"], heads=["t"]))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == set(model.keys_of(Modules(adapters=["l"], heads=["t"])))
    assert all(".lora.l." in n or n.startswith("heads.") for n in trained)
    assert len([n for n in trained if ".lora." in n]) == 2 * 2 * 2  # layers x (query, value) x (A, B)


@pytest.mark.parametrize("name", ["tiny-distilbert", "tiny-electra", "tiny-deberta-v2"])
def test_checkpoints_round_trip_and_verify_in_every_family(backbones, name, tmp_path):
    tok, make = backbones[name]
    model = _full_model(make)
    model.set_active(Fuse("f"))
    batch = _batch(tok)
    with torch.no_grad():
        want_fusion = model(head="t", **batch)
        model.set_active("l")
        want_lora = model(head="t", **batch)
    save_modules(model, tmp_path / "f", adapters=["a", "b", "c", "l"], fusions=["f"], heads=["t"])
    assert verify_weights(tmp_path / "f") is None
    fresh = AdapterModel(make())
    meta = load_modules(fresh, tmp_path / "f")
    fresh.eval()
    assert meta["family"] == fresh.layout.family
    with torch.no_grad():
        fresh.set_active(Fuse("f"))
        assert torch.equal(fresh(head="t", **batch), want_fusion)
        fresh.set_active("l")
        assert torch.equal(fresh(head="t", **batch), want_lora)
    # the LoRA module says which tensors it has: one missing is caught without a model
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(tmp_path / "f" / "weights.safetensors"))
    dropped = next(k for k in tensors if ".lora.l.B" in k)
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(tmp_path / "f" / "weights.safetensors"))
    assert verify_weights(tmp_path / "f").startswith("partial:")


def test_a_checkpoint_of_one_family_is_refused_by_another(backbones, tmp_path):
    _, make_d = backbones["tiny-distilbert"]
    _, make_b = backbones["tiny-bert"]
    model = AdapterModel(make_d())
    model.add_adapter("a", AdapterParams(reduction_factor=4))
    save_modules(model, tmp_path / "d", adapters=["a"])
    with pytest.raises(Exception, match="saved from a 'distilbert' encoder"):
        load_modules(AdapterModel(make_b()), tmp_path / "d")


def test_first_token_layer_where_the_layout_allows_it_and_a_full_layer_said_once_elsewhere(backbones, capsys):
    for name in ("tiny-electra", "tiny-deberta-v2"):
        tok, make = backbones[name]
        model = _full_model(make)
        batch = _batch(tok)
        with torch.no_grad():
            for setup in ["a", "l", Fuse("f")]:
                model.set_active(setup)
                full = model(head="t", **batch)
                set_last_layer(model, "first_token")
                fast = model(head="t", **batch)
                set_last_layer(model, "full")
                assert torch.allclose(fast, full, atol=1e-5), (name, setup)
        set_last_layer(model, "first_token")
        assert isinstance(model.layers()[-1], FirstTokenLastLayer) == (name == "tiny-electra")
    first_token._SAID.discard("deberta-v2")
    capsys.readouterr()
    for _ in range(2):
        set_last_layer(AdapterModel(backbones["tiny-deberta-v2"][1]()), "first_token")
    out = capsys.readouterr().out
    assert out.count("'deberta-v2' encoder computes its full last layer") == 1


def test_pre_ln_and_unknown_families_are_refused_with_the_reason(registry):
    with pytest.raises(TypeError, match="pre-LN"):
        layout.layout_for("modernbert")
    with pytest.raises(TypeError, match="no encoder layout for model_type 'gpt2'"):
        layout.layout_for("gpt2")
    spec = registry.backbones["tiny-bert"].model_copy(update={"name": "tiny-modernbert", "model_type": "modernbert"})
    with pytest.raises(BenchError) as e:
        load_encoder(spec)
    assert "pre-LN" in e.value.message and e.value.field == "model_type"


def test_no_module_path_is_spelled_outside_the_layout():
    """Adapters, fusion, LoRA, checkpoints, first token and parity reach into encoders through layout.py."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmark"
    pattern = re.compile(r"encoder\.layer|attention\.output|attention\.self|transformer\.layer|layer\.intermediate")
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if p.name != "layout.py"
                 and "parity" not in p.parts  # the AdapterHub side spells AdapterHub's keys (its own package)
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line) and not line.lstrip().startswith("#")]
    assert offenders == []


# ------------------------------------------------------------------------------------ source: local
def _local_backbone(folder, make, tok):
    enc = make()
    enc.save_pretrained(folder / "ckpt")
    tok.save_pretrained(folder / "ckpt")


def test_a_local_checkpoint_is_identified_by_its_content_not_its_path(backbones, tmp_path):
    from benchmark.plan.identity import backbone_identity
    from benchmark.spec import load_registry

    tok, make = backbones["tiny-electra"]
    yaml = textwrap.dedent("""
        description: my fine-tuned encoder
        source: local
        path: ckpt
    """)
    ids = []
    for where in ("one", "two"):
        (tmp_path / where / "backbones").mkdir(parents=True)
        (tmp_path / where / "backbones" / "mine.yaml").write_text(yaml)
        if where == "one":
            _local_backbone(tmp_path / where / "backbones", make, tok)
        else:
            shutil.copytree(tmp_path / "one" / "backbones" / "ckpt", tmp_path / where / "backbones" / "ckpt")
        reg = load_registry([tmp_path / where], include_default=False)
        spec = reg.backbones["mine"]
        assert spec.path == str((tmp_path / where / "backbones" / "ckpt").resolve())
        ids.append(backbone_identity(spec))
    assert ids[0] == ids[1] and "path" not in ids[0] and len(ids[0]["weights"]) == 16
    enc = load_encoder(spec)
    assert enc.config.model_type == "electra"
    assert all(torch.equal(v, w) for v, w in zip(enc.state_dict().values(), make().state_dict().values()))
    assert load_tokenizer(spec)("hello world")["input_ids"] == tok("hello world")["input_ids"]
    model = AdapterModel(enc)
    model.add_adapter("a", AdapterParams(reduction_factor=4))  # a local encoder hosts adapters like any other
    # other weights, another id
    cfg = tmp_path / "two" / "backbones" / "ckpt" / "config.json"
    cfg.write_text(cfg.read_text().replace('"hidden_dropout_prob": 0.1', '"hidden_dropout_prob": 0.2'))
    assert backbone_identity(spec)["weights"] != ids[1]["weights"]


def test_new_spec_fields_stay_out_of_existing_dumps(registry):
    """lora: and path: enter a spec's dump (and so a run id) only when set."""
    assert "lora" not in registry.methods["st_a"].model_dump()
    assert "lora" in registry.methods["lora"].model_dump()
    assert "path" not in registry.backbones["tiny-bert"].model_dump()
    with pytest.raises(ValueError, match="source 'local' needs 'path'"):
        BackboneSpec(name="x", source="local")


# ------------------------------------------------------------------------------------ end to end
@needs_mirror
@pytest.mark.slow
def test_smoke_families_trains_adapters_fusion_and_lora_on_every_family(tmp_path):
    """tiny DistilBERT, ELECTRA and DeBERTa-v2 (YAML only) train ST-A, Houlsby, Fusion and LoRA."""
    args = ["--results-dir", str(tmp_path / "r")]
    assert main(["run", "smoke_families", *args]) == 0
    res = [json.loads(f.read_text()) for f in (tmp_path / "r" / "smoke_families").glob("*/result.json")]
    assert len(res) == 24 and all(r["status"] == "finished" for r in res)
    assert {r["backbone"] for r in res} == {"tiny-distilbert", "tiny-electra", "tiny-deberta-v2"}
    assert {r["label"] for r in res} == {"st_a_rf16", "st_a_houlsby_rf16", "lora", "fusion_st_a_rf16"}
    for r in res:
        if r["label"] == "lora":  # the head and 2 layers x (query, value) x (A [8, 32] + B [32, 8])
            classes = 2 if r["task"] == "rte" else 3
            assert r["params"]["trained"] == (32 * 32 + 32 + 32 * classes + classes) + 2 * 2 * 2 * 8 * 32
    assert main(["report", "smoke_families", *args, "--out-dir", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "smoke_families.md").read_text()
    # the majority-baseline column (data at report time) comes first; the method columns follow
    headers = [line.replace("| majority ", "") for line in md.splitlines() if line.startswith("| task | group |")][:3]
    assert headers == ["| task | group | ST-A | LoRA | F. w/ ST-A | ST-A Houlsby |"] * 3  # LoRA beside ST-A


TOY_FAMILY, TOY_KIND = "xlm-roberta", "lora_frozen_head"


@pytest.fixture
def toy_family_and_method():
    # a family: one layout entry (XLM-R spells its modules like RoBERTa)
    layout.register(layout.Layout(
        TOY_FAMILY, layers="encoder.layer",
        attention=layout.SubLayer("attention.output", "attention.output.LayerNorm"),
        output=layout.SubLayer("output", "output.LayerNorm"), first_token=layout.FirstToken(),
        linear_targets=dict(layout.LAYOUTS["roberta"].linear_targets),
        random_init={"bos_token_id": "tokenizer.bos_token_id", "eos_token_id": "tokenizer.eos_token_id",
                     "type_vocab_size": 1}))
    # a method: one registry entry and one @setup
    methods.register(methods.MethodKind(
        TOY_KIND, frozenset({"adapter"}), needs=("lora",),
        columns={"table1": (methods.Column(TOY_KIND, TOY_KIND, "LoRA, frozen head"),)}))

    @recipe.setup(TOY_KIND)
    def _lora_frozen_head(model, run, ctx):
        model.add_adapter(run.task, run.method.lora)
        model.set_active(run.task)
        return recipe.Setup(trains=Modules(adapters=[run.task]))

    yield
    layout.unregister(TOY_FAMILY)
    methods.unregister(TOY_KIND)
    recipe.SETUPS.pop(TOY_KIND)


@needs_mirror
@pytest.mark.slow
def test_a_toy_family_and_a_toy_method_added_the_way_a_user_would(toy_family_and_method, tmp_path):
    specs = tmp_path / "specs"
    for folder in ("backbones", "methods", "experiments"):
        (specs / folder).mkdir(parents=True)
    (specs / "backbones" / "tiny-xlmr.yaml").write_text(textwrap.dedent("""
        description: a 2-layer random XLM-RoBERTa (a family added by a layout entry)
        source: random_init
        model_type: xlm-roberta
        config: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 514}
        tokenizer: {kind: bytelevel_bpe, vocab_size: 2000, lowercase: false}
    """))
    (specs / "methods" / f"{TOY_KIND}.yaml").write_text(textwrap.dedent(f"""
        description: LoRA on keys and values whose head stays at its random init
        method: {TOY_KIND}
        lora: {{rank: 2, alpha: 4, targets: [key, value]}}
        train: {{lr: 1.0e-3, epochs: 1, batch_size: 8}}
    """))
    (specs / "experiments" / "toy.yaml").write_text(textwrap.dedent(f"""
        backbones: [tiny-xlmr]
        seeds: [1]
        groups: [{{tasks: [rte], methods: [st_a, lora, {TOY_KIND}]}}]
        caps: {{max_train_rows: 16, max_eval_rows: 8, max_epochs: 1, max_length: 32}}
    """))
    args = ["--specs", str(specs), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "toy", *args]) == 0
    res = {r["label"]: r for r in (json.loads(f.read_text()) for f in (tmp_path / "r" / "toy").glob("*/result.json"))}
    assert res[TOY_KIND]["status"] == "finished"
    assert res[TOY_KIND]["params"]["trained"] == 2 * 2 * (2 * 32 + 32 * 2)  # layers x targets x (A + B), no head
    modules = json.loads(next((tmp_path / "r" / "toy").glob(f"*{TOY_KIND}*/modules.json")).read_text())
    assert modules["family"] == TOY_FAMILY
    assert main(["report", "toy", *args, "--out-dir", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "toy.md").read_text()
    assert "## Table 1: all methods — tiny-xlmr" in md
    header = next(line for line in md.splitlines() if line.startswith("| task | group |"))
    assert header.replace("| majority ", "") == "| task | group | ST-A | LoRA | LoRA, frozen head |"
