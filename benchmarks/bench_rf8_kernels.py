"""Fused LUT-dequantize matmul (Triton) against cuBLAS bf16 and dequantize-then-matmul, on an NVIDIA GPU.

For each batch M in 1/4/16/64 and Llama-3-8B-like layer shapes (in -> out: 4096->4096, 4096->14336,
14336->4096), with RF8 codes (per-channel, and block:128 scales), one table gives median kernel time,
achieved bandwidth (bytes that must cross HBM / time) and the ratios. At batch 1 a linear layer is
bound by weight bytes, so the ideal speed-up over bf16 is about 2x (1 byte per weight instead of 2);
"ideal" prints that byte ratio per row.

Timing: triton.testing.do_bench (CUDA events, L2 flushed before every repetition, so weights are
re-read from HBM as in a real forward pass; the flush also hides Python launch overhead). --sweep
also times a few hand-picked launch configs and reports the best, since default_config is untuned.
"x global": time of the same launch with the table read by one global load per weight (the first
design) over the default ``tl.gather`` from a per-program copy; "x tf32": GEMM with W in TF32 rather than
in x's dtype (bf16 tensor cores), over the default.
GF-4 / GF-8 (``--format gf4 --format gf8``): k-bit packed codes (two 4-bit codes per byte, docs/gf.md)
with a 2^k-entry table, unpacked inside the kernel; the ideal batch-1 speed-up is then ~16/k.
Run:  python benchmarks/bench_rf8_kernels.py [--sweep] [--granularity channel --granularity block:128]
      python benchmarks/bench_rf8_kernels.py --format rf8 --format gf4 --format gf8 --granularity block:32
Exits with status 1 and a one-line message when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

BATCHES = [1, 4, 16, 64]
SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (in_features K, out_features N)
RF8_MANTISSAS = (0.75, 0.875, 0.9375, 1.0, 1.0625, 1.125, 1.25, 1.5)


def rf8_lut() -> torch.Tensor:
    """The RF8 table (sign bit 7, exponent bits 6..3, residual bits 2..0); timing doesn't depend on it."""
    vals = []
    for c in range(256):
        e, m = (c >> 3) & 15, c & 7
        vals.append(0.0 if e == 0 and m == 0 else (-1.0) ** (c >> 7) * RF8_MANTISSAS[m] * 2.0 ** (e - 15))
    return torch.tensor(vals, dtype=torch.float32)


def sweep_configs(m: int, block: int | None):
    """A small grid around the defaults; blocks of 128 need BLOCK_K dividing 128 to scale per tile."""
    from ggcompress.kernels.lut_matmul import KernelConfig

    bks = [64, 128] if block is not None else [64, 128, 256, 512]
    gemv = []
    if m <= 16:  # GEMV candidates up to 16 rows, though the default takes it for one row only
        bm = 1 << (m - 1).bit_length()
        gemv = [
            KernelConfig("gemv", bm, bn, bk, num_warps=w, num_stages=2)
            for bn in (4, 8, 16, 32) for bk in bks for w in (2, 4)
            if bm * bn * bk <= 16384
        ]
    gemm = [  # also for small batches: tensor cores on a padded tile can beat the GEMV's FMAs
        KernelConfig("gemm", bm, bn, bk, num_warps=w, num_stages=s)
        for bm in (16, 32, 64) for bn in (64, 128) for bk in (32, 64, 128) for w in (4, 8) for s in (3, 4)
        if bk <= (block or 4096) and (bm == 16 or m > 16)
    ]
    return gemv + gemm


COLUMNS = [
    ("in->out", 12), ("fmt", 4), ("gran", 9), ("M", 3), ("bf16 us", 8), ("fused us", 9), ("deq+mm us", 10),
    ("fused GB/s", 10), ("bf16 GB/s", 9), ("x bf16", 7), ("ideal", 6), ("x deq+mm", 8), ("x global", 8),
    ("x tf32", 6), ("rel err", 8), ("config", 0),
]


