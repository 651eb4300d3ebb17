"""Static mixing (benchmark/modeling/mixing.py, issue 36): AdapterFusion's output with the attention pinned to
constant weights, trainable through its mixing logits only, and hosted by the fusion slot of a real model."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from benchmark.modeling.adapters import BottleneckAdapter
from benchmark.modeling.fusion import AdapterFusion, naive_fusion
from benchmark.modeling.mixing import StaticMixing
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.spec.schema import AdapterParams, FusionParams
from conftest import fusion_spec_error, needs_mirror

H, N = 16, 3


class _Pinned(nn.Module):
    """Stands in for fusion's score dropout: replaces every token's scores by the logits w [N]."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, scores):  # scores [B, T, N]
        return self.w.expand_as(scores)


def _adapters() -> list[BottleneckAdapter]:
    torch.manual_seed(0)
    out = []
    for _ in range(N):
        a = BottleneckAdapter(H, AdapterParams(reduction_factor=4))
        with torch.no_grad():
            for p in a.parameters():
                p.normal_(0, 0.5)
        out.append(a)
    return out


def test_static_mixing_is_fusion_with_constant_attention():
    adapters, names = _adapters(), [f"a{i}" for i in range(N)]
    mixing = StaticMixing(names)
    with torch.no_grad():
        mixing.logits.copy_(torch.tensor([0.3, -1.2, 0.8]))
    fusion = AdapterFusion(H, names, FusionParams(type="static"), score_dropout=0.0)
    fusion.score_dropout = _Pinned(mixing.logits.detach())
    h, residual = torch.randn(2, 5, H), torch.randn(2, 5, H)
    out, probs = mixing(h, adapters, residual)
    expected, expected_probs = naive_fusion(fusion, h, adapters, residual)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(probs, expected_probs, atol=1e-7)
    assert probs.shape == (2, 5, N) and torch.allclose(probs[1, 3], torch.softmax(mixing.logits, -1))
    # served (cpu_kernels.serving): the adapters stacked as in fusion's fast path, the same sum to float rounding;
    # trained and evaluated, adapter by adapter as its runs were (``fuses_when_serving`` only under serving)
    from benchmark.modeling import adapters as adapter_module
    from benchmark.modeling.cpu_kernels import serving

    calls = []
    stacked = adapter_module.stacked_down
    with torch.no_grad():
        unfused, _ = mixing(h, adapters, residual)
    assert torch.equal(unfused, out)
    serving(mixing, *adapters)
    import benchmark.modeling.mixing as mixing_module

    mixing_module.stacked_down = lambda *a: calls.append(1) or stacked(*a)
    try:
        with torch.no_grad():
            served, served_probs = mixing(h, adapters, residual)
    finally:
        mixing_module.stacked_down = stacked
    assert calls == [1]  # the stacked path (another order of sums: equal to float rounding)
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-6)
    assert torch.equal(served_probs, probs.detach())


