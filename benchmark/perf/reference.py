"""The AdapterHub side of ``afbench perf`` (run in the reference environment; must not import
``benchmark``). Usage: python reference.py BACKBONE_JSON CONFIGS_JSON -> one JSON line of seconds per
step, per head pooling and setup.

BACKBONE_JSON: {"path": <model folder>} (MiniLM from its package) or {"bert_config": {...}} (a randomly
initialised BERT, e.g. BERT-base shapes for the GPU table; seeded, so both sides time the same shapes).
"""

import json
import sys
from pathlib import Path

import adapters
import torch
from adapters import Fuse, SeqBnConfig
from transformers import AutoModel, BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).parent))
from steps import Head, make_batch, time_steps  # noqa: E402


def _encoder(backbone: dict):
    if "bert_config" in backbone:
        torch.manual_seed(0)
        return BertModel(BertConfig(**backbone["bert_config"]), add_pooling_layer=False)
    return AutoModel.from_pretrained(backbone["path"], add_pooling_layer=False)


def main(backbone, cfg):
    device = cfg.get("device", "cpu")
    out = {"adapters_version": adapters.__version__, "results": {}}
    for pooling in cfg.get("poolings", ["cls"]):
        res = out["results"].setdefault(pooling, {})
        for name, n in cfg["configs"]:
            torch.manual_seed(0)
            model = _encoder(backbone)
            adapters.init(model)
            names = [f"a{i}" for i in range(max(n, 1))]
            for a in names:
                model.add_adapter(a, config=SeqBnConfig(reduction_factor=16))
            if n == 0:
                model.train_adapter(names[0])
            else:
                model.add_adapter_fusion(Fuse(*names), config="dynamic")
                model.train_adapter_fusion(Fuse(*names))
            head = Head(model.config.hidden_size, pooling=pooling)
            model.to(device).train()
            head.to(device).train()
            params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
            opt = torch.optim.AdamW(params, lr=1e-4, fused=device.startswith("cuda"))
            batch = make_batch(model.config.vocab_size, cfg["batch"], cfg["length"], device=device)

            def step():
                h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                loss = torch.nn.functional.cross_entropy(head(h, batch["attention_mask"]), batch["labels"])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            res[name] = time_steps(step, cfg["warmup"], cfg["steps"], device)
    print(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
