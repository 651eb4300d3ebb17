"""``afbench parity``: our modules against AdapterHub ``adapters`` 1.3.0 (transformers 4.57.6).

Our side builds a tiny encoder of every family both support (BERT, RoBERTa, DistilBERT, ELECTRA,
DeBERTa-v2), adds a Pfeiffer adapter (rf 16), a Houlsby adapter and
a dynamic fusion over three Pfeiffer adapters, randomises every adapter / fusion weight (biases and V
included, so no term is trivially zero), and writes base weights, module weights, inputs and our last
hidden states. ``reference.py`` runs in the reference environment, loads the same weights into
AdapterHub's model and reports the max abs difference per setup; the check passes at <= 1e-5.
Then the export round trip (``roundtrip.py``): tiny ST-A, Houlsby and Fusion runs trained by the runner,
``afbench export``-ed, loaded with AdapterHub's own API, logits compared on the exported sample rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save

from benchmark.modeling.layout import LOCATIONS, layout_for
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.paths import write_atomic
from benchmark.spec.schema import AdapterParams, FusionParams

TOLERANCE = 1e-5
BASE = {"vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "max_position_embeddings": 130}
# Every family with a layout that AdapterHub adapters 1.3.0 also supports: (config class, model class, config).
ARCHS = {
    "bert": ("BertConfig", "BertModel", {**BASE, "pad_token_id": 0}),
    "roberta": ("RobertaConfig", "RobertaModel", {**BASE, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
                                                  "type_vocab_size": 1}),
    "distilbert": ("DistilBertConfig", "DistilBertModel", {
        "vocab_size": 300, "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128, "max_position_embeddings": 130,
        "pad_token_id": 0}),
    "electra": ("ElectraConfig", "ElectraModel", {**BASE, "embedding_size": 32, "pad_token_id": 0}),
    "deberta-v2": ("DebertaV2Config", "DebertaV2Model", {
        **BASE, "pad_token_id": 0, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 32,
        "type_vocab_size": 0}),
}
ADAPTERS = {"pf": "pfeiffer", "ho": "houlsby", "a": "pfeiffer", "b": "pfeiffer", "c": "pfeiffer"}
FUSED = ["a", "b", "c"]
SETUPS = ["pf", "ho", "fusion"]


def _neutral_names(model: AdapterModel) -> dict[str, str]:
    """Our adapter / fusion keys -> ``layer{i}.{attention|output}.{name}.{down|up}.{weight|bias}`` and
    ``layer{i}.fusion.{query|key|value}.{weight|bias}`` (the layout says where each slot's keys start)."""
    out = {}
    for key in model.state_dict():
        for i in range(model.num_layers):
            for loc in LOCATIONS:
                prefix = model.layout.slot_prefix(i, loc)
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix):].split(".")  # adapters.{n}.{down|up}.{w|b} | fusions.{f}.{q|k|v}.{w|b}
                if rest[0] == "adapters":
                    out[key] = f"layer{i}.{loc}.{rest[1]}.{rest[2]}.{rest[3]}"
                elif rest[0] == "fusions" and rest[2] in ("query", "key", "value"):
                    out[key] = f"layer{i}.fusion.{rest[2]}.{rest[3]}"
    return out


@torch.no_grad()
def export_case(arch: str, folder: Path) -> None:
    import transformers
    from transformers import AutoModel

    cfg_name, model_name, config_kwargs = ARCHS[arch]
    config = getattr(transformers, cfg_name)(**config_kwargs)
    pooler = layout_for(config.model_type).pooler
    torch.manual_seed(0)
    encoder = AutoModel.from_config(config, **({"add_pooling_layer": False} if pooler else {}))
    base = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = AdapterModel(encoder)
    for name, kind in ADAPTERS.items():
        model.add_adapter(name, AdapterParams(type=kind, reduction_factor=16))
    model.add_fusion("f", FUSED, FusionParams())
    added = dict(model.named_parameters())
    for name in model.keys_of(Modules(adapters=list(ADAPTERS), fusions=["f"])):
        added[name].add_(0.1 * torch.randn_like(added[name]))
    model.eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = config.pad_token_id
    outputs = {}
    for setup in SETUPS:
        model.set_active(Fuse("f", FUSED) if setup == "fusion" else setup)  # FUSED: checked against the fusion
        outputs[setup] = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.contiguous()
    names = _neutral_names(model)
    modules = {names[k]: v.contiguous() for k, v in model.state_dict().items() if k in names}
    write_atomic(folder / "base.safetensors", save({k: v.contiguous() for k, v in base.items()}))
    write_atomic(folder / "modules.safetensors", save(modules))
    write_atomic(folder / "inputs.safetensors", save({"input_ids": ids, "attention_mask": mask}))
    write_atomic(folder / "outputs.safetensors", save(outputs))
    write_atomic(folder / "meta.json", json.dumps({
        "config_class": cfg_name, "model_class": model_name, "config": config_kwargs, "pooler": pooler,
        "adapters": ADAPTERS,
        "fusion": FUSED, "reduction_factor": 16, "setups": SETUPS}, indent=2))


def run_parity(reference_python: str, work_dir: Path) -> int:
    for arch in ARCHS:
        export_case(arch, work_dir / arch)
    script = Path(__file__).with_name("reference.py")
    proc = subprocess.run([reference_python, str(script), str(work_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        print("parity: the reference side failed (see above)", file=sys.stderr)
        return 1
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"reference: transformers {report['transformers']}, adapters {report['adapters']}")
    ok = True
    for r in report["results"]:
        good = r["max_abs_diff"] <= TOLERANCE and r["effect"] > 100 * TOLERANCE  # equal, and not vacuously so
        ok &= good
        print(f"  {r['arch']:<8} {r['setup']:<7} max |ours - adapters| = {r['max_abs_diff']:.2e}   "
              f"(the setup moves the output by up to {r['effect']:.2e}; {r['tensors']} tensors) "
              f"{'ok' if good else 'MISMATCH'}")
    from benchmark.parity.roundtrip import run_roundtrip

    ok &= run_roundtrip(reference_python, work_dir / "export_roundtrip", TOLERANCE)
    print("parity: " + ("passed" if ok else f"FAILED (tolerance {TOLERANCE})"))
    return 0 if ok else 1
