"""Per-rank training memory: measured DDP vs FSDP2 on a real model, and computed for 1B / 7B / 70B.

Measured: `torchrun --nproc-per-node W` runs one optimizer step of the training engine (plain
fine-tune, AdamW, fp32 master weights) with --shard ddp and with --shard fsdp, and every rank reports
the bytes it holds for parameters, gradients and AdamW state (`methods.distributed.rank_bytes`: local
shards only; activations and the transient all-gathered block are not in it) and its peak RSS.
Computed: `methods.distributed.memory_table()` from the public configs of Llama-3.2-1B, Llama-2-7B
and Llama-2-70B (16 B/parameter replicated, or divided by the world size plus two gathered blocks).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_memory.py            # SmolLM2-135M, W=2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_memory.py --world 4 --model tiny

`--model tiny` uses a random Llama (hidden 256, 4 layers, 4.5M parameters) instead of the fixture.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]


def worker(model_dir: str, data: str, shard: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from ggcompress.methods.distributed import load_sharded
    from ggcompress.methods.train import TrainConfig, distributed, load_causal_lm, load_data, train

    with distributed("cpu") as info:
        if shard == "fsdp":  # as `backslash --shard fsdp` loads: rank 0 reads, the others build on meta
            model, tok, _ = load_sharded(model_dir, "cpu")
        else:
            model, tok, _ = load_causal_lm(model_dir, "cpu")
        blocks = load_data(data, tok, 32)
        t0, c0 = time.perf_counter(), time.process_time()
        res = train(model, blocks, TrainConfig(steps=1, lr=1e-5, batch_size=1, block_size=32, save_every=0,
                                               shard=shard))
        mine = {**res.rank_bytes, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                "params": sum(p.numel() for p in model.parameters())}
        every: list = [None] * info.world
        dist.all_gather_object(every, mine)
        if info.is_main:
            Path(out).write_text(json.dumps({"shard": shard, "world": info.world, "ranks": every,
                                             "torch": torch.__version__}))


def tiny_model(folder: Path, text: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tinylm import VOCAB, build_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    build_tokenizer(text).save_pretrained(folder)
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 (the fixture), tiny, or an HF folder")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--worker", nargs=4, metavar=("MODEL", "DATA", "SHARD", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0

    from ggcompress import fixtures
    from ggcompress.methods.distributed import memory_table

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-memory-"))
    train_txt, _ = fixtures.text()
    data = tmp / "train.txt"
    data.write_text(train_txt.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    if args.model == "smollm2":
        model = str(fixtures.smollm2())
    elif args.model == "tiny":
        model = str(tiny_model(tmp / "tiny", data.read_text()))
    else:
        model = args.model
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(ROOT)}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), gloo on CPU")
    print(f"model: {model}, world {args.world}, one AdamW step, batch 1 x 32 tokens per rank\n")
    print(f"{'shard':6} {'params+grads+AdamW / rank':>26} {'vs ddp':>7} {'peak RSS rank 0':>16} "
          f"{'other ranks':>12} {'wall s':>7} {'cpu s':>6}")
    base = None
    for shard in ("ddp", "fsdp"):
        out = tmp / f"{shard}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(args.world), __file__, "--worker", model, str(data), shard, str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return 1
        doc = json.loads(out.read_text())
        r0 = doc["ranks"][0]
        total = max(r["total"] for r in doc["ranks"])
        base = base or total
        rss = max(r["peak_rss"] for r in doc["ranks"][1:])
        print(f"{shard:6} {total / 2**20:23.1f} MiB {total / base:7.3f} {r0['peak_rss'] / 2**20:12.0f} MiB "
              f"{rss / 2**20:8.0f} MiB {r0['wall_s']:7.1f} {r0['cpu_s']:6.1f}")
    print("\n(peak RSS: the process, Python + torch + transformers included; with --shard fsdp rank 0 reads"
          " the checkpoint and broadcasts it, the other ranks build the model on the meta device)\n")
    print("computed per rank (fp32 weights + grads + AdamW, bf16 gathered blocks; activations excluded):")
    print(f"{'model':14} {'params':>8} {'world':>5} {'shard':>5} {'GiB/rank':>9}")
    for row in memory_table((1, 8, 64)):
        print(f"{row['model']:14} {row['params'] / 1e9:7.2f}B {row['world']:5d} {row['shard']:>5} "
              f"{row['gib_per_rank']:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
