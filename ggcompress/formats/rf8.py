"""RF8: each weight as at most two signed powers of two times a power-of-two group scale.

The paper (arXiv 2506.00486) gives the rounding rule but no bit layout; the byte layout here is ours,
specified byte-exactly in docs/rf8.md (version 1):

    bit 7 = sign s, bits 6..3 = exponent field E (0..15), bits 2..0 = residual index m
    lut[code] = (-1)^s * M[m] * 2^(E - 15),  M = (0.75, 0.875, 0.9375, 1, 1.0625, 1.125, 1.25, 1.5)
    codes 0x00 / 0x80 (E = 0, m = 0) are +0 / -0
    value = lut[code] * 2^b, with one exponent bias b per group stored as the float32 scale 2^b

0.75 * 2^E equals 1.5 * 2^(E-1), so 15 pairs of codes per sign share a value. The encoder only ever
writes the canonical code of a value: the one with the larger exponent field (m = 0, never the m = 7
twin below it), which is also what the paper's greedy rule e1 = round(log2|w|) produces.
"""

from __future__ import annotations

import math

import torch

from ggcompress.errors import GGError
from ggcompress.formats.base import (
    Codec,
    Granularity,
    QuantizedTensor,
    expand_scale,
    group_amax,
    label,
    reduce_groups,
)

RF8_VERSION = 1
RF8_RESIDUALS = (0.75, 0.875, 0.9375, 1.0, 1.0625, 1.125, 1.25, 1.5)  # M[m], m = bits 2..0
RF8_EXPONENT_OFFSET = 15  # lut exponent = E - 15, so the largest group value is 1.5 * 2^b
RF8_MAX = 1.5
RF8_MIN = 0.875 * 2.0**-15  # smallest nonzero magnitude (E = 0, m = 1)
BIAS_MIN, BIAS_MAX = -126, 127  # 2^b stays a normal float32
BIAS_RULES = ("amax", "mse")
ROUNDINGS = ("nearest", "greedy")
MSE_CANDIDATES = 3  # the MSE rule tries b_amax, b_amax - 1, b_amax - 2
# The RF8 value set is closed under x2 except at its two ends, so b only slides a 16-octave window:
# on all-MiniLM-L6-v2 the MSE search changes SQNR by < 0.0001 dB at every granularity
# (docs/rf8.md, benchmarks/bench_formats_sqnr.py). amax is the default: one pass, never saturates.
DEFAULT_BIAS = "amax"
_SQRT_HALF = math.sqrt(0.5)


def rf8_value(code: int) -> float:
    """Exact value of one RF8 code (before the group scale), straight from the spec."""
    if not 0 <= code <= 255:
        raise ValueError(f"RF8 code {code} is not a byte")
    s, e, m = code >> 7, (code >> 3) & 0xF, code & 0x7
    mag = 0.0 if e == 0 and m == 0 else math.ldexp(RF8_RESIDUALS[m], e - RF8_EXPONENT_OFFSET)
    return -mag if s else mag


def _build_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lut = torch.tensor([rf8_value(c) for c in range(256)], dtype=torch.float32)
    best: dict[float, int] = {}  # magnitude -> canonical 7-bit code (largest exponent field)
    for c7 in range(128):
        v = rf8_value(c7)
        if v not in best or (c7 >> 3) > (best[v] >> 3):
            best[v] = c7
    mags = sorted(best)  # 0 first, then the distinct nonzero magnitudes
    mids = [(a + b) / 2 for a, b in zip(mags, mags[1:], strict=False)]
    mids32 = torch.tensor(mids, dtype=torch.float32)
    if mids32.double().tolist() != mids:  # the rounding boundaries must be exact in float32
        raise AssertionError("RF8 midpoints are not exact float32 values")
    canonical = torch.tensor([best[abs(rf8_value(c))] | (c & 0x80) for c in range(256)], dtype=torch.uint8)
    by_rank = torch.tensor([best[v] for v in mags], dtype=torch.uint8)
    return lut, canonical, torch.tensor(mags, dtype=torch.float32), by_rank, mids32


