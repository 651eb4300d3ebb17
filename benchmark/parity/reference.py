"""The AdapterHub side of ``afbench parity``: runs in its own environment (transformers 4.57,
adapters 1.3.0) and must not import ``benchmark``. Usage: python reference.py WORK_DIR

Reads, per architecture, the base weights, our adapter/fusion weights under neutral names
(``layer{i}.{attention|output}.{adapter}.{down|up}.{weight|bias}``, ``layer{i}.fusion.{query|key|value}...``),
the inputs and our outputs; loads the same weights into an AdapterHub model and prints, as JSON, the
max abs difference of the last hidden states per setup (eval mode).
"""

import json
import re
import sys
from pathlib import Path

import adapters
import torch
import transformers
from adapters import DoubleSeqBnConfig, Fuse, SeqBnConfig
from safetensors.torch import load_file

# AdapterHub's own key layout: BERT-style families keep adapters in ``layer.{i}.attention.output`` and
# ``layer.{i}.output``; DistilBERT in ``layer.{i}.attention_adapters`` and ``layer.{i}.output_adapters``.
ADAPTER_KEY = re.compile(r"layer\.(\d+)\.(attention\.output|output|attention_adapters|output_adapters)\.adapters\."
                         r"([^.]+)\.adapter_(down\.0|up)\.(weight|bias)$")
FUSION_KEY = re.compile(r"layer\.(\d+)\.(?:output|output_adapters)\.adapter_fusion_layer\.([^.]+)\.(query|key|value)\."
                        r"(weight|bias)$")


def neutral_name(key):
    m = ADAPTER_KEY.search(key)
    if m:
        layer, loc, name, part, kind = m.groups()
        loc = "attention" if loc.startswith("attention") else "output"
        return f"layer{layer}.{loc}.{name}.{'down' if part == 'down.0' else 'up'}.{kind}"
    m = FUSION_KEY.search(key)
    if m:
        layer, _, proj, kind = m.groups()
        return f"layer{layer}.fusion.{proj}.{kind}"
    return None


@torch.no_grad()
def main(work):
    report = {"transformers": transformers.__version__, "adapters": adapters.__version__, "results": []}
    for arch_dir in sorted(p for p in work.iterdir() if (p / "meta.json").is_file()):  # not the export round trip
        meta = json.loads((arch_dir / "meta.json").read_text())
        cfg_cls = getattr(transformers, meta["config_class"])
        model_cls = getattr(transformers, meta["model_class"])
        model = model_cls(cfg_cls(**meta["config"]), **({"add_pooling_layer": False} if meta.get("pooler", True) else {}))
        missing, unexpected = model.load_state_dict(load_file(str(arch_dir / "base.safetensors")), strict=False)
        assert not unexpected, unexpected
        assert all("position_ids" in k or "token_type_ids" in k for k in missing), missing
        adapters.init(model)
        for name, kind in meta["adapters"].items():
            cls = SeqBnConfig if kind == "pfeiffer" else DoubleSeqBnConfig
            model.add_adapter(name, config=cls(reduction_factor=meta["reduction_factor"]))
        model.add_adapter_fusion(Fuse(*meta["fusion"]), config="dynamic")
        ours = load_file(str(arch_dir / "modules.safetensors"))
        state, used = {}, set()
        for key in model.state_dict():
            n = neutral_name(key)
            if n is not None:
                state[key] = ours[n]
                used.add(n)
        assert used == set(ours), sorted(set(ours) - used)[:5]
        model.load_state_dict(state, strict=False)
        model.eval()
        inputs = load_file(str(arch_dir / "inputs.safetensors"))
        outputs = load_file(str(arch_dir / "outputs.safetensors"))
        model.set_active_adapters(None)  # no adapter: shows that each setup really changes the output
        plain = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        for setup in meta["setups"]:
            model.set_active_adapters(Fuse(*meta["fusion"]) if setup == "fusion" else setup)
            h = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
            diff = (h - outputs[setup]).abs().max().item()
            report["results"].append({"arch": arch_dir.name, "setup": setup, "max_abs_diff": diff,
                                      "effect": (h - plain).abs().max().item(), "tensors": len(used)})
    print(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
