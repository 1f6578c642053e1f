"""Does GG initialization converge faster? A small GPT-2-style LM trained on the Wikipedia fixture text.

Same model config, data, block order and steps for every run; only the initial weights differ:
- default: the transformers GPT-2 init (normal 0.02, scaled residual projections);
- kaiming: Kaiming normal (β = 2, ξ = 2, fan_in) through ggcompress.methods.init;
- lecun: normal with ξ = 1 (β = 2) — the GG runs' variance, so β alone differs from them;
- gg β=B: GG with ξ = 1, one β for all weights (several B);
- gg measured: ξ = 1, β per layer role measured on the real all-MiniLM-L6-v2 (`--shape-from`).
Norm gains 1 and biases 0 in every ggcompress init. Each init runs with --seeds seeds (the seed sets
the initial weights and the block order). Reports the validation loss curve, steps to a target loss
(the worst init's median final loss, so every init can reach it) and the final loss (median, min–max).

    .venv/bin/python benchmarks/bench_init_convergence.py --out /tmp/init-conv      # ~5-10 min, 1 thread
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ggcompress import fixtures
from ggcompress.methods.init import init_model, shapes_from_checkpoint
from ggcompress.methods.train import TextData, TrainConfig, pack, perplexity, tokenize, train
from ggcompress.wikilm import train_bpe


def make_model(args, init: str, seed: int, measured: dict[str, float]):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=args.block, n_embd=args.width,
                                       n_layer=args.layers, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0))
    gen = torch.Generator().manual_seed(seed)
    if init == "kaiming":
        init_model(model, 2.0, 2.0, generator=gen)
    elif init == "lecun":
        init_model(model, 2.0, 1.0, generator=gen)
    elif init == "gg measured":
        init_model(model, 2.0, 1.0, shape_by_role=measured, generator=gen)
    elif init.startswith("gg β="):
        init_model(model, float(init.removeprefix("gg β=")), 1.0, generator=gen)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--betas", default="0.5,1.0,1.5")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chars", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_txt, val_txt = fixtures.text()
    text = train_txt.read_text()[: args.chars]
    tok = train_bpe(text, args.vocab)
    data = TextData(train=pack(tokenize([text], tok), args.block),
                    validation=pack(tokenize([val_txt.read_text()[: args.chars // 5]], tok), args.block),
                    source=str(train_txt), tokens=0)
    measured = shapes_from_checkpoint(fixtures.minilm())
    inits = ["default", "kaiming", "lecun", *[f"gg β={b}" for b in args.betas.split(",")], "gg measured"]
    tcfg = dict(steps=args.steps, lr=args.lr, batch_size=args.batch, block_size=args.block,
                eval_every=args.eval_every, eval_blocks=32, save_every=0, log_every=args.eval_every)
    runs: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for init in inits:
        for seed in range(args.seeds):
            model = make_model(args, init, seed, measured)
            first = perplexity(model, data.validation, max_blocks=32)
            res = train(model, data, TrainConfig(**tcfg, seed=seed))
            last = perplexity(model, data.validation, max_blocks=32)
            evals = [(e["step"], e["loss"]) for e in res.evals]
            curve = [(0, first["loss"]), *evals, (args.steps, last["loss"])]
            runs.setdefault(init, []).append({"seed": seed, "curve": curve})
            print(f"{init:>12} seed {seed}: val loss {first['loss']:.3f} -> {last['loss']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    target = max(statistics.median(r["curve"][-1][1] for r in rs) for rs in runs.values())
    summary = {}
    for init, rs in runs.items():
        reach = [next((s for s, v in r["curve"] if v <= target), None) for r in rs]
        finals = [r["curve"][-1][1] for r in rs]
        summary[init] = {"final_median": statistics.median(finals), "final_min": min(finals),
                         "final_max": max(finals), "steps_to_target": reach}
    doc = {"settings": vars(args), "measured_betas": measured, "target_loss": target, "summary": summary,
           "runs": runs, "machine": f"{platform.node()} {platform.machine()}",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": time.perf_counter() - t0}
    (out / "init_convergence.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot(runs, target, out / "init_convergence.png")
    print(f"# {doc['machine']}, {doc['date']}, {doc['seconds']:.0f} s, target val loss {target:.3f}")
    print("init          | final val loss median [min, max] | steps to target per seed")
    for init, s in summary.items():
        print(f"{init:>13} | {s['final_median']:.3f} [{s['final_min']:.3f}, {s['final_max']:.3f}] | "
              f"{s['steps_to_target']}")
    print(f"plot: {out / 'init_convergence.png'}")


def plot(runs: dict[str, list[dict]], target: float, path: Path) -> None:
    from ggcompress.reports.plot import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for init, rs in runs.items():
        steps = [s for s, _ in rs[0]["curve"]]
        vals = [[r["curve"][i][1] for r in rs] for i in range(len(steps))]
        med = [statistics.median(v) for v in vals]
        line, = ax.plot(steps[1:], med[1:], label=init)
        ax.fill_between(steps[1:], [min(v) for v in vals[1:]], [max(v) for v in vals[1:]], alpha=0.15,
                        color=line.get_color())
    ax.axhline(target, color="gray", linestyle=":", label="target")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (median, min–max over seeds)")
    ax.set_title("GG init vs standard inits: small GPT-2 on Wikipedia text")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
