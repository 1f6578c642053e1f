"""PNG histograms (log density) with the fitted GG, Gaussian and Laplace curves overlaid."""

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


def plot_values(values: torch.Tensor, title: str, path: Path) -> Path:
    """Histogram of `values` in log density with the three fitted families; returns the PNG path."""
    plt = _pyplot()
    x = values.double()
    fit = gg.fit(x, method="mle", generator=torch.Generator().manual_seed(0))
    mu, sigma = float(x.mean()), float(x.std())
    b = float((x - x.median()).abs().mean())
    lo, hi = torch.quantile(x[: 2**24], torch.tensor([1e-4, 1 - 1e-4], dtype=x.dtype)).tolist()
    span = max(hi - lo, 1e-12)
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    counts, edges = np.histogram(x.numpy(), bins=200, range=(lo, hi), density=True)
    centers = (edges[:-1] + edges[1:]) / 2
    grid = torch.linspace(lo, hi, 800, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.step(centers, np.where(counts > 0, counts, np.nan), where="mid", color="0.35", lw=1, label="weights")
    curves = [
        (f"GG β={fit.beta:.2f}", gg.pdf(grid, fit.beta, fit.alpha, fit.mu), "C3"),
        ("Gaussian", gg.pdf(grid, 2.0, sigma * 2**0.5, mu), "C0"),
        ("Laplace", gg.pdf(grid, 1.0, b, float(x.median())), "C2"),
    ]
    for label, y, color in curves:
        ax.plot(grid.numpy(), np.asarray(y), color=color, lw=1.4, label=label)
    ax.set_yscale("log")
    positive = counts[counts > 0]
    if positive.size:
        ax.set_ylim(positive.min() / 3, positive.max() * 3)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("value")
    ax.set_ylabel("density (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


#: Values kept per tensor for a per-tensor plot (enough for a smooth 200-bin log histogram).
TENSOR_SAMPLE = 2**20


def plot_tensor(t: TensorReport, out_dir: str | Path, prefix: str = "") -> Path | None:
    """Plot one analyzed tensor (needs `values` kept by analyze); returns None when not fitted."""
    if t.values is None or t.beta is None:
        return None
    title = f"{t.name}  {tuple(t.shape)}  β={t.beta:.3f}"
    return plot_values(t.values, title, Path(out_dir) / f"{prefix}{_safe(t.name)}.png")


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
