"""GF-k: k-bit codebook weights (k = 3, 4, 5, 6, 8) whose 2^k levels are Lloyd–Max for the weights.

Why: at k bits the choice of levels decides the error (NF4 exists because INT4 wastes levels where few
weights are). Weights are bell-shaped with rare large outliers, so GF spends levels where the weights
are: each group (tensor / output row / block of N inputs) is divided by its scale ``s``, and one table
of 2^k float32 levels per tensor is the minimum-MSE (Lloyd–Max) quantizer for the distribution of
those normalized weights. A weight decodes as ``table[code] * s`` (float32, rounded once), the same
LUT rule as the 8-bit formats, so the matmul kernels serve GF with a 256-entry table whose unused
entries are 0.

Design densities (``design``):
- ``data``: the tensor's own normalized weights (a 65,536-bin histogram on [-1, 1]); outliers are
  covered because they are in the data (every group's max is exactly +-1 at the amax scale);
- ``gg``: (1 - eps) * GG(beta, alpha) + eps * Uniform[-1, 1], beta and alpha moment-fitted to the
  normalized weights, beta rounded to one of 16 buckets (the parametric shape match);
- ``gauss``: the same with beta = 2 (the control).
docs/gf.md measures the three (``benchmarks/bench_formats.py --tables``). ``auto`` (the default) uses
``gg`` for 8 bits per channel / tensor, where the shape match measured best (+0.66 dB on MiniLM,
+0.79 dB on SmolLM2 over ``data``), and ``data`` everywhere else, where it was best by 0.36-1.87 dB.

Scale: per group ``s = a * f``, ``a`` the signed value of the largest-magnitude weight and ``f``
picked from ``scale_grid`` to minimize the group's squared error (f < 1 clips the group's largest
weights to the top level in exchange for finer steps). The table can then be refitted on the chosen
scales and the factors searched once more (``refine``; off by default: +0.00 dB on MiniLM at 4 bits
for twice the time). At 8 bits the search gains nothing (43.36 dB either way on MiniLM per channel),
so GF-8 uses ``a`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ggcompress.errors import GGError
from ggcompress.formats.base import (
    Granularity,
    as_matrix,
    check_finite,
    expand_scale,
    group_amax,
    group_view,
    label,
    matrix_shape,
    parse_granularity,
    reduce_groups,
    row_chunks,
)
from ggcompress.formats.packing import pack_codes, packed_cols, unpack_codes

GF_VERSION = 1
GF_BITS = (3, 4, 5, 6, 8)
GF_FORMATS = tuple(f"gf{k}" for k in GF_BITS)
DESIGNS = ("auto", "data", "gg", "gauss")
HIST_BINS = 1 << 16
LLOYD_ITERS = 300
FLOOR_EPS = 1.0 / 256
BETA_BUCKETS = tuple(round(0.5 * 2 ** (i / 5), 4) for i in range(16))  # 0.5 .. ~4.0, log-spaced
#: Scale factors tried per group (amax * f). Measured on MiniLM: see docs/gf.md "scale search".
DEFAULT_GRID = {3: (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65),
                4: (1.0, 0.95, 0.9, 0.85, 0.8, 0.75),
                5: (1.0, 0.95, 0.9, 0.85, 0.8),
                6: (1.0, 0.95, 0.9, 0.85),
                8: (1.0,)}


def gf_bits(fmt: str) -> int:
    """k of a GF format name ("gf4" -> 4)."""
    key = str(fmt).strip().lower()
    if key not in GF_FORMATS:
        raise GGError(f"unknown GF format {fmt!r}: choose from {', '.join(GF_FORMATS)}")
    return int(key[2:])


def is_gf(fmt: str) -> bool:
    return str(fmt).strip().lower() in GF_FORMATS


@dataclass
class GFTensor:
    """One GF-k weight: unpacked uint8 ``codes`` (rows, cols) < 2^k, float16 ``scale`` (signed), float32
    ``table`` of 2^k levels."""

    codes: torch.Tensor
    scale: torch.Tensor
    table: torch.Tensor  # (2^k,) float32, ascending
    bits: int
    granularity: str
    block_size: int | None
    shape: tuple[int, ...]

    @property
    def format(self) -> str:
        return f"gf{self.bits}"

    @property
    def granularity_spec(self) -> str:
        return Granularity(self.granularity, self.block_size).spec

    @property
    def stored_bytes(self) -> int:
        """Packed codes + float16 scales + float32 table, as written to a file."""
        rows, cols = self.codes.shape
        return rows * packed_cols(cols, self.bits) + 2 * self.scale.numel() + 4 * self.table.numel()

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight including scales and the table."""
        n = self.codes.numel()
        return 8.0 * self.stored_bytes / n if n else 0.0

    def packed(self) -> torch.Tensor:
        """Codes packed ``bits`` per code, row by row (docs/gf.md §3)."""
        return pack_codes(self.codes, self.bits)

    def lut256(self) -> torch.Tensor:
        """The table padded with zeros to the 256 entries the 8-bit LUT kernels take."""
        return lut256(self.table)


