"""Gradient-rate communication (DDP comm hook, `methods/gradcodec.py`): bytes per step and loss curves
vs the default fp32 all-reduce, on the same runs.

`torchrun --nproc-per-node W` (gloo, CPU) trains the same model from the same weights on the same data
order (seed 0) once with the plain all-reduce and once per codec setting (target bits, error feedback
on/off); plain runs with seeds 1 and 2 give the spread that the data order alone causes. Reported per
run: mean training loss of the last 5 steps, its deviation from the plain seed-0 run, bits per
gradient value sent, and per-rank bytes per step (ring all-gather of the payloads vs ring
all-reduce of fp32), plus the loss curves (every 5th step).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gradcodec.py                 # tiny Llama, 40 steps
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gradcodec.py --model smollm2 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
#: (label, TrainConfig overrides)
RUNS = [("plain seed 0", {"seed": 0}), ("plain seed 1", {"seed": 1}), ("plain seed 2", {"seed": 2}),
        ("codec 2 bits", {"grad_bits": 2.0}), ("codec 2 bits, no EF", {"grad_bits": 2.0,
                                                                       "grad_error_feedback": False}),
        ("codec 3 bits", {"grad_bits": 3.0}), ("codec 4 bits", {"grad_bits": 4.0}),
        ("codec 4 bits, no EF", {"grad_bits": 4.0, "grad_error_feedback": False}),
        ("codec 6 bits", {"grad_bits": 6.0})]


def worker(model_dir: str, data: str, steps: int, block: int, out: str) -> None:
    from ggcompress.methods.train import TrainConfig, distributed, load_causal_lm, load_data, train

    with distributed("cpu") as info:
        _, tok, _ = load_causal_lm(model_dir, "cpu")
        blocks = load_data(data, tok, block)
        doc = {}
        for label, over in RUNS:
            model, _, _ = load_causal_lm(model_dir, "cpu")
            t0, c0 = time.perf_counter(), time.process_time()
            lr = 3e-3 if Path(model_dir).name == "tiny" else 1e-4
            cfg = TrainConfig(**{"steps": steps, "lr": lr, "batch_size": 2, "block_size": block,
                                 "log_every": 1, "save_every": 0, "seed": 0, **over})
            res = train(model, blocks, cfg)
            doc[label] = {"loss": [h["loss"] for h in res.history], "comm": res.comm,
                          "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        if info.is_main:
            Path(out).write_text(json.dumps(doc))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny (random Llama, tests/tinylm.py), smollm2, a folder")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        m, d, s, b, o = args.worker
        worker(m, d, int(s), int(b), o)
        return 0

    from ggcompress import fixtures

    tmp = Path(tempfile.mkdtemp(prefix="bench-gradcodec-"))
    train_txt, _ = fixtures.text()
    data = tmp / "train.txt"
    data.write_text(train_txt.read_text(encoding="utf-8")[:120_000], encoding="utf-8")
    if args.model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tinylm import build_model_folder

        model = str(build_model_folder(tmp / "tiny", data.read_text()))
    elif args.model == "smollm2":
        model = str(fixtures.smollm2())
    else:
        model = args.model
    out = tmp / "runs.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.world),
           __file__, "--worker", model, str(data), str(args.steps), str(args.block_size), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return 1
    doc = json.loads(out.read_text())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), gloo on CPU")
    print(f"model: {model}; world {args.world}; {args.steps} steps; batch 2 x {args.block_size} "
          "tokens/rank\n")
    final = {k: sum(v["loss"][-5:]) / 5 for k, v in doc.items()}
    plain = [final[f"plain seed {s}"] for s in range(3)]
    print("seed spread of the plain runs (max - min of the last-5 mean loss): "
          f"{max(plain) - min(plain):.4f}\n")
    print(f"{'run':22} {'loss':>7} {'dev':>7} {'bits/val':>8} {'B/step/rank':>12} {'all-reduce':>11} "
          f"{'ratio':>6} {'wall s':>7} {'cpu s':>6}")
    ar = next(v["comm"]["allreduce_bytes_per_step"] for v in doc.values() if v["comm"])
    for label, v in doc.items():
        c = v["comm"] or {"bits_per_value": 32.0, "sent_bytes_per_step": ar, "sent_vs_allreduce": 1.0}
        print(f"{label:22} {final[label]:7.4f} {final[label] - final['plain seed 0']:+7.4f} "
              f"{c['bits_per_value']:8.2f} {c['sent_bytes_per_step']:12.0f} {ar:11.0f} "
              f"{c['sent_vs_allreduce']:6.3f} {v['wall_s']:7.1f} {v['cpu_s']:6.1f}")
    print("\nloss curves (every 5th step):")
    for label, v in doc.items():
        print(f"{label:22} " + " ".join(f"{x:.3f}" for x in v["loss"][::5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
