"""``nox -s gpu``: execute the CUDA path once, end to end. Without CUDA: one line, exit 0.

With a CUDA device it

1. runs the ``smoke`` grid with ``afbench run smoke --device cuda`` (bf16 autocast in the training
   loop) into a temporary results folder and checks every planned run finished on the GPU;
2. checks float32 GPU logits against CPU logits of the same weights for ST-A, Houlsby and Fusion on
   ``tiny-bert`` (eval mode, TF32 off): max |GPU - CPU| <= ``TOLERANCE``. Float32 kernels on the two
   devices sum in different orders; on a 2-layer, 64-wide model with O(1) logits that leaves ~1e-6,
   so 1e-4 catches any real difference (a missed adapter, a wrong mask) with room to spare;
3. the bf16 path: the smoke grid's fusion runs (and their stage-1 adapters) with ``--precision bf16``
   (result.json must say ``precision: bf16``), and bf16-autocast logits against float32 logits on the GPU
   for ST-A, Houlsby and Fusion within ``BF16_TOLERANCE`` of the logits' scale (tests/test_precision.py
   states the same bound on the CPU);
4. runs ``afbench perf --device cuda`` on BERT-base shapes (random init, 12 layers, 768 wide, length
   128, batch 32) for ST-A and Fusion N = 2..16 (fp32 and bf16, both sides), with the reference on the GPU
   too when a reference python is given, writing ``reports/perf_gpu.md`` (device named) and
   ``reports/perf_gpu.json``;
5. the roofline on the GPU (``afbench perf --mode roofline --device cuda``, BERT-base shapes): the
   device's fp32 (TF32 off) and bf16 GEMM peak and each setup's achieved fraction,
   ``reports/perf_roofline_gpu.md``.

Usage: ``python -m benchmark.perf.gpu_check [--reference-python PY] [--out reports/perf_gpu.md]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmark.records import scan_experiment

TOLERANCE = 1e-4  # absolute, on logits
BF16_TOLERANCE = 0.03  # bf16 vs float32 logits, relative to the largest |logit| (tests/test_precision.py)
METHODS = ("st_a", "houlsby", "fusion")


def build_model(method: str, seed: int = 0):
    """A tiny-bert AdapterModel with ``method`` active and non-trivial adapter weights, plus a batch."""
    from benchmark.modeling.backbone import load_encoder, load_tokenizer
    from benchmark.modeling.model import AdapterModel, Fuse, Modules
    from benchmark.spec import load_registry
    from benchmark.spec.schema import AdapterParams, FusionParams

    spec = load_registry().backbones["tiny-bert"]
    tok = load_tokenizer(spec)
    torch.manual_seed(seed)  # adapter and head initialisation
    model = AdapterModel(load_encoder(spec, tok))  # the stock last layer: no first-token transform
    names = ["a", "b", "c"] if method == "fusion" else ["a"]
    for n in names:
        model.add_adapter(n, AdapterParams(type="houlsby" if method == "houlsby" else "pfeiffer"))
    if method == "fusion":
        model.add_fusion("f", names, FusionParams())
        model.set_active(Fuse("f", names))
    else:
        model.set_active("a")
    model.add_head("h", "classification", 3)
    g = torch.Generator().manual_seed(seed)
    added = set(model.keys_of(Modules(adapters=names, fusions=["f"] if method == "fusion" else [])))
    heads = set(model.keys_of(Modules(heads=["h"])))
    with torch.no_grad():  # adapters start near identity, the head near zero: give both weight (O(1) logits)
        for name, p in model.named_parameters():
            if name in added:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif name in heads:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    enc = tok(["the cat sat on the mat", "a much longer sentence about adapters and fusion layers"],
              ["it was warm", "so it goes"], padding=True, return_tensors="pt")
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return model.eval(), batch


@torch.no_grad()
def logits_gap(method: str, device: str) -> tuple[float, float]:
    """(max |logits on ``device`` - logits on the CPU|, max |CPU logits|) for the same weights, float32."""
    model, batch = build_model(method)
    cpu = model(head="h", **batch)
    other = copy.deepcopy(model).to(device)
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        got = other(head="h", **{k: v.to(device) for k, v in batch.items()}).float().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    return (got - cpu).abs().max().item(), cpu.abs().max().item()


@torch.no_grad()
def bf16_gap(method: str, device: str = "cuda") -> tuple[float, float]:
    """(max |bf16-autocast logits - float32 logits| on ``device``, max |float32 logits|), same weights."""
    from benchmark.modeling.compute import Compute

    model, batch = build_model(method)
    model = model.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    dev = torch.device(device)
    with Compute(precision="fp32").autocast(dev):
        ref = model(head="h", **batch).float()
    with Compute(precision="bf16").autocast(dev):
        got = model(head="h", **batch).float()
    return (got - ref).abs().max().item(), ref.abs().max().item()


def bf16_smoke_on_cuda() -> str:
    """The smoke grid's fusion runs (with their stage-1 adapters) under --precision bf16 on cuda."""
    with tempfile.TemporaryDirectory() as tmp:
        if _afbench("run", "smoke", "--device", "cuda", "--precision", "bf16", "--only", "*fusion_st_a*",
                    "--results-dir", tmp).returncode != 0:
            raise RuntimeError("afbench run smoke --device cuda --precision bf16 failed (see its output above)")
        scan = scan_experiment(Path(tmp), "smoke")
    results = scan.results
    off = [r.run_id for r in results if not r.finished or r.precision != "bf16"] + scan.problems()
    if not results or off:
        raise RuntimeError(f"bf16 smoke runs not finished in bf16 on cuda: {off or 'none ran'}")
    return f"bf16 smoke on cuda: {len(results)} runs finished with precision bf16"


