"""Shared test fixtures: where ../shared is, tiny models, stand-in text."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INFINITY_SHARED", REPO.parent / "shared"))
PUBLIC_FIXTURES = SHARED / "fixtures" / "infinity_ref"
MODEL_A = PUBLIC_FIXTURES / "model_a"
TOKENIZER_DIR = SHARED / "fixtures" / "t5_tokenizer"

needs_fixtures = pytest.mark.skipif(not MODEL_A.is_dir(), reason=f"shared fixtures not found at {PUBLIC_FIXTURES}")


@pytest.fixture(scope="session")
def tiny_config():
    from infinity_core.selfcheck import TINY
    return TINY


@pytest.fixture(scope="session")
def tiny_vae_config():
    from infinity_core.selfcheck import TINY_VAE
    return TINY_VAE


@pytest.fixture(scope="session")
def tiny_transformer(tiny_config):
    from infinity_core.random_models import random_transformer
    return random_transformer(tiny_config, seed=1)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_vae_config):
    from infinity_core.random_models import random_tokenizer
    return random_tokenizer(tiny_vae_config, seed=2)


@pytest.fixture
def prompt():
    from infinity_core.conditioning import TextEmbedding
    return TextEmbedding.from_single(torch.randn(9, 128, generator=torch.Generator().manual_seed(21)))


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, tiny_transformer, tiny_tokenizer):
    """The tiny random models written in the released layouts, both formats."""
    from infinity_core.random_models import save_reference_files
    root = tmp_path_factory.mktemp("tiny_models")
    return {fmt: save_reference_files(root / fmt, tiny_transformer, tiny_tokenizer, fmt) for fmt in ("pth", "safetensors")}
