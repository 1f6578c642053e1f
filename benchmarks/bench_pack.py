"""Size and speed of packed checkpoints: bits/param and ratio, pack / unpack throughput vs a plain read.

For each model and setting (uniform steps and RF8 codes, both coders) it packs the checkpoint, unpacks
it, and prints: coded bits/param (payload + tables) next to the empirical entropy and the exp-Golomb
reference, the whole container's bits/param, ratio vs the source dtype and vs bf16, SQNR, and pack /
unpack time as a multiple of a plain read of the same checkpoint (every tensor read into memory from
the warm page cache) measured in the same run, with MB/s of bf16-equivalent input (2 bytes/param).
Speeds are given in wall time and in CPU time of this process: on a shared machine the CPU-time figure
is the one that approximates an idle core (everything here runs on one thread).

Single-threaded on purpose (the dev machine has 2 shared cores): OMP_NUM_THREADS=1, torch 1 thread.
Run: .venv/bin/python benchmarks/bench_pack.py [--models minilm smollm2] [--steps 6 8 10] [--repeats 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from ggcompress import __version__, fixtures  # noqa: E402
from ggcompress.codec.pack import PackOptions, pack, unpack  # noqa: E402
from ggcompress.io.checkpoint import open_checkpoint  # noqa: E402

MODELS = {"minilm": fixtures.minilm, "smollm2": fixtures.smollm2}


def plain_read(path: Path) -> None:
    """Read every tensor of the checkpoint into memory (the baseline)."""
    for _, x in open_checkpoint(path).iter_tensors():
        x.clone()


def fastest(fn, repeats: int) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of the fastest of ``repeats`` calls."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, result


def _mbs(params: int, wall: float, cpu: float) -> str:
    """MB/s of bf16-equivalent input (2 bytes/param), wall / CPU time."""
    return f"{2 * params / wall / 1e6:6.0f}/{2 * params / cpu / 1e6:<6.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--steps", nargs="+", type=int, default=[6, 8, 10], help="S of step 2^-S")
    ap.add_argument("--coders", nargs="+", choices=["eg", "rans"], default=["eg", "rans"])
    ap.add_argument("--no-rf8", action="store_true", help="Skip the RF8-codes rows.")
    ap.add_argument("--repeats", type=int, default=1, help="Fastest of N packs/unpacks (and 3N reads).")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {date.today()}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread, ggcompress {__version__}")
    print("# b/p = bits per parameter. coded: payload + tables of the coded tensors; H: their empirical "
          "entropy; EG ref: exp-Golomb size at k=0 (= analyze eg_bits); file: whole container / all params")
    print("# pack/unpack: time as a multiple of a plain read of the checkpoint (wall), and MB/s of "
          "bf16-equivalent input (2 bytes/param), wall / CPU time")
    header = (f"{'model':8s} {'quant':9s} {'coder':5s} {'coded':>6s} {'H':>6s} {'EG ref':>6s} {'file':>6s} "
              f"{'ratio':>6s} {'vs bf16':>7s} {'SQNR':>6s} {'pack':>7s} {'MB/s wall/cpu':>13s} "
              f"{'unpack':>7s} {'MB/s wall/cpu':>13s}")
    for model in args.models:
        src = MODELS[model]()
        plain_read(src)  # warm the page cache
        read_s, read_cpu, _ = fastest(lambda c=src: plain_read(c), 3 * args.repeats)
        params = open_checkpoint(src).numel
        print(f"\n## {model}: {params / 1e6:.1f}M params, plain read {read_s * 1e3:.0f} ms wall, "
              f"{read_cpu * 1e3:.0f} ms CPU ({2 * params / read_s / 1e6:.0f} MB/s bf16-equivalent); "
              f"load average {os.getloadavg()[0]:.1f}")
        print(header)
        quants = [f"step:{s}" for s in args.steps] + ([] if args.no_rf8 else ["rf8"])
        with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
            for quant in quants:
                for coder in args.coders:
                    out = Path(tmp) / "m.ggz"
                    opts = PackOptions(quant=quant, coder=coder)
                    pack_s, pack_cpu, doc = fastest(lambda c=src, o=opts, p=out: pack(c, p, o, force=True),
                                                    args.repeats)
                    s = doc["checkpoints"][0]["summary"]

                    def do_unpack(p: Path = out) -> None:
                        shutil.rmtree(Path(tmp) / "u", ignore_errors=True)
                        unpack(p, Path(tmp) / "u")

                    unpack_s, unpack_cpu, _ = fastest(do_unpack, args.repeats)
                    label = quant.replace("step:", "2^-")
                    sqnr = "" if s.get("sqnr_db") is None else f"{s['sqnr_db']:.1f}"
                    print(f"{model:8s} {label:9s} {coder:5s} {s['coded_bits_per_param']:6.3f} "
                          f"{s['entropy_bits_per_param']:6.3f} {s['eg_bits_per_param']:6.3f} "
                          f"{s['bits_per_param']:6.3f} {s['ratio']:6.2f} {s['ratio_bf16']:7.2f} {sqnr:>6s} "
                          f"{pack_s / read_s:6.1f}x {_mbs(params, pack_s, pack_cpu)} "
                          f"{unpack_s / read_s:6.1f}x {_mbs(params, unpack_s, unpack_cpu)}")
                    shutil.rmtree(Path(tmp) / "u", ignore_errors=True)
    print("\n# rf8 rows: pack includes quantize-rf8 (which keeps embeddings/lm_head dense by default); "
          "their coded b/p is of the 8-bit codes alone")


if __name__ == "__main__":
    main()
