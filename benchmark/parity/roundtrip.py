"""The export round trip of ``afbench parity``: train tiny ST-A, Houlsby, Fusion, LoRA and (IA)^3 runs, ``afbench
export`` them (a LoRA on the attention output projection is refused: AdapterHub cannot name it), load the folders with AdapterHub's own API in the reference environment
(``reference_export.py``) and compare its logits with ours on the exported sample rows.

The runs are a real grid (planner, runner, result files) on two drop-in tasks written here with
generated JSONL data (one classification, one multiple choice), so the check needs neither the data
mirror nor the Hub; ``rows`` and ``epochs`` keep it to seconds on a CPU.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

from benchmark.paths import write_atomic
from benchmark.plan.build import build_plan
from benchmark.runner.execute import run_plan
from benchmark.runner.export import export_plan
from benchmark.spec import load_registry
from benchmark.spec.registry import default_spec_dir

EXPERIMENT = "export_roundtrip"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: README.md, docs/
LORAS = {"lora_ffn": ["key", "intermediate", "output"], "lora_attention_output": ["attention_output"]}
TUNERS = ("lora", "ia3", *LORAS)  # the tuners on target linear layers the round trip exports (ia3: IA3Config)
WORDS = "red blue green small large old new fast slow warm cold bright dark loud quiet".split()


def _rows(kind: str, n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, 6)
        if kind == "cls":
            out.append({"text": " ".join(words), "label": int("red" in words or "blue" in words)})
        else:
            out.append({"question": " ".join(words[:3]), "a": words[3], "b": words[4], "c": words[5],
                        "label": rng.randrange(3)})
    return out


def write_specs(folder: Path, *, rows: int = 32, epochs: int = 3, backbone: str = "tiny-bert",
                methods: tuple[str, ...] = ("st_a", "st_a_houlsby", "fusion_st_a")) -> Path:
    """A spec folder with tasks ``rt_cls`` (classification), ``rt_mc`` (multiple choice), the experiment and
    backbone ``tiny-bert-mean`` (tiny-bert with MiniLM's mean-pooling heads)."""
    rng = random.Random(0)  # write_atomic makes the folders
    for name, targets in LORAS.items():  # LoRA on every target AdapterHub's LoRAConfig names, and one it cannot
        write_atomic(folder / "methods" / f"{name}.yaml",
            f"include: lora.yaml\nlora: {{rank: 4, alpha: 8, dropout: 0.1, targets: [{', '.join(targets)}]}}\n")
    tiny = (default_spec_dir() / "backbones" / "tiny-bert.yaml").read_text()
    write_atomic(folder / "backbones" / "tiny-bert-mean.yaml", tiny.rstrip("\n") + "\npooling: mean\n")
    for name, kind in (("rt_cls", "cls"), ("rt_mc", "mc")):
        for split in ("train", "validation"):
            data = _rows(kind, rows, rng)
            write_atomic(folder / "tasks" / "data" / f"{name}_{split}.jsonl",
                         "".join(json.dumps(r) + "\n" for r in data))
        files = f"data_files: {{train: data/{name}_train.jsonl, validation: data/{name}_validation.jsonl}}\n"
        if kind == "cls":
            body = "type: classification\ninput: {text: '{{ text }}'}\nlabel: {column: label, names: [low, high]}\n"
        else:
            body = ("type: multiple_choice\ninput: {text: '{{ question }}', choices: ['{{ a }}', '{{ b }}', "
                    "'{{ c }}']}\nlabel: {column: label}\n")
        write_atomic(folder / "tasks" / f"{name}.yaml", f"kind: task\nname: {name}\nmax_length: 32\n{files}{body}")
    kinds = ("head", "full", "st_a", "st_a_houlsby", "mt_a", "fusion_st_a", "fusion_mt_a", "lora", "ia3", *LORAS)
    # tiny random models move only at a large lr; (IA)^3's vectors start at 1 and need a larger one still (0.3 diverged), so that
    # the round trip's "not vacuously equal" margin is wide (at 1e-2 they moved the logits by ~1e-5 only)
    lr = "\n".join(f"  {m}: {{lr: {'5.0e-2' if m == 'ia3' else '1.0e-2'}}}" for m in kinds)
    write_atomic(folder / "experiments" / f"{EXPERIMENT}.yaml",
        f"kind: experiment\nname: {EXPERIMENT}\nbackbones: [{backbone}]\nseeds: [1]\n"
        f"groups:\n  - tasks: [rt_cls, rt_mc]\n    methods: [{', '.join(methods)}]\n"
        f"caps: {{max_train_rows: {rows}, max_eval_rows: {rows}, max_epochs: {epochs}, max_length: 32}}\n"
        "fusion: {sources: [rt_cls, rt_mc]}\nmt_a: {tasks: [rt_cls, rt_mc]}\n"
        f"device: cpu\noverrides:\n{lr}\n")
    return folder


def train_and_export(work: Path, log=print, **spec_options) -> list:
    """Write the specs, run the grid into ``work/results``, export into ``work/export``."""
    specs = write_specs(work / "specs", **spec_options)
    reg = load_registry([specs])
    plan = build_plan(reg, reg.get("experiment", EXPERIMENT), data_root=None)
    summary = run_plan(plan, reg, results_dir=work / "results", data_dir=None, device="cpu", log=log)
    if summary.failed:
        raise RuntimeError(f"round trip: {len(summary.failed)} run(s) failed; see {work / 'results' / EXPERIMENT}")
    return export_plan(plan, reg, work / "results" / EXPERIMENT, work / "export", echo=log)


def readme_snippet() -> str:
    """The README's export-loading snippet (the python block that reads export.json), as printed there."""
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))):
        blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S) if doc.is_file() else []
        found = [b for b in blocks if "export.json" in b and "AutoAdapterModel" in b]
        if found:
            return found[0]
    raise FileNotFoundError(f"no python block loading export.json in {ROOT / 'README.md'} or docs/")


