"""OCP FP8 baselines, E4M3 (``float8_e4m3fn``) and E5M2, with the scale amax / max-finite per group.

Reference behaviour is torch's float8 dtypes: the scaled value w / scale (float32 division) is clamped
to the largest finite magnitude (saturating, so no Inf/NaN code is ever written) and converted with
``.to(torch.float8_*)`` (round to nearest, ties to even). The decode table is built from the OCP
definition below; tests check it equals torch's decode of all 256 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ggcompress.formats.base import MIN_SCALE, Codec


@dataclass(frozen=True)
class FP8Spec:
    """An OCP 8-bit float: 1 sign bit, ``exp_bits`` exponent bits with ``bias``, the rest mantissa."""

    name: str
    dtype: torch.dtype
    exp_bits: int
    man_bits: int
    bias: int
    ieee_specials: bool  # E5M2: all-ones exponent is Inf/NaN; E4M3 ("fn"): only S.1111.111 is NaN
    max_finite: float


E4M3 = FP8Spec("fp8_e4m3", torch.float8_e4m3fn, 4, 3, 7, False, 448.0)
E5M2 = FP8Spec("fp8_e5m2", torch.float8_e5m2, 5, 2, 15, True, 57344.0)


def fp8_value(code: int, spec: FP8Spec) -> float:
    """Value of one FP8 byte per the OCP 8-bit floating point specification (NaN/Inf included)."""
    sign = -1.0 if code & 0x80 else 1.0
    e = (code >> spec.man_bits) & ((1 << spec.exp_bits) - 1)
    m = code & ((1 << spec.man_bits) - 1)
    e_max = (1 << spec.exp_bits) - 1
    if spec.ieee_specials and e == e_max:
        return sign * math.inf if m == 0 else math.nan
    if not spec.ieee_specials and e == e_max and m == (1 << spec.man_bits) - 1:
        return math.nan
    if e == 0:  # subnormal (and +-0)
        return sign * math.ldexp(m / (1 << spec.man_bits), 1 - spec.bias)
    return sign * math.ldexp(1 + m / (1 << spec.man_bits), e - spec.bias)


def fp8_lut(spec: FP8Spec) -> torch.Tensor:
    """256-entry float32 decode table of an FP8 format."""
    return torch.tensor([fp8_value(c, spec) for c in range(256)], dtype=torch.float32)


class FP8Codec(Codec):
    """Per-group scaled OCP FP8: scale = amax / max_finite, codes = the float8 bytes of w / scale."""

    def __init__(self, spec: FP8Spec) -> None:
        super().__init__(fp8_lut(spec))
        self.spec = spec
        self.name = spec.name

    def scale_from_amax(self, amax: torch.Tensor) -> torch.Tensor:
        s = amax.to(torch.float32) / self.spec.max_finite
        s = torch.where(amax > 0, s, torch.ones_like(s))  # all-zero group: scale 1, zero codes
        return s.clamp(min=MIN_SCALE)  # tiny amax: keep the scale a normal float32, never 0

    def encode_scaled(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        m = self.spec.max_finite
        return (w / scale).clamp_(-m, m).to(self.spec.dtype).view(torch.uint8)
