"""The AdapterHub side of ``afbench perf --mode inference`` (run in the reference environment; must not import
``benchmark``). Usage: python reference_inference.py BACKBONE_JSON CONFIG_JSON -> one JSON line
{"adapters_version", "results": {setup: {"latency_ms", "examples_per_second", "peak_mib"}}}.
CONFIG_JSON: configs ([name, n]: n = 0 ST-A, else fusion over n), length, batch, reps, device, precision."""

import json
import sys
from pathlib import Path

import adapters
import torch
from adapters import Fuse

sys.path.insert(0, str(Path(__file__).parent))
from inference_steps import time_inference  # noqa: E402
from reference import adapter_model  # noqa: E402
from steps import (
    Head,  # noqa: E402
    peak_mib,  # noqa: E402
)


def main(backbone, cfg):
    device = cfg.get("device", "cpu")
    out = {"adapters_version": adapters.__version__, "results": {}}
    for name, n in cfg["configs"]:
        names = [f"a{i}" for i in range(max(n, 1))]
        model = adapter_model(backbone, names)
        if n == 0:
            model.set_active_adapters(names[0])
        else:
            model.add_adapter_fusion(Fuse(*names), config="dynamic")
            model.set_active_adapters(Fuse(*names))
        head = Head(model.config.hidden_size, pooling="mean")
        model.to(device).eval()
        head.to(device).eval()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(device))

        def forward(ids, mask):
            return head(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

        res = time_inference(forward, model.config.vocab_size, cfg["length"], cfg["batch"], cfg["reps"], device,
                             cfg.get("precision"))
        out["results"][name] = {**res, "peak_mib": peak_mib(device)}
    print(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
