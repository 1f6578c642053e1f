"""Rate–distortion allocation of per-tensor (or per-row) steps: the fewest coded bits at a named quality.

Why: one uniform step 2^-S for every tensor (``--quant step:S``) can only hit quality targets in whole
steps of ~6 dB / ~1 bit per parameter, and it cannot trade rate between tensors whose rate and error
respond differently to the step (heavy- vs light-tailed, bf16-exhausted, small tables). Here each
tensor gets a *curve*: for every candidate step 2^-S (S in S_MIN..S_MAX: whole S for bf16/fp16 tensors,
quarter steps of S for fp32, whose restores stay exact in their own dtype either way) its coded bits
(empirical entropy of the symbols + the rANS table) and its squared error, measured from one histogram
at the finest step (coarser symbols are re-rounded from it, so a curve costs one pass over the tensor).
A Lagrange multiplier λ then picks, per tensor, the S minimizing bits + λ·weight·error, and λ is found
by bisection so that the total meets the target: ``target_sqnr_db`` (total signal / total error
energy over the quantized tensors) or ``bits_per_param`` (coded bits per quantized parameter).
Power-of-two steps keep bf16/fp16 restores exact in the source dtype (see pack._restored_dtype).

The curves are estimates (re-rounding from the fine symbols differs from direct rounding only for
values within half a fine step of a coarse boundary); pack reports the measured SQNR and bits next to
the predicted ones. ``weights`` (e.g. a sensitivity per tensor) multiply each tensor's error; with
``max_distortion`` the target is the weighted error itself, Σ weight·error (pack --max-kl, codec/klalloc.py).

Per-row steps (pack --step-granularity row): ``measure_row_curves`` gives every row (output channel) of
a tensor its own curve and ``allocate_rows`` runs the same Lagrangian over all rows of all tensors at
once (vectorized); the steps are stored as int8 codes in quarter octaves (``row_step_values``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ggcompress.errors import GGError
from ggcompress.stats import rate

S_MIN = 0
S_MAX = 16
#: rANS table cost estimate per distinct symbol (symbol field + exp-Golomb-coded 24-bit weight), bits.
TABLE_BITS_PER_SYMBOL = 24.0


@dataclass
class Curve:
    """One tensor's estimated coded bits and error energy at each candidate step 2^-S."""

    name: str
    numel: int
    signal: float  # Σ w²
    s: np.ndarray  # candidate S values (step 2^-S), ascending
    bits: np.ndarray  # estimated coded bits (payload + table) at each S
    noise: np.ndarray  # estimated Σ (w − ŵ)² at each S


def measure_curve(x: torch.Tensor, name: str, s_min: int = S_MIN, s_max: int = S_MAX,
                  per_octave: int = 1) -> Curve:
    """The tensor's curve from one histogram at step 2^-s_max (cheap: work on distinct values only).

    ``per_octave`` candidate steps per factor of two: 1 gives powers of two only (exact restores in
    bf16/fp16); 4 adds 2^-(S + 1/4), ... which fp32 tensors restore exactly in their own dtype too.
    """
    if s_min > s_max:
        raise GGError(f"{name}: step range S {s_min}..{s_max} is empty")
    fine = 2.0 ** -s_max
    v, c, signal, fine_err = _fine_histogram(x, fine, name)
    n = int(c.sum())
    vf = v.astype(np.float64)
    vfine = vf * fine  # = v·fine, elementwise as v * fine
    cf = c.astype(np.float64)
    ends = np.cumsum(c)  # counts before the end of each fine symbol: group counts by differences
    ss = np.arange(s_min * per_octave, s_max * per_octave + 1) / per_octave
    bits = np.empty(ss.size)
    noise = np.empty(ss.size)
    for i, s in enumerate(ss):
        q = np.round(vf * 2.0 ** (s - s_max))  # half to even, like rate (exact for whole octaves)
        # v ascends, so q does too: its distinct values are runs (no sort needed)
        last = np.flatnonzero(q[1:] != q[:-1])  # the last fine symbol of each run but the final one
        bounds = np.empty(last.size + 2, dtype=np.int64)
        bounds[0], bounds[-1] = 0, n
        bounds[1:-1] = ends[last]
        cq = (bounds[1:] - bounds[:-1]).astype(np.float64)  # exact integers, as bincount's float sums
        distinct = cq.size
        h = float(-(cq * np.log2(cq / n)).sum()) if distinct > 1 else 0.0
        width = max(int(q[-1] - q[0]).bit_length(), 1)
        bits[i] = h + distinct * (width + TABLE_BITS_PER_SYMBOL)
        # fine value v·fine restored as q·2^-s: the shift adds (v·fine − q·2^-s) to the fine error
        # (the two errors are nearly uncorrelated: the fine error is within ±fine/2)
        d = vfine - q * 2.0 ** -float(s)
        noise[i] = float((cf * d * d).sum()) + fine_err
    return Curve(name, n, signal, ss, bits, noise)


