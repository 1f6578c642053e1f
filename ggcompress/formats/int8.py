"""Symmetric INT8 baseline: scale = amax / 127 per group, codes = round(w / scale) in [-127, 127].

Codes are two's-complement int8 bytes viewed as uint8; -128 (0x80) is never written, so the grid is
symmetric around 0. Rounding is torch.round (half to even) of the float32 quotient w / scale.
"""

from __future__ import annotations

import torch

from ggcompress.formats.base import MIN_SCALE, Codec

INT8_MAX = 127


def int8_lut() -> torch.Tensor:
    """lut[c] = c for c < 128, c - 256 otherwise (the two's-complement value of the byte)."""
    return torch.tensor([c - 256 if c >= 128 else c for c in range(256)], dtype=torch.float32)


class Int8Codec(Codec):
    """Per-group symmetric integer quantization, the accuracy baseline among 8-bit formats."""

    name = "int8"

    def __init__(self) -> None:
        super().__init__(int8_lut())

    def scale_from_amax(self, amax: torch.Tensor) -> torch.Tensor:
        s = amax.to(torch.float32) / INT8_MAX
        s = torch.where(amax > 0, s, torch.ones_like(s))  # all-zero group: scale 1, zero codes
        return s.clamp(min=MIN_SCALE)

    def encode_scaled(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        q = torch.round(w / scale).clamp_(-INT8_MAX, INT8_MAX)
        return q.to(torch.int8).view(torch.uint8)
