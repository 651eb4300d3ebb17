"""The AdapterHub side of the export round trip: runs in the reference environment (transformers 4.57,
adapters 1.3.0) and must not import ``benchmark``. Usage: python reference_export.py EXPORT_FOLDER...

Loads each ``afbench export`` folder only through AdapterHub's public API, as a user would
(``AutoAdapterModel.from_pretrained``, ``load_adapter``, ``load_adapter_fusion``, ``load_head``),
activates what export.json says, runs the sample rows and prints, as JSON, the max abs difference
between its logits and ours (and how far the adapters move them).
"""

import json
import sys
from pathlib import Path

import torch
from adapters import AutoAdapterModel, Fuse


def check(folder):
    doc = json.loads((folder / "export.json").read_text())
    base = doc["base"]
    model = AutoAdapterModel.from_pretrained(str(folder / base) if (folder / base).is_dir() else base)
    for rel in doc["adapters"].values():
        model.load_adapter(str(folder / rel), with_head=False)
    if doc["fusion"]:
        model.load_adapter_fusion(str(folder / doc["fusion"]), with_head=False)
    model.load_head(str(folder / doc["head"]))
    active = doc["active"]
    model.set_active_adapters(Fuse(*active["fuse"]) if isinstance(active, dict) else active)
    model.active_head = doc["task"]
    model.eval()
    sample = json.loads((folder / doc["sample"]).read_text())
    inputs = {k: torch.tensor(sample[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample}
    with torch.no_grad():
        logits = model(**inputs).logits
    diff = (logits - torch.tensor(sample["logits"])).abs().max().item()
    model.set_active_adapters(None)  # the head on the bare base: shows the adapters / fusion really act
    with torch.no_grad():
        plain = model(**inputs).logits
    return {"run_id": doc["run_id"], "method": doc["method"], "task": doc["task"], "max_abs_diff": diff,
            "effect": (logits - plain).abs().max().item(), "rows": len(sample["logits"])}


if __name__ == "__main__":
    print(json.dumps([check(Path(p)) for p in sys.argv[1:]]))
