"""Shared fixtures. Tests use tiny random models; real data comes from the offline mirror
(AFBENCH_DATA_DIR, or ../shared/data beside the checkout) and tests needing it skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
