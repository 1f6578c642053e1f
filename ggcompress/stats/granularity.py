"""Shape below the tensor: GG β per row / column / block, pooled after per-row normalization, and the
exact split of a tensor's excess kurtosis into a scale-mixture part and a within-row part.

Why: a tensor's single β mixes two things a format must treat differently. Rows (output channels)
with different scales pooled together look peaky and heavy-tailed even when every row is Gaussian;
a per-channel scale removes that part for free, and only the within-row shape is left for a codebook
or an entropy coder. ``tensor_shape`` measures both, streaming over chunks of whole groups (rows,
columns or blocks), vectorized over the groups of a chunk, in float64 for the moments.

Per group g (n values, mean μ_g, central moments m2..m4), the estimators:

- moment β: ρ = m2 / E|x−μ_g|² inverted through ``gg.beta_from_ratio`` (one pass);
- MLE β (``fit="mle"``): the profile-likelihood Newton of ``gg.fit_mle`` run for every group of a
  chunk at once (float32 exponentials, float64 bookkeeping), from the moment β, location the group
  mean (the group median where the moment β < 1, as ``gg.fit_mle`` does);
- pooled: z = (x − μ_r)/σ_r of every row, pooled. Its moment sums follow exactly from the row sums;
  its MLE runs on a histogram of |z| over every value, 1024 bins per octave (the bin-center error
  moves Σ|z|^β by ~1e-7 relative, far below any sampling error), no subsample.

Kurtosis decomposition (law of total moments over groups of equal size, δ_g = μ_g − μ):

    M2 = E_g[m2] + E_g[δ²]
    M4 = E_g[m4] + E_g[4δ·m3 + 6δ²·m2 + δ⁴]
    K  = M4/M2² − 3 = scale + within + location, where
        scale    = 3·Var_g(m2) / M2²              what Gaussian groups with these variances give
        within   = E_g[m4 − 3·m2²] / M2²          = E_g[m2²·k_g]/M2², k_g the group's excess kurtosis
        location = (E_g[4δ·m3 + 6δ²·m2 + δ⁴] + 3·E_g[m2]² − 3·M2²) / M2²   (0 when group means agree)

The three parts sum to K exactly (the identity is algebraic); with zero-mean groups,
scale = 3·CV²(m2) and within = (1 + CV²)·(m2²-weighted mean of k_g).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import special

from ggcompress.errors import GGError
from ggcompress.stats import gg
from ggcompress.stats.outliers import OutlierAccumulator, OutlierReport

#: Pooled normalized values kept on the report for plots (`keep_pooled`).
POOLED_SAMPLES = 2**16
#: |z| histogram of the pooled MLE: float32 bit patterns >> HIST_SHIFT (1024 bins per octave) from
#: |z| = 2^-40 (smaller values, exact zeros included, weigh nothing in Σ|z|^β) to 2^10 = 1024, above
#: any row's max |z| (at most √(n − 1) for a row of n values).
HIST_SHIFT = 13
HIST_BASE = int(np.float32(2.0**-40).view(np.int32)) >> HIST_SHIFT
HIST_BINS = (int(np.float32(2.0**10).view(np.int32)) >> HIST_SHIFT) - HIST_BASE
HIST_LO, HIST_HI = 2.0**-40, float(np.nextafter(np.float32(2.0**10), np.float32(0)))  # first, last bin
#: Quantiles reported for every per-group distribution.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Groups whose MLE lands within this of the β range's edges count as clamped.
_EDGE = 1e-3
_GRAIN = re.compile(r"^(tensor|row|col|block:(\d+))$")


def parse_granularity(spec: str) -> tuple[str, ...]:
    """`row,col,block:64` → ("row", "col", "block:64"); `tensor` alone means no grouping (plain analyze)."""
    out: list[str] = []
    for tok in (t.strip() for t in spec.split(",")):
        m = _GRAIN.match(tok)
        if not m or (m.group(2) is not None and int(m.group(2)) < 2):
            raise GGError(f"--granularity: {tok!r} is not one of tensor, row, col, block:N (N ≥ 2)")
        if tok != "tensor" and tok not in out:
            out.append(tok)
    return tuple(out)


# --------------------------------------------------------------------------- data


def quantiles(a: np.ndarray) -> dict[str, float] | None:
    a = a[np.isfinite(a)]
    if a.size == 0:
        return None
    q = np.quantile(a, QUANTILES)
    out = {f"p{round(100 * p)}": float(v) for p, v in zip(QUANTILES, q, strict=True)}
    return out | {"mean": float(a.mean())}


@dataclass(frozen=True)
class KurtosisParts:
    """Excess kurtosis of a tensor split by groups: total = scale + within + location (exact)."""

    total: float
    scale: float
    within: float
    location: float

    @property
    def scale_share(self) -> float:
        """Fraction of the excess kurtosis due to the groups' different variances (NaN when K ≈ 0)."""
        return self.scale / self.total if abs(self.total) > 1e-12 else math.nan

    def to_dict(self) -> dict[str, float]:
        return {"total": self.total, "scale": self.scale, "within": self.within, "location": self.location,
                "scale_share": self.scale_share}