RF8_LUT, _CANONICAL, RF8_MAGNITUDES, _CODE_BY_RANK, _MIDPOINTS = _build_tables()


def rf8_lut() -> torch.Tensor:
    """The 256-entry float32 decode table (a copy)."""
    return RF8_LUT.clone()


def rf8_canonical(codes: torch.Tensor) -> torch.Tensor:
    """Map every code to the canonical code of its value (the identity on canonical codes)."""
    return _CANONICAL.to(codes.device)[codes.long()]


def rf8_nearest_codes(x: torch.Tensor) -> torch.Tensor:
    """Canonical code of the representable value nearest to each finite ``x`` (in units of the scale).

    Ties go to the smaller magnitude. |x| > 1.5 saturates to +-1.5; |x| <= RF8_MIN / 2 flushes to a
    zero code carrying the sign of x (0x80 for negative values and -0.0).
    """
    x = x.to(torch.float32)
    idx = torch.bucketize(x.abs(), _MIDPOINTS.to(x.device), right=False)  # # of midpoints < |x|
    codes = _CODE_BY_RANK.to(x.device)[idx]
    return codes | (torch.signbit(x).to(torch.uint8) << 7)


def _round_log2(a: torch.Tensor) -> torch.Tensor:
    """round(log2 a) for a > 0, exactly: floor(log2 a) from frexp, then the mantissa against sqrt(1/2)."""
    mant, ex = torch.frexp(a)  # a = mant * 2^ex, mant in [0.5, 1)
    return ex - 1 + (mant >= _SQRT_HALF).to(ex.dtype)  # log2 a is never exactly k + 1/2 (irrational)


def rf8_greedy_values(x: torch.Tensor) -> torch.Tensor:
    """The paper's two-term value of |x| (float64, unbounded exponents, no range limits).

    e1 = round(log2|x|), d1 = 2^e1; e2 = round(log2|x - d1|), d2 = sign(x - d1) 2^e2 kept only when
    e1 - e2 <= 4 (e1 - e2 >= 1 always holds here). Returns d1 + d2 (0 for x = 0).
    """
    a = x.to(torch.float64).abs()
    ones = torch.ones_like(a)
    pos = a > 0
    safe = torch.where(pos, a, ones)
    e1 = _round_log2(safe)
    d1 = torch.ldexp(ones, e1)
    r = safe - d1  # exact in float64 (x came from float32)
    r_safe = torch.where(r != 0, r.abs(), ones)
    e2 = _round_log2(r_safe)
    keep = (r != 0) & (e1 - e2 <= 4)
    g = d1 + torch.where(keep, torch.sign(r) * torch.ldexp(ones, e2), torch.zeros_like(a))
    return torch.where(pos, g, torch.zeros_like(a))


def rf8_greedy_codes(x: torch.Tensor) -> torch.Tensor:
    """Codes by the paper's greedy rule: its two-term value, then the canonical code of that value.

    Inside the range the greedy value is representable, so this is exact; outside it the value is
    rounded like any other (saturate above 1.5, nearest/zero below the smallest magnitude).
    """
    x = x.to(torch.float32)
    g = rf8_greedy_values(x).to(torch.float32)  # exact: at most 5 significant bits (inf only if huge)
    return rf8_nearest_codes(torch.copysign(g, x))


def rf8_bias_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """Smallest b with amax <= 1.5 * 2^b (no saturation), int32, clamped to [-126, 127]; 0 if amax = 0."""
    a = amax.to(torch.float64)
    mant, ex = torch.frexp(a / 1.5)  # a / 1.5 in [2^(ex-1), 2^ex)
    b = ex - (mant == 0.5).to(ex.dtype)
    one = torch.ones_like(a)
    b = b + (a > 1.5 * torch.ldexp(one, b)).to(b.dtype)  # exact float64 checks guard the division above
    b = b - (a <= 1.5 * torch.ldexp(one, b - 1)).to(b.dtype)
    b = b.clamp(BIAS_MIN, BIAS_MAX)
    return torch.where(a > 0, b, torch.zeros_like(b)).to(torch.int32)


