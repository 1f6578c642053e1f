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
from ggcompress.io.checkpoint import open_checkpoint
from ggcompress.stats.analyze import AnalyzeOptions, analyze_checkpoint


def floor_pass(path: str) -> float:
    t0 = time.perf_counter()
    acc = 0.0
    for _, x in open_checkpoint(path).iter_tensors():
        if x.is_floating_point():
            x = x.float()
            acc += float(x.abs().sum()) + float((x * x).sum())
    return time.perf_counter() - t0


def breakdown(path: str) -> dict[str, float]:
    """Time each stage of analyze_tensor separately over the whole checkpoint."""
    from ggcompress.stats import gg, rate

    out = dict.fromkeys(
        ["read", "value counts + moments", "rate (quantize + histogram)", "MLE β + goodness of fit"], 0.0
    )
    t0 = time.perf_counter()
    for info, x in open_checkpoint(path).iter_tensors():
        t1 = time.perf_counter()
        out["read"] += t1 - t0
        if not info.is_float or info.numel < 64:
            t0 = time.perf_counter()
            continue
        cnt = gg.value_counts(x)  # as analyze does: 8/16-bit tensors become (values, counts)
        m = gg.Moments().update(x) if cnt is None else gg.Moments().update_counts(*cnt)
        t2 = time.perf_counter()
        h = rate.SymbolHistogram(2**-8)
        h.update(x) if cnt is None else h.update_counts(*cnt, itemsize=x.element_size())
        h.stats(0, huffman=False)
        t3 = time.perf_counter()
        if m.std > 0:
            gg.fit_with_quality(x, moments=m, generator=torch.Generator().manual_seed(0), counts_of=cnt)
        t0 = time.perf_counter()
        out["value counts + moments"] += t2 - t1
        out["rate (quantize + histogram)"] += t3 - t2
        out["MLE β + goodness of fit"] += t0 - t3
    return out


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
        # granularity=(): the per-tensor analyze of issue 2 (bench_analyze_granularity.py times the rest)
        rep = analyze_checkpoint(open_checkpoint(path), AnalyzeOptions(granularity=()))
        runs.append(time.perf_counter() - t0)
    t_an = min(runs)

    stages = breakdown(path)

    # gennorm.fit (MLE over β, loc, scale) on one mid-depth tensor per role, 1e5..2e6 values
    # (bigger ones take minutes in gennorm; its cost per value is what gets extrapolated).
    by_role: dict[str, list] = {}
    for t in rep.tensors:
        if 100_000 <= t.numel <= 2_000_000 and t.beta is not None:
            by_role.setdefault(t.role, []).append(t)
    pick = [ts[len(ts) // 2] for _, ts in sorted(by_role.items())][: args.gennorm_tensors]
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
    print("\nanalyze stages, summed over tensors (each includes its own float conversion):")
    for name, dt in stages.items():
        print(f"  {name:<34} {dt:6.2f} s = {dt / floor:5.2f}× floor")
    print(f"\nfloor (stream |x|, x²)  {floor:8.2f} s")
    print(f"analyze end to end      {t_an:8.2f} s   = {t_an / floor:5.2f}× floor      (target ≤ 5×)")
    print(f"gennorm.fit, extrapol.  {gn_model:8.1f} s   = {gn_model / t_an:5.0f}× analyze    (target ≥ 100×)")
    print(f"max |β analyze − β gennorm| on {len(rows)} tensors ≥ 1e5: {worst:.4f}   (target ≤ 0.02)")


if __name__ == "__main__":
    main()
