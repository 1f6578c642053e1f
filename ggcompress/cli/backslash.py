"""`ggcompress backslash`: rate-constrained fine-tuning (BackSlash) of a causal LM on text."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ggcompress.cli._common import console, emit_json
from ggcompress.names import BACKSLASH_MODES, BACKSLASH_SHAPES, SHARDS, TRAIN_SAVE_DTYPES


@click.command()
@click.argument("model")
@click.option("--data", required=True, metavar="PATH",
              help="Training text: .txt / .jsonl (\"text\" field) files, a folder of them, or an HF dataset.")
@click.option("--validation", metavar="PATH",
              help="Validation text (same formats); default: the last 5% of the --data blocks.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), metavar="OUT",
              help="Output HF folder (model, tokenizer, backslash_report.json).")
@click.option("--lambda", "lam", type=click.FloatRange(min=0), default=1e5, show_default=True,
              help="Rate weight λ in J = D + λR, R = (1/N)Σ(|θ|+ε)^ν (the reference's raw λ; 0 = plain).")
@click.option("--rate-steps", type=click.IntRange(min=0), default=100, show_default=True,
              help="Optimizer steps with the rate term.")
@click.option("--recover-steps", type=click.IntRange(min=0), default=20, show_default=True,
              help="Plain steps after them (recovery).")
@click.option("--mode", type=click.Choice(BACKSLASH_MODES), default="decoupled", show_default=True,
              help="loss: add λR to the loss (ν detached); decoupled: shrink after each optimizer step.")
@click.option("--shape-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Re-estimate ν from the weights every K steps.")
@click.option("--shape", type=click.Choice(BACKSLASH_SHAPES), default="tensor", show_default=True,
              help="One ν per tensor, or one global ν over all selected weights.")
@click.option("--nu", type=click.FloatRange(0.1, 2.99), metavar="NU",
              help="Fix ν instead of estimating it (1 = L1, 2 = L2).")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=1e-5, show_default=True,
              help="ε (c in the decoupled step) in (|θ|+ε)^ν.")
@click.option("--step", default="2^-8", show_default=True, metavar="STEP",
              help="Quantization step of the rate measure: 2^-S, S (an exponent) or a number.")
@click.option("--eg-k", type=click.IntRange(0, 16), default=0, show_default=True,
              help="Exp-Golomb order of the headline bits/param.")
@click.option("--include", metavar="REGEX",
              help="Only linear-layer weights (Linear, Conv1D) whose name matches (re.search).")
@click.option("--exclude", metavar="REGEX", help="Skip linear-layer weights whose name matches.")
@click.option("--baseline", is_flag=True,
              help="Also run a plain fine-tune with identical data and steps, and compare.")
@click.option("--lr", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="AdamW peak learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="AdamW weight decay on 2-D weights.")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Linear warmup (default: 5% of the steps).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Sequences per micro-batch per process.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="Micro-batches per optimizer step.")
@click.option("--block-size", type=click.IntRange(min=2), default=256, show_default=True,
              help="Tokens per training sequence (at most the model's context).")
@click.option("--bf16", is_flag=True, help="bf16 autocast for forward/backward (weights stay fp32).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data order and the run.")
@click.option("--eval-blocks", type=click.IntRange(min=0), default=64, show_default=True,
              help="Validation blocks per perplexity (0: all).")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Validation perplexity every K steps during training (0: before/after only).")
@click.option("--save-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Checkpoint every K steps into OUT/training (0: never).")
@click.option("--keep-checkpoints", is_flag=True, help="Keep OUT/training after a successful run.")
@click.option("--save-dtype", type=click.Choice(TRAIN_SAVE_DTYPES), default="auto", show_default=True,
              help="dtype of the saved weights (auto: the input's). Measurements describe the saved weights.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--shard", type=click.Choice(SHARDS), default="ddp", show_default=True,
              help="Under torchrun: ddp (a full replica per rank) or fsdp (FSDP2: weights, gradients and "
              "AdamW state divided over the ranks; with --bf16, bf16 compute + fp32 reduction).")
@click.option("--cpu-offload", is_flag=True, help="With --shard fsdp: keep shards and optimizer state in "
              "host memory.")
@click.option("--grad-bits", type=click.FloatRange(0, 16), default=0, show_default=True, metavar="B",
              help="DDP under torchrun: send gradients quantized on a GG-fitted grid at ~B bits/value, "
              "exp-Golomb coded, with error feedback (0: plain fp32 all-reduce).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoints in OUT (start fresh if none).")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (ggcompress.backslash/1) on stdout.")
def backslash(model: str, data: str, validation: str | None, output: str, lam: float, rate_steps: int,
              recover_steps: int, mode: str, shape_every: int, shape: str, nu: float | None, eps: float,
              step: str, eg_k: int, include: str | None, exclude: str | None, baseline: bool, lr: float,
              weight_decay: float, warmup_steps: int | None, batch_size: int, grad_accum: int,
              block_size: int, bf16: bool, seed: int, eval_blocks: int, eval_every: int, save_every: int,
              keep_checkpoints: bool, save_dtype: str, device: str, shard: str, cpu_offload: bool,
              grad_bits: float, resume: bool, force: bool, as_json: bool) -> None:
    """Fine-tune MODEL with the BackSlash rate term so its weights code into fewer bits.

    MODEL is an HF causal-LM folder or hub id. Writes OUT as an ordinary HF folder plus
    backslash_report.json. Runs as DDP under `torchrun --nproc-per-node N -m ggcompress backslash ...`
    (only rank 0 writes), or sharded with `--shard fsdp`; --resume works on another world size. Example:
    `ggcompress backslash ./smollm2 --data wiki.txt -o out --lambda 3e5 --rate-steps 200 --baseline`.
    """
    # The library imports torch (seconds): here, not at module level, so `backslash --help` stays fast.
    from ggcompress.methods.backslash import BackSlashConfig, run_backslash
    from ggcompress.methods.train import TrainConfig, distributed
    from ggcompress.stats import rate

    cfg = BackSlashConfig(lam=lam, mode=mode, rate_steps=rate_steps, recover_steps=recover_steps,
                          shape_every=shape_every, shape=shape, nu=nu, eps=eps, step=rate.parse_step(step),
                          eg_k=eg_k, include=include, exclude=exclude, baseline=baseline,
                          save_dtype=save_dtype)
    tcfg = TrainConfig(steps=cfg.steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                       block_size=block_size, weight_decay=weight_decay, warmup_steps=warmup_steps, bf16=bf16,
                       seed=seed, eval_every=eval_every, eval_blocks=eval_blocks, save_every=save_every,
                       device=device, shard=shard, cpu_offload=cpu_offload, grad_bits=grad_bits,
                       log_every=max(1, min(10, cfg.steps // 10 or 1)))
    with distributed(device) as info:
        bar = _Bar() if info.is_main else None
        with bar or _nothing():
            report = run_backslash(model, data, output, cfg, tcfg, validation=validation, resume=resume,
                                   force=force, keep_checkpoints=keep_checkpoints,
                                   progress=bar.event if bar else None)
        if not info.is_main:
            return
    if as_json:
        emit_json(report)
    else:
        render(report)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class _Bar:
    """A rich progress bar on stderr, one task per training phase, with loss, perplexity and rate."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(bar_width=16),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
            transient=False)
        self.tasks: dict[str, Any] = {}
        self.info: dict[str, str] = {}

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def event(self, e: dict[str, Any]) -> None:
        kind, phase = e.get("event"), e.get("phase", "")
        if kind == "note":  # the run differs from what was asked (e.g. blocks clamped to the context)
            self.progress.console.print(f"note: {escape(e['message'])}")
            return
        if kind == "phase":
            if phase in ("backslash", "baseline"):
                self.tasks[phase] = self.progress.add_task(phase, total=e.get("total"), info="")
            else:
                what = e.get("what") or e.get("model") or ""
                self.progress.console.print(f"[dim]{phase} {what}[/dim]")
            return
        task = self.tasks.get(phase)
        if task is None:
            return
        if kind == "step":
            parts = [f"loss {e['loss']:.3f}", f"ppl {e['ppl']:.1f}"]
            if "eg_bits" in e:
                self.info[phase] = f"b/p {e['eg_bits']:.2f} H {e['entropy_bits']:.2f}" + (
                    f" ν {e['nu']:.2f}" if "nu" in e else "")
            parts.append(self.info.get(phase, ""))
            self.progress.update(task, completed=e["step"], info="  ".join(p for p in parts if p))
        elif kind in ("resume", "finished"):
            self.progress.update(task, completed=e["step"])
            self.progress.console.print(f"{phase}: {kind} at step {e['step']}")
        elif kind == "eval":
            self.progress.console.print(f"{phase} step {e['step']}: validation ppl {e['ppl']:.3f}")
        elif kind == "checkpoint":
            self.progress.console.print(f"[dim]{phase}: checkpoint {e['path']}[/dim]")


