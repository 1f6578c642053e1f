"""GG fitting: accuracy of the moment vs MLE estimators, speed against scipy, cost of the moment pass.

Prints, measured side by side in one run:
1. β error of fit(method="moments") and fit(method="mle") on 10^6 synthetic GG values per β.
2. fit(method="mle") vs scipy.stats.gennorm.fit on the same synthetic data: time ratio and |Δβ|.
3. The same on every real all-MiniLM-L6-v2 matrix of 1e5..2^20 values (skipped if the fixture is
   missing and cannot be built).
4. gg.Moments().update vs a plain pass (x.abs().sum(), (x*x).sum()) over SmolLM2-135M-shaped
   tensors (synthetic, float32 and bf16) and over the real SmolLM2 bf16 checkpoint if present.

Usage: .venv/bin/python benchmarks/bench_gg_fit.py [--quick] [--threads N]   (~1-2 min on 2 cores)

Both sides run on one thread by default: scipy's fit is single-threaded, and on a shared, loaded
machine torch's intra-op threads make every small op wait on the others (10-100x slower).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

from ggcompress.stats import gg

print = functools.partial(print, flush=True)  # noqa: A001 (progress shows while it runs)


def best_of(fn: Callable[[], object], reps: int) -> float:
    """Fastest of `reps` runs (after a warm-up): the least disturbed by other load on the machine."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def accuracy(n: int) -> None:
    print(f"\n1. beta error on {n:,} synthetic GG values (alpha = 0.02, one seeded draw per beta)")
    print(f"{'beta':>5} {'moments':>9} {'mle 2^18':>9} {'mle all':>9} {'CRB SE':>8}")
    for i, beta in enumerate([0.3, 0.5, 1.0, 1.5, 2.0, 3.0]):
        x = gg.sample(n, beta, 0.02, generator=torch.Generator().manual_seed(100 + i))
        m = gg.Moments().update(x)
        mom = gg.fit(m).beta
        sub = gg.fit(x, "mle", moments=m).beta
        full = gg.fit(x, "mle", moments=m, max_samples=None).beta
        print(f"{beta:5.1f} {mom - beta:+9.4f} {sub - beta:+9.4f} {full - beta:+9.4f} {crb_se(beta, n):8.4f}")


def crb_se(beta: float, n: int) -> float:
    """Cramér–Rao standard error of beta (see tests/test_gg.py for the derivation)."""
    from scipy.special import digamma, polygamma

    a = 1 / beta
    e_gl, e_g2l = a * digamma(a + 1), a * (a + 1) * digamma(a + 2)
    e_g2l2 = a * (a + 1) * (polygamma(1, a + 2) + digamma(a + 2) ** 2)
    v_b, cov = (e_g2l2 - e_gl**2) / beta**2, -(e_g2l - e_gl * a)
    return float(np.sqrt(beta / (v_b * beta - cov**2) / n))


def versus_scipy(label: str, tensors: list[tuple[str, torch.Tensor]], reps: int) -> None:
    """Speedup of fit(x, "mle") from scratch, and of the fit alone given the Moments (the analyzer's
    path: it accumulates Moments for its other statistics anyway), over gennorm.fit."""
    rows = []
    for name, x in tensors:
        ours = best_of(lambda x=x: gg.fit(x, "mle"), reps)
        m = gg.Moments().update(x)
        given = best_of(lambda x=x, m=m: gg.fit(x, "mle", moments=m), reps)
        xn = x.double().numpy()
        theirs = []
        for _ in range(2 if x.numel() <= 300_000 else 1):  # scipy: ~1-3 µs per value, best of 2 if cheap
            t = time.perf_counter()
            ref = stats.gennorm.fit(xn)[0]
            theirs.append(time.perf_counter() - t)
        theirs = min(theirs)
        rows.append((name, x.numel(), gg.fit(x, "mle").beta, ref, theirs / ours, theirs / given, ours))
    head = f"{'beta mle':>9} {'gennorm':>8} {'|dbeta|':>8} {'speedup':>8} {'w/ Mom.':>8} ours ms"
    print(f"{'tensor':40} {'n':>9} {head}")
    for name, n, b, ref, ratio, ratio_m, ours in rows:
        cols = f"{b:9.4f} {ref:8.4f} {abs(b - ref):8.4f} {ratio:7.0f}x {ratio_m:7.0f}x {ours * 1e3:7.2f}"
        print(f"{name[-40:]:40} {n:9,} {cols}")
    r, rm = [row[4] for row in rows], [row[5] for row in rows]
    print(
        f"{label}: max |dbeta| = {max(abs(row[2] - row[3]) for row in rows):.4f} over {len(rows)} tensors; "
        f"speedup min {min(r):.0f}x median {statistics.median(r):.0f}x "
        f"(given Moments: min {min(rm):.0f}x median {statistics.median(rm):.0f}x)"
    )