def _afbench(*args: str) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], env=env)


def smoke_on_cuda() -> str:
    """Run the smoke grid on cuda; a one-line summary, or RuntimeError naming what went wrong."""
    with tempfile.TemporaryDirectory() as tmp:
        if _afbench("run", "smoke", "--device", "cuda", "--results-dir", tmp).returncode != 0:
            raise RuntimeError("afbench run smoke --device cuda failed (see its output above)")
        scan = scan_experiment(Path(tmp), "smoke")
    results = scan.results
    if not results:
        raise RuntimeError("the smoke grid ran no run (is the data mirror, AFBENCH_DATA_DIR, available?)")
    off = [r.run_id for r in results if not r.finished or "cuda" not in str(r.device)] + scan.problems()
    if off:
        raise RuntimeError(f"smoke runs not finished on cuda: {off}")
    return f"smoke grid on cuda: {len(results)} runs finished (device {results[0].device})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--reference-python", help="python of an env with adapters==1.3.0 (omit: ours only)")
    p.add_argument("--out", default="reports/perf_gpu.md")
    p.add_argument("--skip-smoke", action="store_true")
    p.add_argument("--skip-perf", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("nox -s gpu: no CUDA device here (torch.cuda.is_available() is False); nothing checked")
        return 0
    failures = []
    if not args.skip_smoke:
        try:
            print(smoke_on_cuda(), flush=True)
        except RuntimeError as e:
            failures.append(str(e))
    for m in METHODS:
        gap, scale = logits_gap(m, "cuda")
        verdict = "ok" if gap <= TOLERANCE else "FAILED"
        print(f"{m}: max |GPU - CPU| float32 logits = {gap:.2e} (logits up to {scale:.2f}; tolerance "
              f"{TOLERANCE:g}) {verdict}", flush=True)
        if gap > TOLERANCE:
            failures.append(f"{m} logits differ by {gap:.2e} > {TOLERANCE:g}")
    if not args.skip_smoke:
        try:
            print(bf16_smoke_on_cuda(), flush=True)
        except RuntimeError as e:
            failures.append(str(e))
    for m in METHODS:
        gap, scale = bf16_gap(m)
        ok = gap <= BF16_TOLERANCE * scale
        print(f"{m}: max |bf16 - fp32| logits on the GPU = {gap:.2e} (logits up to {scale:.2f}; tolerance "
              f"{BF16_TOLERANCE:g} of that) {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            failures.append(f"{m} bf16 logits differ by {gap:.2e} > {BF16_TOLERANCE:g} x {scale:.2f}")
    if not args.skip_perf:
        ref = ["--reference-python", args.reference_python] if args.reference_python else []
        perf = ["perf", "--device", "cuda", "--backbone", "bert-base-random", "--adapters", "2,4,8,16",
                "--out", args.out, *ref]
        if _afbench(*perf).returncode != 0:
            failures.append("afbench perf --device cuda failed (see its output above)")
        roof = ["perf", "--mode", "roofline", "--device", "cuda", "--backbone", "bert-base-random",
                "--adapters", "2,4,8,16", "--out", str(Path(args.out).with_name("perf_roofline_gpu.md")), *ref]
        if _afbench(*roof).returncode != 0:
            failures.append("afbench perf --mode roofline --device cuda failed (see its output above)")
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