def rf8_scale(bias: torch.Tensor) -> torch.Tensor:
    """The float32 scale 2^b stored for exponent bias b."""
    return torch.ldexp(torch.ones(bias.shape, dtype=torch.float32, device=bias.device), bias)


class RF8Codec(Codec):
    """RF8 with nearest (default) or the paper's greedy rounding, and an amax or MSE-searched bias."""

    name = "rf8"

    def __init__(self, rounding: str = "nearest", bias: str = DEFAULT_BIAS) -> None:
        if rounding not in ROUNDINGS:
            raise GGError(f"rf8 rounding {rounding!r}: expected one of {', '.join(ROUNDINGS)}")
        if bias not in BIAS_RULES:
            raise GGError(f"rf8 bias rule {bias!r}: expected one of {', '.join(BIAS_RULES)}")
        super().__init__(RF8_LUT)
        self.rounding = rounding
        self.bias = bias
        self._codes = rf8_nearest_codes if rounding == "nearest" else rf8_greedy_codes

    def scale_from_amax(self, amax: torch.Tensor) -> torch.Tensor:
        return rf8_scale(rf8_bias_from_amax(amax))

    def encode_scaled(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self._codes(w / scale)  # exact: scale is a power of two

    def choose_scale(self, w2: torch.Tensor, gran: Granularity) -> torch.Tensor:
        """amax rule, or per group the b in {b_amax, b_amax-1, b_amax-2} with the least squared error.

        A smaller b trades saturating the few largest weights for finer steps everywhere else; ties go
        to the larger b. All groups are searched at once (one pass over the tensor per candidate).
        """
        b_amax = rf8_bias_from_amax(group_amax(w2, gran))
        if self.bias == "amax":
            return rf8_scale(b_amax)
        best_b, best_err = b_amax, self._group_sse(w2, gran, rf8_scale(b_amax))
        for k in range(1, MSE_CANDIDATES):
            b = (b_amax - k).clamp(min=BIAS_MIN)
            err = self._group_sse(w2, gran, rf8_scale(b))
            better = err < best_err
            best_b = torch.where(better, b, best_b)
            best_err = torch.where(better, err, best_err)
        return rf8_scale(best_b)

    def _group_sse(self, w2: torch.Tensor, gran: Granularity, scale: torch.Tensor) -> torch.Tensor:
        """Sum of squared errors per group (float64) when encoding with ``scale``."""
        lut = self._lut.to(w2.device)
        cols = w2.shape[1]

        def sq_err(c: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
            s = expand_scale(scale, gran, r0, r1, cols)
            v = lut[self._codes(c / s).long()] * s  # exact decode
            return (v.double() - c.double()).square()

        return reduce_groups(w2, gran, sq_err, "sum", dtype=torch.float64)

    def check_scale(self, scale: torch.Tensor, name: str) -> None:
        """RF8 scales must be exact powers of two 2^b, b in [-126, 127] (the shift-and-add promise)."""
        super().check_scale(scale, name)
        mant, ex = torch.frexp(scale)
        if not bool((mant == 0.5).all()) or not bool(((ex - 1 >= BIAS_MIN) & (ex - 1 <= BIAS_MAX)).all()):
            raise GGError(f"{label(name)}: rf8 scale values must be powers of two 2^b with b in "
                          f"[{BIAS_MIN}, {BIAS_MAX}]")


def rf8_encode_greedy(
    w: torch.Tensor,
    granularity: str | Granularity = "channel",
    block_size: int | None = None,
    name: str = "",
    bias: str = "amax",
) -> QuantizedTensor:
    """RF8-encode with the paper's greedy two-term rule (the reference; nearest is never worse per value)."""
    return RF8Codec(rounding="greedy", bias=bias).encode(w, granularity, block_size, name)
