"""Shared test fixtures: one torch thread, tiny random models and their files, stand-in text.

Under CI (CI=true, as CI services and .ci/run set it) the shared fixtures are required: a missing
fixture folder or tokenizer fails the run instead of skipping the parity and node tests, and a run
that compared no reference case fails. Every run ends with a line saying how many cases it compared.
"""
from __future__ import annotations

import os

import pytest
import torch

from shared_paths import MODEL_A, SHARED, TOKENIZER_DIR

# the fake-ComfyUI fixtures (env, models, ...) of the node and workflow tests; the stand-in hub (fake_hub, online)
pytest_plugins = ["pack_harness", "hub_harness"]
PARITY_TEST = "test_reference_parity.py::test_reference_case"
# The numerically sensitive tests (attention, resizes, layers, sampling, masks, pruning, truncation, parity with
# the golden outputs): their assertions compare floats that different kernels compute. `.ci/run` runs them a
# second time under lower CPU kernel levels than the machine's (marker `kernels`), so an assertion that holds
# for one CPU's kernels only fails on every machine. Tolerances come from tests/tolerances.py.
KERNEL_SENSITIVE = ("test_device_paths.py", "test_layers.py", "test_sampler.py", "test_sampler_masks.py",
                    "test_masks_edges.py", "test_masks_with_pruning.py", "test_pruning.py",
                    "test_guidance_truncation.py", "test_reference_parity.py", "test_fastvar_parity.py",
                    "test_quantizer.py", "test_text_encoder.py", "test_schedules.py", "test_pipeline_cli.py",
                    "test_tolerances.py")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing_shared() -> list[str]:
    import reference_cases
    needed = [(reference_cases.fixtures_dir(), "reference fixtures (INFINITY_REF_FIXTURES)"),
              (MODEL_A, "tiny reference model folder"), (TOKENIZER_DIR / "tokenizer.json", "T5 tokenizer")]
    return [f"{what}: {path}" for path, what in needed if not path.exists()]


def kernel_levels() -> str:
    """The CPU kernels this process runs: ATen's dispatch level, and the caps set on oneDNN and MKL."""
    onednn, mkl = (os.environ.get(name, "native") for name in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"))
    return f"CPU kernels: ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN max ISA {onednn}, MKL {mkl}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in KERNEL_SENSITIVE:
            item.add_marker(pytest.mark.kernels)


def _kernel_level_mismatch() -> str | None:
    """A kernel pass that asked for a level PyTorch did not take would prove nothing: say so."""
    asked = os.environ.get("ATEN_CPU_CAPABILITY", "").strip()
    got = torch.backends.cpu.get_cpu_capability()
    if asked and asked.upper() != got.upper():
        return f"ATEN_CPU_CAPABILITY={asked} was asked for but PyTorch runs {got} kernels"
    return None


def pytest_sessionstart(session):
    mismatch = _kernel_level_mismatch()
    if mismatch:
        raise pytest.UsageError(mismatch)
    missing = _missing_shared() if in_ci() else []
    if missing:
        raise pytest.UsageError(f"CI=true but the shared fixtures are missing (looked under {SHARED}; set "
                                f"INFINITY_SHARED): " + "; ".join(missing))


def _parity_counts(config) -> dict[str, int]:
    stats = config.pluginmanager.get_plugin("terminalreporter").stats
    return {outcome: sum(1 for r in stats.get(outcome, []) if getattr(r, "when", "call") in ("setup", "call")
                         and PARITY_TEST in r.nodeid) for outcome in ("passed", "failed", "skipped", "error")}


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    collected = any(PARITY_TEST.split("::")[0] in item.nodeid for item in session.items)
    if not collected:
        return
    counts = _parity_counts(session.config)
    compared = counts["passed"] + counts["failed"]
    session.config._infinity_parity = (f"reference parity: {compared} case runs compared with the golden fixtures "
                                       f"({counts['passed']} passed, {counts['failed']} failed, "
                                       f"{counts['skipped']} skipped)")
    if in_ci() and (compared == 0 or counts["skipped"]) and session.exitstatus == 0:
        session.config._infinity_parity += "; CI=true: a skipped or missing parity case fails the run"
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(kernel_levels())
    if getattr(config, "_infinity_parity", None):
        terminalreporter.write_line(config._infinity_parity)


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
    from infinity_core.files.random_models import random_transformer
    return random_transformer(tiny_config, seed=1)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_vae_config):
    from infinity_core.files.random_models import random_tokenizer
    return random_tokenizer(tiny_vae_config, seed=2)


@pytest.fixture
def prompt():
    from infinity_core.model.conditioning import TextEmbedding
    return TextEmbedding.from_single(torch.randn(9, 128, generator=torch.Generator().manual_seed(21)))


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, tiny_transformer, tiny_tokenizer):
    """The tiny random models written in the released layouts, both formats."""
    from infinity_core.files.random_models import save_reference_files
    root = tmp_path_factory.mktemp("tiny_models")
    return {fmt: save_reference_files(root / fmt, tiny_transformer, tiny_tokenizer, fmt)
            for fmt in ("pth", "safetensors")}
