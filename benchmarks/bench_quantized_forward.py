"""Whole-model forward of quantized checkpoints on a GPU: Triton kernels vs the torch path vs the base.

Loads a base HF folder and quantized folders (``ggcompress quantize-rf8`` outputs) with
``ggcompress.io.loading.load_model`` on one device, runs the same real-text windows through each, and
prints per model and backend: KL(base || model) and top-1 agreement over every scored token, the
largest logit difference between the Triton and torch backends of the same checkpoint (they decode the
same codes, so only accumulation order and TF32 separate them), and median forward times for a
prefill batch and for one token at batch 1 (no KV cache; on a small model launch overhead dominates
the one-token figure, so it says whether the kernels add overhead, not what they save on a big one).
The layer-level speed figures come from bench_rf8_kernels.py.

Run:  python benchmarks/bench_quantized_forward.py BASE Q1 [Q2 ...] --text validation.txt --device cuda
On the CPU only the torch backend runs (the Triton kernels need CUDA or TRITON_INTERPRET=1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from ggcompress.integrations.evaluation import compare_logits, text_windows
from ggcompress.io.loading import load_model
from ggcompress.kernels.nn import QuantLinear


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn`` after one warm-up call (compiles kernels outside the timing)."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def logits_of(model, windows: torch.Tensor, batch: int) -> torch.Tensor:
    """float32 next-token logits (n_windows * (W-1), V) on the CPU."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for s in range(0, windows.shape[0], batch):
            out.append(model(input_ids=windows[s:s + batch].to(device)).logits[:, :-1].float().cpu())
    return torch.cat(out).flatten(0, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("quantized", nargs="+")
    parser.add_argument("--text", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_quantized_forward: no CUDA device", file=sys.stderr)
        return 1
    backends = ["triton", "torch"] if device.type == "cuda" else ["torch"]
    base = load_model(args.base, device=args.device, dtype=args.dtype)
    text = args.text.read_text()
    windows = text_windows(base.tokenizer, text, max_tokens=args.max_tokens, window=args.window)
    targets = windows[:, 1:].flatten()
    base_logits = logits_of(base.model, windows, args.batch)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {args.dtype}, {windows.shape[0]} windows x {windows.shape[1]} "
          f"tokens ({targets.numel()} scored)")
    cols = f"{'model':<28} {'backend':<7} {'KL nats':>9} {'top1 %':>7} {'max|tri-tor|':>12} " \
           f"{'prefill ms':>10} {'1-token ms':>10}"
    print(cols)
    print("-" * len(cols))

    def timings(model) -> tuple[float, float]:
        first = windows[: args.batch].to(device)
        one = windows[:1, :1].to(device)
        with torch.inference_mode():
            t_pre = median_time(lambda: model(input_ids=first), device, args.repeats)
            t_one = median_time(lambda: model(input_ids=one), device, args.repeats)
        return t_pre, t_one

    t_pre, t_one = timings(base.model)
    print(f"{Path(args.base).name[:28]:<28} {'dense':<7} {0.0:>9.2e} {100.0:>7.2f} {'':>12} "
          f"{t_pre * 1e3:>10.2f} {t_one * 1e3:>10.2f}")
    del base
    for path in args.quantized:
        loaded = load_model(path, device=args.device, dtype=args.dtype)
        layers = [m for m in loaded.model.modules() if isinstance(m, QuantLinear)]
        if not layers:
            print(f"{path}: no QuantLinear layers after loading; not a quantized checkpoint", file=sys.stderr)
            return 1
        per_backend = {}
        for backend in backends:
            for layer in layers:
                layer.backend = backend
            logits = logits_of(loaded.model, windows, args.batch)
            per_backend[backend] = logits
            cmp = compare_logits(base_logits, logits, targets)
            diff = None if backend == "triton" or "triton" not in per_backend \
                else (logits - per_backend["triton"]).abs().max().item()
            t_pre, t_one = timings(loaded.model)
            print(f"{Path(path).name[:28]:<28} {backend:<7} {cmp['kl'].mean().item():>9.2e} "
                  f"{100 * cmp['same_top1'].double().mean().item():>7.2f} "
                  f"{'' if diff is None else f'{diff:.3g}':>12} {t_pre * 1e3:>10.2f} {t_one * 1e3:>10.2f}")
        del loaded
    return 0


if __name__ == "__main__":
    sys.exit(main())
