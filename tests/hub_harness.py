"""Fixtures for tests that download: the stand-in hub with the tiny official files, and an environment
pointing huggingface_hub at it (HF_ENDPOINT; offline flags cleared). Import the fixtures into a test module:
`from hub_harness import fake_hub, online  # noqa: F401`."""
from __future__ import annotations

import pytest

import hub_models
from hub_server import FakeHub
from shared_paths import MODEL_A, TOKENIZER_DIR

needs_fixtures = pytest.mark.skipif(not MODEL_A.is_dir() or not (TOKENIZER_DIR / "tokenizer.json").is_file(),
                                    reason="shared fixtures missing")


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    server = FakeHub().start()
    server.content = hub_models.populate(server, tmp_path_factory.mktemp("hub_src"))
    yield server
    server.stop()


@pytest.fixture
def online(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(flag, raising=False)
    fake_hub.requests.clear()
    fake_hub.served.clear()
    fake_hub.drop_after.clear()
    fake_hub.corrupt_at.clear()
    return fake_hub
