"""Test-wide environment: no hub, a private HF cache, Triton on the CPU interpreter.

These must be set before transformers / huggingface_hub / kernel modules are imported.
GGCOMPRESS_TEST_DEVICE=cuda compiles the kernels for a GPU instead (tests/kernel_device.py).
"""

import os
import tempfile

if os.environ.get("GGCOMPRESS_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ggcompress-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------- real-model fixtures
# Built once per machine into $GGCOMPRESS_CACHE by ggcompress.fixtures (CI runs
# `python -m ggcompress.fixtures all` first); here they only resolve paths, building if missing.

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir():
    """HF folder of the real all-MiniLM-L6-v2 encoder (fp32)."""
    from ggcompress import fixtures

    return fixtures.minilm()


@pytest.fixture(scope="session")
def smollm2_dir():
    """HF folder of SmolLM2-135M-Instruct, bf16, dequantized from a Q4_1 GGUF (see ggcompress.fixtures)."""
    from ggcompress import fixtures

    return fixtures.smollm2()


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The SmolLM2-135M-Instruct Q4_1 GGUF file (see ggcompress.fixtures)."""
    from ggcompress import fixtures

    return fixtures.smollm2_gguf()


@pytest.fixture(scope="session")
def text_files():
    """(train.txt, validation.txt) of cleaned English Wikipedia articles."""
    from ggcompress import fixtures

    return fixtures.text()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread for the whole suite: small matmuls gain nothing from a second OpenMP thread
    on a 2-core machine and lose a lot when it is shared; results also stop depending on it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