def kurtosis_parts(mean: np.ndarray, m2: np.ndarray, m3: np.ndarray, m4: np.ndarray) -> KurtosisParts:
    """Exact decomposition (module doc) from per-group mean and central moments m2, m3, m4 (equal-size
    groups, population moments)."""
    mean, m2, m3, m4 = (np.asarray(v, dtype=np.float64) for v in (mean, m2, m3, m4))
    delta = mean - mean.mean()
    v_bar = m2.mean()
    big_m2 = v_bar + (delta * delta).mean()
    if not big_m2 > 0:
        return KurtosisParts(math.nan, math.nan, math.nan, math.nan)
    den = big_m2 * big_m2
    shift = (4 * delta * m3 + 6 * delta * delta * m2 + delta**4).mean()
    scale = 3 * ((m2 * m2).mean() - v_bar * v_bar) / den
    within = (m4 - 3 * m2 * m2).mean() / den
    location = (shift + 3 * v_bar * v_bar - 3 * den) / den
    big_m4 = m4.mean() + shift
    return KurtosisParts(float(big_m4 / den - 3), float(scale), float(within), float(location))


@dataclass
class GroupShape:
    """Per-group statistics of one grouping of a tensor (arrays: one entry per group, float64)."""

    kind: str  # "row", "col" or "block:N"
    size: int  # values per group
    index: np.ndarray  # group numbers in the tensor (rows analyzed, when rows were subsampled)
    mean: np.ndarray
    std: np.ndarray
    m3: np.ndarray  # central third moment
    m4: np.ndarray  # central fourth moment
    absmax: np.ndarray  # max |x − μ_g|
    beta: np.ndarray  # NaN for constant groups
    alpha: np.ndarray
    clamped: np.ndarray  # bool: β at the edge of the fit range
    fit: str  # "mle" or "moments"

    @property
    def groups(self) -> int:
        return int(self.beta.size)

    @property
    def kurtosis(self) -> KurtosisParts:
        return kurtosis_parts(self.mean, self.std**2, self.m3, self.m4)

    def to_dict(self) -> dict[str, Any]:
        sd = self.std[self.std > 0]
        return {
            "kind": self.kind,
            "groups": self.groups,
            "size": self.size,
            "fit": self.fit,
            "beta": quantiles(self.beta),
            "beta_clamped": float(self.clamped.mean()) if self.groups else None,
            "alpha_median": float(np.nanmedian(self.alpha)) if np.isfinite(self.alpha).any() else None,
            "std": quantiles(self.std),
            "std_cv": float(sd.std() / sd.mean()) if sd.size else None,
            "constant_groups": int((self.std == 0).sum()),
            "kurtosis_parts": self.kurtosis.to_dict(),
        }


