"""CPU cost of QuantLinear (torch path, 1-byte weights decoded per call) against a bf16 nn.Linear.

Prints, side by side from one run, forward latency (best of --reps after warm-up: on a shared machine
preemption inflates medians by whole scheduler ticks, the minimum is the stable figure) and the bytes held
in parameters + buffers, at SmolLM2-135M MLP shapes (576 -> 1536 and 1536 -> 576), batch 1 and 64.
Run:  .venv/bin/python benchmarks/bench_quantlinear_cpu.py [--reps 50] [--threads N]
Random codes/scales: latency does not depend on values. Timings on a shared machine are noisy;
compare ratios from the same run only.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from ggcompress.kernels.nn import QuantLinear

SHAPES = [(576, 1536), (1536, 576)]  # (in_features, out_features): SmolLM2-135M up/gate and down
BATCHES = [1, 64]
# Scale granularities measured: per channel (the LUT decode only) and block:32 (a per-element scale too).
GRANULARITIES = [None, 32]


def state_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer: what the layer keeps in memory between calls."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def best_seconds(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def quant_layer(k: int, n: int, block: int | None, gen: torch.Generator) -> QuantLinear:
    codes = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=gen)
    groups = 1 if block is None else -(-k // block)
    scale = torch.rand(n, groups, generator=gen) + 0.5
    lut = torch.randn(256, generator=gen)
    bias = torch.zeros(n, dtype=torch.bfloat16)
    return QuantLinear.from_quantized(codes, scale, lut, block, bias, fmt="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.reps} calls")
    header = (
        f"{'shape in->out':>14} {'gran':>8} {'batch':>5} {'bf16 Linear us':>15} {'QuantLinear us':>15} "
        f"{'time ratio':>10} {'bf16 bytes':>11} {'quant bytes':>12} {'mem ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for k, n in SHAPES:
            dense = nn.Linear(k, n).to(torch.bfloat16)
            for block in GRANULARITIES:
                q = quant_layer(k, n, block, gen)
                for m in BATCHES:
                    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
                    t_dense = best_seconds(lambda: dense(x), args.reps)  # noqa: B023
                    t_quant = best_seconds(lambda: q(x), args.reps)  # noqa: B023
                    gran = "channel" if block is None else f"block:{block}"
                    print(
                        f"{f'{k}->{n}':>14} {gran:>8} {m:>5} {t_dense * 1e6:>15.0f} {t_quant * 1e6:>15.0f} "
                        f"{t_quant / t_dense:>10.2f} {state_bytes(dense):>11} {state_bytes(q):>12} "
                        f"{state_bytes(q) / state_bytes(dense):>9.3f}"
                    )


if __name__ == "__main__":
    main()
