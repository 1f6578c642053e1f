"""How much a rate measurement costs next to one plain pass over the weights.

Times rate_stats on a 4096×4096 tensor (fp32 and bf16, several steps) against `x.abs().sum()`,
side by side in one run, and the exp-Golomb bitstream writer/reader on that tensor's ranks.
Run: .venv/bin/python benchmarks/bench_rate.py [--size 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from ggcompress.stats.rate import SymbolHistogram, eg_decode, eg_encode, quantize, rate_stats


def fastest(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` calls after a warm-up: on a shared machine the minimum is the least noisy."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.size, args.size, generator=g) * 0.02  # LLM-like weight scale
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.size}x{args.size}, fastest of {args.repeats}; "
          "ratio = time / x.abs().sum() (fp32) timed right before it")

    def row(name: str, fn: Callable[[], object], repeats: int) -> None:
        base = fastest(lambda: x.abs().sum(), args.repeats)
        t = fastest(fn, repeats)
        print(f"{name:40s} {t * 1e3:8.1f} ms  base {base * 1e3:6.1f} ms  {t / base:6.1f}x")

    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        for step in ("2^-8", "2^-13", "2^-16", "0.001"):
            row(f"rate_stats {str(dtype)[6:]} step {step}",
                lambda xd=xd, step=step: rate_stats(xd, step, k=0), args.repeats)
    h = SymbolHistogram("2^-13").update(x)
    ranks = h.to_ranks(quantize(x, "2^-13").reshape(-1))
    k = h.best_k()
    buf = eg_encode(ranks, k)
    assert len(buf) == (h.eg_bits(k) + 7) // 8
    row(f"eg_encode 2^-13 k={k} ({len(buf) / 2**20:.1f} MiB)", lambda: eg_encode(ranks, k), 2)
    row(f"eg_decode 2^-13 k={k}", lambda: eg_decode(buf, ranks.numel(), k), 2)


if __name__ == "__main__":
    main()
