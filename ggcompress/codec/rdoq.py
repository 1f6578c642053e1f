"""Rate–distortion-optimized quantization (RDOQ): round a weight toward zero when the bits saved are worth it.

Why: plain rounding picks the nearest multiple of the step whatever it costs to code. Under the
tensor's own symbol model a value near a cell boundary can often take the neighbour closer to zero
(more frequent, so shorter) for a small extra error. RDOQ minimizes, per value,
``(w − q·step)² + λ·step²·bits(q)`` over q ∈ {round(w/step), the neighbour toward zero}, with bits(q)
= −log2 p(q) from the tensor's histogram, re-estimated after each pass. λ = ln 2 / 6 (~0.116) is the
slope of a uniform quantizer's own rate–distortion curve at high rate (dD/dR = −2 ln 2 · step²/12), so
the trade is made at the operating point the step already implies. Decoding is unchanged: the
restored values are still symbol · step, so containers need nothing new.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ggcompress.stats import rate

#: λ in units of step² per bit: the high-rate slope of uniform scalar quantization.
LAMBDA = math.log(2) / 6
PASSES = 2
#: Code length charged to a symbol the histogram has never seen (it is then never chosen).
_UNSEEN_BITS = 64.0


def rdoq_symbols(x: torch.Tensor, step: float, lam: float = LAMBDA, passes: int = PASSES,
                 name: str = "tensor") -> torch.Tensor:
    """int64 symbols of ``x`` (flattened) at ``step`` after RDOQ; each differs from plain rounding by
    at most one step toward zero.

    Per value, with b = round(w) (w = x/step), s = sign(b) and r = w − b: going toward zero adds
    (w − b + s)² − (w − b)² = 1 + 2·s·r step² of error and saves bits(b) − bits(b − s), which depends on b
    alone. So the test ``λ·saving > 1 + 2·s·r`` becomes ``s·r < t[b]`` with one threshold per symbol
    value: one table lookup and one compare per weight and pass. r is exact in x/step's precision (float32
    for power-of-two steps, as the quantizer computes it).
    """
    q, lo, _ = _rdoq(x, step, lam, passes, name)
    return q.to(torch.int64) + lo


def rdoq_counted(x: torch.Tensor, step: float, lam: float = LAMBDA, passes: int = PASSES,
                 name: str = "tensor") -> tuple[torch.Tensor, torch.Tensor, int]:
    """(symbols, dense counts of lo, lo + 1, …, lo) of ``rdoq_symbols`` without an int64 copy: symbols
    are int32 when they fit (pack ranks them and builds the histogram from the counts).

    bf16/fp16: the decision depends on the value alone, so RDOQ runs once per distinct bit pattern
    (at most 65536), weighted by its count, and a pattern table gives every weight its symbol."""
    if x.dtype in (torch.bfloat16, torch.float16) and x.numel():
        patterns, pcounts, u = rate.pattern_counts(x)
        vals = rate.pattern_values(patterns, x.dtype).to(x.dtype)  # exact; x/step as for x itself
        weights = torch.from_numpy(pcounts)
        pos, lo, size = _rdoq(vals, step, lam, passes, name, weights)
        counts = torch.bincount(pos.to(torch.int64), weights=weights.to(torch.float64), minlength=size)
        symbols = (pos.to(torch.int64) + lo).numpy()
        if -(2**31) <= lo and lo + size < 2**31:
            symbols = symbols.astype(np.int32)
        return torch.from_numpy(rate.pattern_lookup(patterns, symbols, u)), counts.round().to(torch.int64), lo
    q, lo, size = _rdoq(x, step, lam, passes, name)
    counts = torch.bincount(q, minlength=size)
    if q.dtype == torch.int32 and -(2**31) <= lo and lo + size < 2**31:
        return q.add_(lo), counts, lo
    return q.to(torch.int64) + lo, counts, lo


def _rdoq(x: torch.Tensor, step: float, lam: float, passes: int, name: str,
          weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
    """(table positions of the RDOQ symbols, the symbol at position 0, the table size). ``weights``:
    how many weights each value of ``x`` stands for (distinct values with their counts)."""
    w, bf, lo, hi = rate.scaled_and_rounded(x, step, name)  # float: int64 passes cost 2-3x more
    if bf.numel() == 0:
        return bf.to(torch.int64), 0, 1
    sign = torch.sign(bf)
    sr = (w - bf).mul_(sign)  # s·r, in [−0.5, 0.5]; 0 where b = 0
    lo -= 1
    size = hi - lo + 2
    itype = torch.int32 if size < 2**31 else torch.int64
    idx = ((bf if size < 2**24 else bf.double()) - lo).to(itype)  # b's table position, exact in float
    down = idx - sign.to(itype)  # b − s's position
    vals = torch.arange(lo, lo + size, dtype=torch.int64)
    toward = (torch.arange(size) - torch.sign(vals)).clamp_(0, size - 1)  # table index of b − s
    q = idx
    w64 = None if weights is None else weights.to(torch.float64)
    total = q.numel() if weights is None else int(weights.sum())
    for _ in range(passes):
        counts = torch.bincount(q, weights=w64, minlength=size).to(torch.float64)
        unseen = torch.full_like(counts, _UNSEEN_BITS)
        length = torch.where(counts > 0, -torch.log2(counts / total), unseen)
        # s·r < (λ·saving − 1) / 2, never for b = 0 (no neighbour toward zero)
        thr = ((lam * (length - length[toward]) - 1.0) / 2.0).masked_fill_(vals == 0, -math.inf)
        q = torch.where(sr < thr.to(sr.dtype)[idx], down, idx)
    return q, lo, size
