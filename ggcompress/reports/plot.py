"""PNG histograms (log density) with the fitted GG, Gaussian and Laplace curves overlaid; per tensor,
also the per-row β histogram and the pooled per-row-normalized histogram with its fit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ggcompress.errors import GGError
from ggcompress.stats import gg
from ggcompress.stats.analyze import TensorReport

#: Values kept per tensor for a per-role plot, so memory stays bounded on big models.
ROLE_SAMPLE = 2**16


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GGError("--plot needs matplotlib: pip install 'ggcompress[plot]'") from None
    return plt


def _draw_values(ax, values: torch.Tensor, title: str) -> None:
    """Histogram of `values` in log density with the three fitted families, on one axis."""
    x = values.double()
    fit = gg.fit(x, method="mle", generator=torch.Generator().manual_seed(0))
    mu, sigma = float(x.mean()), float(x.std())
    b = float((x - x.median()).abs().mean())
    centers, counts, grid = _histogram(x)
    ax.step(centers, np.where(counts > 0, counts, np.nan), where="mid", color="0.35", lw=1, label="weights")
    curves = [
        (f"GG β={fit.beta:.2f}", gg.pdf(grid, fit.beta, fit.alpha, fit.mu), "C3"),
        ("Gaussian", gg.pdf(grid, 2.0, sigma * 2**0.5, mu), "C0"),
        ("Laplace", gg.pdf(grid, 1.0, b, float(x.median())), "C2"),
    ]
    for label, y, color in curves:
        ax.plot(grid.numpy(), np.asarray(y), color=color, lw=1.4, label=label)
    _log_axes(ax, counts, title)


def _histogram(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    lo, hi = torch.quantile(x[: 2**24], torch.tensor([1e-4, 1 - 1e-4], dtype=x.dtype)).tolist()
    span = max(hi - lo, 1e-12)
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    counts, edges = np.histogram(x.numpy(), bins=200, range=(lo, hi), density=True)
    return (edges[:-1] + edges[1:]) / 2, counts, torch.linspace(lo, hi, 800, dtype=torch.float64)


def _log_axes(ax, counts: np.ndarray, title: str) -> None:
    ax.set_yscale("log")
    positive = counts[counts > 0]
    if positive.size:
        ax.set_ylim(positive.min() / 3, positive.max() * 3)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("value")
    ax.set_ylabel("density (log)")
    ax.legend(fontsize=8)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_values(values: torch.Tensor, title: str, path: Path) -> Path:
    """Histogram of `values` in log density with the three fitted families; returns the PNG path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    _draw_values(ax, values, title)
    return _save(fig, plt, path)


def plot_tensor_page(t: TensorReport, path: Path) -> Path:
    """One page per tensor: its histogram with fits, the per-row β histogram, and the pooled values
    after per-row normalization with their GG fit and the unit Gaussian."""
    plt = _pyplot()
    rows, pooled = t.detail.rows, t.detail.pooled
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6), dpi=100)
    _draw_values(axes[0], t.values, f"{t.name}  {tuple(t.shape)}  β={t.beta:.3f}")
    ax = axes[1]
    beta = rows.beta[np.isfinite(rows.beta)]
    ax.hist(beta, bins=min(80, max(10, beta.size // 8)), color="0.6")
    marks = [(t.beta, "tensor β", "C3"), (float(np.median(beta)), "median row β", "k")]
    if pooled is not None:
        marks.append((pooled.beta, "pooled β", "C1"))
    for v, label, color in marks:
        ax.axvline(v, color=color, lw=1.4, label=f"{label} {v:.2f}")
    ax.axvline(2.0, color="C0", lw=1, ls=":", label="Gaussian")
    ax.set_title(f"per-row β ({rows.groups} rows of {rows.size}, {rows.fit})", fontsize=9)
    ax.set_xlabel("β")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    z = t.detail.pooled_values
    if z is not None and z.numel() and pooled is not None:
        ax = axes[2]
        centers, counts, grid = _histogram(z.double())
        ax.step(centers, np.where(counts > 0, counts, np.nan), where="mid", color="0.35", lw=1,
                label="(w − μ_row)/σ_row")
        ax.plot(grid.numpy(), np.asarray(gg.pdf(grid, pooled.beta, pooled.alpha, 0.0)), color="C1", lw=1.4,
                label=f"GG β={pooled.beta:.2f}")
        ax.plot(grid.numpy(), np.asarray(gg.pdf(grid, 2.0, 2**0.5, 0.0)), color="C0", lw=1.2, label="N(0, 1)")
        _log_axes(ax, counts, f"pooled after per-row normalization ({z.numel():,} sampled values)")
    else:
        axes[2].set_axis_off()
    return _save(fig, plt, path)


#: Values kept per tensor for a per-tensor plot (enough for a smooth 200-bin log histogram).
TENSOR_SAMPLE = 2**20


def plot_tensor(t: TensorReport, out_dir: str | Path, prefix: str = "") -> Path | None:
    """Plot one analyzed tensor (needs `values` kept by analyze); returns None when not fitted."""
    if t.values is None or t.beta is None:
        return None
    path = Path(out_dir) / f"{prefix}{_safe(t.name)}.png"
    if t.detail is not None and t.detail.rows is not None and t.detail.rows.groups:
        return plot_tensor_page(t, path)
    title = f"{t.name}  {tuple(t.shape)}  β={t.beta:.3f}"
    return plot_values(t.values, title, path)


def plot_roles(source: str, tensors: list[TensorReport], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """One plot per layer role, values pooled across that role's tensors."""
    roles: dict[str, list[torch.Tensor]] = {}
    for t in tensors:
        if t.values is not None and t.beta is not None:
            roles.setdefault(t.role, []).append(t.values)
    return [
        plot_values(torch.cat(vs), f"{source}: {role} ({len(vs)} tensors, pooled sample)",
                    Path(out_dir) / f"{prefix}role-{role}.png")
        for role, vs in sorted(roles.items())
    ]  # fmt: skip


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)