@dataclass
class PooledShape:
    """GG fit of every row normalized by its own mean and standard deviation, pooled."""

    beta: float  # MLE (or moment β with fit="moments")
    alpha: float  # in units of the row σ
    beta_moments: float
    kurtosis: float  # excess kurtosis of the pooled z (the plain average of the rows' m4/m2²) − 3
    n: int
    fit: str

    def to_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "alpha": self.alpha, "beta_moments": self.beta_moments,
                "kurtosis": self.kurtosis, "n": self.n, "fit": self.fit}


@dataclass
class ShapeReport:
    """Everything below the tensor level that `tensor_shape` measured."""

    rows: GroupShape | None = None
    cols: GroupShape | None = None
    blocks: dict[int, GroupShape] = field(default_factory=dict)
    pooled: PooledShape | None = None
    outliers: OutlierReport | None = None
    notes: list[str] = field(default_factory=list)  # groupings skipped, and why
    pooled_values: torch.Tensor | None = field(default=None, repr=False)  # seeded z sample, for plots

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows.to_dict() if self.rows else None,
            "cols": self.cols.to_dict() if self.cols else None,
            "blocks": {str(n): g.to_dict() for n, g in self.blocks.items()},
            "pooled": self.pooled.to_dict() if self.pooled else None,
            "outliers": self.outliers.to_dict() if self.outliers else None,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- per-group fits


def _profile_rows(beta: np.ndarray, s0: np.ndarray, s1: np.ndarray, s2: np.ndarray, lmax: np.ndarray,
                  n: int) -> tuple[np.ndarray, ...]:
    """`gg._profile` vectorized over groups: (ℓ', ℓ'', ln α̂, d ln α̂/dβ) of the profile NLL per value."""
    ib = 1.0 / beta
    log_m = beta * lmax + np.log(s0 / n)
    m1 = s1 / s0 + lmax
    m2 = s2 / s0 - (s1 / s0) ** 2
    u = np.log(beta) + log_m
    u1, u2 = ib + m1, -ib * ib + m2
    psi = special.digamma(ib)
    lgamma2 = special.polygamma(1, ib) * ib**4 + 2 * psi * ib**3
    g = -ib - psi * ib**2 - ib**2 + u1 * ib - u * ib**2
    h = ib**2 + lgamma2 + 2 * ib**3 + u2 * ib - 2 * u1 * ib**2 + 2 * u * ib**3
    return g, h, u * ib, u1 * ib - u * ib**2


