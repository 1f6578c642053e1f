"""Quantization error measures: SQNR and relative errors, computed in float64 over row chunks.

Relative error per weight, |w - w'| / |w|, explodes for weights near zero (a flushed 1e-9 weight is a
100% error that costs nothing), so the headline relative error is normalised by the mean magnitude:
``mean_rel_err = sum|w - w'| / sum|w|``. ``max_rel_err`` is over nonzero weights only and is mostly
useful to see flushing (1.0) or saturation; ``flushed_frac`` counts nonzero weights decoded to 0.
"""

from __future__ import annotations

import math

import torch

from ggcompress.errors import GGError

_CHUNK = 1 << 22


def _pairs(ref: torch.Tensor, approx: torch.Tensor):
    if tuple(ref.shape) != tuple(approx.shape):
        raise GGError(f"error stats: shapes differ, {tuple(ref.shape)} vs {tuple(approx.shape)}")
    r, a = ref.reshape(-1), approx.reshape(-1)
    for i in range(0, r.numel(), _CHUNK):
        yield r[i:i + _CHUNK].to(torch.float64), a[i:i + _CHUNK].to(torch.float64)


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (ref - approx)^2); +inf when exact, -inf for a zero reference with error."""
    signal = noise = 0.0
    for r, a in _pairs(ref, approx):
        signal += float(r.square().sum())
        noise += float((r - a).square().sum())
    return _db(signal, noise)


def error_stats(ref: torch.Tensor, approx: torch.Tensor) -> dict:
    """SQNR, MSE, absolute and relative errors of ``approx`` against ``ref`` (see module docstring).

    ``signal_energy`` / ``noise_energy`` (sums of squares) are included so SQNR can be aggregated over
    many tensors: 10 log10(sum of signal energies / sum of noise energies).
    """
    n = 0
    signal = noise = abs_sum = err_abs_sum = max_abs = max_rel = 0.0
    nonzero = flushed = 0
    for r, a in _pairs(ref, approx):
        # Reductions that need no temporary (dot, norms, counts): about half the passes of writing
        # |r|, |e|, e² and r² out first, for the same float64 sums up to summation order.
        e = r - a
        n += r.numel()
        signal += float(torch.dot(r, r))
        noise += float(torch.dot(e, e))
        abs_sum += float(torch.linalg.vector_norm(r, 1))
        err_abs_sum += float(torch.linalg.vector_norm(e, 1))
        if r.numel():
            max_abs = max(max_abs, float(torch.linalg.vector_norm(e, math.inf)))
        nz = r != 0
        count = int(torch.count_nonzero(nz))
        if count:
            max_rel = max(max_rel, float(torch.where(nz, e.div_(r), 0.0).abs_().max()))
        nonzero += count
        flushed += int(torch.count_nonzero(nz.logical_and_(a == 0)))
    return {
        "n": n,
        "sqnr_db": _db(signal, noise),
        "mse": noise / n if n else 0.0,
        "max_abs_err": max_abs,
        "mean_rel_err": err_abs_sum / abs_sum if abs_sum else (0.0 if err_abs_sum == 0 else math.inf),
        "max_rel_err": max_rel,
        "flushed_frac": flushed / nonzero if nonzero else 0.0,
        "signal_energy": signal,
        "noise_energy": noise,
    }
