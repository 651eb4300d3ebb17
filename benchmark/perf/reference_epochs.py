"""The AdapterHub side of ``afbench perf --mode epochs`` (run in the reference environment; must not
import ``benchmark``): ST-A (SeqBnConfig, rf 16) on MiniLM with the same two-layer mean-pooling head,
timed on the very batches ours timed (padded to 128, saved by ``epochs.py``).

Usage: python reference_epochs.py MODEL_PATH CONFIG_JSON -> one JSON line: mean seconds per batch per task.
"""

import json
import sys
from pathlib import Path

import adapters
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference import adapter_model  # noqa: E402
from steps import Head, time_steps  # noqa: E402


def main(model_path, cfg):
    out = {"adapters_version": adapters.__version__, "results": {}}
    for task, path in cfg["tasks"].items():
        blob = torch.load(path, weights_only=True)
        model = adapter_model({"path": model_path}, ["a"])
        model.train_adapter("a")
        head = Head(model.config.hidden_size, blob["num_labels"], pooling="mean")
        model.train()
        head.train()
        trained = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
        opt = torch.optim.AdamW(trained, lr=1e-4)
        batches = blob["batches"]
        it = iter(batches[:1] + batches)  # the first one again as the warm-up

        def step():
            b = next(it)
            kw = {k: v for k, v in b.items() if k != "labels"}
            h = model(**kw).last_hidden_state
            loss = torch.nn.functional.cross_entropy(head(h, b["attention_mask"]), b["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)  # the HF Trainer's max_grad_norm default
            opt.step()
            opt.zero_grad(set_to_none=True)

        out["results"][task] = time_steps(step, 1, len(batches))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