def mle_rows(logabs: torch.Tensor, beta0: np.ndarray, lo: float = gg.BETA_LO,
             hi: float = gg.BETA_HI) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MLE β, α of every row of `logabs` = ln|x − μ_row| (float32, −inf for exact zeros), from `beta0`.

    Safeguarded Newton on the profile likelihood, as `gg.fit_mle`, for all rows at once; rows leave
    the loop as they converge. Returns (β, α, clamped).
    """
    g_n, n = logabs.shape
    lmax = logabs.amax(1, keepdim=True)
    L = (logabs - lmax).clamp_(min=-800.0 / lo)
    lmax_np = lmax.squeeze(1).double().numpy()
    b = np.clip(beta0, lo, hi).astype(np.float64)
    blo, bhi = np.full(g_n, lo), np.full(g_n, hi)
    log_alpha = np.full(g_n, np.nan)
    grad = np.zeros(g_n)
    active = np.flatnonzero(np.isfinite(b) & np.isfinite(lmax_np))
    for _ in range(100):
        if active.size == 0:
            break
        La = L if active.size == g_n else L[torch.from_numpy(active)]
        w = torch.exp(La * torch.from_numpy(b[active]).to(La.dtype)[:, None])
        wl = w * La
        s = torch.stack([w.sum(1), wl.sum(1), (wl * La).sum(1)]).double().numpy()
        ba = b[active]
        g, h, la, dla = _profile_rows(ba, s[0], s[1], s[2], lmax_np[active], n)
        grad[active] = g
        blo[active] = np.where(g > 0, blo[active], ba)
        bhi[active] = np.where(g > 0, ba, bhi[active])
        lo_a, hi_a = blo[active], bhi[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            nb = np.where(h > 0, ba - g / h, ba * np.where(g > 0, 0.5, 1.5))
        inside = (lo_a < nb) & (nb < hi_a)
        accept = inside & (h > 0) & (np.abs(nb - ba) <= 2e-3 * ba)  # quadratic: within ~1e-5 now
        log_alpha[active] = np.where(accept, la + (nb - ba) * dla, la)
        nb = np.where(inside, nb, np.sqrt(lo_a * hi_a))
        stuck = np.abs(nb - ba) <= 1e-6 * ba  # bisected down to an edge of the range
        b[active] = np.where(stuck & ~accept, ba, nb)
        active = active[~(accept | stuck)]
    clamped = ((b <= lo * (1 + _EDGE)) & (grad > 0)) | ((b >= hi * (1 - _EDGE)) & (grad < 0))
    return b, np.exp(log_alpha), clamped


@dataclass
class _GroupAcc:
    """Chunks of per-group results, concatenated at the end."""

    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, **arrays: np.ndarray) -> None:
        for k, v in arrays.items():
            self.parts.setdefault(k, []).append(v)

    def cat(self, key: str) -> np.ndarray:
        return np.concatenate(self.parts[key]) if key in self.parts else np.empty(0)


#: ln ρ(β) on a fine grid: a table inversion gives the Newton start of the per-group MLE in microseconds.
_GRID = np.exp(np.linspace(math.log(gg.BETA_LO), math.log(gg.BETA_HI), 4097))
_GRID_LOG_RHO = np.asarray(gg.log_rho(_GRID))


def _beta_start(ratio: np.ndarray) -> np.ndarray:
    """Moment β from ρ by interpolating the table (ln ρ decreases in β), ~1e-5 from the exact root."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log(ratio)
    b = np.interp(-t, -_GRID_LOG_RHO, np.log(_GRID))
    return np.where(np.isfinite(t), np.exp(b), np.nan)


