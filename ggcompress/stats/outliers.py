"""Where a tensor's tails are: max |w|/σ per row, the share of values beyond kσ, and which rows,
columns and positions hold them.

Why: a codebook or a fixed grid must cover its tails, and whether one clipped channel or a thousand
scattered values hold them decides between a per-channel scale, an outlier side channel and a wider
grid. Counted in the same streaming pass over whole rows as `granularity.tensor_shape`.

Two σ's: the tensor's (μ, σ over all values) for "beyond kσ" and the positions; each row's own
(μ_r, σ_r) for "max |w − μ_r|/σ_r per row" and the row-normalized share beyond k.
Only rows that can hold what is counted are touched value by value: a row's max |w − μ| is at most
max|w − μ_r| + |μ_r − μ|, which the row pass already has, so typical weights cost one comparison per
row here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

QUANTILES = (0.5, 0.9, 0.99, 1.0)


@dataclass
class OutlierReport:
    """Outliers of one tensor (rows = dim 0, columns = the other dims flattened)."""

    k: float
    max_sigma: float  # max |w − μ| / σ over the tensor (tensor μ, σ)
    beyond: int  # values with |w − μ| > kσ (tensor σ)
    beyond_fraction: float
    beyond_row_fraction: float  # share of values with |w − μ_r| > kσ_r (each row's own σ)
    row_max_sigma: dict[str, float]  # quantiles over rows of max |w − μ_r| / σ_r
    top_rows: list[tuple[int, int]]  # (row, values beyond kσ), most first
    top_cols: list[tuple[int, int]]  # (column, values beyond kσ), most first
    top_values: list[tuple[int, int, float, float]]  # (row, column, value, |w − μ|/σ), largest first
    rows_with_outliers: int  # rows holding at least one value beyond kσ
    cols_with_outliers: int
    row_max: np.ndarray | None = None  # per analyzed row: max |w − μ_r| / σ_r (not in JSON)

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k, "max_sigma": self.max_sigma, "beyond": self.beyond,
            "beyond_fraction": self.beyond_fraction, "beyond_row_fraction": self.beyond_row_fraction,
            "row_max_sigma": self.row_max_sigma, "rows_with_outliers": self.rows_with_outliers,
            "cols_with_outliers": self.cols_with_outliers,
            "top_rows": [{"row": r, "count": c} for r, c in self.top_rows],
            "top_cols": [{"col": c, "count": n} for c, n in self.top_cols],
            "top_values": [{"row": r, "col": c, "value": v, "sigma": s} for r, c, v, s in self.top_values],
        }  # fmt: skip


class OutlierAccumulator:
    """Streaming counts over chunks of whole rows."""

    def __init__(self, mean: float, std: float, k: float, top: int, n_cols: int):
        self.mean, self.std, self.k, self.top = float(mean), float(std), float(k), int(top)
        self.thr = self.k * self.std
        self.col_counts = torch.zeros(n_cols, dtype=torch.int64)
        self.row_idx: list[np.ndarray] = []
        self.row_counts: list[np.ndarray] = []
        self.row_max: list[np.ndarray] = []
        self.beyond_row = 0
        self.n = 0
        self.cand: list[tuple[float, int, int, float]] = []  # (|w − μ|, row, col, value), largest first

    def add(self, x: torch.Tensor, rows: np.ndarray, row_mean: torch.Tensor, row_std: torch.Tensor,
            absmax: torch.Tensor, ad: torch.Tensor) -> None:
        """x: a (rows, cols) chunk; rows: their row numbers; row_mean, row_std, absmax (max |x − μ_r|)
        per row; ad = |x − μ_r|."""
        self.n += x.numel()
        # Per-row bookkeeping in NumPy: small arrays, where torch's per-call overhead dominates.
        sd = row_std.to(torch.float64).numpy()
        am = absmax.to(torch.float64).numpy()
        ok = sd > 0
        self.row_max.append(np.where(ok, am / np.maximum(sd, 1e-300), 0.0))
        sel = np.flatnonzero(ok & (am > self.k * sd))
        if sel.size:  # compared in float64
            thr_r = torch.from_numpy(self.k * sd[sel])
            self.beyond_row += int((ad[torch.from_numpy(sel)] > thr_r[:, None]).sum())
        ub = am + np.abs(row_mean.to(torch.float64).numpy() - self.mean)  # ≥ max |x − μ| of the row
        counts = np.zeros(x.shape[0], dtype=np.int64)
        sel = np.flatnonzero(ub > self.thr)
        if sel.size:
            mask = (x[torch.from_numpy(sel)].to(torch.float64) - self.mean).abs_() > self.thr
            self.col_counts += mask.sum(0)
            counts[sel] = mask.sum(1).numpy()
        self.row_counts.append(counts)
        self.row_idx.append(rows)
        self._top(x, rows, torch.from_numpy(ub))

    def _top(self, x: torch.Tensor, rows: np.ndarray, ub: torch.Tensor) -> None:
        """Exact top values: visit rows by decreasing bound until the bound drops below the current
        N-th largest value (always at least the largest, so max_sigma is exact)."""
        n = max(self.top, 1)
        if len(self.cand) >= n and float(ub.max()) < self.cand[-1][0]:
            return  # no row of this chunk can reach the current top values
        order = torch.argsort(ub, descending=True)
        for i in range(0, order.numel(), n):
            part = order[i:i + n]
            floor = self.cand[-1][0] if len(self.cand) >= n else -math.inf
            part = part[ub[part] >= floor]
            if part.numel() == 0:
                break
            e = (x[part].to(torch.float64) - self.mean).abs_()
            v, j = torch.topk(e.reshape(-1), min(n, e.numel()))
            cols = x.shape[1]
            for val, pos in zip(v.tolist(), j.tolist(), strict=True):
                r, c = divmod(pos, cols)
                self.cand.append((val, int(rows[int(part[r])]), c, float(x[int(part[r]), c])))
            self.cand = sorted(self.cand, key=lambda t: (-t[0], t[1], t[2]))[:n]

    def result(self) -> OutlierReport:
        rc = np.concatenate(self.row_counts) if self.row_counts else np.empty(0, np.int64)
        ri = np.concatenate(self.row_idx) if self.row_idx else np.empty(0, np.int64)
        rm = np.concatenate(self.row_max) if self.row_max else np.empty(0)
        cc = self.col_counts.numpy()
        beyond = int(rc.sum())
        top_r = [(int(ri[j]), int(rc[j])) for j in np.argsort(-rc, kind="stable")[: self.top] if rc[j] > 0]
        top_c = [(int(j), int(cc[j])) for j in np.argsort(-cc, kind="stable")[: self.top] if cc[j] > 0]
        sd = self.std if self.std > 0 else math.nan
        q = np.quantile(rm, QUANTILES) if rm.size else [math.nan] * len(QUANTILES)
        return OutlierReport(
            k=self.k,
            max_sigma=self.cand[0][0] / sd if self.cand else math.nan,
            beyond=beyond,
            beyond_fraction=beyond / self.n if self.n else math.nan,
            beyond_row_fraction=self.beyond_row / self.n if self.n else math.nan,
            row_max_sigma={("max" if p == 1.0 else f"p{round(100 * p)}"): float(v)
                           for p, v in zip(QUANTILES, q, strict=True)},
            top_rows=top_r,
            top_cols=top_c,
            top_values=[(r, c, v, a / sd) for a, r, c, v in self.cand[: self.top]],
            rows_with_outliers=int((rc > 0).sum()),
            cols_with_outliers=int((cc > 0).sum()),
            row_max=rm,
        )
