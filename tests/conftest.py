"""Shared test fixtures: one torch thread, tiny random models and their files, stand-in text."""
from __future__ import annotations

import pytest
import torch

# the fake-ComfyUI fixtures (env, models, ...) of the node and workflow tests; the stand-in hub (fake_hub, online)
pytest_plugins = ["pack_harness", "hub_harness"]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tests run tiny models: a thread pool only adds overhead (several times slower when other jobs
    share the machine's 2 cores), and the reference fixtures were made with one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    return {fmt: save_reference_files(root / fmt, tiny_transformer, tiny_tokenizer, fmt)
            for fmt in ("pth", "safetensors")}
