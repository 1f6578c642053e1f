"""Shape below the tensor on real checkpoints, and what it costs next to the plain analyze (issue 12).

For each checkpoint (default: the MiniLM and SmolLM2 fixtures, and the trained wiki-lm fixture of
issue 11 when it has been built — `python -m ggcompress.fixtures wiki-lm`, ~25 CPU minutes) it prints
  figures   median over weight matrices of the tensor β, the median per-row β and the pooled β after
            per-row normalization (MLE and moment estimates), all rows' β quantiles, the kurtosis
            split (scale / within / location), the share of the gap 2 − β that row normalization
            closes, the largest |w − μ|/σ (tensor σ) and max |w − μ_r|/σ_r (row σ), per role;
  cost      CPU seconds (time.process_time, best of --repeats) of `analyze_checkpoint` with
            --granularity tensor (the plain analyze) and with each setting of --settings, and the
            ratio (target: ≤ 2× for the default `row` without --calib);
  calib     with --calib-windows N > 0 and a causal LM: the cost of the squared-gradient sensitivity
            on N windows of --calib-length tokens of the text fixture.

    OMP_NUM_THREADS=1 python benchmarks/bench_analyze_granularity.py [CHECKPOINT...] [--repeats 3]
        [--settings row row+mle row,col,block:64] [--calib-windows 4]

Run with one thread: CPU time then measures work, not how busy the other cores are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ggcompress import fixtures
from ggcompress.io.checkpoint import open_checkpoint
from ggcompress.stats.analyze import AnalyzeOptions, analyze_checkpoint
from ggcompress.stats.granularity import parse_granularity


def timed(path: str, opts: AnalyzeOptions, repeats: int):
    best_cpu, best_wall, rep = float("inf"), float("inf"), None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        rep = analyze_checkpoint(open_checkpoint(path), opts)
        best_cpu = min(best_cpu, time.process_time() - c)
        best_wall = min(best_wall, time.perf_counter() - w)
    return rep, best_cpu, best_wall


def options(setting: str) -> AnalyzeOptions:
    grains, _, fit = setting.partition("+")
    return AnalyzeOptions(granularity=parse_granularity(grains), row_fit=fit or "moments")


def figures(rep) -> dict:
    sh = rep.summary["shape"]
    mats = [t for t in rep.tensors
            if t.detail is not None and t.detail.rows is not None and t.beta is not None]
    best = max(mats, key=lambda t: t.detail.outliers.row_max_sigma["max"])
    return {
        "matrices": sh["matrices"],
        "tensor_beta_median": sh["tensor_beta_median"],
        "row_beta_median": sh["row_beta_median"],
        "pooled_beta_median": sh["pooled_beta_median"],
        "pooled_beta_moments_median": float(np.median([t.detail.pooled.beta_moments for t in mats])),
        "rows_beta": sh["rows_beta"],
        "kurtosis_weighted": {k: sh[f"kurtosis_{k}"] for k in ("scale", "within", "location")},
        "scale_share_weighted": sh["scale_share"],
        "scale_share_median": sh["scale_share_median"],
        "beta_gap_closed_median": sh["beta_gap_closed_median"],
        "max_sigma": sh["max_sigma"],
        "max_sigma_tensor": sh["max_sigma_tensor"],
        "row_max_sigma": best.detail.outliers.row_max_sigma["max"],
        "row_max_sigma_tensor": best.name,
        "roles": {r: {"beta": g["beta"], "row_beta_p50": (g["row_beta"] or {}).get("p50"),
                      "pooled_beta": g["pooled_beta"], "scale_share": g["scale_share"]}
                  for r, g in rep.roles.items() if g.get("row_beta")},
    }


def _built_wiki_lm() -> Path | None:
    """The trained causal-LM fixture's folder if it was built (never builds it here)."""
    from ggcompress import wikilm

    folder = fixtures.cache_dir() / wikilm.fixture_name(wikilm.DEFAULT)
    return folder if (folder / "fixture.json").is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", help="default: the MiniLM and SmolLM2 fixtures")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=["row", "row+mle", "row,col,block:64"],
                    help="granularity[+mle] settings timed against the plain analyze")
    ap.add_argument("--calib-windows", type=int, default=0, help="also time --calib on causal LMs")
    ap.add_argument("--calib-length", type=int, default=512)
    ap.add_argument("--json", type=Path, help="write every figure to this file too")
    args = ap.parse_args()
    paths = args.checkpoints or [str(fixtures.minilm()), str(fixtures.smollm2())]
    print(f"torch threads: {torch.get_num_threads()}; CPU time = time.process_time(), best of {args.repeats}")
    if not args.checkpoints:
        trained = _built_wiki_lm()
        if trained is None:
            print("note: the trained wiki-lm fixture is not built (python -m ggcompress.fixtures wiki-lm); "
                  "not measured")
        else:
            paths.append(str(trained))
    out = {}
    for path in paths:
        ck = open_checkpoint(path)
        n = sum(t.numel for t in ck.tensors if t.is_float)
        print(f"\n== {path} ({n:,} float params)")
        _, plain_cpu, plain_wall = timed(path, AnalyzeOptions(granularity=()), args.repeats)
        print(f"plain analyze (--granularity tensor): {plain_cpu:.2f} s CPU, {plain_wall:.2f} s wall")
        res: dict = {"params": n, "plain_cpu": plain_cpu, "plain_wall": plain_wall, "settings": {}}
        rep0 = None
        for s in args.settings:
            rep, cpu, wall = timed(path, options(s), args.repeats)
            rep0 = rep0 or rep
            res["settings"][s] = {"cpu": cpu, "wall": wall, "ratio_cpu": cpu / plain_cpu,
                                  "row_beta_median": rep.summary["shape"]["row_beta_median"]}
            print(f"--granularity {s}: {cpu:.2f} s CPU ({cpu / plain_cpu:.2f}× plain), {wall:.2f} s wall; "
                  f"median per-row β {rep.summary['shape']['row_beta_median']:.3f}")
        res["figures"] = f = figures(rep0)
        q = f["rows_beta"]
        print(f"matrices {f['matrices']}: median β tensor {f['tensor_beta_median']:.3f}, per-row "
              f"{f['row_beta_median']:.3f}, pooled {f['pooled_beta_median']:.3f} (moments "
              f"{f['pooled_beta_moments_median']:.3f})")
        print(f"all rows' β: p5 {q['p5']:.2f}  p25 {q['p25']:.2f}  p50 {q['p50']:.2f}  p75 {q['p75']:.2f}  "
              f"p95 {q['p95']:.2f}")
        kw = f["kurtosis_weighted"]
        print(f"excess kurtosis split (parameter-weighted): scale {kw['scale']:.3f}, "
              f"within {kw['within']:.3f}, location {kw['location']:.3f} → scale share "
              f"{f['scale_share_weighted']:.1%} (median per matrix {f['scale_share_median']:.1%}); "
              f"row normalization closes {f['beta_gap_closed_median']:.1%} of the gap 2 − β (median)")
        print(f"largest |w − μ|/σ: {f['max_sigma']:.1f} ({f['max_sigma_tensor']}); largest |w − μ_r|/σ_r: "
              f"{f['row_max_sigma']:.1f} ({f['row_max_sigma_tensor']})")
        for role, g in f["roles"].items():
            share = "–" if g["scale_share"] is None else f"{g['scale_share']:.1%}"
            print(f"  {role:10s} β {g['beta']:.3f}  per-row p50 {g['row_beta_p50']:.3f}  pooled "
                  f"{g['pooled_beta']:.3f}  scale share {share}")
        if args.calib_windows and ck.config and "CausalLM" in " ".join(ck.config.get("architectures") or []):
            train, _ = fixtures.text()
            opts = AnalyzeOptions(granularity=parse_granularity("row"), calib=str(train),
                                  calib_windows=args.calib_windows, calib_length=args.calib_length)
            c, w = time.process_time(), time.perf_counter()
            rep = analyze_checkpoint(ck, opts)
            cpu, wall = time.process_time() - c, time.perf_counter() - w
            s = rep.summary["sensitivity"]
            res["calib"] = {**s, "analyze_cpu": cpu, "analyze_wall": wall}
            print(f"--calib: {s['windows']} windows × {s['window_tokens']} tokens: sensitivity "
                  f"{s['seconds_cpu']:.1f} s CPU ({s['seconds_wall']:.1f} s wall); whole analyze "
                  f"{cpu:.1f} s CPU ({cpu / plain_cpu:.1f}× plain)")
            top = sorted(rep.roles.items(), key=lambda kv: -(kv[1]["fisher_share"] or 0))[:4]
            print("  Fisher share by role: " + ", ".join(f"{r} {g['fisher_share']:.1%}" for r, g in top))
        out[path] = res
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