class _Pooled:
    """The pooled normalized values z = (x − μ_r)/σ_r of every row with σ_r > 0: exact power sums
    (from the row sums), and a histogram of |z| over every value for the MLE, whose sums
    Σ|z|^β·ln^k|z| it evaluates at the bins' geometric centers.

    The bins are the float32 bit patterns of |z| with the low 13 mantissa bits dropped: 1024 bins
    per octave, each at most 2^-10 wide in ln|z|, so the center error moves the sums by ~β²·2^-20/24
    ≈ 1e-7 relative (far below any sampling error) — and binning costs one multiply and integer ops
    per value, no logarithm. The pooled MLE thus uses every value."""

    def __init__(self, samples: int, gen: torch.Generator):
        self.samples, self.gen = samples, gen
        self.n = 0
        self.sabs = self.s2 = self.s3 = self.s4 = 0.0
        self.zmax = 0.0
        self.hist = torch.zeros(HIST_BINS, dtype=torch.int64)
        self.sample: list[torch.Tensor] = []
        self.total = 0

    def add(self, d: torch.Tensor, ad: torch.Tensor, std: torch.Tensor, sums: tuple[np.ndarray, ...],
            total: int) -> None:
        """d = x − μ_r; ad = |d| (overwritten); std: σ_r per row; total: values of the whole pass."""
        size = d.shape[1]
        sabs, s2, s3, s4, absmax = sums
        sd = std.numpy()
        ok = sd > 0
        if not ok.any():
            return
        inv = np.where(ok, 1 / np.where(ok, sd, 1.0), 0.0)
        self.n += int(ok.sum()) * size
        self.sabs += float((sabs * inv).sum())
        self.s2 += float((s2 * inv**2).sum())
        self.s3 += float((s3 * inv**3).sum())
        self.s4 += float((s4 * inv**4).sum())
        self.zmax = max(self.zmax, float((absmax * inv).max()))
        inv_t = torch.from_numpy(inv).to(d.dtype)
        z = ad.mul_(inv_t[:, None]).to(torch.float32)  # |z|, in place
        if not ok.all():
            z = z[torch.from_numpy(ok)]
        # Clamped in float32 to the histogram's range, whose bit patterns >> HIST_SHIFT are then the
        # bins offset by HIST_BASE (cheaper than clamping the integers).
        idx = z.clamp_(HIST_LO, HIST_HI).view(torch.int32).bitwise_right_shift_(HIST_SHIFT).reshape(-1)
        lo = int(idx.min())
        counts = torch.bincount(idx.sub_(lo))  # the chunk's bins only: no histogram-sized buffer
        room = HIST_BASE + HIST_BINS - lo
        if counts.numel() > room:  # NaN |z| (a row holding ±inf): into the last bin, as before
            counts[room - 1] += counts[room:].sum()
            counts = counts[:room]
        self.hist[lo - HIST_BASE:lo - HIST_BASE + counts.numel()] += counts
        # A seeded sample of this chunk's z, in proportion to its size: for plots only.
        start, self.total = self.total, self.total + d.numel()
        k = round(self.samples * self.total / total) - round(self.samples * start / total)
        if k > 0:
            p = torch.randint(d.numel(), (k,), generator=self.gen)
            r = p.div(size, rounding_mode="floor")
            zs = d.reshape(-1)[p] * inv_t[r]
            self.sample.append(zs[torch.from_numpy(ok)[r]].float())

    def fit(self, method: str) -> tuple[PooledShape | None, torch.Tensor | None]:
        if self.n == 0:
            return None, None
        n = self.n
        m = gg.Moments(center=0.0, count=n, zeros=0, min=-self.zmax, max=self.zmax, s1=0.0,
                       s2=self.s2, s3=self.s3, s4=self.s4, sabs=self.sabs, ssign=0.0, at_center=0)
        start = gg.fit(m, method="moments")
        sample = torch.cat(self.sample) if self.sample else None
        if method != "mle" or not start.ok:
            return PooledShape(start.beta, start.alpha, start.beta, m.kurtosis, n, "moments"), sample
        nz = torch.nonzero(self.hist).squeeze(1)
        lo = ((nz + HIST_BASE).to(torch.int32) << HIST_SHIFT).view(torch.float32).to(torch.float64)
        hi = ((nz + HIST_BASE + 1).to(torch.int32) << HIST_SHIFT).view(torch.float32).to(torch.float64)
        centers = (lo * hi).sqrt()  # geometric center of each bin's [lo, hi)
        counts = self.hist[nz].to(torch.float64)
        f = gg.fit_mle(centers, moments=m, mu=0.0, _eval=([(centers, counts)], 0.0, centers, n))
        return PooledShape(f.beta, f.alpha, start.beta, m.kurtosis, n, "mle"), sample


# --------------------------------------------------------------------------- passes