def synthetic_vs_scipy(reps: int) -> None:
    print("\n2. fit(method='mle') vs scipy.stats.gennorm.fit on the same synthetic data")
    tensors = []
    for i, beta in enumerate([0.5, 1.3, 2.0]):
        for n in (10**5, 10**6):
            x = gg.sample(n, beta, 0.02, generator=torch.Generator().manual_seed(200 + i))
            tensors.append((f"GG(beta={beta}) n={n:.0e}", x))
    versus_scipy("synthetic", tensors, reps)


def real_vs_scipy(reps: int) -> None:
    print("\n3. fit(method='mle') vs scipy.stats.gennorm.fit on real all-MiniLM-L6-v2 matrices")
    try:
        from safetensors import safe_open

        from ggcompress import fixtures

        path = fixtures.minilm() / "model.safetensors"
    except Exception as e:  # noqa: BLE001 (a benchmark section, not library code)
        print(f"skipped: MiniLM fixture unavailable ({e})")
        return
    with safe_open(str(path), "pt") as f:
        tensors = [(k, f.get_tensor(k)) for k in f.keys()]
    tensors = [(k, t) for k, t in tensors if t.is_floating_point() and 1e5 <= t.numel() <= 2**20]
    versus_scipy("MiniLM", tensors, reps)


def smollm2_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Tensor shapes of SmolLM2-135M (30 layers, hidden 576, MLP 1536, 3 KV heads of 64, vocab 49152)."""
    shapes = [("embed", (49152, 576))]
    for i in range(30):
        shapes += [
            (f"{i}.q", (576, 576)), (f"{i}.k", (192, 576)), (f"{i}.v", (192, 576)), (f"{i}.o", (576, 576)),
            (f"{i}.gate", (1536, 576)), (f"{i}.up", (1536, 576)), (f"{i}.down", (576, 1536)),
            (f"{i}.norm1", (576,)), (f"{i}.norm2", (576,)),
        ]  # fmt: skip
    return shapes + [("norm", (576,))]


def moment_pass(reps: int) -> None:
    print("\n4. gg.Moments().update vs a plain pass (x.abs().sum(), (x*x).sum()), summed over all tensors")

    def plain(x: torch.Tensor) -> None:
        x.abs().sum().item()
        (x * x).sum().item()

    def report(label: str, tensors) -> None:
        base = ours = 0.0
        n = 0
        for x in tensors:
            base += best_of(lambda x=x: plain(x), reps)
            ours += best_of(lambda x=x: gg.Moments().update(x), reps)
            n += x.numel()
        print(f"{label:44} {n / 1e6:7.1f}M  plain {base * 1e3:7.1f} ms  Moments {ours * 1e3:7.1f} ms  "
              f"ratio {ours / base:.2f}x")  # fmt: skip

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        report(
            f"SmolLM2-135M shapes, synthetic {str(dtype)[6:]}",
            (gg.sample(shape, 1.4, 0.02, generator=g, dtype=dtype) for _, shape in smollm2_shapes()),
        )
    try:
        from safetensors import safe_open

        from ggcompress import fixtures

        path = fixtures.cache_dir()
        files = sorted(path.glob("smollm2-*/model.safetensors"))
    except Exception:  # noqa: BLE001
        files = []
    if not files:
        print("real SmolLM2 checkpoint: skipped (fixture not built)")
        return
    with safe_open(str(files[0]), "pt") as f:
        report("real SmolLM2-135M (bf16)", (f.get_tensor(k) for k in f.keys()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, 2e5 values for section 1")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 2 if args.quick else 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times are best-of-{reps}")
    accuracy(2 * 10**5 if args.quick else 10**6)
    synthetic_vs_scipy(reps)
    real_vs_scipy(reps)
    moment_pass(reps)


if __name__ == "__main__":
    main()
