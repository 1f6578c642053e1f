"""Real BackSlash run: SmolLM2-135M fine-tuned on the Wikipedia fixture text, BackSlash vs baselines.

Every run starts from the same weights, sees the same blocks in the same order (same seed) for the same
number of steps, and is measured the same way: the 2-D Linear weights (tied embedding/head included)
quantized at --step, one frequency ranking, exp-Golomb order 0 bits/param (the papers' measure), the
best-order exp-Golomb and the empirical entropy; validation perplexity of the model as it would be
saved (bf16, the fixture's dtype) and with the measured weights quantized to the step.

Runs: plain fine-tune; strong AdamW weight decay (a usual 0.1 moves weights by lr·wd·steps ≈ 2e-4
relative here: indistinguishable from plain); L1 (ν fixed at 1, decoupled);
BackSlash decoupled with ν re-estimated per tensor over a λ sweep; BackSlash in loss mode.

    .venv/bin/python benchmarks/bench_backslash.py --threads 1     # 16 min on 2 busy CPU cores
    .venv/bin/python benchmarks/bench_backslash.py --rate-steps 48 --recover-steps 16 \
        --only "plain,weight decay,BackSlash lam=1e5"                # 13 min, 2 idle cores
    .venv/bin/python benchmarks/bench_backslash.py --quick         # 3 runs x 4 steps, a smoke test

On a machine shared with other jobs use --threads 1: two OpenMP threads on oversubscribed cores spend
most of their time spinning (measured: 10 CPU-minutes for fewer than 16 steps).

The fixture's weights come from a Q4_1 GGUF (see ggcompress.fixtures): the input is a dequantized
lattice, so its own bits/param are not those of a naturally trained checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict

import torch

from ggcompress import fixtures
from ggcompress.methods.backslash import BackSlashConfig, RateHook, measure, select_weights
from ggcompress.methods.train import TrainConfig, load_causal_lm, load_data, round_trip_, train
from ggcompress.stats.rate import parse_step

#: (label, BackSlashConfig overrides, TrainConfig overrides)
RUNS: list[tuple[str, dict, dict]] = [
    ("plain fine-tune", {"lam": 0.0}, {}),
    ("weight decay 100", {"lam": 0.0}, {"weight_decay": 100.0}),
    ("L1 (nu=1) lam=3e5", {"lam": 3e5, "nu": 1.0}, {}),
    ("BackSlash lam=1e5", {"lam": 1e5}, {}),
    ("BackSlash lam=3e5", {"lam": 3e5}, {}),
    ("BackSlash lam=1e6", {"lam": 1e6}, {}),
    ("BackSlash loss-mode lam=1e6", {"lam": 1e6, "mode": "loss"}, {}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate-steps", type=int, default=12)
    ap.add_argument("--recover-steps", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-blocks", type=int, default=24)
    ap.add_argument("--shape-every", type=int, default=4)
    ap.add_argument("--step", default="2^-8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="comma-separated run labels (substring match)")
    ap.add_argument("--quick", action="store_true", help="3 runs x 4 steps: a smoke test")
    ap.add_argument("--json", dest="json_out", help="write all results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.rate_steps, args.recover_steps, args.eval_blocks = 3, 1, 8
    runs = RUNS if not args.quick else [RUNS[0], RUNS[4], RUNS[6]]
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        runs = [r for r in runs if any(k in r[0] for k in keys)]

    cmd = " ".join([os.path.basename(sys.executable), *sys.argv])
    print(f"# {cmd}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    t_all = time.perf_counter()
    train_txt, val_txt = fixtures.text()
    model, tokenizer, source = load_causal_lm(fixtures.smollm2())
    data = load_data(train_txt, tokenizer, args.block_size, validation=val_txt)
    print(f"model {source}; data: {len(data.train)} train / {len(data.validation)} validation blocks of "
          f"{data.block_size} tokens ({args.eval_blocks} validation blocks measured)", flush=True)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = select_weights(model)
    steps = args.rate_steps + args.recover_steps
    tcfg = TrainConfig(steps=steps, lr=args.lr, batch_size=args.batch_size, block_size=args.block_size,
                       eval_blocks=args.eval_blocks, log_every=max(1, steps // 2), save_every=0, seed=0)
    common = {"rate_steps": args.rate_steps, "recover_steps": args.recover_steps,
              "shape_every": args.shape_every, "step": parse_step(args.step)}
    t0 = time.perf_counter()
    before = measure(model, data, params, BackSlashConfig(**common, lam=0.0), tcfg)
    print(f"input model: {_fmt(before)} ({time.perf_counter() - t0:.0f} s)", flush=True)

    results = []
    for label, bs_over, tr_over in runs:
        model.load_state_dict(base_state)
        cfg = BackSlashConfig(**{**common, **bs_over})
        run_cfg = TrainConfig(**{**tcfg.to_dict(), **tr_over})
        t0 = time.perf_counter()
        res = train(model, data, run_cfg, hooks=[RateHook(params, cfg)])
        round_trip_(model, torch.bfloat16)  # measure what would be saved (the fixture's dtype)
        m = measure(model, data, params, cfg, run_cfg)
        m.pop("tensors")
        secs = time.perf_counter() - t0
        results.append({"label": label, "backslash": cfg.to_dict(), "train": run_cfg.to_dict(), "after": m,
                        "history": res.history, "seconds": secs})
        print(f"{label}: {_fmt(m)} ({secs:.0f} s)", flush=True)

    plain = next((r["after"] for r in results if r["label"] == "plain fine-tune"), None)
    print()
    print(_table(before, results, plain))
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; {steps} steps per run "
          f"({args.rate_steps} rate + {args.recover_steps} recovery), global batch {args.batch_size} x "
          f"{args.block_size} tokens, lr {args.lr}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"command": cmd, "before": {k: v for k, v in before.items() if k != "tensors"},
                       "runs": results, "settings": {**vars(args), "train": asdict(tcfg)}}, f, indent=1)
    return 0


def _fmt(m: dict) -> str:
    return (f"ppl {m['val_ppl']:.3f} (quantized {m['val_ppl_quantized']:.3f}), "
            f"eg {m['eg_bits_per_param']:.3f} b/p, eg best-k {m['eg_bits_per_param_best_k']:.3f}, "
            f"entropy {m['entropy_bits_per_param']:.3f}, "
            f"zeros@step {m['zero_fraction_quantized']:.3f}, nu {m['nu_mean']:.2f}")


def _table(before: dict, results: list[dict], plain: dict | None) -> str:
    head = ("| run | eg bits/param (k=0) | eg best k | entropy bits | zeros at step | val ppl | "
            "ppl quantized | Δ eg bits vs plain | Δ ppl vs plain |")
    lines = [head, "|" + "---|" * 9]

    def row(label: str, m: dict) -> str:
        d_bits = f"{(m['eg_bits_per_param'] / plain['eg_bits_per_param'] - 1) * 100:+.1f}%" if plain else ""
        d_ppl = f"{(m['val_ppl'] / plain['val_ppl'] - 1) * 100:+.2f}%" if plain else ""
        return (f"| {label} | {m['eg_bits_per_param']:.3f} | {m['eg_bits_per_param_best_k']:.3f} "
                f"(k={m['best_k']}) | {m['entropy_bits_per_param']:.3f} | "
                f"{m['zero_fraction_quantized']:.3f} | "
                f"{m['val_ppl']:.3f} | {m['val_ppl_quantized']:.3f} | {d_bits} | {d_ppl} |")

    lines.append(row("input model (no training)", before))
    lines.extend(row(r["label"], r["after"]) for r in results)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
