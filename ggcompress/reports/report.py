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
#: Below-tensor columns (empty when not computed); `block{N}_*` and `col_*` columns are added per
#: document for the groupings it holds.
DETAIL_COLUMNS = [
    "row_beta_p1", "row_beta_p50", "row_beta_p99", "row_beta_mean", "row_beta_clamped", "row_std_cv",
    "pooled_beta", "pooled_beta_moments", "pooled_kurtosis", "kurt_scale", "kurt_within",
    "kurt_location", "scale_share", "outlier_k", "max_sigma", "row_max_sigma_p50", "row_max_sigma_max",
    "beyond_fraction", "beyond_row_fraction", "rows_with_outliers", "cols_with_outliers", "top_rows",
    "top_cols", "fisher_sum", "fisher_mean", "fisher_share",
]  # fmt: skip


def _f(v: Any, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _short_family(f: str | None) -> str:
    return {"gg": "GG", "gaussian": "Gauss", "laplace": "Laplace"}.get(f or "", "–")


def _group_columns(doc: dict[str, Any]) -> list[str]:
    cols: list[str] = []
    tensors = [t for ck in doc["checkpoints"] for t in ck["tensors"]]
    blocks = sorted({int(n) for t in tensors for n in (t.get("blocks") or {})})
    if any(t.get("cols") for t in tensors):
        cols += ["col_beta_p50", "col_std_cv", "col_scale_share"]
    for n in blocks:
        cols += [f"block{n}_beta_p50", f"block{n}_std_cv", f"block{n}_scale_share"]
    return cols


def detail_row(t: dict[str, Any]) -> dict[str, Any]:
    """The below-tensor fields of one tensor of an analyze document, flattened for CSV."""
    row: dict[str, Any] = {}
    rows, pooled, out, sens = t.get("rows"), t.get("pooled"), t.get("outliers"), t.get("sensitivity")
    if rows:
        b = rows["beta"] or {}
        kp = rows["kurtosis_parts"]
        row |= {"row_beta_p1": b.get("p1"), "row_beta_p50": b.get("p50"), "row_beta_p99": b.get("p99"),
                "row_beta_mean": b.get("mean"), "row_beta_clamped": rows["beta_clamped"],
                "row_std_cv": rows["std_cv"], "kurt_scale": kp["scale"], "kurt_within": kp["within"],
                "kurt_location": kp["location"], "scale_share": kp["scale_share"]}
    if pooled:
        row |= {"pooled_beta": pooled["beta"], "pooled_beta_moments": pooled["beta_moments"],
                "pooled_kurtosis": pooled["kurtosis"]}
    if out:
        row |= {"outlier_k": out["k"], "max_sigma": out["max_sigma"],
                "row_max_sigma_p50": out["row_max_sigma"]["p50"],
                "row_max_sigma_max": out["row_max_sigma"]["max"],
                "beyond_fraction": out["beyond_fraction"], "beyond_row_fraction": out["beyond_row_fraction"],
                "rows_with_outliers": out["rows_with_outliers"],
                "cols_with_outliers": out["cols_with_outliers"],
                "top_rows": ";".join(f"{r['row']}:{r['count']}" for r in out["top_rows"]),
                "top_cols": ";".join(f"{c['col']}:{c['count']}" for c in out["top_cols"])}
    if sens:
        row |= {"fisher_sum": sens["fisher_sum"], "fisher_mean": sens["fisher_mean"],
                "fisher_share": sens["share"]}
    groups = ([("col", t["cols"])] if t.get("cols") else []) + [
        (f"block{n}", g) for n, g in (t.get("blocks") or {}).items()
    ]
    for prefix, g in groups:
        row |= {f"{prefix}_beta_p50": (g["beta"] or {}).get("p50"), f"{prefix}_std_cv": g["std_cv"],
                f"{prefix}_scale_share": g["kurtosis_parts"]["scale_share"]}
    return row


def analyze_csv(doc: dict[str, Any]) -> str:
    """One row per tensor across all checkpoints (flat columns, empty cell = not applicable)."""
    buf = io.StringIO()
    columns = CSV_COLUMNS[:-1] + DETAIL_COLUMNS + _group_columns(doc) + CSV_COLUMNS[-1:]
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for ck in doc["checkpoints"]:
        for t in ck["tensors"]:
            row = {k: t.get(k) for k in CSV_COLUMNS if k in t}
            row["checkpoint"] = ck["source"]
            row["shape"] = "x".join(str(d) for d in t["shape"])
            for fam in ("gg", "gaussian", "laplace"):
                row[f"nll_{fam}"] = (t.get("nll") or {}).get(fam)
                row[f"ks_{fam}"] = (t.get("ks") or {}).get(fam)
            row |= detail_row(t)
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def shape_line(shape: dict[str, Any] | None) -> str | None:
    """The summary sentence: how much of the matrices' shape is a scale mixture of rows."""
    if not shape:
        return None
    gap, share, share_w = shape["beta_gap_closed_median"], shape["scale_share_median"], shape["scale_share"]
    return (
        f"rows: median β per matrix {_f(shape['tensor_beta_median'], '.2f')} → "
        f"{_f(shape['pooled_beta_median'], '.2f')} pooled after per-row normalization "
        f"(median per-row β {_f(shape['row_beta_median'], '.2f')}); row scale mixture closes "
        f"{_pct(gap)} of the gap to Gaussian and makes {_pct(share)} of a matrix's excess kurtosis "
        f"(median; {_pct(share_w)} parameter-weighted, the rest within rows); max |w−μ|/σ "
        f"{_f(shape['max_sigma'], '.0f')} in {shape['max_sigma_tensor']}"
    )


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def print_analyze(doc: dict[str, Any], console: Console, *, per_tensor: bool = True) -> None:
    """Per-tensor table, per-role table and totals for each checkpoint."""
    s = doc["settings"]
    for ck in doc["checkpoints"]:
        if per_tensor:
            t = Table(
                title=f"{ck['source']} — per tensor (step {format_step(s['step'])}, exp-Golomb k={s['eg_k']})"
            )
            rows_on = any(r.get("rows") for r in ck["tensors"])
            fisher_on = any(r.get("sensitivity") for r in ck["tensors"])
            cols = [
                ("tensor", "left"), ("role", "left"), ("shape", "right"), ("dtype", "left"), ("β", "right"),
                ("α", "right"), ("kurt", "right"), ("best fit", "left"), ("KS GG", "right"),
                ("H bits", "right"), ("EG bits", "right"), ("zeros", "right"),
            ]  # fmt: skip
            if rows_on:  # the per-row shape, in three narrow columns; the rest is in --json / --csv
                cols += [("β row", "right"), ("β pool", "right"), ("max/σr", "right")]
            if fisher_on:
                cols += [("Fisher", "right")]
            for col, just in cols + [("verdict", "left")]:
                t.add_column(col, justify=just, no_wrap=col == "tensor")
            for r in ck["tensors"]:
                cells = [
                    r["name"], r["role"], "×".join(map(str, r["shape"])) or "scalar", r["dtype"],
                    _f(r["beta"]), _f(r["alpha"], ".3g"), _f(r["kurtosis"], ".2f"),
                    _short_family(r["best_fit"]), _f((r["ks"] or {}).get("gg"), ".4f"),
                    _f(r["entropy_bits"], ".2f"), _f(r["eg_bits"], ".2f"),
                    _f(None if r["zero_fraction"] is None else 100 * r["zero_fraction"], ".1f") + "%"
                    if r["zero_fraction"] is not None else "–",
                ]  # fmt: skip
                if rows_on:
                    rows, pooled, out = r.get("rows") or {}, r.get("pooled") or {}, r.get("outliers") or {}
                    cells += [_f((rows.get("beta") or {}).get("p50"), ".2f"), _f(pooled.get("beta"), ".2f"),
                              _f((out.get("row_max_sigma") or {}).get("max"), ".1f")]
                if fisher_on:
                    cells.append(_f((r.get("sensitivity") or {}).get("fisher_mean"), ".2e"))
                t.add_row(*cells, "" if r["verdict"] == "ok" else r["verdict"])
            console.print(t)
        rt = Table(title=f"{ck['source']} — by layer role (parameter-weighted)")
        role_rows = any(g.get("row_beta") for g in ck["roles"].values())
        role_fisher = any(g.get("fisher_share") is not None for g in ck["roles"].values())
        cols = ["role", "tensors", "params", "β", "kurt", "GG best", "H bits", "EG bits"]
        cols += ["β row p5/50/95", "β pool", "mix"] if role_rows else []
        cols += ["Fisher %"] if role_fisher else []
        for col in cols:
            rt.add_column(col, justify="left" if col == "role" else "right")
        for role, g in ck["roles"].items():
            cells = [
                role, str(g["tensors"]), f"{g['params']:,}", _f(g["beta"]), _f(g["kurtosis"], ".2f"),
                _f(None if g["gg_best_share"] is None else 100 * g["gg_best_share"], ".0f") + "%"
                if g["gg_best_share"] is not None else "–",
                _f(g["entropy_bits"], ".2f"), _f(g["eg_bits"], ".2f"),
            ]  # fmt: skip
            if role_rows:
                q = g.get("row_beta") or {}
                cells += ["/".join(_f(q.get(p), ".2f") for p in ("p5", "p50", "p95")) if q else "–",
                          _f(g.get("pooled_beta"), ".2f"), _pct(g.get("scale_share"))]
            if role_fisher:
                cells.append(_pct(g.get("fisher_share")))
            rt.add_row(*cells)
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
        line = shape_line(sm.get("shape"))
        if line:
            console.print(f"[bold]{ck['source']}[/] {line}")
        sens = sm.get("sensitivity")
        if sens:
            clamp = ""
            if sens["window_tokens"] < sens["requested_tokens"] and sens["context"] == sens["window_tokens"]:
                clamp = f", clamped from {sens['requested_tokens']} to the context {sens['context']}"
            console.print(
                f"[bold]{ck['source']}[/] sensitivity: squared gradients of {sens['windows']} windows × "
                f"{sens['window_tokens']} tokens{clamp} (loss {_f(sens['loss'], '.3f')} nats) cost "
                f"{sens['seconds_cpu']:.1f} s CPU, {sens['seconds_wall']:.1f} s wall"
            )
