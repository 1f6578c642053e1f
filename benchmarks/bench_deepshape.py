"""Real DeepShape run: SmolLM2-135M reshaped and fine-tuned on the Wikipedia fixture text.

For each (shape_scale, scale_scale) pair the model restarts from the original weights, is reshaped
(per tensor, step 2^-13), measured, fine-tuned with distillation to the original model for --steps
steps on the same blocks, and measured again: validation perplexity (as saved in bf16, and with the
measured weights quantized to the step), exp-Golomb order-0 and entropy bits/param of all 2-D Linear
weights under one frequency ranking, sparsity. Writes the curve JSON + PNG to --out.

    .venv/bin/python benchmarks/bench_deepshape.py --out /tmp/ds-smollm2      # ~15-25 min, 2 CPU cores
    .venv/bin/python benchmarks/bench_deepshape.py --quick --out /tmp/ds-q    # one pair, 2 steps

The fixture's weights come from a Q4_1 GGUF (ggcompress.fixtures): a dequantized 4-bit lattice stored
in bf16, not a naturally trained histogram, so its bits/param and the gain from reshaping are not
those of a natural checkpoint.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from ggcompress import fixtures
from ggcompress.methods.deepshape import DeepShapeConfig, parse_sweep, run_sweep
from ggcompress.methods.train import TrainConfig
from ggcompress.stats.rate import parse_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sweep", default="1:0.8,0.8:0.6,0.8:0.4")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-blocks", type=int, default=16)
    ap.add_argument("--calib-chars", type=int, default=400_000)
    ap.add_argument("--step", default="2^-13")
    ap.add_argument("--no-distill", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.sweep, args.steps, args.eval_blocks, args.calib_chars = "0.8:0.6", 2, 4, 60_000
    torch.set_num_threads(args.threads)
    train_txt, val_txt = fixtures.text()
    tmp = Path(tempfile.mkdtemp(prefix="bench-deepshape-"))
    (tmp / "calib.txt").write_text(train_txt.read_text()[: args.calib_chars])
    (tmp / "val.txt").write_text(val_txt.read_text()[: args.calib_chars // 4])
    cfg = DeepShapeConfig(step=parse_step(args.step), distill=not args.no_distill)
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, block_size=args.block_size,
                       eval_blocks=args.eval_blocks, save_every=0, log_every=max(1, args.steps // 4))
    t0 = time.perf_counter()
    def show(e: dict) -> None:
        if e.get("event") == "phase" or (e.get("event") == "step" and e["step"] % tcfg.log_every == 0):
            print(json.dumps(e), flush=True)

    doc = run_sweep(str(fixtures.smollm2()), str(tmp / "calib.txt"), args.out, cfg, tcfg,
                    parse_sweep(args.sweep), validation=str(tmp / "val.txt"), force=True, progress=show)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch threads {args.threads}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - t0:.0f} s")
    o = doc["original"]
    print(f"original: ppl {o['val_ppl']:.3f} (quantized {o['val_ppl_quantized']:.3f}), "
          f"EG {o['eg_bits_per_param']:.3f} b/p, entropy {o['entropy_bits_per_param']:.3f} b/p")
    print("shape_scale scale_scale | ppl_reshaped ppl_finetuned | EG_bits entropy_bits sparsity | dEG dppl")
    for p in doc["points"]:
        f = p["finetuned"] or p["reshaped"]
        print(f"{p['shape_scale']:>5g} {p['scale_scale']:>5g} | {p['reshaped']['val_ppl']:.3f} "
              f"{f['val_ppl']:.3f} | {f['eg_bits_per_param']:.3f} {f['entropy_bits_per_param']:.3f} "
              f"{f['sparsity']:.4f} | {-p['vs_original']['eg_bits_reduction']:+.1%} "
              f"{p['vs_original']['val_ppl_increase']:+.2%}")
    print(f"curve: {args.out}/deepshape_sweep.json, plot: {args.out}/deepshape_sweep.png")


if __name__ == "__main__":
    main()
