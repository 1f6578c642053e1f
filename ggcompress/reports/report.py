"""Rendering of analyze documents: rich tables for people, CSV for spreadsheets and pipelines."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.console import Console
from rich.table import Table

from ggcompress.stats.rate import format_step

CSV_COLUMNS = [
    "checkpoint", "name", "role", "shape", "dtype", "numel", "analyzed", "mean", "std", "beta", "alpha",
    "kurtosis", "nll_gg", "nll_gaussian", "nll_laplace", "ks_gg", "ks_gaussian", "ks_laplace", "best_fit",
    "entropy_bits", "eg_bits", "fixed_bits", "zero_fraction", "verdict",
]  # fmt: skip


def _f(v: Any, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _short_family(f: str | None) -> str:
    return {"gg": "GG", "gaussian": "Gauss", "laplace": "Laplace"}.get(f or "", "–")


def analyze_csv(doc: dict[str, Any]) -> str:
    """One row per tensor across all checkpoints (flat columns, empty cell = not applicable)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for ck in doc["checkpoints"]:
        for t in ck["tensors"]:
            row = {k: t.get(k) for k in CSV_COLUMNS if k in t}
            row["checkpoint"] = ck["source"]
            row["shape"] = "x".join(str(d) for d in t["shape"])
            for fam in ("gg", "gaussian", "laplace"):
                row[f"nll_{fam}"] = (t.get("nll") or {}).get(fam)
                row[f"ks_{fam}"] = (t.get("ks") or {}).get(fam)
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def print_analyze(doc: dict[str, Any], console: Console, *, per_tensor: bool = True) -> None:
    """Per-tensor table, per-role table and totals for each checkpoint."""
    s = doc["settings"]
    for ck in doc["checkpoints"]:
        if per_tensor:
            t = Table(
                title=f"{ck['source']} — per tensor (step {format_step(s['step'])}, exp-Golomb k={s['eg_k']})"
            )
            for col, just in [
                ("tensor", "left"), ("role", "left"), ("shape", "right"), ("dtype", "left"), ("β", "right"),
                ("α", "right"), ("kurt", "right"), ("best fit", "left"), ("KS GG", "right"),
                ("H bits", "right"), ("EG bits", "right"), ("zeros", "right"), ("verdict", "left"),
            ]:  # fmt: skip
                t.add_column(col, justify=just, no_wrap=col == "tensor")
            for r in ck["tensors"]:
                t.add_row(
                    r["name"], r["role"], "×".join(map(str, r["shape"])) or "scalar", r["dtype"],
                    _f(r["beta"]), _f(r["alpha"], ".3g"), _f(r["kurtosis"], ".2f"),
                    _short_family(r["best_fit"]), _f((r["ks"] or {}).get("gg"), ".4f"),
                    _f(r["entropy_bits"], ".2f"), _f(r["eg_bits"], ".2f"),
                    _f(None if r["zero_fraction"] is None else 100 * r["zero_fraction"], ".1f") + "%"
                    if r["zero_fraction"] is not None else "–",
                    "" if r["verdict"] == "ok" else r["verdict"],
                )  # fmt: skip
            console.print(t)
        rt = Table(title=f"{ck['source']} — by layer role (parameter-weighted)")
        for col in ("role", "tensors", "params", "β", "kurt", "GG best", "H bits", "EG bits"):
            rt.add_column(col, justify="left" if col == "role" else "right")
        for role, g in ck["roles"].items():
            rt.add_row(
                role, str(g["tensors"]), f"{g['params']:,}", _f(g["beta"]), _f(g["kurtosis"], ".2f"),
                _f(None if g["gg_best_share"] is None else 100 * g["gg_best_share"], ".0f") + "%"
                if g["gg_best_share"] is not None else "–",
                _f(g["entropy_bits"], ".2f"), _f(g["eg_bits"], ".2f"),
            )  # fmt: skip
        console.print(rt)
        sm = ck["summary"]
        skipped = ", ".join(f"{n} {v}" for v, n in sm["skipped"].items()) or "none"
        share = sm["gg_best_share"]
        console.print(
            f"[bold]{ck['source']}[/]: {sm['tensors']} tensors, {sm['params']:,} params "
            f"({sm['fitted_params']:,} fitted); mean β {_f(sm['beta'])}, "
            f"entropy {_f(sm['entropy_bits'], '.2f')} bits/param, exp-Golomb {_f(sm['eg_bits'], '.2f')} "
            f"bits/param; GG fits best on {sm['best_fit_counts']['gg']}/{sm['matrices']} matrices"
            + (f" ({100 * share:.0f}%)" if share is not None else "")
            + f"; unusual: {skipped}"
        )
