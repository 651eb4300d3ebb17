"""The AdapterHub side of ``afbench perf`` (run in the reference environment; must not import
``benchmark``). Usage: python reference.py BACKBONE_JSON CONFIGS_JSON -> one JSON line of seconds per
step, per head pooling and setup.

CONFIGS_JSON: configs ([name, n] or [name, n, kind]: kind st_a, houlsby, full or fusion; n = 0 is ST-A),
batch, length, warmup, steps, device, poolings, and optionally "precision": "bf16" (the forward under
``torch.autocast(dtype=bfloat16)``, as an AdapterHub user would write it; loss in float32) and "memory":
true (then each result is {"seconds": s, "peak_mib": m}).

BACKBONE_JSON: {"path": <model folder>} (MiniLM from its package) or {"bert_config": {...}} (a randomly
initialised BERT, e.g. BERT-base shapes for the GPU table; seeded, so both sides time the same shapes).
"""

import json
import sys
from pathlib import Path

import adapters
import torch
from adapters import DoubleSeqBnConfig, Fuse, SeqBnConfig
from transformers import AutoModel, BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).parent))
from inference_steps import _autocast  # noqa: E402
from steps import Head, make_batch, peak_mib, setup_kind, time_steps  # noqa: E402


def adapter_model(backbone: dict, names: list[str], config=SeqBnConfig):
    """The encoder under AdapterHub (seeded, so both sides time the same shapes) with an adapter of ``config``
    (rf 16) per name, none where ``config`` is None (full fine-tuning): every reference script's model."""
    torch.manual_seed(0)
    model = (BertModel(BertConfig(**backbone["bert_config"]), add_pooling_layer=False) if "bert_config" in backbone
             else AutoModel.from_pretrained(backbone["path"], add_pooling_layer=False))
    adapters.init(model)
    for a in names if config else ():
        model.add_adapter(a, config=config(reduction_factor=16))
    return model


def main(backbone, cfg):
    device = cfg.get("device", "cpu")
    out = {"adapters_version": adapters.__version__, "results": {}}
    for pooling in cfg.get("poolings", ["cls"]):
        res = out["results"].setdefault(pooling, {})
        for config in cfg["configs"]:
            name, n, kind = config[0], config[1], setup_kind(config)
            names = [f"a{i}" for i in range(max(n, 1))]
            model = adapter_model(backbone, names, {"full": None, "houlsby": DoubleSeqBnConfig}.get(kind, SeqBnConfig))
            if kind == "full":
                for p in model.parameters():
                    p.requires_grad = True
            elif kind == "fusion":
                model.add_adapter_fusion(Fuse(*names), config="dynamic")
                model.train_adapter_fusion(Fuse(*names))
            else:
                model.train_adapter(names[0])
            head = Head(model.config.hidden_size, pooling=pooling)
            model.to(device).train()
            head.to(device).train()
            params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
            opt = torch.optim.AdamW(params, lr=1e-4, fused=device.startswith("cuda"))
            batch = make_batch(model.config.vocab_size, cfg["batch"], cfg["length"], device=device)

            dev = torch.device(device)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(dev)

            def step():
                with _autocast(dev.type, cfg.get("precision")):
                    h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                    logits = head(h, batch["attention_mask"])
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            sec = time_steps(step, cfg["warmup"], cfg["steps"], device)
            res[name] = {"seconds": sec, "peak_mib": peak_mib(device)} if cfg.get("memory") else sec
    print(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
