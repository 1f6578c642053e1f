"""analyze speed and accuracy vs the floor (a plain streaming pass) and scipy's gennorm.fit.

Measured side by side in one run on the SmolLM2 fixture (or any checkpoint given):
  floor     one streaming pass summing |x| and x² over every tensor (read + float32 + 2 reductions)
  analyze   `analyze_checkpoint` end to end (moments, MLE β, goodness of fit, rate)
  gennorm   scipy.stats.gennorm.fit on a few tensors ≥ 1e5 values, extrapolated per value to the model
and β of analyze vs gennorm's MLE on those tensors. Targets: analyze ≤ 5× floor, ≥ 100× faster
than gennorm.fit, |Δβ| ≤ 0.02.

    OMP_NUM_THREADS=1 python benchmarks/bench_analyze.py [CHECKPOINT] [--gennorm-tensors 6]
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy import stats

from ggcompress import fixtures
from ggcompress.analyze import AnalyzeOptions, analyze_checkpoint
from ggcompress.checkpoint import open_checkpoint


def floor_pass(path: str) -> float:
    t0 = time.perf_counter()
    acc = 0.0
    for _, x in open_checkpoint(path).iter_tensors():
        if x.is_floating_point():
            x = x.float()
            acc += float(x.abs().sum()) + float((x * x).sum())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="default: the SmolLM2 fixture")
    ap.add_argument("--gennorm-tensors", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2, help="best of N for floor and analyze")
    args = ap.parse_args()
    path = args.checkpoint or str(fixtures.smollm2())
    ck = open_checkpoint(path)
    n_params = sum(t.numel for t in ck.tensors if t.is_float)
    print(f"checkpoint: {path} ({len(ck.tensors)} tensors, {n_params:,} float params)")
    print(f"torch threads: {torch.get_num_threads()}")

    floor = min(floor_pass(path) for _ in range(args.repeats))
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rep = analyze_checkpoint(open_checkpoint(path), AnalyzeOptions())
        runs.append(time.perf_counter() - t0)
    t_an = min(runs)

    # gennorm.fit (MLE over β, loc, scale) on evenly spaced big tensors.
    big = [t for t in rep.tensors if t.numel >= 100_000 and t.beta is not None]
    pick = big[:: max(1, len(big) // args.gennorm_tensors)][: args.gennorm_tensors]
    t_gn, n_gn, rows = 0.0, 0, []
    for t in pick:
        x = ck.get(t.name).double().reshape(-1).numpy()
        t0 = time.perf_counter()
        b, loc, scale = stats.gennorm.fit(x)
        dt = time.perf_counter() - t0
        t_gn += dt
        n_gn += x.size
        rows.append((t.name, t.numel, t.beta, b, dt))
    gn_model = t_gn / n_gn * n_params  # gennorm's cost per value, extrapolated to every float value

    print(f"\n{'tensor':<48} {'numel':>9} {'β analyze':>10} {'β gennorm':>10} {'Δβ':>8} {'gennorm s':>10}")
    for name, n, ba, bg, dt in rows:
        print(f"{name:<48} {n:>9,} {ba:>10.4f} {bg:>10.4f} {ba - bg:>+8.4f} {dt:>10.2f}")
    worst = max(abs(ba - bg) for _, _, ba, bg, _ in rows)
    print(f"\nfloor (stream |x|, x²)  {floor:8.2f} s")
    print(f"analyze end to end      {t_an:8.2f} s   = {t_an / floor:5.2f}× floor      (target ≤ 5×)")
    print(f"gennorm.fit, extrapol.  {gn_model:8.1f} s   = {gn_model / t_an:5.0f}× analyze    (target ≥ 100×)")
    print(f"max |β analyze − β gennorm| on {len(rows)} tensors ≥ 1e5: {worst:.4f}   (target ≤ 0.02)")


if __name__ == "__main__":
    main()
