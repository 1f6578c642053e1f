"""ggcompress: GG-prior compression for LLM checkpoints."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# transformers' from_pretrained loads ggcompress-quantized folders once ggcompress is imported (no torch
# import here: the quantizer registers when transformers' quantizer registry is imported).
from ggcompress.integrations.hook import arm as _arm_transformers  # noqa: E402

_arm_transformers()


def load(path: str, *, device: str = "cpu", dtype: Any = None, backend: str = "auto") -> Any:
    """A transformers model from a ggcompress-quantized (or plain) HF folder; Linear layers keep 1-byte codes.

    The tokenizer: ``transformers.AutoTokenizer.from_pretrained(path)``, or use
    ``ggcompress.io.quantized.load_quantized(path)``, which returns ``(model, tokenizer)``. Imported lazily
    so ``import ggcompress`` stays light.
    """
    from ggcompress.io.quantized import load_quantized

    return load_quantized(path, device=device, dtype=dtype, backend=backend, tokenizer=False)[0]
