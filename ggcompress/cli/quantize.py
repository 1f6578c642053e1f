"""`ggcompress quantize-rf8`: write 8-bit (RF8/FP8/INT8) and low-bit GF-k checkpoints; show their cost."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ggcompress.cli._common import console, emit_json, expand_inputs, table_console
from ggcompress.reports.gates import check_gates, parse_gate

FORMAT_CHOICES = ("rf8", "e4m3", "e5m2", "int8", "gf3", "gf4", "gf5", "gf6", "gf8", "auto")
#: What decoding one weight costs in hardware: the point of RF8 is the first line.
DECODE_COST = {"rf8": "2 shifts + add", "fp8_e4m3": "fp8 multiply", "fp8_e5m2": "fp8 multiply",
               "int8": "int8 multiply", **{f"gf{k}": "table lookup + multiply" for k in (3, 4, 5, 6, 8)}}


@click.command("quantize-rf8")
@click.argument("checkpoints", nargs=-1, required=True, metavar="CHECKPOINT... | -")
@click.option("-o", "--output", "output", metavar="OUT",
              help="Output HF folder; with several inputs a parent folder holding one subfolder per input.")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES, case_sensitive=False), default="rf8",
              show_default=True, help="rf8 (shift-and-add), OCP FP8 e4m3 / e5m2, symmetric int8, or GF-k "
              "codebooks gf3..gf8 (k-bit packed codes, fp16 scales; use --granularity block:32), or auto "
              "(per tensor the lowest-error format within --bits).")
@click.option("--bits", type=float, default=None, metavar="B",
              help="With --format auto: bits per weight each tensor may use, scales and tables included.")
@click.option("--granularity", default="channel", show_default=True, metavar="tensor|channel|block:N",
              help="Which weights share one scale (float32; float16 for gf*): the tensor, one output row, or "
                   "N inputs of a row.")
@click.option("--layout", type=click.Choice(["ggcompress", "compressed-tensors"]), default="ggcompress",
              show_default=True,
              help="Output layout: ggcompress (U8 codes + scales, any format) or compressed-tensors (e4m3 / "
                   "int8 only; served by vLLM and SGLang without ggcompress).")
@click.option("--include", metavar="REGEX", help="Only quantize tensors whose name matches (re.search).")
@click.option("--exclude", metavar="REGEX", help="Keep tensors whose name matches dense (re.search).")
@click.option("--quantize-embeddings", is_flag=True,
              help="Also quantize embedding tables (loaded back dense).")
@click.option("--quantize-lm-head", is_flag=True,
              help="Also quantize an untied lm_head (a tied one stays dense).")
@click.option("--quantize-norms", is_flag=True, help="Also quantize 1-D norm weights (loaded back dense).")
@click.option("--compare", is_flag=True,
              help="Measure every format on the same tensors and show them side by side.")
@click.option("--dry-run", is_flag=True, help="Measure and report; write nothing.")
@click.option("--summary", "summary_only", is_flag=True, help="Show only the totals, not one row per tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
@click.option("--force", is_flag=True, help="Replace existing output folders.")
@click.option("--fail-if", "fail_if", multiple=True, metavar="EXPR",
              help="Exit 1 when a checkpoint's total satisfies EXPR, e.g. 'sqnr_db<30', 'ratio<3.9' "
                   "(repeatable; names as in the totals of --json; bits_per_param = bits_per_weight).")
def quantize_rf8(checkpoints: tuple[str, ...], output: str | None, fmt: str, granularity: str, layout: str,
                 include: str | None, exclude: str | None, quantize_embeddings: bool, quantize_lm_head: bool,
                 quantize_norms: bool, compare: bool, dry_run: bool, summary_only: bool, as_json: bool,
                 force: bool, fail_if: tuple[str, ...] = (), bits: float | None = None) -> None:
    """Quantize the linear weights of checkpoints to 8-bit and low-bit formats (codes + scales).

    Writes an ordinary HF folder (safetensors with U8 codes and `.weight_scale` tensors, config.json with
    a `quantization_config`, tokenizer files copied) that `ggcompress eval` and `ggcompress.load()`
    read, and reports SQNR, relative errors and sizes per tensor and in total. Embeddings, lm_head and
    norms stay dense unless asked. `--compare` adds every format side by side at the same size.

    Example: `ls ckpts/*/ | ggcompress quantize-rf8 - -o out/ --json` (one subfolder per input).
    """
    if output is None and not (dry_run or compare):
        raise click.UsageError("give -o OUT, or --dry-run / --compare to only measure")
    out = None if dry_run else output
    gates = [parse_gate(e) for e in fail_if]
    # The library imports torch (seconds): here, not at module level, so `quantize-rf8 --help` stays fast.
    from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint

    config = QuantizeConfig(format=fmt, granularity=granularity, include=include, exclude=exclude,
                            quantize_embeddings=quantize_embeddings, quantize_lm_head=quantize_lm_head,
                            quantize_norms=quantize_norms, compare=compare, layout=layout,
                            bits=bits).checked()
    sources = expand_inputs(checkpoints)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def tick(desc: str, done: int, total: int) -> None:
            if desc not in tasks:
                tasks[desc] = bar.add_task(escape(f"quantizing {desc}"), total=total)
            bar.update(tasks[desc], completed=done, total=total)

        doc = quantize_checkpoint(sources, out, config, force=force, progress=tick)
    if as_json:
        emit_json(doc)
    else:
        # Redirected stderr (a log file, CI) gets wide tables instead of folded 80-column ones.
        out_console = table_console()
        render(doc, out_console, per_tensor=not summary_only)
    failed = False
    for ck in doc["checkpoints"]:
        totals = ck["totals"]
        values = {k: v for k, v in totals.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        values.setdefault("bits_per_param", totals.get("bits_per_weight"))
        for f in check_gates(values, gates):
            console.print(f"[red]FAIL[/red] {escape(ck['source'])}: {escape(f.reason)}", soft_wrap=True)
            failed = True
    if failed:
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------------- rendering


def render(doc: dict[str, Any], out: Console, *, per_tensor: bool = True) -> None:
    """People's view of a ``ggcompress.quantize/1`` document."""
    settings = doc["settings"]
    for ck in doc["checkpoints"]:
        qc = ck["quantization_config"]
        gran = f"block:{qc['block_size']}" if qc["granularity"] == "block" else qc["granularity"]
        head = f"{ck['source']} — {qc['format']} v{qc['format_version']}, {gran}"
        if per_tensor:
            out.print(_tensor_table(ck, head, settings["compare"]))
        chosen = Counter(t["format"] for t in ck["tensors"] if t.get("format"))
        if chosen:
            out.print("formats chosen (auto): "
                      + ", ".join(f"{n} {escape(f)}" for f, n in chosen.most_common()))
        kept = Counter(t["reason"] for t in ck["tensors"] if t["action"] == "kept")
        if kept:
            out.print("kept dense: " + ", ".join(f"{n} {escape(r)}" for r, n in kept.most_common()))
        out.print(_totals_table(ck, head))
        if ck["compare"]:
            out.print(_compare_table(ck, qc["format"], gran))
        where = f"wrote {ck['output']}" if ck["written"] else "dry run: nothing written"
        out.print(f"{escape(where)}\n")