def _fine_histogram(x: torch.Tensor, fine: float, name: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(Distinct symbols at step ``fine``, ascending, int64; their counts, int64; Σ w²; Σ (w − fine·sym)²).

    2-byte floats (bf16/fp16) have at most 65536 distinct values: one count of the bit patterns
    (rate.pattern_counts) gives everything from the distinct values — the same symbols and counts as
    rounding every weight, and the two energies as float64 sums of count·value² (exact terms, summed
    in another order than a pass over the weights: equal to a few ulps). Wider floats are rounded chunk by
    chunk."""
    if x.dtype in (torch.bfloat16, torch.float16) and x.numel():
        patterns, cnt, _ = rate.pattern_counts(x)
        vals = rate.pattern_values(patterns, x.dtype)
        hist = rate.SymbolHistogram(fine).update_counts(vals, torch.from_numpy(cnt), itemsize=2, name=name)
        w = vals.numpy()
        e = w - np.round(w / fine) * fine  # exact: the fine rounding's error of each distinct value
        cf = cnt.astype(np.float64)
        return (hist.symbols.numpy().astype(np.int64), hist.counts.numpy().astype(np.int64),
                float(np.dot(cf, w * w)), float(np.dot(cf, e * e)))
    hist = rate.SymbolHistogram(fine).update(x, name)
    signal = fine_err = 0.0  # fine_err: error of the fine rounding itself, measured: Σ (w − v·fine)²
    flat = x.reshape(-1)
    for i in range(0, flat.numel(), rate.CHUNK):
        xf = flat[i:i + rate.CHUNK].to(torch.float64)
        signal += float(torch.dot(xf, xf))
        e = xf - torch.round(xf / fine) * fine
        fine_err += float(torch.dot(e, e))
    return hist.symbols.numpy().astype(np.int64), hist.counts.numpy().astype(np.int64), signal, fine_err


class _Predicted:
    """SQNR and bits/param of an allocation's predicted totals (bits, noise, signal, params)."""

    bits: float
    noise: float
    signal: float
    params: int

    @property
    def sqnr_db(self) -> float:
        return 10 * math.log10(self.signal / self.noise) if self.noise > 0 and self.signal > 0 else math.inf

    @property
    def bits_per_param(self) -> float:
        return self.bits / self.params if self.params else math.nan


@dataclass
class Allocation(_Predicted):
    """Chosen S per tensor and what the curves predict for it."""

    steps: dict[str, float]  # tensor -> S (step 2^-S)
    bits: float  # predicted coded bits, all tensors
    noise: float
    signal: float
    params: int
    lam: float  # the multiplier that gave it (bits per unit of weighted error energy)
    target: dict[str, float]
    distortion: float = math.nan  # Σ weight·noise (= noise without weights)


class _Chooser:
    """Each tensor's S minimizing bits + λ·weight·error, and the chosen bits and error summed in tensor
    order: the bisection asks this ~70 times, so the curves are stacked once and chosen together."""

    def __init__(self, curves: Sequence[Curve], w: np.ndarray):
        width = max(c.s.size for c in curves)
        self.bits = np.zeros((len(curves), width))
        self.noise = np.zeros((len(curves), width))
        self.valid = np.zeros((len(curves), width), dtype=bool)  # curves may differ in length
        for t, c in enumerate(curves):
            self.bits[t, :c.s.size] = c.bits
            self.noise[t, :c.s.size] = c.noise
            self.valid[t, :c.s.size] = True
        self.ragged = not bool(self.valid.all())
        self.w = np.asarray(w, dtype=np.float64)
        self.rows = np.arange(len(curves))

    def __call__(self, lam: float) -> tuple[list[int], float, float]:
        cost = self.bits + (lam * self.w)[:, None] * self.noise  # per element as c.bits + lam·w·c.noise
        if self.ragged:
            cost[~self.valid] = np.inf
        idx = np.argmin(cost, axis=1)
        bits = noise = 0.0
        for b, e in zip(self.bits[self.rows, idx].tolist(), self.noise[self.rows, idx].tolist(), strict=True):
            bits += b  # one by one in tensor order (not sum(): its rounding differs between versions)
            noise += e
        return idx.tolist(), bits, noise


def _out_of_reach(target_sqnr_db: float | None, max_distortion: float | None, signal: float, least: float,
                  finest: float) -> GGError:
    """The error for a quality target the finest steps cannot meet (``least``: their distortion)."""
    if target_sqnr_db is not None:
        return GGError(f"SQNR {target_sqnr_db} dB is out of reach with steps down to 2^-{finest:g} (at most "
                       f"{10 * math.log10(signal / least):.1f} dB)")
    return GGError(f"weighted distortion {max_distortion:.4g} is out of reach with steps down to "
                   f"2^-{finest:g} (at least {least:.4g})")


def _bisect(ok: Callable[[float], bool], lo: float, hi: float, iterations: int) -> tuple[float, float]:
    """Bisection on log2 λ: ``ok(2^hi)`` holds and ``ok(2^lo)`` does not, to ``iterations`` halvings."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if ok(2.0 ** mid):
            hi = mid
        else:
            lo = mid
    return lo, hi


def allocate(curves: Sequence[Curve], *, target_sqnr_db: float | None = None,
             bits_per_param: float | None = None, max_distortion: float | None = None,
             weights: Mapping[str, float] | None = None) -> Allocation:
    """Per-tensor S minimizing total bits subject to the SQNR target or to the weighted-error budget
    ``max_distortion`` (Σ weight·error), or minimizing error subject to the bit budget.

    Bisection on log λ: larger λ buys less error with more bits. A quality target is met (when the
    finest step can meet it) at the smallest λ that does; the bit budget at the largest λ within it.
    """
    if sum(t is not None for t in (target_sqnr_db, bits_per_param, max_distortion)) != 1:
        raise GGError("give exactly one of target_sqnr_db, bits_per_param and max_distortion")
    if not curves:
        raise GGError("no tensors to allocate steps to (nothing is eligible for quantization)")
    w = np.array([float((weights or {}).get(c.name, 1.0)) for c in curves])
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise GGError("allocation weights must be finite and non-negative")
    signal = sum(c.signal for c in curves)
    params = sum(c.numel for c in curves)
    work, ww = curves, w
    if max_distortion is not None:
        # the weighted error is the constrained quantity: fold the weights into the curves
        work = [replace(c, noise=c.noise * wi) for c, wi in zip(curves, w, strict=True)]
        ww = np.ones(len(curves))
    quality = target_sqnr_db is not None or max_distortion is not None
    choose = _Chooser(work, ww)
    if quality:
        if target_sqnr_db is not None:
            budget = signal / 10 ** (target_sqnr_db / 10)
            target = {"target_sqnr_db": float(target_sqnr_db)}
        else:
            assert max_distortion is not None
            budget = float(max_distortion)
            target = {"max_distortion": budget}

        def ok(lam: float) -> bool:
            return choose(lam)[2] <= budget
    else:
        assert bits_per_param is not None
        budget_bits = bits_per_param * params

        def ok(lam: float) -> bool:  # "ok" = within budget; we want the largest such λ
            return choose(lam)[1] > budget_bits
        target = {"bits_per_param": float(bits_per_param)}
    lo, hi = -60.0, 80.0  # log2 λ
    if quality and not ok(2.0 ** hi):
        raise _out_of_reach(target_sqnr_db, max_distortion, signal, choose(2.0 ** hi)[2],
                            curves[0].s[-1])
    if bits_per_param is not None and ok(2.0 ** lo):
        least = choose(2.0 ** lo)[1] / params
        raise GGError(f"{bits_per_param} bits/param is below the coarsest allocation "
                      f"({least:.3f} bits/param at steps up to 2^-{curves[0].s[0]:g})")
    lo, hi = _bisect(ok, lo, hi, 70)
    lam = 2.0 ** (hi if quality else lo)
    if quality:
        idx = _refine(work, choose(2.0 ** lo)[0], choose(2.0 ** hi)[0],
                      lambda b, e: e <= budget, ww)
    else:
        idx = _refine(work, choose(2.0 ** lo)[0], choose(2.0 ** hi)[0],
                      lambda b, e: b <= budget_bits, ww, stop_when_true=False)
    bits = sum(float(c.bits[i]) for c, i in zip(curves, idx, strict=True))
    noise = sum(float(c.noise[i]) for c, i in zip(curves, idx, strict=True))
    distortion = sum(float(c.noise[i]) * wi for c, i, wi in zip(curves, idx, w, strict=True))
    steps = {c.name: float(c.s[i]) for c, i in zip(curves, idx, strict=True)}
    return Allocation(steps, bits, noise, signal, params, lam, target, distortion)


def _finer_moves(curves: Sequence[Curve], idx: list[int], w: np.ndarray
                 ) -> list[tuple[float, int, int, float, float]]:
    """(weighted error removed per bit, tensor, new index, Δbits, Δerror) of each tensor's next finer step."""
    out = []
    for t, (c, i) in enumerate(zip(curves, idx, strict=True)):
        if i + 1 < c.s.size:
            db = float(c.bits[i + 1] - c.bits[i])
            dn = float(c.noise[i + 1] - c.noise[i])
            out.append((-dn * w[t] / max(db, 1e-9), t, i + 1, db, dn))
    return out


def _refine(curves: Sequence[Curve], low: list[int], high: list[int], ok, w: np.ndarray,
            stop_when_true: bool = True) -> list[int]:
    """Fill the gap between the allocations on both sides of the target λ: many tensors switch at nearly
    the same λ (or one large tensor does), so the Lagrangian alone can overshoot by a whole step.
    Starting from ``low`` (fewer bits): for an SQNR target, refine one tensor by one step at a time —
    the cheapest move that meets the target, else the most weighted error removed per bit — until it
    is met; for a bit budget, move tensors to their ``high`` choice, best error-per-bit first, while
    the budget holds."""
    idx = list(low)
    bits = sum(float(c.bits[i]) for c, i in zip(curves, idx, strict=True))
    noise = sum(float(c.noise[i]) for c, i in zip(curves, idx, strict=True))
    moves = []
    for t, (c, a, b) in enumerate(zip(curves, low, high, strict=True)):
        if a != b:
            db = float(c.bits[b] - c.bits[a])
            de = float(c.noise[a] - c.noise[b]) * w[t]
            moves.append((de / db if db > 0 else math.inf, t, b, db, float(c.noise[b] - c.noise[a])))
    moves.sort(key=lambda m: -m[0])
    if stop_when_true:  # SQNR target: refine tensors one step at a time until it is met
        for _ in range(10 * len(curves)):
            if ok(bits, noise):
                break
            # each tensor's next finer step (the λ_hi choice need not be the only useful move)
            cand = _finer_moves(curves, idx, w)
            if not cand:
                break
            closing = [m for m in cand if ok(bits + m[3], noise + m[4])]
            # the cheapest single move that meets the target, else the best error-per-bit move
            _, t, b, db, dn = min(closing, key=lambda m: m[3]) if closing else max(cand, key=lambda m: m[0])
            idx[t] = b
            bits += db
            noise += dn
        if not ok(bits, noise):
            return list(high)
        # prune: the last moves may have overshot; step back the costliest refinements that are not needed
        spent = [float(c.bits[i] - c.bits[j]) for c, i, j in zip(curves, idx, low, strict=True)]
        for t in sorted(range(len(curves)), key=lambda t: -spent[t]):
            c = curves[t]
            while idx[t] > low[t]:
                db = float(c.bits[idx[t] - 1] - c.bits[idx[t]])
                dn = float(c.noise[idx[t] - 1] - c.noise[idx[t]])
                if not ok(bits + db, noise + dn):
                    break
                idx[t] -= 1
                bits += db
                noise += dn
        return idx
    for _, t, b, db, dn in moves:  # bit budget: take each move that still fits
        if ok(bits + db, noise + dn):
            idx[t] = b
            bits += db
            noise += dn
    for _ in range(10 * len(curves)):  # then single finer steps that still fit, best error-per-bit first
        cand = [m for m in _finer_moves(curves, idx, w) if ok(bits + m[3], 0.0)]
        if not cand:
            break
        _, t, b, db, dn = max(cand, key=lambda m: m[0])
        idx[t] = b
        bits += db
        noise += dn
    return idx


# --------------------------------------------------------------------------------- per-row steps


@dataclass
class RowCurves:
    """Estimated coded bits and error energy of every row (dim 0, output channel) of one tensor at each
    candidate S in s (step 2^-S: whole S for bf16/fp16, whose restores are exact only at powers of two;
    quarter S for fp32, as measure_curve).

    Rate estimate: a row's bits at S are its symbols' code lengths under the *tensor's* symbol
    distribution at S, −Σ log2 p_S(q), plus its share (cols / numel) of the tensor's table cost at S.
    Why this and not the row's own entropy: rows are coded in groups sharing one table (one rANS model;
    pack groups the rows of equal S), so a row pays a shared model's code lengths, not its own, and a
    row's symbols alone are far too few to estimate a distribution. The tensor's distribution at S is
    the one such estimate every row can be given: the sum over rows at a common S is exactly the tensor
    at that step (direct rounding), and for a group of rows at S it is exact when the rows are alike.
    It ignores how the group's rows differ from the tensor's and that each group pays its own table;
    pack reports the stored bits (within 1% on the Wikipedia LM, docs/pack.md). Errors are exact per
    row: Σ (w − step·round(w/step))² in float64.
    """

    name: str
    shape: tuple[int, ...]
    s: np.ndarray  # candidate whole S, ascending
    bits: np.ndarray  # (rows, len(s))
    noise: np.ndarray  # (rows, len(s))
    signal: np.ndarray  # (rows,) Σ w² per row

    @property
    def rows(self) -> int:
        return int(self.shape[0])

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))


