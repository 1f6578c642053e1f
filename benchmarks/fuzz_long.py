"""A long, randomized run of tests/test_fuzz.py (CI runs a fixed sample of the same properties).

Every property test gets ``--examples`` examples (each test's CI count is 60-150) with a fresh random
seed, so repeated runs explore new mutations. Prints the pytest summary, wall and CPU time, and exits
with pytest's status; a failure prints hypothesis's minimal reproducing example.

    OMP_NUM_THREADS=1 python benchmarks/fuzz_long.py --examples 2000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000, help="examples per property test (default 2000)")
    ap.add_argument("-k", default=None, help="pytest -k expression to run a subset")
    args = ap.parse_args()
    env = {**os.environ, "GGCOMPRESS_FUZZ_EXAMPLES": str(args.examples),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_fuzz.py")]
    if args.k:
        cmd += ["-k", args.k]
    wall, cpu = time.perf_counter(), os.times()
    rc = subprocess.call(cmd, env=env, cwd=ROOT)
    end = os.times()
    used = (end.children_user - cpu.children_user) + (end.children_system - cpu.children_system)
    print(f"fuzz_long: {args.examples} examples per test, wall {time.perf_counter() - wall:.0f} s, "
          f"CPU {used:.0f} s, exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
