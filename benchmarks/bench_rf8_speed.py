"""Cost of RF8 on the CPU: encode throughput, forward latency and memory of the loaded model, as ratios.

- ``encode``: ``quantize_checkpoint`` (RF8, channel; encode + the SQNR/error report + write) against a
  plain streaming copy of the same checkpoint through the same writer, and the dry run (encode + report,
  no write) against a plain streaming read pass. All passes are warm-cache (one read pass first).
- ``latency``: SmolLM2-135M forward, RF8 (``load_quantized``, 1-byte codes, torch LUT path) vs the dense
  model from transformers, in bf16 and fp32, batch 1 x 1 token and batch 1 x 128 tokens, no KV cache;
  best of --reps after warm-up (the minimum is the stable figure on a shared machine).
- ``memory``: bytes held in parameters + buffers, and how much the RSS of a fresh process grows (now and
  at its peak) when it loads the model and runs one 8-token forward (dense weights are memory-mapped
  and count once read).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rf8_speed.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rf8_speed.py --parts latency --reps 20

Timings on a shared machine are noisy: compare ratios from the same run only.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ggcompress import fixtures
from ggcompress.formats import get_codec
from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint
from ggcompress.io.checkpoint import CheckpointWriter, open_checkpoint


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_pass(path: Path) -> None:
    for _, t in open_checkpoint(path).iter_tensors():
        del t


def copy_pass(path: Path, out: Path) -> None:
    ck = open_checkpoint(path)
    with CheckpointWriter(out, force=True) as w:
        for info, t in ck.iter_tensors():
            w.add_tensor(info.name, t)
        w.copy_support_files(ck.root)


def encode_only(path: Path) -> None:
    """RF8 codes of the default selection, nothing else (no error report, no write)."""
    from ggcompress.formats.quantize import plan

    ck = open_checkpoint(path)
    names = [d.info.name for d in plan(ck, QuantizeConfig()) if d.quantize]
    codec = get_codec("rf8")
    for info, t in ck.iter_tensors(names):
        codec.encode(t, "channel", name=info.name)


def part_encode(models: list[str], work: Path) -> None:
    print("\n## encode throughput (RF8, channel), warm cache")
    print("| model | input MiB | read pass s | dry run s | ratio | copy s | quantize-rf8 s | ratio | "
          "encode only s | MiB/s (quantize-rf8) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in models:
        path = getattr(fixtures, name)()
        mib = sum(t.nbytes for t in open_checkpoint(path).tensors) / 2**20
        read_pass(path)  # warm the page cache
        t_read = min(seconds(lambda p=path: read_pass(p)) for _ in range(2))
        t_dry = seconds(lambda p=path: quantize_checkpoint(p, None))
        copy_out, rf8_out = work / f"{name}-copy", work / f"{name}-rf8"
        t_copy = seconds(lambda p=path, o=copy_out: copy_pass(p, o))
        t_q = seconds(lambda p=path, o=rf8_out: quantize_checkpoint(p, o, force=True))
        t_enc = seconds(lambda p=path: encode_only(p))
        print(f"| {name} | {mib:.1f} | {t_read:.2f} | {t_dry:.2f} | {t_dry / t_read:.1f}x | {t_copy:.2f} | "
              f"{t_q:.2f} | {t_q / t_copy:.1f}x | {t_enc:.2f} | {mib / t_q:.0f} |")


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def best(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    return min(seconds(fn) for _ in range(reps))


def _models(rf8: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    from ggcompress.io.quantized import load_quantized

    dense = AutoModelForCausalLM.from_pretrained(fixtures.smollm2(), dtype=dtype).eval()
    quant, _ = load_quantized(rf8, dtype=dtype)
    return dense, quant


def part_latency(rf8: Path, reps: int) -> None:
    print(f"\n## SmolLM2-135M CPU forward latency, best of {reps} (ms), {torch.get_num_threads()} thread(s)")
    print("| dtype | tokens | dense ms | RF8 ms | RF8 / dense |\n|---|---:|---:|---:|---:|")
    for dtype in (torch.bfloat16, torch.float32):
        dense, quant = _models(rf8, dtype)
        for tokens in (1, 128):
            ids = torch.randint(0, 49152, (1, tokens), generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                t_d = best(lambda m=dense, x=ids: m(input_ids=x, use_cache=False), reps)
                t_q = best(lambda m=quant, x=ids: m(input_ids=x, use_cache=False), reps)
            print(f"| {str(dtype).removeprefix('torch.')} | {tokens} | {1e3 * t_d:.1f} | {1e3 * t_q:.1f} | "
                  f"{t_q / t_d:.2f}x |")
        del dense, quant


_CHILD = """
import sys, torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM  # SmolLM2's class, imported up front
from ggcompress.io.quantized import load_quantized

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # KiB

kind, path = sys.argv[1], sys.argv[2]
before = vm("VmRSS")
if kind == "dense":
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
else:
    m, _ = load_quantized(path, dtype=torch.bfloat16, tokenizer=False)
with torch.inference_mode():  # touches every weight: a memory-mapped one is resident only once read
    m(input_ids=torch.zeros(1, 8, dtype=torch.long), use_cache=False)
print(vm("VmRSS") - before, vm("VmHWM") - before)
"""


def _rss_mib(kind: str, path: Path) -> tuple[float, float]:
    """(resident MiB after load + one forward, peak MiB during it), both above the post-import RSS."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path)], capture_output=True, text=True,
                         env=env, check=True)
    now, peak = (int(v) / 1024 for v in out.stdout.strip().splitlines()[-1].split())
    return now, peak


def part_memory(rf8: Path) -> None:
    dense, quant = _models(rf8, torch.bfloat16)
    d, q = state_bytes(dense) / 2**20, state_bytes(quant) / 2**20
    del dense, quant
    (rss_d, peak_d), (rss_q, peak_q) = _rss_mib("dense", fixtures.smollm2()), _rss_mib("rf8", rf8)
    print("\n## SmolLM2-135M memory, bf16 dense tensors (embeddings tied, kept dense in both)")
    print("| | dense bf16 | RF8 | RF8 / dense |\n|---|---:|---:|---:|")
    print(f"| parameters + buffers (MiB) | {d:.1f} | {q:.1f} | {q / d:.3f} |")
    print(f"| RSS growth: load + 8-token forward (MiB) | {rss_d:.1f} | {rss_q:.1f} | {rss_q / rss_d:.3f} |")
    print(f"| peak RSS growth (MiB) | {peak_d:.1f} | {peak_q:.1f} | {peak_q / peak_d:.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="encode,latency,memory")
    ap.add_argument("--models", default="minilm,smollm2", help="fixtures for the encode part")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = [p for p in args.parts.split(",") if p]
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory(prefix="bench-rf8-speed-") as tmp:
        work = Path(tmp)
        if "encode" in parts:
            part_encode([m for m in args.models.split(",") if m], work)
        if "latency" in parts or "memory" in parts:
            rf8 = work / "smollm2-rf8"
            if not rf8.exists():
                quantize_checkpoint(fixtures.smollm2(), rf8)
            if "latency" in parts:
                part_latency(rf8, args.reps)
            if "memory" in parts:
                part_memory(rf8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