#: Per-row steps are stored in quarter octaves: code k (int8, 0..ROW_CODE_MAX) is step 2^-(k/4) =
#: ldexp(ROW_MANTISSAS[k % 4], -(k // 4)), exact float64 constants (docs/format.md §4), so every reader
#: computes the same step without calling pow.
ROW_STEP_UNITS = 4
ROW_MANTISSAS = np.array([1.0, 2.0 ** -0.25, 2.0 ** -0.5, 2.0 ** -0.75])
ROW_CODE_MAX = 24 * ROW_STEP_UNITS


def row_step_values(codes: np.ndarray) -> np.ndarray:
    """float64 step of each per-row step code (quarter octaves)."""
    k = np.asarray(codes).astype(np.int64)
    return np.ldexp(ROW_MANTISSAS[k % ROW_STEP_UNITS], -(k // ROW_STEP_UNITS))


def row_symbols(x: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """round_half_even(w / step_r) per row in float64, as int64 (rows, cols): the symbols of a tensor
    with per-row step codes (row_step_values; exact division for whole octaves)."""
    rows = x.shape[0]
    m = x.reshape(rows, -1).to(torch.float64)
    if not bool(torch.isfinite(m).all()):
        raise GGError("a tensor with non-finite values cannot be step-quantized")
    step = torch.from_numpy(row_step_values(codes)).reshape(rows, 1)
    return torch.round(m / step).to(torch.int64)


def measure_row_curves(x: torch.Tensor, name: str, s_min: int = S_MIN, s_max: int = S_MAX,
                       per_octave: int = 1) -> RowCurves:
    """Every row's curve (RowCurves) at steps 2^-S, S = s_min..s_max in 1/per_octave (1, 2 or 4; whole S
    keeps bf16/fp16 restores exact in their dtype); one rounding pass over the tensor per candidate S."""
    if s_min > s_max or ROW_STEP_UNITS % per_octave or s_min < 0 or s_max * ROW_STEP_UNITS > ROW_CODE_MAX:
        raise GGError(f"{name}: step range S {s_min}..{s_max} / {per_octave} per octave cannot be stored")
    if x.dim() < 2 or x.numel() == 0:
        raise GGError(f"{name}: per-row steps need a non-empty tensor of 2+ dims")
    rows = int(x.shape[0])
    m = x.reshape(rows, -1).to(torch.float64)
    if not bool(torch.isfinite(m).all()):
        raise GGError(f"{name}: non-finite values cannot be step-quantized")
    n = m.numel()
    cols = n // rows
    signal = (m * m).sum(1).numpy()
    ss = np.arange(s_min * per_octave, s_max * per_octave + 1) / per_octave
    bits = np.empty((rows, ss.size))
    noise = np.empty((rows, ss.size))
    for i, s in enumerate(ss):
        step = float(row_step_values(np.array([round(s * ROW_STEP_UNITS)]))[0])
        q = torch.round(m / step)
        d = m - q * step
        noise[:, i] = (d * d).sum(1).numpy()
        qi = q.to(torch.int64)
        lo, hi = int(qi.min()), int(qi.max())
        if hi - lo < 1 << 24:
            counts = torch.bincount((qi - lo).reshape(-1), minlength=hi - lo + 1).to(torch.float64)
            present = counts > 0
            distinct = int(present.sum())
            nlp = torch.where(present, -torch.log2(counts.clamp(min=1) / n), torch.zeros_like(counts))
            code = nlp[qi - lo]
        else:
            uq, inv, counts = torch.unique(qi, return_inverse=True, return_counts=True)
            distinct = uq.numel()
            code = -torch.log2(counts.to(torch.float64) / n)[inv]
        h = code.sum(1).numpy() if distinct > 1 else np.zeros(rows)
        table = distinct * (max((hi - lo).bit_length(), 1) + TABLE_BITS_PER_SYMBOL)
        bits[:, i] = h + table * cols / n
    return RowCurves(name, tuple(int(d) for d in x.shape), ss, bits, noise, signal)


@dataclass
class RowAllocation(_Predicted):
    """Chosen S per row of each tensor and what the row curves predict for it."""

    steps: dict[str, np.ndarray]  # tensor -> int8 step code per row: step 2^-(code/4) (row_step_values)
    bits: float  # predicted coded bits, with the stored S arrays (8 bits per row)
    noise: float
    signal: float
    params: int
    lam: float
    target: dict[str, float]
    distortion: float  # Σ weight·noise
    side_bits: float  # of bits: the per-row S arrays


#: Bits the container spends per row on its S (one int8).
ROW_SIDE_BITS = 8.0


def allocate_rows(curves: Sequence[RowCurves], *, target_sqnr_db: float | None = None,
                  bits_per_param: float | None = None, max_distortion: float | None = None,
                  weights: Mapping[str, np.ndarray] | None = None) -> RowAllocation:
    """Per-row S by the same Lagrangian as ``allocate`` (one λ for every row of every tensor: each row
    takes the S minimizing bits + λ·weight·error on its own curve), vectorized over all rows.

    Steps excluded from a row's choices can be marked with bits = +inf. After the λ bisection the rows
    whose choice differs between the two sides of the target λ are moved one by one, best weighted error
    per bit first, until the target is met (quality) or while the budget holds (bits): with thousands of
    rows this closes the gap the Lagrangian leaves to a fraction of a row.
    """
    if sum(t is not None for t in (target_sqnr_db, bits_per_param, max_distortion)) != 1:
        raise GGError("give exactly one of target_sqnr_db, bits_per_param and max_distortion")
    if not curves:
        raise GGError("no tensors to allocate steps to (nothing is eligible for quantization)")
    width = max(c.s.size for c in curves)  # curves may have different candidates: pad with unusable steps

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.inf)
    b = np.concatenate([pad(c.bits) for c in curves])
    e = np.concatenate([pad(c.noise) for c in curves])
    w = np.concatenate([np.broadcast_to(np.asarray((weights or {}).get(c.name, 1.0), dtype=np.float64),
                                        (c.rows,)) for c in curves])
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise GGError("allocation weights must be finite and non-negative")
    signal = float(sum(c.signal.sum() for c in curves))
    params = sum(c.numel for c in curves)
    side = ROW_SIDE_BITS * b.shape[0]
    ew = np.where(np.isfinite(e), e * w[:, None], np.inf)
    # the constrained error: weighted for a distortion budget, plain for an SQNR target
    con = ew if max_distortion is not None else e
    rows = np.arange(b.shape[0])
    bfin = np.where(np.isfinite(b), b, np.inf)

    def choose(lam: float) -> np.ndarray:
        return np.argmin(bfin + lam * ew, axis=1)

    quality = bits_per_param is None
    if target_sqnr_db is not None:
        budget = signal / 10 ** (target_sqnr_db / 10)
        target = {"target_sqnr_db": float(target_sqnr_db)}
    elif max_distortion is not None:
        budget = float(max_distortion)
        target = {"max_distortion": budget}
    else:
        assert bits_per_param is not None
        budget = bits_per_param * params - side
        target = {"bits_per_param": float(bits_per_param)}

    def value(idx: np.ndarray) -> float:
        return float(con[rows, idx].sum()) if quality else float(b[rows, idx].sum())

    def ok(lam: float) -> bool:
        v = value(choose(lam))
        return v <= budget if quality else v > budget
    lo, hi = -60.0, 80.0
    if quality and not ok(2.0 ** hi):
        raise _out_of_reach(target_sqnr_db, max_distortion, signal, value(choose(2.0 ** hi)), curves[0].s[-1])
    if not quality and ok(2.0 ** lo):
        least = (value(choose(2.0 ** lo)) + side) / params
        raise GGError(f"{bits_per_param} bits/param is below the coarsest allocation "
                      f"({least:.3f} bits/param at steps up to 2^-{curves[0].s[0]:g}, S arrays included)")
    lo, hi = _bisect(ok, lo, hi, 60)
    low, high = choose(2.0 ** lo), choose(2.0 ** hi)
    idx = low.copy()
    moved = np.nonzero(low != high)[0]
    if moved.size:
        db = b[moved, high[moved]] - b[moved, low[moved]]
        dc = con[moved, high[moved]] - con[moved, low[moved]]
        gain = -(ew[moved, high[moved]] - ew[moved, low[moved]]) / np.maximum(db, 1e-9)
        order = np.argsort(-gain, kind="stable")
        if quality:
            have = value(low) + np.cumsum(dc[order])
            meets = np.nonzero(have <= budget)[0]  # the shortest prefix of moves meeting the target
            k = 0 if value(low) <= budget else int(meets[0]) + 1 if meets.size else order.size
        else:
            spent = value(low) + np.cumsum(db[order])
            k = int(np.searchsorted(spent, budget, side="right"))
        idx[moved[order[:k]]] = high[moved[order[:k]]]
        if quality and value(idx) > budget:
            idx = high
    lam = 2.0 ** (hi if quality else lo)
    steps, start = {}, 0
    for c in curves:
        steps[c.name] = np.round(c.s[idx[start:start + c.rows]] * ROW_STEP_UNITS).astype(np.int8)
        start += c.rows
    return RowAllocation(steps, float(b[rows, idx].sum()) + side, float(e[rows, idx].sum()), signal, params,
                         lam, target, float(ew[rows, idx].sum()), side)


def row_coding_bits(x: torch.Tensor, codes: np.ndarray) -> dict[str, float]:
    """Estimated bits of a per-row-step tensor coded with one table for all rows vs one table per group
    of rows with equal S (empirical entropy + the curves' table cost, step codes excluded): the
    measurement behind pack's grouping (docs/pack.md)."""
    q = row_symbols(x, codes)

    def cost(sym: torch.Tensor) -> float:
        u, c = torch.unique(sym, return_counts=True)
        p = c.to(torch.float64) / sym.numel()
        h = float(-(c * torch.log2(p)).sum()) if u.numel() > 1 else 0.0
        return h + u.numel() * (max(int(u.max() - u.min()).bit_length(), 1) + TABLE_BITS_PER_SYMBOL)

    groups = 0.0
    for k in np.unique(codes):
        groups += cost(q[torch.from_numpy(np.asarray(codes) == k)])
    return {"one_table": cost(q), "table_per_group": groups}
