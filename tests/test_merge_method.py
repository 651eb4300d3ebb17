"""Weight merging of the ST-A sources as methods of the suite (issue 36, step 2: ``fusion.mixing: merge``).

The option (late fields, published defaults, refusals), its price, and the five method specs trained end to end
through the real runner on tiny-bert over the same stage-1 sources as Fusion w/ ST-A: the merged adapter each
run saves is ``merging.merge_adapters`` of the sources' saved adapters, computed here from their folders."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from benchmark.spec.schema import FusionParams, MergeParams
from conftest import fusion_spec_error, needs_mirror

MERGES = ("merge_average", "merge_task_arithmetic", "merge_ties", "merge_dare", "merge_ties_tuned")


def test_merge_defaults_are_the_published_ones_and_leave_every_other_dump_as_it_was(registry):
    from benchmark.methods import merge_defaults as published

    # the published defaults, filled into the spec so the run config (and id) states them
    assert MergeParams(how="ties").model_dump() == {"how": "ties", "density": published.TIES_DENSITY,
                                                    "weight": published.TIES_LAMBDA, "train_adapter": False}
    assert (published.TIES_DENSITY, published.TIES_LAMBDA) == (0.2, 1.0)
    dare = MergeParams(how="dare")
    assert dare.density == pytest.approx(1 - published.DARE_DROP) and dare.density == 0.1 and dare.weight == 1.0
    assert MergeParams(how="task_arithmetic").weight == published.TASK_ARITHMETIC_LAMBDA == 0.4
    assert MergeParams(how="task_arithmetic").density is None
    assert MergeParams(how="average").density is None and MergeParams(how="average").weight is None
    assert MergeParams(how="ties", density=0.5, weight=0.7).density == 0.5  # given values are kept

    # late: FusionParams' dump without the option is what it always was, so no other run id moves
    old = {"type": "dynamic", "regularization": 0.01, "temperature": False, "source_reduction_factor": 16,
           "implementation": "fast"}
    assert FusionParams().model_dump() == old
    for name, spec in registry.methods.items():
        if spec.fusion is not None and not name.startswith("merge_"):
            assert "merge" not in spec.model_dump()["fusion"], name
    for name in MERGES:
        spec = registry.methods[name]
        assert spec.method == "fusion_st_a" and spec.fusion.mixing == "merge", name
        assert spec.fusion.source_reduction_factor == registry.methods["fusion_st_a"].fusion.source_reduction_factor
        assert spec.train == registry.methods["head"].train  # trained as the Head method is
    assert [registry.methods[n].fusion.merge.how for n in MERGES] == ["average", "task_arithmetic", "ties", "dare",
                                                                       "ties"]
    assert [registry.methods[n].fusion.merge.train_adapter for n in MERGES] == [False] * 4 + [True]


@pytest.mark.parametrize("bad, says", [
    ("{mixing: merge}", "needs a 'merge' section"),
    ("{merge: {how: ties}}", "set 'mixing: merge'"),
    ("{mixing: static, merge: {how: ties}}", "set 'mixing: merge'"),
    ("{mixing: merge, merge: {how: average, density: 0.5}}", "remove 'density'"),
    ("{mixing: merge, merge: {how: average, weight: 0.5}}", "remove 'weight'"),
    ("{mixing: merge, merge: {how: task_arithmetic, density: 0.5}}", "remove 'density'"),
    ("{mixing: merge, merge: {how: ties, density: 1.5}}", "density"),
    ("{mixing: merge, merge: {how: slerp}}", "how"),
    ("{mixing: merge, merge: {how: ties}, prune: {keep: 2}}", "remove 'prune'"),
    ("{mixing: merge, merge: {how: ties}, temperature: true}", "remove 'temperature'"),
    ("{mixing: merge, merge: {how: ties}, implementation: naive}", "remove 'implementation'"),
])
def test_meaningless_merge_combinations_are_refused_with_file_field_and_fix(tmp_path, bad, says):
    assert says in fusion_spec_error(tmp_path, "bad_merge", bad)


def test_a_merge_is_priced_as_one_adapter_trained_as_head_or_st_a(registry):
    from benchmark.plan.flops import Shape, method_per_token, train_per_token, trains_of

    shape, n = Shape(layers=6, hidden=384, intermediate=1536), 11
    one = 6 * 2 * 2 * 384 * (384 // 16)  # the merged adapter, every layer
    for name in MERGES:
        assert method_per_token(registry.methods[name], shape, n) == one, name
    assert trains_of(registry.methods["merge_ties"]) == {"head"}
    assert trains_of(registry.methods["merge_ties_tuned"]) == {"head", "adapter"}
    assert trains_of(registry.methods["fusion_st_a"]) == registry.methods["fusion_st_a"].method_kind.trains
    head_only = train_per_token(trains_of(registry.methods["merge_ties"]), shape, 64.0, one)
    tuned = train_per_token(trains_of(registry.methods["merge_ties_tuned"]), shape, 64.0, one)
    assert head_only == train_per_token(frozenset({"head"}), shape, 64.0, one) < tuned


def test_minilm_table1_plans_each_merge_over_fusions_sources_and_nothing_else_moves(registry):
    from benchmark.plan.build import build_plan

    plan = build_plan(registry, registry.experiments["minilm_table1"])
    fusion = {(r.task, r.seed): r for r in plan.runs  # the matched column (each seed's own adapters), seeds 42-44
              if "fusion_st_a_rf16" in r.report_columns and r.seed in (42, 43, 44)}
    assert len(fusion) == 12
    for name in MERGES:
        runs = [r for r in plan.runs if r.method.name == name]
        assert sorted((r.task, r.seed) for r in runs) == sorted(fusion), name  # 4 targets x seeds 42-44
        for r in runs:
            f = fusion[(r.task, r.seed)]
            assert r.deps == f.deps and r.sources == f.sources  # the same seed's stage-1 sources
            assert r.method.train.lr == 1.0e-3  # head's rate (the tuned one: ST-A's, also 1e-3)


def _adapter_states(folder, name, tiny_bert):
    from benchmark.modeling import merging
    from benchmark.modeling.checkpoint import load_modules
    from benchmark.modeling.model import AdapterModel

    _, encoder = tiny_bert
    model = AdapterModel(encoder())
    load_modules(model, folder, adapters=[name], heads=[], fusions=[], encoder=False)
    return merging.read(model, name), model.adapter_params[name]


@needs_mirror
@pytest.mark.slow
def test_merges_train_end_to_end_as_variant_columns_of_fusion(tmp_path, capsys, tiny_bert):
    """Stage-1 sources, then every merge spec through the real runner: the adapter each run saves under the
    target's name is the merge of the sources' saved adapters (task vectors from the seed's stage-1 init,
    re-created here: seed, then add the adapter), frozen for the head-only merges and moved by training for the
    tuned one; the head trained; result.json says what was merged; predict rebuilds the predictions; the report
    shows each as a column beside F. w/ ST-A."""
    from benchmark import predictions
    from benchmark.cli import main
    from benchmark.modeling import merging
    from benchmark.modeling.model import AdapterModel

    d = tmp_path / "specs" / "experiments"
    d.mkdir(parents=True)
    merges = ", ".join(MERGES)
    (d / "tiny_merge.yaml").write_text(textwrap.dedent(f"""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{{tasks: [rte], methods: [fusion_st_a, {merges}]}}]
        fusion: {{sources: [rte, cb, mrpc]}}
        caps: {{max_train_rows: 48, max_eval_rows: 16, max_epochs: 2, max_length: 32}}
        overrides: {{merge_ties_tuned: {{lr: 0.01}}}}
    """))
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_merge", *args]) == 0
    root = tmp_path / "r" / "tiny_merge"
    res = {r["label"]: r for r in (json.loads(f.read_text()) for f in root.glob("*/result.json"))}
    fusion = res["fusion_st_a_rf16"]
    sources, params = [], None
    for src, dep in zip(fusion["sources"], fusion["deps"]):
        state, params = _adapter_states(root / dep, src, tiny_bert)
        sources.append(state)
    _, encoder = tiny_bert
    fresh = AdapterModel(encoder())
    torch.manual_seed(1)  # the stage-1 recipe: the run seed, then the adapter is added
    fresh.add_adapter("init", params)
    base = merging.read(fresh, "init")
    # the head at its init: the recipe seeds, the setup adds the target's adapter (reading the sources in a scratch
    # model draws nothing from the run's generator), then the head is added
    untrained = AdapterModel(encoder())
    torch.manual_seed(1)
    untrained.add_adapter("rte", params)
    untrained.add_head("rte", "classification", 2)
    head_init = {f"heads.{k}": v for k, v in untrained.heads.state_dict().items()}

    for name in MERGES:
        rec = res[f"{name}_rf16"]
        spec = MergeParams(**json.loads(json.dumps(rec["config"]["method"]["fusion"]["merge"])))
        assert rec["status"] == "finished" and rec["method"] == name and rec["method_kind"] == "fusion_st_a"
        assert rec["deps"] == fusion["deps"] and rec["sources"] == ["rte", "cb", "mrpc"]
        assert rec["merge"] == {"how": spec.how, "density": spec.density, "weight": spec.weight,
                                "sources": ["rte", "cb", "mrpc"], "source_seed": 1,
                                "base": "none" if spec.how == "average" else "init",
                                "train_adapter": spec.train_adapter}
        assert "fusion_attention" not in rec  # no fusion layer, nothing attended
        folder = root / rec["run_id"]
        weights = load_file(str(folder / "weights.safetensors"))
        assert not any(".fusions." in k for k in weights)
        saved, saved_params = _adapter_states(folder, "rte", tiny_bert)  # one adapter, in the target's slot
        assert saved_params == params
        expected = merging.merge_adapters(sources, spec.how, base=None if spec.how == "average" else base,
                                          lam=spec.weight, density=spec.density,
                                          generator=torch.Generator().manual_seed(1))
        same = all(torch.allclose(a[k], b[k], atol=1e-7) for a, b in zip(saved, expected) for k in a)
        moved = max((a[k] - b[k]).abs().max().item() for a, b in zip(saved, expected) for k in a)
        head = sum(v.numel() for k, v in weights.items() if k.startswith("heads."))
        adapter = sum(t.numel() for s in saved for t in s.values())
        if spec.train_adapter:
            assert not same and moved > 1e-4, name  # trained on the target from the merge
            assert rec["params"]["trained"] == head + adapter
        else:
            assert same, (name, moved)  # the merge itself, frozen while the head trained
            assert rec["params"]["trained"] == head
        assert rec["history"] and rec["best_metric"] is not None
        heads = {k: v for k, v in weights.items() if k.startswith("heads.")}
        assert heads.keys() == head_init.keys()
        assert max((heads[k] - head_init[k]).abs().max().item() for k in heads) > 1e-4, name  # the head trained
        # the saved run rebuilds the same model: afbench predict writes the same predictions
        written = (folder / predictions.FILE).read_bytes()
        (folder / predictions.FILE).unlink()
        assert main(["predict", "tiny_merge", "--only", rec["run_id"], *args]) == 0
        assert (folder / predictions.FILE).read_bytes() == written
    # a merged run is one plain Pfeiffer adapter and a head: AdapterHub can load it, so afbench export writes it
    ties = res["merge_ties_rf16"]["run_id"]
    assert main(["export", "tiny_merge", "--only", ties, "--out", str(tmp_path / "hub"), *args]) == 0
    assert (tmp_path / "hub" / ties / "adapters" / "rte").is_dir()
    assert not (tmp_path / "hub" / ties / "fusion").exists()
    # the merges differ from each other (each its own computation)
    firsts = {n: load_file(str(root / res[f"{n}_rf16"]["run_id"] / "weights.safetensors")) for n in MERGES[:4]}
    key = next(k for k in firsts["merge_ties"] if not k.startswith("heads.") and k.endswith("down.weight"))
    assert len({tuple(firsts[n][key].flatten()[:8].tolist()) for n in firsts}) == 4

    assert main(["report", "tiny_merge", "--out-dir", str(tmp_path / "reports"), *args]) == 0
    report = (tmp_path / "reports" / "tiny_merge.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| task |") and "F. w/ ST-A" in line)
    cells = header.split("|")
    for name in MERGES:
        assert f" {name}_rf16 " in cells, name
        assert f"{name}_rf16: another spec of method kind fusion_st_a, compared with fusion_st_a_rf16" in report
    where = report.split("## Where fusion attends")[1].split("\n## ")[0] if "## Where fusion attends" in report else ""
    assert not any(f"{name}_rf16" in where for name in MERGES)  # no fusion layer, no attention to show
