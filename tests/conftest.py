"""Shared fixtures. Tests use tiny random models; real data comes from the offline mirror
(AFBENCH_DATA_DIR, or ../shared/data beside the checkout) and tests needing it skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# before any test module imports huggingface_hub, which reads it once at import: a Hub call set offline later
# (monkeypatch) would still go to the network and, where the network hangs rather than refuses, wait in backoff
os.environ["HF_HUB_OFFLINE"] = "1"


def _mirror() -> Path | None:
    env = os.environ.get("AFBENCH_DATA_DIR")
    if env and Path(env).exists():
        return Path(env)
    guess = ROOT.parent / "shared" / "data"
    return guess if guess.exists() else None


MIRROR = _mirror()
needs_mirror = pytest.mark.skipif(MIRROR is None, reason="offline data mirror (../shared/data) not available")


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """A private cache per test session; never the network."""
    cache = tmp_path_factory.mktemp("afbench-cache")
    old = {k: os.environ.get(k) for k in ("AFBENCH_CACHE_DIR", "HF_HUB_OFFLINE", "AFBENCH_DATA_DIR")}
    os.environ["AFBENCH_CACHE_DIR"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if MIRROR is not None:
        os.environ["AFBENCH_DATA_DIR"] = str(MIRROR)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def tiny_experiment(*, tasks=("rte", "cb"), methods=("head", "fusion_st_a"), fusion: bool = True, rows: int = 16,
                    eval_rows: int = 8, epochs: int = 1, diverge: bool = False, description: str | None = None) -> str:
    """The tiny experiment the runner and Slurm tests train (tiny-bert, seed 1, 32-token rows): by default a
    head and a Fusion w/ ST-A on RTE and CB, which imply the two stage-1 ST-A adapters (6 runs).
    ``diverge``: the stage-1 adapters train at lr 1e30 (they fail, their fusions are blocked, heads finish)."""
    lines = [f"description: {description}"] if description else []
    lines += ["backbones: [tiny-bert]", "seeds: [1]",
              f"groups: [{{tasks: [{', '.join(tasks)}], methods: [{', '.join(methods)}]}}]"]
    if fusion:
        lines.append("fusion: {sources: [rte, cb]}")
    lines.append(f"caps: {{max_train_rows: {rows}, max_eval_rows: {eval_rows}, max_epochs: {epochs}, max_length: 32}}")
    if diverge:
        lines.append("overrides: {st_a: {lr: 1.0e+30}}")
    return "\n".join(lines) + "\n"


def write_experiments(specs: Path, **experiments: str) -> Path:
    """``specs/experiments/<name>.yaml`` for each name (``tiny_experiment(...)`` texts); returns ``specs``, the
    folder to pass as ``--specs``."""
    (specs / "experiments").mkdir(parents=True, exist_ok=True)
    for name, text in experiments.items():
        (specs / "experiments" / f"{name}.yaml").write_text(text)
    return specs


def fusion_spec_error(folder: Path, name: str, fusion: str) -> str:
    """The SpecError a method spec ``<name>.yaml`` (Fusion w/ ST-A with ``fusion: <fusion>``) gets at load, checked
    to name the file and the field; returns its text for the fix the caller expects."""
    from benchmark.errors import SpecError
    from benchmark.spec import load_registry

    (folder / "methods").mkdir(parents=True, exist_ok=True)
    (folder / "methods" / f"{name}.yaml").write_text(
        f"include: _fusion_defaults.yaml\nmethod: fusion_st_a\nfusion: {fusion}\n")
    with pytest.raises(SpecError) as e:
        load_registry([folder])
    assert f"{name}.yaml" in str(e.value) and "fusion" in str(e.value)
    return str(e.value)


@pytest.fixture(scope="session")
def registry():
    from benchmark.spec import load_registry

    return load_registry()


@pytest.fixture(scope="session")
def tiny_bert(registry):
    from benchmark.modeling.backbone import load_encoder, load_tokenizer

    tok = load_tokenizer(registry.backbones["tiny-bert"])
    return tok, lambda: load_encoder(registry.backbones["tiny-bert"], tok)


@pytest.fixture(scope="session")
def tiny_roberta(registry):
    from benchmark.modeling.backbone import load_encoder, load_tokenizer

    tok = load_tokenizer(registry.backbones["tiny-roberta"])
    return tok, lambda: load_encoder(registry.backbones["tiny-roberta"], tok)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: skipped with the reason where torch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
