"""8-bit weight formats: RF8 (ours on the paper's rule), OCP FP8 E4M3 / E5M2 and INT8 (this registry),
plus the low-bit GF-k codebook formats (``formats.gf``, per-tensor tables, k-bit packed codes).

Every format stores uint8 codes plus float32 scales and decodes as ``lut[code] * scale[row, col // N]``
(see ``base``), so the matmul kernels serve all of them with one table gather.
"""

from __future__ import annotations

import torch

from ggcompress.errors import GGError
from ggcompress.formats.base import Codec, Granularity, QuantizedTensor, parse_granularity
from ggcompress.formats.fp8 import E4M3, E5M2, FP8Codec
from ggcompress.formats.int8 import Int8Codec
from ggcompress.formats.metrics import error_stats, sqnr_db
from ggcompress.formats.rf8 import RF8_VERSION, RF8Codec, rf8_encode_greedy

_CODECS: dict[str, Codec] = {
    "rf8": RF8Codec(),
    "fp8_e4m3": FP8Codec(E4M3),
    "fp8_e5m2": FP8Codec(E5M2),
    "int8": Int8Codec(),
}
_ALIASES = {"e4m3": "fp8_e4m3", "e5m2": "fp8_e5m2", "fp8-e4m3": "fp8_e4m3", "fp8-e5m2": "fp8_e5m2"}


def available_formats() -> tuple[str, ...]:
    """Canonical format names, as stored in ``QuantizedTensor.format`` and checkpoint metadata."""
    return tuple(_CODECS)


def get_codec(name: str) -> Codec:
    """The codec for a format name (case-insensitive; ``e4m3`` / ``e5m2`` are accepted aliases)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _CODECS:
        raise GGError(f"unknown weight format {name!r}: choose from {', '.join(_CODECS)}")
    return _CODECS[key]


def canonical_format(name: str) -> str:
    """The stored name of an 8-bit codec (``get_codec``) or of a GF-k format (``gf3`` .. ``gf8``)."""
    from ggcompress.formats.gf import GF_FORMATS

    key = str(name).strip().lower()
    if key in GF_FORMATS or key == "auto":  # auto: a per-tensor choice (quantize-rf8 --format auto --bits B)
        return key
    try:
        return get_codec(key).name
    except GGError:
        raise GGError(f"unknown weight format {name!r}: choose from "
                      f"{', '.join((*_CODECS, *GF_FORMATS))}") from None


def decode(q: QuantizedTensor, dtype: torch.dtype = torch.float32, name: str = "") -> torch.Tensor:
    """Decode with the codec named by ``q.format``."""
    return get_codec(q.format).decode(q, dtype=dtype, name=name)


__all__ = [
    "Codec", "Granularity", "QuantizedTensor", "RF8_VERSION", "RF8Codec", "FP8Codec", "Int8Codec",
    "available_formats", "canonical_format", "decode", "error_stats", "get_codec", "parse_granularity",
    "rf8_encode_greedy", "sqnr_db",
]