def format_row(values: list[str]) -> str:
    return " ".join(f"{v:>{w}}" for v, (_, w) in zip(values, COLUMNS, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--granularity", action="append", default=None, help="channel or block:N, repeatable")
    parser.add_argument("--sweep", action="store_true", help="also time a grid of launch configs")
    parser.add_argument("--format", dest="formats", action="append", default=None,
                        help="rf8 (8-bit codes), gf4 (packed 4-bit) or gf8; repeatable (default rf8)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="in x out: KxN,...")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_rf8_kernels: no CUDA device; this benchmark needs an NVIDIA GPU", file=sys.stderr)
        return 1
    import triton.testing

    from ggcompress.formats.packing import pack_codes
    from ggcompress.kernels import dequantize
    from ggcompress.kernels.lut_matmul import default_config, lut_linear_triton

    grans = args.granularity or ["channel", "block:128"]
    batches = [int(b) for b in args.batches.split(",")]
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    formats = args.formats or ["rf8"]
    if any(f not in ("rf8", "gf4", "gf8") for f in formats):
        print(f"bench_rf8_kernels: --format takes rf8, gf4 or gf8, got {formats}", file=sys.stderr)
        return 2
    linear = torch.nn.functional.linear
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {triton.__version__}")

    def bench(fn) -> float:
        fn()  # compile / warm up outside the timed region
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3  # seconds

    def bench_variant(fn) -> float:
        """A variant's time, or inf (with one line on stderr) when it fails to compile or run."""
        try:
            return bench(fn)
        except Exception as exc:  # noqa: BLE001 - report and go on: the other columns are still valid
            print(f"  variant failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  file=sys.stderr)
            return float("inf")

    def run_format(fmt, bits, k, n, w_bf16, raw, codes, lut) -> None:
        for gran in grans:
            block = None if gran == "channel" else int(gran.split(":")[1])
            groups = 1 if block is None else -(-k // block)
            scale = torch.rand(n, groups, device=dev, generator=gen) * 0.01 + 0.01
            for m in batches:
                x = torch.randn(m, k, device=dev, generator=gen).to(torch.bfloat16)
                io_bytes = 2 * (m * k + m * n)
                bytes_fused = codes.numel() + scale.numel() * 4 + lut.numel() * 4 + io_bytes
                bytes_bf16 = 2 * n * k + io_bytes

                def fused(c):
                    return lambda: lut_linear_triton(x, codes, scale, lut, block, config=c, bits=bits)  # noqa: B023

                t_bf16 = bench(lambda: linear(x, w_bf16))  # noqa: B023
                cfg = default_config(m, n, k, block or k, groups)
                t_fused = bench_variant(fused(cfg))
                if t_fused == float("inf"):  # fall back to the first design so the row still says something
                    cfg = dataclasses.replace(cfg, lut_gather=False, half_dot=False)
                    t_fused = bench(fused(cfg))
                t_global = bench_variant(fused(dataclasses.replace(cfg, lut_gather=False)))
                gemm = cfg.path == "gemm"
                t_tf32 = bench_variant(fused(dataclasses.replace(cfg, half_dot=False))) if gemm else None
                t_deq = bench(lambda: linear(x, dequantize(raw, scale, lut, block, torch.bfloat16)))  # noqa: B023
                for c in sweep_configs(m, block) if args.sweep else []:
                    try:
                        t = bench(fused(c))
                    except Exception as exc:  # a tile too large for shared memory fails to compile: skip it
                        print(f"  skip {c}: {type(exc).__name__}", file=sys.stderr)
                        continue
                    if t < t_fused:
                        t_fused, cfg = t, c
                        t_tf32 = bench_variant(fused(dataclasses.replace(c, half_dot=False))) \
                            if c.path == "gemm" else None
                        t_global = bench_variant(fused(dataclasses.replace(c, lut_gather=False)))
                y = fused(cfg)().float()
                ref = x.float() @ dequantize(raw, scale, lut, block, torch.float32).T
                rel = ((y - ref).abs().max() / ref.abs().max()).item()
                print(format_row([
                    f"{k}->{n}", fmt, gran, str(m),
                    f"{t_bf16 * 1e6:.1f}", f"{t_fused * 1e6:.1f}", f"{t_deq * 1e6:.1f}",
                    f"{bytes_fused / t_fused / 1e9:.0f}", f"{bytes_bf16 / t_bf16 / 1e9:.0f}",
                    f"{t_bf16 / t_fused:.2f}", f"{bytes_bf16 / bytes_fused:.2f}", f"{t_deq / t_fused:.2f}",
                    f"{t_global / t_fused:.2f}", "-" if t_tf32 is None else f"{t_tf32 / t_fused:.2f}",
                    f"{rel:.1e}",
                    f"{cfg.path}:{cfg.block_m}x{cfg.block_n}x{cfg.block_k}/w{cfg.num_warps}s{cfg.num_stages}"
                    f"{'/gather' if cfg.lut_gather else ''}"
                    f"{'/half' if cfg.half_dot and cfg.path == 'gemm' else ''}",
                ]))

    header = format_row([name for name, _ in COLUMNS])
    print(header)
    print("-" * len(header))
    shapes = [tuple(int(v) for v in item.split("x")) for item in args.shapes.split(",")]
    for k, n in shapes:
        w_bf16 = (torch.randn(n, k, device=dev, generator=gen) * 0.02).to(torch.bfloat16)
        for fmt in formats:
            bits = 4 if fmt == "gf4" else 8
            if fmt == "rf8":
                lut = rf8_lut().to(dev)
            else:  # a GF table: 2^k sorted levels, the rest of the 256 entries unused
                lut = torch.zeros(256, device=dev)
                lut[: 1 << bits] = torch.sort(torch.randn(1 << bits, device=dev, generator=gen)).values
            raw = torch.randint(0, 1 << bits, (n, k), device=dev, dtype=torch.uint8, generator=gen)
            codes = pack_codes(raw, bits)
            run_format(fmt, bits, k, n, w_bf16, raw, codes, lut)
    return 0


if __name__ == "__main__":
    sys.exit(main())
