"""How many torch/OpenMP threads make pack, quantize-rf8 and eval fastest here.

Why: the CLI's `--threads` default comes from this measurement (docs/cli.md, docs/benchmarks.md).
Each (command, threads) pair runs in a fresh subprocess with OMP_NUM_THREADS=N and
torch.set_num_threads(N) / set_num_interop_threads(N) set before any work, on the real fixtures;
wall time and the child's CPU time (user+sys) are reported, best of --repeat runs. On a shared,
loaded machine the figures move a lot between runs: report the load average next to them.

    python benchmarks/bench_threads.py --threads 1,2 --repeat 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

#: One job per command, run through the library on the fixtures (small enough for a loaded 2-core box).
JOBS = {
    "pack": """
from ggcompress.codec.pack import PackOptions, pack
pack([fixtures.minilm()], out + '/m.ggz', PackOptions().checked())
""",
    "quantize-rf8": """
from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint
quantize_checkpoint([str(fixtures.smollm2())], out + '/q', QuantizeConfig().checked())
""",
    "eval": """
from ggcompress.integrations.evaluation import EvalOptions, evaluate
evaluate([str(fixtures.smollm2())], EvalOptions(tasks=(), text=fixtures.text()[1], max_tokens=1024,
         window=256))
""",
}

PRELUDE = """
import os, sys, torch
n = int(sys.argv[1]); out = sys.argv[2]
torch.set_num_threads(n)
torch.set_num_interop_threads(n)
from ggcompress import fixtures
"""


def run_one(job: str, threads: int) -> dict[str, float]:
    """Wall and CPU seconds of one job in a fresh interpreter (imports included in neither: they are
    timed separately by subtracting an empty job)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    code = PRELUDE + "import time\nt0 = time.perf_counter(); c0 = time.process_time()\n" + JOBS[job] + (
        "\nprint(time.perf_counter() - t0, time.process_time() - c0)\n")
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, "-c", code, str(threads), out], env=env, capture_output=True,
                              text=True, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{job} with {threads} threads failed:\n{proc.stderr[-2000:]}")
    wall, cpu = map(float, proc.stdout.split()[-2:])
    return {"wall_s": wall, "cpu_s": cpu,
            "process_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--jobs", default=",".join(JOBS), help="comma-separated: " + ", ".join(JOBS))
    ap.add_argument("--repeat", type=int, default=2, help="runs per pair; the fastest wall time is kept")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    counts = [int(t) for t in args.threads.split(",")]
    rows = []
    for job in args.jobs.split(","):
        for n in counts:
            runs = []
            for _ in range(args.repeat):  # interleaving thread counts would be fairer; kept simple
                runs.append(run_one(job, n))
            best = min(runs, key=lambda r: r["wall_s"])
            rows.append({"job": job, "threads": n, **best, "walls": [r["wall_s"] for r in runs],
                         "loadavg": os.getloadavg()[0]})
            walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
            print(f"{job:13s} threads={n}: wall {best['wall_s']:.2f} s  cpu {best['cpu_s']:.2f} s  "
                  f"(runs {walls}; load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    doc = {"schema": "ggcompress.bench_threads/1", "cores": os.cpu_count(), "time": time.time(), "rows": rows}
    if args.json:
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
