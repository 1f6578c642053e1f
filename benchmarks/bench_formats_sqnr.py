"""SQNR of the 8-bit weight formats on real checkpoints: format x granularity, aggregated over tensors.

    .venv/bin/python benchmarks/bench_formats_sqnr.py                 # MiniLM (fixture)
    .venv/bin/python benchmarks/bench_formats_sqnr.py --models smollm2 --formats amax,fp8,int8
    .venv/bin/python benchmarks/bench_formats_sqnr.py --path some/model.safetensors

Every 2-D floating-point weight is encoded and decoded through the public codecs. Columns:
``all`` = aggregate SQNR over every 2-D weight (sum of signal energy / sum of noise energy, so the
word-embedding matrix weighs in by its size), ``linear`` = the same without embedding tables,
``mean`` = the unweighted mean of per-tensor SQNRs, ``flushed`` = share of nonzero weights decoded
to 0. SmolLM2's fixture weights are dequantized Q4_1 (a 4-bit lattice), not a natural distribution.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from ggcompress.formats import error_stats, get_codec
from ggcompress.formats.rf8 import RF8Codec

GRANULARITIES = ("tensor", "channel", "block:128")


def variants() -> dict[str, object]:
    """Label -> codec, RF8 in its four rounding x bias-rule combinations."""
    out: dict[str, object] = {}
    for rounding in ("nearest", "greedy"):
        for bias in ("amax", "mse"):
            out[f"rf8 {rounding}/{bias}"] = RF8Codec(rounding=rounding, bias=bias)
    for name in ("fp8_e4m3", "fp8_e5m2", "int8"):
        out[name] = get_codec(name)
    return out


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """All 2-D floating-point tensors of a safetensors file or of every *.safetensors in a folder."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                t = fh.get_tensor(key)
                if t.ndim == 2 and t.is_floating_point():
                    out[key] = t
    return out


def measure(weights: dict[str, torch.Tensor], codec, granularity: str) -> dict:
    """Aggregate and mean SQNR of one codec/granularity over the tensors."""
    sig = {"all": 0.0, "linear": 0.0}
    noise = {"all": 0.0, "linear": 0.0}
    per_tensor, flushed, nonzero = [], 0.0, 0
    for key, w in weights.items():
        q = codec.encode(w, granularity, name=key)
        st = error_stats(w, codec.decode(q, name=key))
        parts = ("all",) if "embed" in key else ("all", "linear")
        for p in parts:
            sig[p] += st["signal_energy"]
            noise[p] += st["noise_energy"]
        per_tensor.append(st["sqnr_db"])
        nz = int((w != 0).sum())
        flushed += st["flushed_frac"] * nz
        nonzero += nz
    return {
        "all": 10 * math.log10(sig["all"] / noise["all"]),
        "linear": 10 * math.log10(sig["linear"] / noise["linear"]) if noise["linear"] else math.nan,
        "mean": sum(per_tensor) / len(per_tensor),
        "flushed": flushed / max(nonzero, 1),
    }


def model_paths(names: list[str], extra: list[str]) -> list[tuple[str, Path]]:
    out = []
    if names:
        from ggcompress import fixtures  # builds the cached fixture on first use (PyPI download)

        for n in names:
            out.append((n, getattr(fixtures, n)()))
    out += [(p, Path(p)) for p in extra]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm", help="comma-separated fixtures (minilm, smollm2) or ''")
    ap.add_argument("--path", action="append", default=[], help="extra safetensors file or folder")
    ap.add_argument("--granularity", action="append", default=None,
                    help="repeatable; default: tensor, channel, block:128")
    ap.add_argument("--formats", default="", help="comma-separated substrings of variant names to keep "
                    "(e.g. 'nearest,fp8,int8'); default all")
    args = ap.parse_args(argv)
    grans = args.granularity or list(GRANULARITIES)
    keep = [f for f in args.formats.split(",") if f]
    chosen = {k: v for k, v in variants().items() if not keep or any(f in k for f in keep)}
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    names = [n for n in args.models.split(",") if n]
    for label, path in model_paths(names, args.path):
        weights = load_weights(path)
        n_params = sum(w.numel() for w in weights.values())
        print(f"\n## {label}: {len(weights)} 2-D weights, {n_params / 1e6:.2f}M values ({path})")
        print(f"{'format':<20} {'granularity':<11} {'all dB':>7} {'linear dB':>9} {'mean dB':>8} "
              f"{'flushed':>8} {'time s':>7}")
        for vname, codec in chosen.items():
            for g in grans:
                t0 = time.perf_counter()
                r = measure(weights, codec, g)
                dt = time.perf_counter() - t0
                print(f"{vname:<20} {g:<11} {r['all']:7.2f} {r['linear']:9.2f} {r['mean']:8.2f} "
                      f"{r['flushed']:8.1e} {dt:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
