"""Peak memory of `analyze` is bounded by about the largest tensor, not the model.

Writes a generated multi-GB sharded checkpoint (GG-distributed fp32 weights; default 2 GiB in 4
shards of 4 × 128 MiB tensors) to a temporary folder, runs `ggcompress analyze --json` on it in a
child process and prints the child's peak RSS next to the largest tensor and the checkpoint size.

    python benchmarks/bench_analyze_memory.py [--gib 2] [--tensor-mib 128] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ggcompress.io.checkpoint import CheckpointWriter
from ggcompress.stats import gg


def make_checkpoint(out: Path, gib: float, tensor_mib: int) -> tuple[int, int]:
    side = int((tensor_mib * 2**20 / 4) ** 0.5)
    per_tensor = side * side * 4
    n = max(1, round(gib * 2**30 / per_tensor))
    gen = torch.Generator().manual_seed(0)
    with CheckpointWriter(out, max_shard_bytes=4 * per_tensor) as w:
        for i in range(n):
            w.add_tensor(
                f"model.layers.{i}.mlp.up_proj.weight", gg.sample((side, side), 1.4, 0.02, generator=gen)
            )
    return n * per_tensor, per_tensor


# VmHWM (peak RSS of this process image) rather than ru_maxrss, which on Linux carries the parent's
# peak over fork + exec.
CHILD = """
import re, sys
from ggcompress.cli import cli
if sys.argv[1:]:
    cli.main(sys.argv[1:], standalone_mode=False)
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
sys.stderr.write(f"\\nRSS {hwm}\\n")
"""


def peak_rss(args: list[str]) -> tuple[int, str]:
    """Run the CLI in a fresh process; return its peak RSS in bytes and its stdout."""
    out = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True)
    return int(out.stderr.rsplit("RSS ", 1)[1]) * 1024, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--tensor-mib", type=int, default=128)
    ap.add_argument("--keep", help="write the checkpoint here and keep it")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gg-mem-"))
    ck = tmp / "ckpt"
    try:
        if not ck.exists():
            total, largest = make_checkpoint(ck, args.gib, args.tensor_mib)
        else:
            total = sum(p.stat().st_size for p in ck.glob("*.safetensors"))
            largest = args.tensor_mib * 2**20
        shards = len(list(ck.glob("*.safetensors")))
        base, _ = peak_rss([])  # the interpreter with torch and ggcompress imported, nothing analyzed
        t0 = time.perf_counter()
        peak, stdout = peak_rss(["analyze", str(ck), "--json"])
        dt = time.perf_counter() - t0
        doc = json.loads(stdout)
        beta = doc["checkpoints"][0]["summary"]["beta"]
        print(
            f"checkpoint        {total / 2**30:6.2f} GiB in {shards} shards, β fitted {beta:.3f} (true 1.4)"
        )
        print(f"largest tensor    {largest / 2**20:6.0f} MiB")
        print(f"analyze peak RSS  {peak / 2**20:6.0f} MiB  = {peak / largest:4.2f}× largest tensor, "
              f"{peak / total:4.2f}× checkpoint   ({dt:.0f} s)")  # fmt: skip
        print(
            f"  of which imports {base / 2**20:5.0f} MiB; "
            f"the rest is {(peak - base) / largest:4.2f}× largest tensor"
        )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