#: Values per chunk of whole groups: bigger than gg.CHUNK, to amortize the per-chunk NumPy work.
GROUP_CHUNK = 2**18


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _chunks(x2: torch.Tensor, index: np.ndarray | None) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset into the analyzed groups, chunk of whole groups) of ≤ GROUP_CHUNK values each."""
    total = x2.shape[0] if index is None else index.size
    per = max(1, GROUP_CHUNK // max(x2.shape[1], 1))
    for g0 in range(0, total, per):
        g1 = min(total, g0 + per)
        yield g0, (x2[g0:g1] if index is None else x2[torch.from_numpy(index[g0:g1])])


def _col_chunks(x2: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    per = max(1, GROUP_CHUNK // max(x2.shape[0], 1))
    for c0 in range(0, x2.shape[1], per):
        yield c0, x2[:, c0:c0 + per].t().contiguous()


_WORK = threading.local()


def _work_buffers(n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Three flat `dtype` buffers of ≥ n values, kept per thread and reused by every chunk of every
    pass: touching fresh memory for each chunk cost about as much as the arithmetic on it."""
    bufs = _WORK.__dict__.setdefault(dtype, [])
    if not bufs or bufs[0].numel() < n:
        bufs[:] = [torch.empty(max(n, GROUP_CHUNK), dtype=dtype) for _ in range(3)]
    return bufs


def _group_pass(
    kind: str,
    chunks: Iterable[tuple[int, torch.Tensor]],
    fit: str,
    index: np.ndarray,
    work: torch.dtype,
    *,
    pooled: _Pooled | None = None,
    outliers: OutlierAccumulator | None = None,
    total: int = 0,
) -> GroupShape:
    """One streaming pass over chunks of whole groups: moments in `work` precision (float64 for
    float32/64 inputs, float32 for 16-bit ones, as gg.Moments), β per group, and, for the row pass,
    the pooled sums and the outlier counts."""
    acc = _GroupAcc()
    size = 0
    for g0, ch in chunks:
        size = ch.shape[1]
        x, ad, p = (b[:ch.numel()].view(ch.shape) for b in _work_buffers(ch.numel(), work))
        mean = x.copy_(ch).mean(1)
        d = x.sub_(mean[:, None])
        torch.abs(d, out=ad)
        s2 = torch.mul(d, d, out=p).sum(1)
        s3 = p.mul_(d).sum(1)
        s4 = p.mul_(d).sum(1)
        sums = torch.stack([ad.sum(1), s2, s3, s4, ad.amax(1)]).to(torch.float64)
        sabs, s2, s3, s4, absmax = sums.numpy()
        std = np.sqrt(s2 / size)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(std > 0, s2 / size / (sabs / size) ** 2, np.nan)
        row = {"mean": mean.to(torch.float64).numpy(), "std": std, "m3": s3 / size, "m4": s4 / size,
               "absmax": absmax, "ratio": ratio}
        if fit == "mle":
            beta0 = _beta_start(ratio)
            lg = ad.to(torch.float32, copy=True).log_()  # a copy: ad is still needed below
            peaky = np.flatnonzero(beta0 < 1.0)
            if peaky.size:  # location: the group median where the moment β says the peak is narrow
                sel = torch.from_numpy(peaky)
                xs = ch[sel].to(work)
                lg[sel] = (xs - xs.median(1).values[:, None]).abs_().to(torch.float32).log_()
            beta, alpha, clamped = mle_rows(lg, beta0)
            beta[~np.isfinite(beta0)] = np.nan
            row |= {"beta": beta, "alpha": alpha, "clamped": clamped & np.isfinite(beta)}
        std_t = torch.from_numpy(std)
        if outliers is not None:
            outliers.add(ch, index[g0:g0 + ch.shape[0]], mean, std_t, torch.from_numpy(absmax), ad)
        if pooled is not None:  # last: it turns ad into |z| in place
            pooled.add(d, ad, std_t, (sabs, s2, s3, s4, absmax), total)
        acc.add(**row)
    ratio = acc.cat("ratio")
    std = acc.cat("std")
    if fit == "mle":
        beta, alpha, clamped = acc.cat("beta"), acc.cat("alpha"), acc.cat("clamped").astype(bool)
    else:
        beta, clamped = gg.beta_from_ratio(ratio, start=_beta_start(ratio))
        beta = np.asarray(beta, dtype=np.float64)
        clamped = np.asarray(clamped, dtype=bool) & np.isfinite(beta)
        alpha = np.asarray(gg.alpha_from_std(std, beta), dtype=np.float64)
    return GroupShape(kind, size, index, acc.cat("mean"), std, acc.cat("m3"), acc.cat("m4"),
                      acc.cat("absmax"), beta, alpha, clamped, fit)


