"""The AdapterHub side of ``afbench perf`` (run in the reference environment; must not import
``benchmark``). Usage: python reference.py MODEL_PATH CONFIGS_JSON -> JSON seconds per step."""

import json
import sys
from pathlib import Path

import adapters
import torch
from adapters import Fuse, SeqBnConfig
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).parent))
from steps import Head, make_batch, time_steps  # noqa: E402


def main(model_path, cfg):
    torch.manual_seed(0)
    out = {"adapters_version": adapters.__version__, "results": {}}
    for name, n in cfg["configs"]:
        model = AutoModel.from_pretrained(model_path, add_pooling_layer=False)
        adapters.init(model)
        names = [f"a{i}" for i in range(max(n, 1))]
        for a in names:
            model.add_adapter(a, config=SeqBnConfig(reduction_factor=16))
        if n == 0:
            model.train_adapter(names[0])
        else:
            model.add_adapter_fusion(Fuse(*names), config="dynamic")
            model.train_adapter_fusion(Fuse(*names))
        head = Head(model.config.hidden_size)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        batch = make_batch(model.config.vocab_size, cfg["batch"], cfg["length"])

        def step():
            h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            loss = torch.nn.functional.cross_entropy(head(h), batch["labels"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out["results"][name] = time_steps(step, cfg["warmup"], cfg["steps"])
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