def _tensor_table(ck: dict[str, Any], head: str, compare: bool) -> Table:
    table = Table(title=escape(f"{head} — per quantized tensor"), title_justify="left")
    for col in ("tensor", "role", "shape", "dtype"):
        table.add_column(col, overflow="fold")
    formats = list(ck["compare"]) if compare and ck["compare"] else []
    if formats:
        for f in formats:
            table.add_column(f"{f} dB", justify="right")
    else:
        for col in ("SQNR dB", "mean rel err", "max rel err"):
            table.add_column(col, justify="right")
    for col in ("before", "after", "ratio"):
        table.add_column(col, justify="right")
    for t in ck["tensors"]:
        if t["action"] != "quantized":
            continue
        cells = [escape(t["name"]), t["role"], "×".join(map(str, t["shape"])), t["dtype"]]
        if formats:
            cells += [_db(t["compare"][f]["sqnr_db"]) for f in formats]
        else:
            cells += [_db(t["sqnr_db"]), _pct(t["mean_rel_err"]), _pct(t["max_rel_err"])]
        cells += [_size(t["bytes_before"]), _size(t["bytes_after"]), f"{t['ratio']:.2f}×"]
        table.add_row(*cells)
    return table


def _totals_table(ck: dict[str, Any], head: str) -> Table:
    t = ck["totals"]
    table = Table(title=escape(f"{head} — totals"), title_justify="left")
    for col in ("tensors", "SQNR dB", "mean rel err", "max rel err", "flushed", "bits/weight",
                "quantized before → after", "ratio", "checkpoint before → after", "ratio"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{t['quantized_tensors']}/{t['tensors']}", _db(t["sqnr_db"]), _pct(t["mean_rel_err"]),
        _pct(t["max_rel_err"]), _pct(t["flushed_frac"], 4), _num(t["bits_per_weight"], ".3f"),
        f"{_size(t['quantized_bytes_before'])} → {_size(t['quantized_bytes_after'])}",
        _ratio(t["quantized_ratio"]), f"{_size(t['bytes_before'])} → {_size(t['bytes_after'])}",
        _ratio(t["ratio"]),
    )
    return table


def _compare_table(ck: dict[str, Any], chosen: str, gran: str) -> Table:
    table = Table(title=f"formats side by side ({gran}; same size: 8-bit codes + float32 scales)",
                  title_justify="left",
                  caption="SQNR = 10·log10(Σw² / Σ(w−ŵ)²) over all quantized tensors; higher is better")
    for col in ("format", "SQNR dB", f"Δ vs {chosen}", "mean rel err", "max rel err", "flushed", "decode"):
        table.add_column(col, justify="right" if col != "format" else "left")
    base = ck["compare"][chosen]["sqnr_db"]
    for fmt, c in ck["compare"].items():
        delta = "" if fmt == chosen or c["sqnr_db"] is None or base is None else f"{c['sqnr_db'] - base:+.2f}"
        table.add_row(fmt, _db(c["sqnr_db"]), delta, _pct(c["mean_rel_err"]), _pct(c["max_rel_err"]),
                      _pct(c["flushed_frac"], 4), DECODE_COST.get(fmt, ""))
    return table


def _db(v: float | None) -> str:
    return "exact" if v is None else f"{v:.2f}"


def _pct(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _size(n: int | float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    exp = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024 ** exp:.1f} {('B', 'KiB', 'MiB', 'GiB', 'TiB')[exp]}"