def tensor_shape(
    x: torch.Tensor,
    granularities: Iterable[str] = ("row",),
    *,
    fit: str = "moments",
    mean: float | None = None,
    std: float | None = None,
    outlier_k: float = 6.0,
    top: int = 5,
    max_values: int | None = None,
    pooled_samples: int = POOLED_SAMPLES,
    pooled_fit: str = "mle",
    keep_pooled: bool = False,
    seed: int = 0,
) -> ShapeReport:
    """Shape of `x` (≥ 2-D; rows = dim 0, the other dims flattened) at each granularity.

    `fit`: the per-group β estimator ("moments": one pass; "mle": Newton per group, ~3 more passes
    with exponentials). `row` also gives the pooled-normalized fit (`pooled_fit`; its moments and its
    MLE use every value) and the outliers (beyond `outlier_k` σ of the tensor, `top` positions).
    `mean`/`std`: the tensor's, when the caller has them (else one more pass).
    `max_values`: analyze a seeded subset of whole rows holding about this many values (`--sample`).
    `keep_pooled`: keep `pooled_samples` seeded pooled z values on the report, for plots.
    """
    for what, f in (("fit", fit), ("pooled_fit", pooled_fit)):
        if f not in ("mle", "moments"):
            raise GGError(f"unknown {what} method {f!r} (use 'mle' or 'moments')")
    if x.dim() < 2 or not x.is_floating_point():
        raise GGError(f"tensor of shape {tuple(x.shape)} {x.dtype}: rows need a floating-point tensor "
                      "of ≥ 2 dims")
    grains = tuple(granularities)
    x2 = _as_rows(x)
    n_rows, n_cols = x2.shape
    work = torch.float64 if x.dtype in (torch.float32, torch.float64) else torch.float32
    rep = ShapeReport()
    gen = torch.Generator().manual_seed(seed)
    index = None
    if max_values is not None and x2.numel() > max_values:
        k = max(2, min(n_rows, math.ceil(max_values / n_cols)))
        index = np.sort(torch.randperm(n_rows, generator=gen)[:k].numpy())
        rep.notes.append(f"rows: {k} of {n_rows} rows analyzed (seeded subset, --sample)")
    if "row" in grains:
        if mean is None or std is None:
            m = gg.Moments().update(x2 if index is None else x2[torch.from_numpy(index)])
            mean, std = m.mean, m.std
        rows_idx = np.arange(n_rows) if index is None else index
        pooled = _Pooled(pooled_samples if keep_pooled else 0, gen)
        out = OutlierAccumulator(mean, std, outlier_k, top, n_cols)
        rep.rows = _group_pass("row", _chunks(x2, index), fit, rows_idx, work, pooled=pooled, outliers=out,
                               total=rows_idx.size * n_cols)
        rep.pooled, sample = pooled.fit(pooled_fit)
        rep.outliers = out.result()
        rep.pooled_values = sample
    if "col" in grains:
        if index is not None:
            rep.notes.append("col: skipped with --sample (columns need every row)")
        elif n_rows < 2:
            rep.notes.append("col: a single row")
        else:
            rep.cols = _group_pass("col", _col_chunks(x2), fit, np.arange(n_cols), work)
    for g in grains:
        if not g.startswith("block:"):
            continue
        size = int(g.split(":")[1])
        if n_cols % size:
            rep.notes.append(f"{g}: the row length {n_cols} is not a multiple of {size}")
            continue
        xb = (x2 if index is None else x2[torch.from_numpy(index)]).reshape(-1, size)
        rep.blocks[size] = _group_pass(g, _chunks(xb, None), fit, np.arange(xb.shape[0]), work)
    return rep
