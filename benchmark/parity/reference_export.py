"""The AdapterHub side of the export round trip: runs in the reference environment (transformers 4.57,
adapters 1.3.0) and must not import ``benchmark``. Usage: python reference_export.py SNIPPET EXPORT_FOLDER...

Loads each ``afbench export`` folder by running SNIPPET, the README's loading snippet as printed there
(``roundtrip.readme_snippet``: AdapterHub's public API only, as a user would), with its folder in place of
``"exports/<run id>"``; runs the sample rows and prints, as JSON, the max abs difference between its
logits and ours (and how far the adapters move them).
"""

import json
import sys
from pathlib import Path

import torch

PLACEHOLDER = '"exports/<run id>"'


@torch.no_grad()
def check(folder, snippet):
    if PLACEHOLDER not in snippet:
        raise SystemExit(f"the README's export snippet no longer sets d = {PLACEHOLDER}")
    scope = {}
    exec(snippet.replace(PLACEHOLDER, repr(str(folder))), scope)  # noqa: S102 - the README's own code
    model, doc = scope["model"], scope["doc"]
    model.eval()
    sample = json.loads((folder / doc["sample"]).read_text())
    inputs = {k: torch.tensor(sample[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample}
    logits = model(**inputs).logits
    diff = (logits - torch.tensor(sample["logits"])).abs().max().item()
    model.set_active_adapters(None)  # the head on the bare base: shows the adapters / fusion really act
    plain = model(**inputs).logits
    return {"run_id": doc["run_id"], "method": doc["method"], "task": doc["task"], "max_abs_diff": diff,
            "backbone": doc["backbone"],
            "effect": (logits - plain).abs().max().item(), "rows": len(sample["logits"])}


if __name__ == "__main__":
    code = Path(sys.argv[1]).read_text()
    print(json.dumps([check(Path(p), code) for p in sys.argv[2:]]))