def render(report: dict[str, Any]) -> None:
    """Before / after / baseline table on stderr (people's output; stdout stays for --json)."""
    s = report["settings"]
    table = Table(title=f"BackSlash λ={s['lambda']:g} mode={s['mode']} step={s['step_label']} "
                        f"({report['after']['params']:,} weights)")
    # Short headers: the table must fit 80 columns when stderr is not a terminal.
    for col in ("", "ppl", "ppl@q", "EG b/p", "EG best", "H b/p", "zero@q", "zeros", "ν"):
        table.add_column(col, justify="right" if col else "left")

    def fmt(v: Any, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    rows = [("input", report["before"]), ("backslash", report["after"])]
    if report.get("baseline"):
        rows.append(("plain", report["baseline"]))
    for name, m in rows:
        table.add_row(name, fmt(m["val_ppl"], ".2f"), fmt(m["val_ppl_quantized"], ".2f"),
                      fmt(m["eg_bits_per_param"], ".3f"),
                      f"{fmt(m['eg_bits_per_param_best_k'], '.2f')} k{m['best_k']}",
                      fmt(m["entropy_bits_per_param"], ".3f"), fmt(m["zero_fraction_quantized"], ".3f"),
                      fmt(m["sparsity"], ".3f"), fmt(m["nu_mean"], ".2f"))
    console.print(table)
    console.print(f"ppl@q: selected weights quantized to the step; EG: exp-Golomb k={s['eg_k']} bits/param; "
                  "H: entropy bits/param; zero@q: share quantized to 0; zeros: exact zeros; ν: mean shape")
    cmp = report.get("reduction_vs_baseline") or report["reduction_vs_before"]
    ref = "the plain fine-tune" if report.get("reduction_vs_baseline") else "the input"
    console.print(f"vs {ref}: {fmt(100 * cmp['eg_bits_per_param'], '.1f')}% fewer exp-Golomb bits, "
                  f"{fmt(100 * cmp['entropy_bits_per_param'], '.1f')}% fewer entropy bits, "
                  f"perplexity {100 * cmp['val_ppl_increase']:+.2f}%")
    render_training(report["training"])
    from ggcompress.methods.backslash import REPORT_NAME

    console.print(f"wrote {report['output']} ({REPORT_NAME} inside)")


def render_training(t: dict[str, Any] | None) -> None:
    """One line each for sharding and the gradient codec, when the run used them."""
    if not t:
        return
    if t.get("sharding", {}).get("kind") == "fsdp" and t.get("rank_bytes"):
        console.print(f"FSDP: {t['rank_bytes']['total'] / 2**20:,.1f} MiB of parameters, gradients and AdamW "
                      "state on rank 0")
    c = t.get("comm")
    if c:
        console.print(f"gradients sent at {c['bits_per_value']:.2f} bits/value: "
                      f"{c['sent_bytes_per_step']:,.0f} bytes/step/rank vs "
                      f"{c['allreduce_bytes_per_step']:,.0f} for fp32 all-reduce")