def lut256(table: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(256, dtype=torch.float32, device=table.device)
    out[: table.numel()] = table.to(torch.float32)
    return out


# ---------------------------------------------------------------------------------------------- Lloyd–Max


def lloyd_max(centers: torch.Tensor, weights: torch.Tensor, n_levels: int,
              iters: int = LLOYD_ITERS) -> torch.Tensor:
    """Minimum-MSE levels (ascending, float64) for a density given as point masses ``weights`` at sorted
    ``centers``: alternate nearest-level cells and cell centroids, starting from the quantiles."""
    x = centers.to(torch.float64)
    p = weights.to(torch.float64).clamp(min=0)
    total = float(p.sum())
    if total <= 0:
        return torch.linspace(-1, 1, n_levels, dtype=torch.float64)
    cdf = torch.cumsum(p, 0)
    px = torch.cumsum(p * x, 0)
    # Start at the quantiles of p^(1/3), the high-resolution optimum (Panter & Dite), so that even 256
    # levels are close to converged after a few dozen iterations.
    comp = torch.cumsum(p.pow(1 / 3), 0)
    targets = (torch.arange(n_levels, dtype=torch.float64) + 0.5) / n_levels * float(comp[-1])
    levels = x[torch.searchsorted(comp, targets).clamp(max=x.numel() - 1)]
    zero = torch.zeros(1, dtype=torch.float64)
    cdf0, px0 = torch.cat([zero, cdf]), torch.cat([zero, px])
    for _ in range(iters):
        levels, _ = torch.sort(levels)
        mids = (levels[1:] + levels[:-1]) / 2
        edges = torch.cat([torch.zeros(1, dtype=torch.long), torch.searchsorted(x, mids),
                           torch.tensor([x.numel()])])
        mass = cdf0[edges[1:]] - cdf0[edges[:-1]]
        mom = px0[edges[1:]] - px0[edges[:-1]]
        new = torch.where(mass > 0, mom / mass.clamp(min=1e-300), levels)
        if torch.equal(new, levels):
            break
        levels = new
    return torch.sort(levels).values


def _beta_from_kurtosis(kurt: float) -> float:
    """Shape beta of a generalized Gaussian with this kurtosis (Gamma(5/b)Gamma(1/b)/Gamma(3/b)^2)."""
    def k_of(b: float) -> float:
        return math.exp(math.lgamma(5 / b) + math.lgamma(1 / b) - 2 * math.lgamma(3 / b))

    lo, hi = 0.2, 20.0
    if kurt >= k_of(lo):
        return lo
    if kurt <= k_of(hi):
        return hi
    for _ in range(80):
        mid = math.sqrt(lo * hi)
        if k_of(mid) > kurt:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def design_density(hist: torch.Tensor, centers: torch.Tensor, design: str) -> tuple[torch.Tensor, float]:
    """Point masses on ``centers`` for a design, and the beta used (nan for ``data``)."""
    if design == "data":
        return hist, math.nan
    p = hist.to(torch.float64)
    total = float(p.sum())
    x = centers.to(torch.float64)
    m2 = float((p * x * x).sum()) / total
    m4 = float((p * x ** 4).sum()) / total
    if design == "gauss":
        beta = 2.0
    else:
        raw = _beta_from_kurtosis(m4 / max(m2 * m2, 1e-300))
        beta = min(BETA_BUCKETS, key=lambda b: abs(math.log(b / raw)))
    alpha = math.sqrt(max(m2, 1e-30) * math.exp(math.lgamma(1 / beta) - math.lgamma(3 / beta)))
    dens = torch.exp(-(x.abs() / alpha) ** beta)
    dens = dens / dens.sum()
    floor = torch.full_like(dens, 1.0 / dens.numel())
    return (1 - FLOOR_EPS) * dens + FLOOR_EPS * floor, beta


# ---------------------------------------------------------------------------------------------- codec


class _Nearest:
    """Nearest-level search by a uniform grid of cells on [-1, 1] instead of a binary search (~5x faster).

    Each cell stores the code nearest to its left edge; when at most one decision boundary (midpoint
    between levels) falls in every cell, ``code = cell_code + (z > boundary[cell_code])`` is exact.
    Tables with boundaries closer than a cell fall back to ``torch.bucketize`` (same result).
    """

    CELLS = 1 << 16

    def __init__(self, table: torch.Tensor) -> None:
        t = table.to(torch.float32)
        self.mids = (t[1:] + t[:-1]) / 2
        self.bounds = torch.cat([self.mids, torch.full((1,), math.inf, device=t.device)])
        edges = torch.linspace(-1, 1, self.CELLS + 1, device=t.device)[:-1]
        self.cell_code = torch.bucketize(edges, self.mids)
        per_cell = torch.bincount(((self.mids.clamp(-1, 1) + 1) * (self.CELLS / 2)).long()
                                  .clamp(0, self.CELLS - 1), minlength=self.CELLS)
        self.exact = bool((per_cell <= 1).all())

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if not self.exact:
            return torch.bucketize(z, self.mids).to(torch.uint8)
        zc = z.clamp(-1, 1)
        cell = ((zc + 1) * (self.CELLS / 2)).long().clamp_(0, self.CELLS - 1)
        c = self.cell_code[cell]
        return (c + (zc > self.bounds[c])).to(torch.uint8)


F16_MAX = 65504.0
F16_MIN = 2.0**-24  # smallest float16 subnormal


def f16_scale(s: torch.Tensor) -> torch.Tensor:
    """Scales as stored (float16, sign kept, magnitude clamped to [2^-24, 65504]), back in float32."""
    mag = s.abs().clamp(F16_MIN, F16_MAX)
    return torch.where(s < 0, -mag, mag).to(torch.float16).to(torch.float32)


def signed_amax(w2: torch.Tensor, gran: Granularity) -> torch.Tensor:
    """Per group, the value (with its sign) of the element of largest magnitude, scale-shaped float32.

    Dividing a group by it puts its extreme weight at exactly +1, so the table needs a level at +1 only
    (not at -1 as well): one level more for the rest of the group.
    """
    rows, cols = w2.shape
    out = torch.zeros(gran.scale_shape(rows, cols), dtype=torch.float32, device=w2.device)
    if rows * cols == 0:
        return out
    best = torch.zeros((), dtype=torch.float32)
    for r0, r1 in row_chunks(rows, cols):
        c = w2[r0:r1].to(torch.float32)
        if gran.kind == "tensor":
            v = c.reshape(-1)[c.abs().argmax()]
            best = v if v.abs() > best.abs() else best
            out[0, 0] = best
        elif gran.kind == "channel":
            out[r0:r1, 0] = c.gather(1, c.abs().argmax(dim=1, keepdim=True))[:, 0]
        else:
            gv = group_view(c, gran)
            out[r0:r1] = gv.gather(2, gv.abs().argmax(dim=2, keepdim=True))[..., 0]
    return out


class GFCodec:
    """GF-k encoder/decoder; ``design`` picks the table's design density, ``scale_grid`` the factors."""

    def __init__(self, bits: int, design: str = "auto", scale_grid: tuple[float, ...] | None = None,
                 refine: bool = False, signed: bool = True) -> None:
        if bits not in GF_BITS:
            raise GGError(f"GF bits {bits!r}: choose from {', '.join(map(str, GF_BITS))}")
        if design not in DESIGNS:
            raise GGError(f"GF table design {design!r}: choose from {', '.join(DESIGNS)}")
        self.bits = bits
        self.design = design
        self.grid = tuple(scale_grid) if scale_grid else DEFAULT_GRID[bits]
        self.refine = refine
        self.signed = signed
        self.name = f"gf{bits}"
        self.last_beta = math.nan  # beta of the last parametric table (for reports)

    # -- table ---------------------------------------------------------------------------------------

    def _histogram(self, w2: torch.Tensor, gran: Granularity, scale: torch.Tensor) -> torch.Tensor:
        """Histogram of w / s on [-1, 1], each weight counted with s^2: a level error e in z costs
        (e * s)^2 in w, so Lloyd on this histogram minimizes the weights' own squared error."""
        rows, cols = w2.shape
        hist = torch.zeros(HIST_BINS, dtype=torch.float64)
        s32 = scale.to(torch.float32)
        for r0, r1 in row_chunks(rows, cols):
            s = expand_scale(s32, gran, r0, r1, cols).expand(r1 - r0, cols)
            z = (w2[r0:r1].to(torch.float32) / s).clamp(-1, 1)
            idx = ((z + 1) * (HIST_BINS / 2)).long().clamp(0, HIST_BINS - 1)
            hist += torch.bincount(idx.reshape(-1), weights=s.square().reshape(-1).double(),
                                   minlength=HIST_BINS)
        return hist

    def fit_table(self, w2: torch.Tensor, gran: Granularity, scale: torch.Tensor) -> torch.Tensor:
        """2^k float32 levels (ascending) for ``w2 / scale`` clipped to [-1, 1]."""
        hist = self._histogram(w2, gran, scale)
        centers = torch.linspace(-1 + 1 / HIST_BINS, 1 - 1 / HIST_BINS, HIST_BINS, dtype=torch.float64)
        design = self.design
        if design == "auto":  # the shape match pays only for 8 bits with a scale per row (docs/gf.md §4)
            design = "gg" if self.bits == 8 and gran.kind != "block" else "data"
        dens, self.last_beta = design_density(hist, centers, design)
        return lloyd_max(centers, dens, 1 << self.bits).to(torch.float32)

    # -- codes ---------------------------------------------------------------------------------------

    @staticmethod
    def nearest(z: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Index of the level nearest to each value (ties to the lower level), as uint8."""
        return _Nearest(table.to(z.device))(z)

    def _group_sse(self, w2: torch.Tensor, gran: Granularity, scale: torch.Tensor,
                   table: torch.Tensor) -> torch.Tensor:
        cols = w2.shape[1]
        t = table.to(w2.device)
        near = _Nearest(t)

        def sq(c: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
            s = expand_scale(scale, gran, r0, r1, cols)
            v = t[near(c / s).long()] * s
            return (v - c).square()

        return reduce_groups(w2, gran, sq, "sum", dtype=torch.float64)

    def _search(self, w2: torch.Tensor, gran: Granularity, amax: torch.Tensor,
                table: torch.Tensor) -> torch.Tensor:
        best_s, best_e = None, None
        for f in self.grid:
            s = f16_scale(amax * f)
            e = self._group_sse(w2, gran, s, table)
            if best_s is None:
                best_s, best_e = s, e
            else:
                better = e < best_e
                best_s = torch.where(better, s, best_s)
                best_e = torch.where(better, e, best_e)
        return best_s

    def encode(self, w: torch.Tensor, granularity: str | Granularity = "block:64",
               block_size: int | None = None, name: str = "") -> GFTensor:
        """Quantize ``w`` (float, any shape; its (out, in) matrix view) to GF-k."""
        gran = parse_granularity(granularity, block_size)
        w2 = as_matrix(w, name)
        check_finite(w2, name)
        rows, cols = w2.shape
        amax = signed_amax(w2, gran) if self.signed else group_amax(w2, gran)
        # an all-zero group gets the smallest scale, so it decodes to (almost exactly) zero whatever the
        # table's level nearest to 0 is
        amax = torch.where(amax != 0, amax, torch.full_like(amax, F16_MIN))
        s0 = amax
        table = self.fit_table(w2, gran, s0)
        scale = self._search(w2, gran, amax, table) if len(self.grid) > 1 else f16_scale(amax * self.grid[0])
        if self.refine and len(self.grid) > 1:
            table = self.fit_table(w2, gran, scale)
            scale = self._search(w2, gran, amax, table)
        codes = torch.empty((rows, cols), dtype=torch.uint8, device=w2.device)
        near = _Nearest(table.to(w2.device))
        for r0, r1 in row_chunks(rows, cols):
            s = expand_scale(scale, gran, r0, r1, cols)
            codes[r0:r1] = near(w2[r0:r1].to(torch.float32) / s)
        return GFTensor(codes, scale.to(torch.float16), table, self.bits, gran.kind, gran.block_size,
                        tuple(w.shape))

    def decode(self, q: GFTensor, dtype: torch.dtype = torch.float32, name: str = "") -> torch.Tensor:
        return gf_decode(q, dtype, name)


def validate_gf(q: GFTensor, name: str = "") -> Granularity:
    """Check a GFTensor read from a file before decoding it (shapes, dtypes, code range, finiteness)."""
    where = label(name)
    if q.bits not in GF_BITS:
        raise GGError(f"{where}: GF code width {q.bits} is not one of {GF_BITS}")
    gran = parse_granularity(q.granularity, q.block_size)
    rows, cols = matrix_shape(tuple(q.shape))
    if q.codes.dtype != torch.uint8 or tuple(q.codes.shape) != (rows, cols):
        raise GGError(f"{where}: codes must be uint8 ({rows}, {cols}), got {q.codes.dtype} "
                      f"{tuple(q.codes.shape)}")
    if q.table.dtype != torch.float32 or tuple(q.table.shape) != (1 << q.bits,):
        raise GGError(f"{where}: gf{q.bits} table must be {1 << q.bits} float32 values, got "
                      f"{q.table.dtype} {tuple(q.table.shape)}")
    if not bool(torch.isfinite(q.table).all()):
        raise GGError(f"{where}: gf{q.bits} table has NaN/Inf entries")
    if q.scale.dtype != torch.float16 or tuple(q.scale.shape) != gran.scale_shape(rows, cols):
        raise GGError(f"{where}: scale must be float16 {gran.scale_shape(rows, cols)}, got {q.scale.dtype} "
                      f"{tuple(q.scale.shape)}")
    if not bool(torch.isfinite(q.scale).all()) or not bool((q.scale != 0).all()):
        raise GGError(f"{where}: gf{q.bits} scale has zero or non-finite values")
    if q.codes.numel() and int(q.codes.max()) >> q.bits:
        raise GGError(f"{where}: a code is >= 2^{q.bits}")
    return gran


def gf_decode(q: GFTensor, dtype: torch.dtype = torch.float32, name: str = "") -> torch.Tensor:
    """``table[code] * scale`` in float32 (rounded once), cast to ``dtype``, in the original shape."""
    gran = validate_gf(q, name)
    rows, cols = q.codes.shape
    t = q.table.to(q.codes.device)
    out = torch.empty((rows, cols), dtype=dtype, device=q.codes.device)
    for r0, r1 in row_chunks(rows, cols):
        s = expand_scale(q.scale.to(torch.float32), gran, r0, r1, cols)
        out[r0:r1] = (t[q.codes[r0:r1].long()] * s).to(dtype)
    return out.reshape(q.shape)


def gf_from_packed(packed: torch.Tensor, scale: torch.Tensor, table: torch.Tensor, bits: int,
                   granularity: str, block_size: int | None, shape: tuple[int, ...],
                   name: str = "") -> GFTensor:
    """A validated GFTensor from the stored form (packed codes (rows, ceil(cols*k/8)), scale, table)."""
    rows, cols = matrix_shape(tuple(shape))
    if packed.dtype != torch.uint8 or tuple(packed.shape) != (rows, packed_cols(cols, bits)):
        raise GGError(f"{label(name)}: packed gf{bits} codes must be uint8 ({rows}, "
                      f"{packed_cols(cols, bits)}), got {packed.dtype} {tuple(packed.shape)}")
    q = GFTensor(unpack_codes(packed, bits, cols), scale, table, bits, granularity, block_size, tuple(shape))
    validate_gf(q, name)
    return q
