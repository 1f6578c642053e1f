"""Test-wide environment: no hub, a private HF cache, Triton on the CPU interpreter.

These must be set before transformers / huggingface_hub / kernel modules are imported.
"""

import os
import tempfile

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
def text_files():
    """(train.txt, validation.txt) of cleaned English Wikipedia articles."""
    from ggcompress import fixtures

    return fixtures.text()