def run_roundtrip(reference_python: str, work: Path, tolerance: float) -> bool:
    shutil.rmtree(work, ignore_errors=True)  # a fresh grid each time: never last time's weights
    exported = train_and_export(work / "cls", log=lambda *_: None)  # first-token heads (BERT)
    exported += train_and_export(work / "mean", log=lambda *_: None, backbone="tiny-bert-mean",
                                 methods=("st_a", "fusion_st_a"))  # mean-pooling heads (MiniLM)
    loras = train_and_export(work / "lora", log=lambda *_: None, methods=TUNERS)
    refused = [e for e in loras if e.refused]  # LoRA on the attention output: AdapterHub's LoRAConfig has no switch
    print(f"export refused {len(refused)} run(s) as it should ({', '.join(e.run_id for e in refused)}): "
          + "; ".join(dict.fromkeys(e.refused for e in refused)))  # each reason once
    exported += [e for e in loras if not e.refused]
    snippet = work / "readme_snippet.py"
    write_atomic(snippet, readme_snippet())
    script = Path(__file__).with_name("reference_export.py")
    proc = subprocess.run([reference_python, str(script), str(snippet), *(str(e.folder) for e in exported)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        print("parity: the reference side of the export round trip failed (see above)", file=sys.stderr)
        return False
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = len(report) == len(exported) > 0 and len(refused) == 2 and all("attention_output" in e.run_id for e in refused)
    print("export round trip (afbench export -> the README's snippet: adapters 1.3.0 load_adapter / "
          "load_adapter_fusion / load_head):")
    for r in report:
        good = r["max_abs_diff"] <= tolerance < r["effect"]  # equal, and not vacuously so
        ok &= good
        print(f"  {r['backbone']:<14} {r['method']:<22} {r['task']:<7} max |ours - adapters| = "
              f"{r['max_abs_diff']:.2e} on {r['rows']} dev rows (the adapters move the logits by up to "
              f"{r['effect']:.2e}) {'ok' if good else 'MISMATCH'}")
    return ok
