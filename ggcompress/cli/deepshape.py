"""`ggcompress deepshape`: reshape weight histograms toward a peakier GG, fine-tune, report the trade-off."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ggcompress.cli._common import console, emit_json
from ggcompress.cli.backslash import render_training
from ggcompress.names import DEEPSHAPE_SCOPES, SHARDS, TRAIN_SAVE_DTYPES


@click.command("deepshape")
@click.argument("model", metavar="MODEL")
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Output folder: the reshaped + fine-tuned HF model and deepshape_report.json "
              "(with --sweep: the curve JSON and PNG only).")
@click.option("--data", required=True, metavar="CALIB",
              help="Calibration text: .txt/.jsonl, a folder, or a dataset.")
@click.option("--validation", metavar="FILE",
              help="Validation text (default: the last 5% of CALIB's blocks).")
@click.option("--shape-scale", type=float, default=0.8, show_default=True,
              help="Target β' = factor × fitted β.")
@click.option("--scale-scale", type=float, default=0.6, show_default=True,
              help="Target α' = factor × fitted α.")
@click.option("--scope", type=click.Choice(DEEPSHAPE_SCOPES), default="tensor", show_default=True,
              help="Fit and remap per tensor, or over all selected weights at once (the reference).")
@click.option("--core-threshold", type=int, default=None, metavar="N",
              help="The core ends at the first grid magnitude with ≤ N values [default: 1000 global; "
              "1/300 of the peak count per tensor].")
@click.option("--step", default="2^-13", show_default=True, metavar="STEP",
              help="Quantization grid of the remap and of the rate measure: 2^-S, S or a number.")
@click.option("--eg-k", type=click.IntRange(0, 16), default=0, show_default=True, help="Exp-Golomb order k.")
@click.option("--include", metavar="REGEX",
              help="Only linear-layer weights (Linear, Conv1D) whose name matches (re.search).")
@click.option("--exclude", metavar="REGEX", help="Skip linear-layer weights whose name matches (re.search).")
@click.option("--finetune-steps", type=click.IntRange(min=0), default=100, show_default=True,
              help="Recovery fine-tune optimizer steps (0: reshape only).")
@click.option("--lr", type=float, default=1e-5, show_default=True, help="Fine-tune peak learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--block-size", type=click.IntRange(min=2), default=256, show_default=True,
              help="Tokens per training/validation block (at most the model's context).")
@click.option("--eval-blocks", type=click.IntRange(min=0), default=64, show_default=True,
              help="Validation blocks per perplexity (0: all).")
@click.option("--distill", is_flag=True, help="Add KL(original ‖ student) on next-token distributions.")
@click.option("--distill-weight", type=float, default=1.0, show_default=True, help="Weight of the KL term.")
@click.option("--rate-lambda", type=float, default=0.0, show_default=True, metavar="L",
              help="Keep a BackSlash rate term (decoupled, λ = L) during the fine-tune; 0: off.")
@click.option("--sweep", metavar="S:A,...",
              help="Run several factor pairs SHAPE:SCALE (e.g. 1:0.8,0.8:0.6,0.6:0.4) and write the curve.")
@click.option("--save-dtype", type=click.Choice(TRAIN_SAVE_DTYPES), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--shard", type=click.Choice(SHARDS), default="ddp", show_default=True,
              help="Under torchrun: ddp (a full replica per rank) or fsdp (FSDP2: the fine-tune's weights, "
              "gradients and AdamW state divided over the ranks; the remap runs before sharding).")
@click.option("--cpu-offload", is_flag=True, help="With --shard fsdp: keep shards and optimizer state in "
              "host memory.")
@click.option("--grad-bits", type=click.FloatRange(0, 16), default=0, show_default=True, metavar="B",
              help="DDP under torchrun: send gradients quantized on a GG-fitted grid at ~B bits/value, "
              "exp-Golomb coded, with error feedback (0: plain fp32 all-reduce).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON report on stdout.")
def deepshape_cmd(model: str, out: str, data: str, validation: str | None, shape_scale: float,
                  scale_scale: float, scope: str, core_threshold: int | None, step: str, eg_k: int,
                  include: str | None, exclude: str | None, finetune_steps: int, lr: float, batch_size: int,
                  block_size: int, eval_blocks: int, distill: bool, distill_weight: float, rate_lambda: float,
                  sweep: str | None, save_dtype: str, seed: int, device: str, shard: str, cpu_offload: bool,
                  grad_bits: float, force: bool, as_json: bool) -> None:
    """Post-training reshaping (DeepShape): fit a GG to each weight tensor's dense core, remap the core
    by rank onto a peakier, narrower GG histogram on the quantization grid (order kept, tails kept),
    then fine-tune on CALIB to recover quality. Reports bits/param (exp-Golomb, entropy), sparsity and
    validation perplexity for the original, the reshaped and the fine-tuned model. Under
    `torchrun --nproc-per-node N -m ggcompress deepshape ...` the fine-tune is data-parallel (DDP, or
    sharded with --shard fsdp); only rank 0 writes.
    """
    # The library imports torch (seconds): here, not at module level, so `deepshape --help` stays fast.
    from ggcompress.methods.deepshape import DeepShapeConfig, parse_sweep, run_deepshape, run_sweep
    from ggcompress.methods.train import TrainConfig, distributed
    from ggcompress.stats.rate import parse_step

    cfg = DeepShapeConfig(shape_scale=shape_scale, scale_scale=scale_scale, scope=scope,
                          core_threshold=core_threshold, step=parse_step(step), eg_k=eg_k, include=include,
                          exclude=exclude, distill=distill, distill_weight=distill_weight,
                          rate_lambda=rate_lambda, save_dtype=save_dtype)
    tcfg = TrainConfig(steps=finetune_steps, lr=lr, batch_size=batch_size, block_size=block_size, seed=seed,
                       eval_blocks=eval_blocks, save_every=0, device=device, shard=shard,
                       cpu_offload=cpu_offload, grad_bits=grad_bits)
    factors = parse_sweep(sweep) if sweep else None
    with distributed(device) as info:
        with _Display(disable=as_json or not info.is_main) as show:
            if factors:
                doc = run_sweep(model, data, out, cfg, tcfg, factors, validation=validation, force=force,
                                progress=show)
            else:
                doc = run_deepshape(model, data, out, cfg, tcfg, validation=validation, force=force,
                                    progress=show)
        if not info.is_main:
            return
    if as_json:
        emit_json(doc)
        return
    if factors:
        _print_sweep(doc, out)
    else:
        _print_report(doc)


class _Display:
    """Phase lines and a fine-tune progress bar on stderr."""

    def __init__(self, disable: bool):
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                            disable=disable, transient=True)
        self.task: Any = None
        self.disable = disable

    def __enter__(self) -> _Display:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, e: dict[str, Any]) -> None:
        if e.get("event") == "note":  # always shown (stderr): the run differs from what was asked
            self.bar.console.print(f"note: {escape(e['message'])}")
            return
        if self.disable:
            return
        if e.get("event") == "phase" and e.get("phase") != "finetune":
            what = e.get("what") or e.get("output") or e.get("model") or ""
            if e.get("phase") == "sweep":
                what = f"{e['index'] + 1}/{e['total']}: {e['shape_scale']:g}·β, {e['scale_scale']:g}·α"
            self.bar.console.print(f"[dim]{e['phase']}[/dim] {what}")
        elif e.get("event") == "phase":
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task("fine-tune", total=e.get("total"), info="")
        elif e.get("event") == "step" and self.task is not None:
            info = f"loss {e['loss']:.3f}" + (f" kl {e['kl']:.3f}" if "kl" in e else "")
            self.bar.update(self.task, completed=e["step"], info=info)


def _print_report(doc: dict[str, Any]) -> None:
    table = Table(title=f"DeepShape {doc['model']} → {doc['output']}")
    for col in ("", "val ppl", "val ppl (quantized)", "EG bits/param", "entropy bits/param", "sparsity"):
        table.add_column(col, justify="left" if not col else "right")
    for key in ("original", "reshaped", "finetuned"):
        r = doc.get(key)
        if r:
            table.add_row(key, _f(r["val_ppl"]), _f(r["val_ppl_quantized"]), _f(r["eg_bits_per_param"]),
                          _f(r["entropy_bits_per_param"]), f"{r['sparsity']:.2%}")
    console.print(table)
    v = doc["vs_original"]
    console.print(f"vs original: {v['eg_bits_reduction']:.1%} fewer exp-Golomb bits, "
                  f"{v['entropy_bits_reduction']:.1%} fewer entropy bits, "
                  f"perplexity {v['val_ppl_increase']:+.2%}")
    render_training(doc.get("training"))


def _print_sweep(doc: dict[str, Any], out: str) -> None:
    table = Table(title=f"DeepShape sweep {doc['model']} (plot: {out}/deepshape_sweep.png)")
    for col in ("β'/β", "α'/α", "ppl reshaped", "ppl fine-tuned", "EG bits", "Δ EG bits", "Δ ppl"):
        table.add_column(col, justify="right")
    o = doc["original"]
    table.add_row("original", "", _f(o["val_ppl"]), "", _f(o["eg_bits_per_param"]), "", "")
    for p in doc["points"]:
        final = p["finetuned"] or p["reshaped"]
        table.add_row(f"{p['shape_scale']:g}", f"{p['scale_scale']:g}", _f(p["reshaped"]["val_ppl"]),
                      _f(p["finetuned"]["val_ppl"]) if p["finetuned"] else "", _f(final["eg_bits_per_param"]),
                      f"{-p['vs_original']['eg_bits_reduction']:+.1%}",
                      f"{p['vs_original']['val_ppl_increase']:+.2%}")
    console.print(table)


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"
