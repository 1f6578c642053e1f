"""`analyze`: per-tensor GG shape, fit quality and coded size of a checkpoint, as plain data.

One pass per tensor: moments (for β, kurtosis, zeros, NaN/Inf), an MLE refinement of β on a seeded
subsample, goodness of fit (GG vs Gaussian vs Laplace) and the exp-Golomb/entropy rate at `step`.
Below the tensor (`granularity`): β per row / column / block, pooled after per-row normalization,
the kurtosis split and the outliers (stats/granularity.py, stats/outliers.py); with `calib`, the
squared-gradient sensitivity of a causal LM (stats/sensitivity.py).
Rendering lives in report.py; this module only computes.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ggcompress import __version__
from ggcompress.errors import GGError, nothing_selected
from ggcompress.io.checkpoint import DTYPES, Checkpoint, TensorInfo, open_checkpoint
from ggcompress.reports.jsonsafe import json_safe
from ggcompress.stats import gg, granularity, rate, sensitivity
from ggcompress.stats.granularity import ShapeReport
from ggcompress.stats.roles import role_of
from ggcompress.stats.sensitivity import SensitivityReport, TensorSensitivity

SCHEMA = "ggcompress.analyze/1"
#: Below this many values a shape fit is noise; such tensors are reported, not fitted.
MIN_FIT_NUMEL = 64
FAMILIES = ("gg", "gaussian", "laplace")


@dataclass
class AnalyzeOptions:
    """What to analyze and how; defaults match the CLI."""

    step: float = 2.0**-8
    eg_k: int = 0
    sample: int | None = None  # analyze at most this many values per tensor (seeded subsample)
    seed: int = 0
    fit: str = "mle"  # "moments" or "mle"
    mle_samples: int = 2**18
    include: str | None = None
    exclude: str | None = None
    keep_values: int = 0  # keep up to this many (seeded) values per tensor on the report, for plots
    granularity: tuple[str, ...] = ("row",)  # any of "row", "col", "block:N"; () = per tensor only
    row_fit: str = "moments"  # per-row/column/block β: "moments" (one pass) or "mle" (Newton per group)
    outlier_k: float = 6.0  # "beyond kσ" threshold of the outlier counts
    top: int = 5  # rows / columns / positions listed per tensor
    calib: str | None = None  # calibration text file: enables the sensitivity (causal LMs only)
    calib_windows: int = 8
    calib_length: int = 512  # tokens per window, clamped to the model's context
    keep_pooled: bool = False  # keep the pooled-normalized sample per tensor, for plots


#: Report keys of the below-tensor analysis (null when not computed).
DETAIL_KEYS = ("rows", "cols", "blocks", "pooled", "outliers", "shape_notes", "sensitivity")


@dataclass
class TensorReport:
    """Everything `analyze` says about one tensor. Statistic fields are None when not applicable."""

    name: str
    role: str
    shape: list[int]
    dtype: str
    numel: int
    verdict: str  # "ok", or what is unusual: integer, constant, nan/inf, too small, sampled...
    analyzed: int = 0  # values the statistics are computed on (numel, or the sample size)
    mean: float | None = None
    std: float | None = None
    beta: float | None = None
    alpha: float | None = None
    kurtosis: float | None = None  # excess kurtosis (0 for a Gaussian, 3 for Laplace)
    nll: dict[str, float] | None = None  # mean negative log-likelihood per parameter (nats)
    ks: dict[str, float] | None = None
    best_fit: str | None = None
    entropy_bits: float | None = None
    eg_bits: float | None = None
    fixed_bits: float | None = None
    zero_fraction: float | None = None
    values: torch.Tensor | None = field(default=None, repr=False)  # only with keep_values
    detail: ShapeReport | None = field(default=None, repr=False)  # granularity, pooled, outliers
    sensitivity: TensorSensitivity | None = field(default=None, repr=False)  # only with calib

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("values", "detail",
                                                                                "sensitivity")}
        d = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
             for k, v in d.items()}
        sd = self.detail.to_dict() if self.detail else {}
        for k in DETAIL_KEYS[:5]:
            d[k] = sd.get(k)
        d["shape_notes"] = sd.get("notes") or []
        d["sensitivity"] = self.sensitivity.to_dict() if self.sensitivity else None
        return json_safe(d)


@dataclass
class CheckpointReport:
    source: str
    tensors: list[TensorReport]
    summary: dict[str, Any]
    roles: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "summary": json_safe(self.summary),
            "roles": json_safe(self.roles),
            "tensors": [t.to_dict() for t in self.tensors],
        }


def analyze_tensor(info: TensorInfo, x: torch.Tensor, opts: AnalyzeOptions) -> TensorReport:
    """Analyze one tensor; never raises on odd content (it is reported in `verdict`)."""
    rep = TensorReport(
        name=info.name,
        role=role_of(info.name, len(info.shape)),
        shape=list(info.shape),
        dtype=info.dtype,
        numel=info.numel,
        verdict="ok",
    )
    if not info.is_float:
        rep.verdict = "integer (skipped)"
        return rep
    flat = x.reshape(-1)
    if opts.sample is not None and flat.numel() > opts.sample:
        flat = _subsample(flat, opts.sample, _seed(opts.seed, info.name))
        rep.verdict = "ok (sampled)"
    rep.analyzed = flat.numel()
    # 8/16-bit floats: every statistic below is a weighted sum over <= 65536 distinct values.
    counts_of = gg.value_counts(flat)
    m = gg.Moments().update(flat) if counts_of is None else gg.Moments().update_counts(*counts_of)
    if m.count == 0:
        rep.verdict = "empty"
        return rep
    rep.zero_fraction = m.zeros / m.count
    if m.nan or m.inf:
        rep.verdict = f"nan/inf ({m.nan} NaN, {m.inf} Inf)"
        return rep
    rep.mean, rep.std = m.mean, m.std
    if m.count < MIN_FIT_NUMEL:
        rep.verdict = "scalar" if not info.shape else f"too small to fit (<{MIN_FIT_NUMEL})"
        return rep
    if m.std == 0.0:
        rep.verdict = "constant"
        return rep
    hist = rate.SymbolHistogram(opts.step)
    if counts_of is None:
        hist.update(flat, info.name)
    else:
        hist.update_counts(*counts_of, itemsize=flat.element_size(), name=info.name)
    r = hist.stats(opts.eg_k, huffman=False)
    rep.entropy_bits, rep.eg_bits, rep.fixed_bits = (
        r.entropy_bits_per_param,
        r.eg_bits_per_param,
        r.fixed_bits_per_param,
    )
    rep.kurtosis = m.kurtosis
    gen = torch.Generator().manual_seed(_seed(opts.seed, info.name))
    if opts.fit == "mle":
        fit, q = gg.fit_with_quality(
            flat, moments=m, max_samples=opts.mle_samples, generator=gen, counts_of=counts_of
        )
    else:
        fit = gg.fit(flat, method="moments", moments=m)
        q = gg.goodness_of_fit(
            flat, fit, moments=m, max_samples=opts.mle_samples, generator=gen, counts_of=counts_of
        )
    rep.beta, rep.alpha = fit.beta, fit.alpha
    # BIC-penalized: GG nests Gaussian and Laplace, so raw NLL would crown it on noise alone.
    rep.nll, rep.ks, rep.best_fit = dict(q.nll), dict(q.ks), q.best_bic
    if fit.clamped:
        rep.verdict = f"shape outside fit range (β clamped to {fit.beta:.3g})"
    if opts.granularity and len(info.shape) >= 2 and x.dim() >= 2:
        rep.detail = granularity.tensor_shape(
            x, opts.granularity, fit=opts.row_fit, mean=m.mean, std=m.std,
            outlier_k=opts.outlier_k, top=opts.top, max_values=opts.sample,
            pooled_fit=opts.fit, keep_pooled=opts.keep_pooled,
            seed=_seed(opts.seed, info.name),
        )
    if opts.keep_values:
        kept = (
            flat
            if flat.numel() <= opts.keep_values
            else _subsample(flat, opts.keep_values, _seed(opts.seed, info.name))
        )
        rep.values = kept.float().clone()
    return rep


def analyze_checkpoint(
    ck: Checkpoint,
    opts: AnalyzeOptions | None = None,
    progress: Callable[[TensorInfo, TensorReport], None] | None = None,
) -> CheckpointReport:
    """Analyze every selected tensor of one checkpoint, reading one tensor at a time."""
    opts = opts or AnalyzeOptions()
    selected = select(ck.tensors, opts.include, opts.exclude)
    if not selected and ck.tensors and (opts.include or opts.exclude):
        raise nothing_selected(ck.source, [t.name for t in ck.tensors], opts.include, opts.exclude)
    sens = calibrate(ck, opts) if opts.calib else None
    reports = []
    for info, x in ck.iter_tensors(t.name for t in selected):
        reports.append(analyze_tensor(info, x, opts))
        del x
        if sens is not None:
            reports[-1].sensitivity = sens.tensors.get(info.name)
        if progress:
            progress(info, reports[-1])
    summary = summarize(reports)
    summary["bytes"] = sum(t.nbytes for t in selected)
    if sens is not None:
        summary["sensitivity"] = sens.summary()
    return CheckpointReport(ck.source, reports, summary, summarize_roles(reports))


def calibrate(ck: Checkpoint, opts: AnalyzeOptions) -> SensitivityReport:
    """The sensitivity of `ck` loaded as a causal LM, on the text of `opts.calib`."""
    from ggcompress.methods.train import read_documents

    docs = read_documents(opts.calib)
    if not docs:
        raise GGError(f"{opts.calib}: --calib text is empty")
    model_dir = ck.root if ck.root is not None else ck.source
    return sensitivity.measure(model_dir, "\n\n".join(docs), windows=opts.calib_windows,
                               length=opts.calib_length, top=opts.top)


def analyze(
    sources: Iterable[str],
    opts: AnalyzeOptions | None = None,
    progress: Callable[[TensorInfo, TensorReport], None] | None = None,
) -> dict[str, Any]:
    """Analyze several checkpoints; returns the versioned JSON-ready document."""
    opts = opts or AnalyzeOptions()
    reports = [analyze_checkpoint(open_checkpoint(s), opts, progress) for s in sources]
    return document(reports, opts)


def document(reports: list[CheckpointReport], opts: AnalyzeOptions) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(opts).items() if k not in ("keep_values", "keep_pooled")}
    return {
        "schema": SCHEMA,
        "ggcompress_version": __version__,
        "settings": settings,
        "checkpoints": [r.to_dict() for r in reports],
    }


def select(tensors: list[TensorInfo], include: str | None, exclude: str | None) -> list[TensorInfo]:
    """Filter tensor names with --include / --exclude regular expressions (re.search)."""
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None
    return [
        t for t in tensors if (inc is None or inc.search(t.name)) and (exc is None or not exc.search(t.name))
    ]


def summarize(reports: list[TensorReport]) -> dict[str, Any]:
    """Totals and parameter-weighted averages over fitted tensors."""
    fitted = [r for r in reports if r.beta is not None]
    rated = [r for r in reports if r.eg_bits is not None]
    matrices = [r for r in fitted if len(r.shape) >= 2]
    wins = {f: sum(1 for r in matrices if r.best_fit == f) for f in FAMILIES}
    out: dict[str, Any] = {
        "tensors": len(reports),
        "params": sum(r.numel for r in reports),
        "fitted_tensors": len(fitted),
        "fitted_params": sum(r.numel for r in fitted),
        "skipped": {v: sum(1 for r in reports if r.verdict == v) for v in _unusual(reports)},
        "beta": _wavg(fitted, "beta"),
        "kurtosis": _wavg(fitted, "kurtosis"),
        "entropy_bits": _wavg(rated, "entropy_bits"),
        "eg_bits": _wavg(rated, "eg_bits"),
        "zero_fraction": _wavg(rated, "zero_fraction"),
        "matrices": len(matrices),
        "best_fit_counts": wins,
        "gg_best_share": (wins["gg"] / len(matrices)) if matrices else None,
    }
    if rated:
        source = sum(r.numel * DTYPES[r.dtype].itemsize for r in rated)
        out["rated_params"] = sum(r.numel for r in rated)
        out["rated_bytes"] = source
        out["coded_bytes_eg"] = sum(r.eg_bits * r.numel for r in rated) / 8
        out["coded_bytes_entropy"] = sum(r.entropy_bits * r.numel for r in rated) / 8
        # Size ratio of the rated tensors in their stored dtype vs their coded size at `step`.
        out["ratio_eg"] = source / out["coded_bytes_eg"] if out["coded_bytes_eg"] else None
        out["ratio_entropy"] = source / out["coded_bytes_entropy"] if out["coded_bytes_entropy"] else None
    out["shape"] = summarize_shape(reports)
    return out


def summarize_shape(reports: list[TensorReport]) -> dict[str, Any] | None:
    """How much of the matrices' shape is a scale mixture of rows: medians over matrices of the
    tensor / median per-row / pooled-normalized β, all rows' β quantiles, the parameter-weighted
    kurtosis split (scale_share = Σ n·scale / Σ n·total), the median per-matrix scale share (matrices
    with |K| > 0.1), and the median share of the gap 2 − β_tensor that row normalization closes,
    (β_pooled − β_tensor)/(2 − β_tensor), over matrices with β_tensor < 1.9."""
    rs = [r for r in reports if r.detail is not None and r.detail.rows is not None and r.beta is not None]
    if not rs:
        return None
    rows_beta = np.concatenate([r.detail.rows.beta for r in rs])
    parts = [(r.numel, r.detail.rows.kurtosis) for r in rs]
    parts = [(n, p) for n, p in parts if np.isfinite(p.total)]
    w = sum(n for n, _ in parts)

    def wsum(attr: str) -> float | None:
        return sum(n * getattr(p, attr) for n, p in parts) / w if w else None

    kt = wsum("total")
    shares = [p.scale_share for _, p in parts if abs(p.total) > 0.1]  # K ≈ 0: a share means nothing
    gaps = [(r.detail.pooled.beta - r.beta) / (2 - r.beta) for r in rs
            if r.detail.pooled is not None and r.beta < 1.9]  # near-Gaussian tensors have no gap to close
    out_max = max(rs, key=lambda r: r.detail.outliers.max_sigma if r.detail.outliers else -1.0)
    pooled = [r.detail.pooled.beta for r in rs if r.detail.pooled is not None]
    return {
        "matrices": len(rs),
        "tensor_beta_median": float(np.median([r.beta for r in rs])),
        "row_beta_median": _median([float(np.median(b[np.isfinite(b)]))
                                    for b in (r.detail.rows.beta for r in rs) if np.isfinite(b).any()]),
        "pooled_beta_median": float(np.median(pooled)) if pooled else None,
        "rows_beta": granularity.quantiles(rows_beta),
        "kurtosis": kt,
        "kurtosis_scale": wsum("scale"),
        "kurtosis_within": wsum("within"),
        "kurtosis_location": wsum("location"),
        "scale_share": wsum("scale") / kt if kt is not None and abs(kt) > 0.1 else None,
        "scale_share_median": float(np.median(shares)) if shares else None,
        "beta_gap_closed_median": float(np.median(gaps)) if gaps else None,
        "max_sigma": out_max.detail.outliers.max_sigma if out_max.detail.outliers else None,
        "max_sigma_tensor": out_max.name,
    }


def summarize_roles(reports: list[TensorReport]) -> dict[str, dict[str, Any]]:
    roles: dict[str, list[TensorReport]] = {}
    for r in reports:
        roles.setdefault(r.role, []).append(r)
    return {
        role: {
            "tensors": len(rs),
            "params": sum(r.numel for r in rs),
            "beta": _wavg([r for r in rs if r.beta is not None], "beta"),
            "kurtosis": _wavg([r for r in rs if r.beta is not None], "kurtosis"),
            "entropy_bits": _wavg([r for r in rs if r.eg_bits is not None], "entropy_bits"),
            "eg_bits": _wavg([r for r in rs if r.eg_bits is not None], "eg_bits"),
            "gg_best_share": _share([r for r in rs if r.best_fit is not None]),
            **_role_detail(rs),
        }
        for role, rs in sorted(roles.items())
    }


def _role_detail(rs: list[TensorReport]) -> dict[str, Any]:
    """Per-row β quantiles over every row of the role's matrices, pooled β, kurtosis split, F̂."""
    out: dict[str, Any] = {"row_beta": None, "pooled_beta": None, "scale_share": None, "fisher_share": None}
    det = [r for r in rs if r.detail is not None and r.detail.rows is not None and r.beta is not None]
    if det:
        out["row_beta"] = granularity.quantiles(np.concatenate([r.detail.rows.beta for r in det]))
        pooled = [r for r in det if r.detail.pooled is not None]
        out["pooled_beta"] = _wavg_of([(r.detail.pooled.beta, r.numel) for r in pooled])
        parts = [(r.numel, r.detail.rows.kurtosis) for r in det]
        kt = _wavg_of([(p.total, n) for n, p in parts])
        ks = _wavg_of([(p.scale, n) for n, p in parts])
        # A share of an excess kurtosis near 0 (Gaussian-like matrices) means nothing: left out.
        out["scale_share"] = ks / kt if kt is not None and abs(kt) > 0.1 and ks is not None else None
    sens = [r.sensitivity for r in rs if r.sensitivity is not None]
    if sens:
        out["fisher_share"] = sum(s.share for s in sens)
    return out


def _median(vals: list[float]) -> float | None:
    return float(np.median(vals)) if vals else None


def _wavg_of(vals: list[tuple[float, int]]) -> float | None:
    vals = [(v, n) for v, n in vals if v is not None and np.isfinite(v)]
    w = sum(n for _, n in vals)
    return sum(v * n for v, n in vals) / w if w else None


def _share(rs: list[TensorReport]) -> float | None:
    return sum(1 for r in rs if r.best_fit == "gg") / len(rs) if rs else None


def _unusual(reports: list[TensorReport]) -> list[str]:
    return sorted({r.verdict for r in reports if not r.verdict.startswith("ok")})


def _wavg(rs: list[TensorReport], attr: str) -> float | None:
    vals = [(getattr(r, attr), r.numel) for r in rs if getattr(r, attr) is not None]
    w = sum(n for _, n in vals)
    return sum(v * n for v, n in vals) / w if w else None


def _seed(seed: int, name: str) -> int:
    """Per-tensor seed independent of tensor order, so --include does not change results."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def _subsample(flat: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(flat.numel(), (n,), generator=gen)
    return flat[idx]

