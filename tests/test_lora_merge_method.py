"""Weight merging of LoRA sources as methods of the suite (issue 36, step 3: ``fusion.source_method: lora``).

The planner trains the sources as stage-1 LoRA runs (the ``lora`` spec), the merge specs merge them as PEFT's
``add_weighted_adapter`` does (``merging.merge_loras``, whose PEFT parity is ``tests/test_merging.py``), and the
head trains over the frozen merged LoRA: trained end to end through the real runner on tiny-bert. The combinations
that mean nothing are refused at load with the file, the field and the fix."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from benchmark.spec.schema import MergeParams
from conftest import needs_mirror

LORA_MERGES = ("merge_lora_ties", "merge_lora_svd")


def _experiment(folder, methods: str, extra: str = "") -> None:
    d = folder / "experiments"
    d.mkdir(parents=True, exist_ok=True)
    (d / "probe.yaml").write_text(textwrap.dedent(f"""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{{tasks: [rte], methods: [{methods}]}}]
        fusion: {{sources: [rte, cb]{extra}}}
    """))


def _method(folder, name: str, body: str) -> None:
    (folder / "methods").mkdir(parents=True, exist_ok=True)
    (folder / "methods" / f"{name}.yaml").write_text(f"include: _fusion_defaults.yaml\nmethod: fusion_st_a\n{body}\n")


@pytest.mark.parametrize("fusion, says, field", [
    ("{source_method: lora}", "set 'mixing: merge'", "fusion.mixing"),  # AdapterFusion over LoRA: not defined
    ("{source_method: lora, mixing: static}", "set 'mixing: merge'", "fusion.mixing"),
    ("{source_method: full, mixing: merge, merge: {how: ties}}", "name an adapter or LoRA method", "source_method"),
    ("{source_method: fusion_st_a, mixing: merge, merge: {how: ties}}", "name an adapter or LoRA method",
     "source_method"),
    ("{source_method: ia3, mixing: merge, merge: {how: ties}}", "name an adapter or LoRA method", "source_method"),
    ("{mixing: merge, merge: {how: svd}}", "LoRA sources", "fusion.merge.how"),  # ST-A sources have no B A
    ("{source_method: no_such_method, mixing: merge, merge: {how: ties}}", "no_such_method", "source_method"),
    ("{mixing: lorahub}", "source_method: lora", "fusion.source_method"),  # LoraHub over ST-A sources
    ("{source_method: lora, mixing: merge, merge: {how: ties}, lorahub: {shots: 8}}", "set 'mixing: lorahub'",
     "fusion"),
    ("{source_method: lora, mixing: lorahub, merge: {how: ties}}", "set 'mixing: merge'", "fusion"),  # once kept
    ("{source_method: lora, mixing: lorahub, prune: {keep: 2}}", "remove 'prune'", "fusion"),
    ("{source_method: lora, mixing: lorahub, lorahub: {shots: 1}}", "shots", "fusion"),
    ("{source_method: lora, mixing: lorahub, lorahub: {budget: 400}}", "budget", "fusion"),  # nevergrad's hang
    ("{source_method: lora, mixing: merge, merge: {how: average}}", "use svd", "fusion.merge.how"),  # N x the mean
    ("{source_method: st_a, mixing: merge, merge: {how: ties}}", "remove source_method", "source_method"),
])
def test_sources_a_merge_cannot_compose_are_refused_with_file_field_and_fix(tmp_path, fusion, says, field):
    from benchmark.errors import SpecError
    from benchmark.spec import load_registry

    _method(tmp_path, "probe_merge", f"fusion: {fusion}")
    _experiment(tmp_path, "probe_merge")
    with pytest.raises(SpecError) as e:
        load_registry([tmp_path])
    assert "probe_merge.yaml" in str(e.value) and field in str(e.value) and says in str(e.value), str(e.value)


def test_lora_sources_with_published_adapters_are_refused(tmp_path):
    from benchmark.errors import SpecError
    from benchmark.spec import load_registry

    _experiment(tmp_path, "merge_lora_ties", ", adapterhub: {cb: some/adapter}")
    with pytest.raises(SpecError) as e:
        load_registry([tmp_path])
    assert "probe.yaml" in str(e.value) and "fusion.adapterhub" in str(e.value)


def test_lora_sources_are_stage1_lora_runs_and_leave_every_other_id_alone(registry):
    from benchmark.plan.build import build_plan

    exp = registry.experiments["minilm_table1"]
    plan = build_plan(registry, exp)
    by_id = {r.id: r for r in plan.runs}
    fusion = {(r.task, r.seed): r for r in plan.runs if "fusion_st_a_rf16" in r.report_columns and r.seed < 45}
    for name in (*LORA_MERGES, "lorahub"):
        spec = registry.methods[name]
        assert spec.method_kind.label(spec) == name  # no _rf: the sources are no bottleneck adapters
        runs = [r for r in plan.runs if r.method.name == name]
        assert sorted((r.task, r.seed) for r in runs) == sorted(fusion), name
        for r in runs:
            f = fusion[(r.task, r.seed)]
            assert r.sources == f.sources and len(r.deps) == len(f.deps) and not set(r.deps) & set(f.deps)
            for src, dep in zip(r.sources, r.deps):  # one LoRA run per source, its seed the fusion's adapters'
                d = by_id[dep]
                assert (d.method.name, d.task, d.seed, d.label) == ("lora", src, r.seed, "lora")
                assert d.method.lora == registry.methods["lora"].lora and d.method.train.lr == exp.overrides["lora"]["lr"]
    # a LoRA source run on a target is the LoRA column's run (same spec, same caps)
    lora_col = {(r.task, r.seed): r.id for r in plan.runs if "lora" in r.report_columns}
    stage1 = {(by_id[d].task, by_id[d].seed): d for r in plan.runs if r.method.name == "merge_lora_ties" for d in r.deps}
    assert lora_col and all(stage1[k] == v for k, v in lora_col.items() if k in stage1)


def _saved_states(tiny_bert):
    """(folder, adapter name) -> (its per-module states, its params), read from a saved run into a fresh model."""
    from benchmark.modeling import merging
    from benchmark.modeling.checkpoint import load_modules
    from benchmark.modeling.model import AdapterModel

    _, encoder = tiny_bert

    def states(folder, name):
        model = AdapterModel(encoder())
        load_modules(model, folder, adapters=[name], heads=[], fusions=[], encoder=False)
        return merging.read(model, name), model.adapter_params[name]

    return states


@needs_mirror
@pytest.mark.slow
def test_lora_merges_train_end_to_end_as_variant_columns_of_fusion(tmp_path, tiny_bert):
    """Stage-1 LoRA sources, then each LoRA merge spec through the real runner: the LoRA each run saves under the
    target's name is ``merging.merge_loras`` of the sources' saved LoRAs (rank 8, alpha 8), frozen while the head
    trained; result.json says what was merged; predict rebuilds the predictions; export writes a LoRAConfig."""
    from benchmark import predictions
    from benchmark.cli import main
    from benchmark.modeling import merging

    states = _saved_states(tiny_bert)

    d = tmp_path / "specs" / "experiments"
    d.mkdir(parents=True)
    (d / "tiny_lora_merge.yaml").write_text(textwrap.dedent(f"""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{{tasks: [rte], methods: [{", ".join(LORA_MERGES)}]}}]
        fusion: {{sources: [rte, cb, mrpc]}}
        caps: {{max_train_rows: 48, max_eval_rows: 16, max_epochs: 2, max_length: 32}}
        overrides: {{lora: {{lr: 0.01}}}}
    """))
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_lora_merge", *args]) == 0
    root = tmp_path / "r" / "tiny_lora_merge"
    res = {r["label"]: r for r in (json.loads(f.read_text()) for f in root.glob("*/result.json"))}
    assert sorted(res) == ["lora", *sorted(LORA_MERGES)]  # the three source runs share the label lora
    merged_states = {}
    for name in LORA_MERGES:
        rec = res[name]
        spec = MergeParams(**rec["config"]["method"]["fusion"]["merge"])
        sources = [states(root / dep, src) for src, dep in zip(rec["sources"], rec["deps"])]
        params = sources[0][1]
        assert params.type == "lora" and all(p == params for _, p in sources)
        expected, rank = merging.merge_loras([s for s, _ in sources], spec.how,
                                             scalings=[params.alpha / params.rank] * 3, lam=spec.weight,
                                             density=spec.density, generator=torch.Generator().manual_seed(1))
        assert rec["merge"] == {"how": spec.how, "density": spec.density, "weight": spec.weight,
                                "sources": ["rte", "cb", "mrpc"], "source_seed": 1, "base": "none",
                                "train_adapter": False, "combination": merging.LORA_MERGES[spec.how], "rank": rank}
        folder = root / rec["run_id"]
        saved, saved_params = states(folder, "rte")
        assert (saved_params.type, saved_params.rank, saved_params.alpha) == ("lora", rank, float(rank))
        assert saved_params.targets == params.targets
        assert all(torch.allclose(a[k], b[k], atol=1e-7) for a, b in zip(saved, expected) for k in a), name
        merged_states[name] = saved
        weights = load_file(str(folder / "weights.safetensors"))
        head = sum(v.numel() for k, v in weights.items() if k.startswith("heads."))
        assert rec["params"]["trained"] == head and "fusion_attention" not in rec
        written = (folder / predictions.FILE).read_bytes()  # the saved run rebuilds the same model
        (folder / predictions.FILE).unlink()
        assert main(["predict", "tiny_lora_merge", "--only", rec["run_id"], *args]) == 0
        assert (folder / predictions.FILE).read_bytes() == written
    # factor-wise TIES and the delta-wise SVD are different computations
    a, b = (merged_states[n] for n in LORA_MERGES)
    assert any(not torch.allclose(x["B.weight"] @ x["A.weight"], y["B.weight"] @ y["A.weight"]) for x, y in zip(a, b))
    # a merged LoRA is a plain LoRA: AdapterHub's LoRAConfig holds it, so afbench export writes it
    run_id = res["merge_lora_ties"]["run_id"]
    assert main(["export", "tiny_lora_merge", "--only", run_id, "--out", str(tmp_path / "hub"), *args]) == 0
    cfg = json.loads((tmp_path / "hub" / run_id / "adapters" / "rte" / "adapter_config.json").read_text())
    assert cfg["config"]["architecture"] == "lora" and cfg["config"]["r"] == cfg["config"]["alpha"] == 8


@needs_mirror
@pytest.mark.slow
def test_lorahub_searches_weights_on_few_rows_and_trains_the_head_over_the_composed_lora(tmp_path, tiny_bert):
    """Stage-1 LoRA sources, then the lorahub spec through the real runner: result.json holds one weight per source
    and the search's count of evaluations; the LoRA the run saves under the target's name is LoraHub's composition
    of the sources' saved LoRAs at those weights (the sources' rank and alpha), frozen while the head trained; the
    same spec and seed find the same weights again; predict rebuilds the predictions."""
    pytest.importorskip("nevergrad", reason="LoraHub needs the composition extra")
    from benchmark import predictions
    from benchmark.cli import main
    from benchmark.modeling import lorahub

    states = _saved_states(tiny_bert)

    d = tmp_path / "specs" / "experiments"
    d.mkdir(parents=True)
    (d / "tiny_lorahub.yaml").write_text(textwrap.dedent("""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{tasks: [rte], methods: [fusion_st_a, lorahub]}]  # fusion: the composition table's first row
        fusion: {sources: [rte, cb, mrpc]}
        caps: {max_train_rows: 48, max_eval_rows: 16, max_epochs: 2, max_length: 32}
        overrides: {lora: {lr: 0.01}}
    """))
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_lorahub", *args]) == 0
    root = tmp_path / "r" / "tiny_lorahub"
    rec = next(r for r in (json.loads(f.read_text()) for f in root.glob("*/result.json")) if r["label"] == "lorahub")
    hub = rec["lorahub"]
    assert list(hub["weights"]) == ["rte", "cb", "mrpc"] and all(-1.5 <= w <= 1.5 for w in hub["weights"].values())
    assert hub["shots"] == 32 and hub["budget"] == 40 and 1 <= hub["evaluations"] <= 40 and hub["source_seed"] == 1
    sources = [states(root / dep, src) for src, dep in zip(rec["sources"], rec["deps"])]
    expected = lorahub.compose([s for s, _ in sources], list(hub["weights"].values()))
    folder = root / rec["run_id"]
    saved, params = states(folder, "rte")
    assert params == sources[0][1]  # the sources' rank, alpha and targets
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for a, b in zip(saved, expected) for k in a)
    weights = load_file(str(folder / "weights.safetensors"))
    assert not any("_lorahub_search" in k for k in weights)  # the search head is never saved
    head = sum(v.numel() for k, v in weights.items() if k.startswith("heads."))
    assert rec["params"]["trained"] == head
    written = (folder / predictions.FILE).read_bytes()
    (folder / predictions.FILE).unlink()
    assert main(["predict", "tiny_lorahub", "--only", rec["run_id"], *args]) == 0
    assert (folder / predictions.FILE).read_bytes() == written
    # the report's composition table names the row and prints the weights found
    assert main(["report", "tiny_lorahub", "--out-dir", str(tmp_path / "rep"), *args]) == 0
    md = (tmp_path / "rep" / "tiny_lorahub.md").read_text()
    assert "LoraHub weights over LoRA sources (head only)" in md
    top = sorted(hub["weights"], key=lambda s: -abs(hub["weights"][s]))[:3]
    assert "rte (1 seed): " + ", ".join(f"{s} {hub['weights'][s]:+.2f}" for s in top) in md
    # the search is repeatable: the same run trained again finds the same weights
    assert main(["run", "tiny_lorahub", "--force", "--only", rec["run_id"], *args]) == 0
    again = json.loads((folder / "result.json").read_text())
    assert again["lorahub"]["weights"] == hub["weights"] and again["best_metric"] == rec["best_metric"]


def test_lorahub_scores_a_weighting_on_shots_its_search_head_was_not_fitted_on(tiny_bert):
    """The collapse a same-rows score gives: a search head fitted on the few shots memorises them (random labels,
    cross-entropy near 0), so no weighting could beat w = 0 by more than its l1 cost. The two-fold score fits on
    one half and scores on the other: on random labels it stays at chance level or above."""
    import torch.nn.functional as F

    from benchmark.methods.fusion import setup as fusion_setup
    from benchmark.modeling.model import AdapterModel
    from benchmark.spec.schema import LoRAParams

    _, encoder = tiny_bert
    model = AdapterModel(encoder())
    model.add_adapter("t", LoRAParams())
    model.set_active("t")
    model.add_head(fusion_setup.SEARCH_HEAD, "classification", 2)
    model.eval()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 100, (32, 12), generator=g),
             "attention_mask": torch.ones(32, 12, dtype=torch.long), "labels": torch.randint(0, 2, (32,), generator=g)}
    head = model.heads[fusion_setup.SEARCH_HEAD]
    start = {k: v.clone() for k, v in head.state_dict().items()}
    cross = fusion_setup._probe_loss(model, batch, start, 300, 1e-2)
    head.load_state_dict(start)  # the same head fitted and scored on the same rows
    with torch.no_grad():
        hidden = model.encode(batch["input_ids"], batch["attention_mask"])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(head(hidden, batch["attention_mask"], None), batch["labels"]).backward()
        opt.step()
    same = F.cross_entropy(head(hidden, batch["attention_mask"], None), batch["labels"]).item()
    assert same < 0.2 < 0.6 < cross, (same, cross)
    # deterministic: the head restarts from the same init for every weighting
    assert fusion_setup._probe_loss(model, batch, start, 300, 1e-2) == cross