def test_static_mixing_trains_its_logits_only_towards_the_best_mixture():
    """Frozen adapters, target = a known mixture of their outputs: gradients reach the logits alone, and the
    learned softmax recovers the mixture."""
    adapters, names = _adapters(), [f"a{i}" for i in range(N)]
    for a in adapters:
        a.requires_grad_(False)
    mixing = StaticMixing(names)
    assert torch.allclose(mixing.weights(), torch.full((N,), 1 / N))  # uniform at init
    target_s = torch.tensor([0.6, 0.3, 0.1])
    h, residual = torch.randn(4, 6, H), torch.randn(4, 6, H)
    with torch.no_grad():
        target = torch.einsum("btnh,n->bth", torch.stack([a(h) for a in adapters], 2), target_s) + residual
    opt = torch.optim.Adam(mixing.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = ((mixing(h, adapters, residual)[0] - target) ** 2).mean()
        loss.backward()
        opt.step()
    assert mixing.logits.grad is not None and mixing.logits.grad.abs().sum() > 0
    assert all(p.grad is None for a in adapters for p in a.parameters())
    assert torch.allclose(mixing.weights(), target_s, atol=1e-3)
    assert mixing.regularization().item() == 0.0


def test_the_fusion_slot_hosts_static_mixing(tiny_bert):
    """In a real tiny BERT: mixing sits where a fusion layer does, attention capture reads its weights, and a
    one-hot mixture is exactly that adapter alone."""
    tok, encoder = tiny_bert
    model = AdapterModel(encoder())
    names = ["x", "y", "z"]
    torch.manual_seed(1)
    for n in names:
        model.add_adapter(n, AdapterParams(reduction_factor=16))
    with torch.no_grad():
        named = dict(model.named_parameters())
        for key in model.keys_of(Modules(adapters=names)):
            named[key].normal_(0, 0.3)
    model.add_fusion("f", names, FusionParams(mixing="static"))  # the option builds it (fusion.build_fusion)
    layers = list(model.slots("output"))
    assert all(isinstance(slot.fusions["f"], StaticMixing) for slot in layers)
    model.add_head("t", "classification", 2)
    model.eval()
    batch = dict(tok(["one sentence", "and another, longer one"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        model.set_active(Fuse("f"))
        model.start_capture()
        model(head="t", **batch)
        captured = model.stop_capture()
        assert len(captured) == len(layers)
        assert all(abs(v - 1 / 3) < 1e-6 for row in captured for v in row)
        for slot in layers:
            slot.fusions["f"].logits.copy_(torch.tensor([-60.0, 60.0, -60.0]))  # all of "y"
        mixed = model(head="t", **batch)
        model.set_active("y")
        alone = model(head="t", **batch)
        model.set_active(None)
        plain = model(head="t", **batch)
    assert (mixed - alone).abs().max().item() <= 1e-6
    assert (mixed - plain).abs().max().item() > 1e-3


# ------------------------------------------------------------------ the option (fusion.mixing) and the method


def test_the_mixing_option_leaves_every_existing_dump_and_run_id_as_it_was(registry, tmp_path):
    """``fusion.mixing`` is a late field: at its default (attention) it is left out of the dump, so the config, and
    the run id, of every fusion spec that does not set it are what they were before the option existed."""
    old = {"type": "dynamic", "regularization": 0.01, "temperature": False, "source_reduction_factor": 16,
           "implementation": "fast"}  # FusionParams' dump before the option, key for key
    assert FusionParams().model_dump() == FusionParams(mixing="attention").model_dump() == old
    assert FusionParams(mixing="static").model_dump() == {**old, "mixing": "static"}
    for name, spec in registry.methods.items():
        if spec.fusion is not None and spec.fusion.mixing == "attention":
            assert "mixing" not in spec.model_dump()["fusion"], name
    static = registry.methods["static_mix"]
    assert static.method == "fusion_st_a" and static.fusion.mixing == "static"
    assert static.model_dump()["fusion"] == {**registry.methods["fusion_st_a"].model_dump()["fusion"], "mixing": "static"}

    # combinations that cannot work are refused with a paragraph naming the file, the field and the fix
    for bad, says in (("{mixing: static, prune: {keep: 2}}", "remove 'prune'"),
                      ("{mixing: static, implementation: naive}", "remove 'implementation'")):
        assert says in fusion_spec_error(tmp_path, "bad_mix", bad)


def test_static_mixing_is_priced_without_query_key_value(registry):
    from benchmark.plan.flops import Shape, method_per_token

    shape, n = Shape(layers=6, hidden=384, intermediate=1536), 11
    fusion, static = registry.methods["fusion_st_a"], registry.methods["static_mix"]
    adapters = 6 * n * 2 * 2 * 384 * (384 // 16)  # the N frozen source adapters, in both
    assert method_per_token(static, shape, n) == adapters + 6 * 2 * n * 384  # + the weighted sum, nothing else
    assert method_per_token(fusion, shape, n) - adapters == 6 * (2 * 3 * 384 * 384 + 4 * n * 384)


@needs_mirror
@pytest.mark.slow
def test_static_mixing_trains_end_to_end_as_a_variant_column_of_fusion(tmp_path, capsys):
    """The method through the real runner on tiny-bert: the stage-1 ST-A adapters it reads stay frozen, only the
    mixing logits and the head train, the weights result.json records are the softmax of the saved logits (one
    distribution per layer, moved off uniform by training), the saved run reloads to the same predictions, and the
    report shows it as a column of its own beside F. w/ ST-A."""
    from benchmark import predictions
    from benchmark.cli import main

    d = tmp_path / "specs" / "experiments"
    d.mkdir(parents=True)
    (d / "tiny_mix.yaml").write_text(textwrap.dedent("""
        backbones: [tiny-bert]
        seeds: [1]
        groups: [{tasks: [rte], methods: [fusion_st_a, static_mix]}]
        fusion: {sources: [rte, cb]}
        caps: {max_train_rows: 48, max_eval_rows: 16, max_epochs: 2, max_length: 32}
        overrides: {static_mix: {lr: 0.05, batch_size: 16}}
    """))
    args = ["--specs", str(tmp_path / "specs"), "--results-dir", str(tmp_path / "r")]
    assert main(["run", "tiny_mix", *args]) == 0
    root = tmp_path / "r" / "tiny_mix"
    res = {r["label"]: r for r in (json.loads(f.read_text()) for f in root.glob("*/result.json"))}
    mix, fusion = res["static_mix_rf16"], res["fusion_st_a_rf16"]
    assert mix["status"] == "finished" and mix["method"] == "static_mix" and mix["method_kind"] == "fusion_st_a"
    assert sorted(mix["deps"]) == sorted(fusion["deps"])  # the same stage-1 adapters as Fusion w/ ST-A

    # only the logits (N per layer) and the head trained; the source adapters are the stage-1 runs' own
    weights = load_file(str(root / mix["run_id"] / "weights.safetensors"))
    logits = {k: v for k, v in weights.items() if ".fusions." in k}
    assert logits and all(k.endswith(".fusions.fusion.logits") and v.shape == (2,) for k, v in logits.items())
    head = sum(v.numel() for k, v in weights.items() if k.startswith("heads."))
    assert mix["params"]["trained"] == head + 2 * len(logits)
    adapters = {k: v for k, v in weights.items() if not k.startswith("heads.") and ".fusions." not in k}
    stage1 = {}
    for dep in mix["deps"]:
        stage1.update({k: v for k, v in load_file(str(root / dep / "weights.safetensors")).items()
                       if not k.startswith("heads.")})
    assert adapters and adapters.keys() == stage1.keys()
    assert all(torch.equal(adapters[k], stage1[k]) for k in adapters)

    # result.json's fusion_attention: per layer the softmax of that layer's logits, the same for every token
    att = mix["fusion_attention"]
    assert att["adapters"] == ["rte", "cb"] and len(att["layers"]) == len(logits) and att["mixing"] == "static"
    assert "mixing" not in fusion["fusion_attention"]  # AdapterFusion's record is as it was
    saved = [torch.softmax(logits[k], -1) for k in sorted(logits, key=lambda k: int(k.split(".layer.")[1].split(".")[0]))]
    for row, s in zip(att["layers"], saved, strict=True):
        assert abs(sum(row) - 1) < 1e-5
        assert torch.allclose(torch.tensor(row), s, atol=1e-5)
        assert max(abs(v - 0.5) for v in row) > 1e-3  # trained away from the uniform mixture at init

    # the saved modules rebuild the same model: afbench predict writes the same predictions
    folder = root / mix["run_id"]
    written = (folder / predictions.FILE).read_bytes()
    (folder / predictions.FILE).unlink()
    assert main(["predict", "tiny_mix", "--only", mix["run_id"], *args]) == 0
    assert (folder / predictions.FILE).read_bytes() == written

    # AdapterHub has no such layer: export refuses the run with one line instead of writing a fusion it is not
    assert main(["export", "tiny_mix", "--only", mix["run_id"], "--out", str(tmp_path / "hub"), *args]) == 1
    assert "no static mixing" in capsys.readouterr().out
    assert not (tmp_path / "hub" / mix["run_id"] / "fusion").exists()

    assert main(["report", "tiny_mix", "--out-dir", str(tmp_path / "reports"), *args]) == 0
    report = (tmp_path / "reports" / "tiny_mix.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| task |") and "F. w/ ST-A" in line)
    assert header.split("|").index(" static_mix_rf16 ") == header.split("|").index(" F. w/ ST-A ") + 1
    assert "static_mix_rf16: another spec of method kind fusion_st_a, compared with fusion_st_a_rf16" in report
    # "Where fusion attends": its weights beside fusion's attention, a row and a heatmap of its own
    where = report.split("## Where fusion attends")[1].split("\n## ")[0]
    row = next(line for line in where.splitlines() if "| static_mix_rf16 (static mixing) | rte |" in line)
    top = {name: float(w.rstrip("%")) for name, w in
           (part.rsplit(" ", 1) for part in row.split("|")[4].strip().split(", "))}
    mean = torch.tensor(att["layers"]).mean(0)
    assert top == pytest.approx({"rte": round(100 * mean[0].item(), 1), "cb": round(100 * mean[1].item(), 1)}, abs=0.051)
    assert "attention-static_mix_rf16-tiny-bert.png" in where
