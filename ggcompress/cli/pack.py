"""`ggcompress pack` / `unpack`: entropy-coded .ggz containers, and restoring them to HF folders."""

from __future__ import annotations

import math
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ggcompress.cli._common import console, emit_json, expand_inputs, table_console
from ggcompress.reports.gates import parse_gate


class _EgOrder(click.ParamType):
    name = "K|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            k = int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer or 'auto'", param, ctx)
        if not 0 <= k <= 16:
            self.fail(f"{k} is not in 0..16", param, ctx)
        return k


@click.command("pack")
@click.argument("checkpoints", nargs=-1, required=True, metavar="CHECKPOINT... | -")
@click.option("-o", "--output", "output", required=True, metavar="OUT",
              help="The .ggz file; with several inputs a folder receiving <name>.ggz per input.")
@click.option("--quant", metavar="step:S|rf8|gfK|none",
              help="step:S quantizes weights to multiples of 2^-S (S: 8, 2^-10, or a number such as 0.004); "
                   "rf8 / gf3..gf8 store quantize-rf8's codes (GF-k: packed, give --granularity block:32); "
                   "none stores every tensor bit-exactly (byte planes, rANS). [default: step:8; the codes "
                   "of an already quantized input]")
@click.option("--lossless", is_flag=True, help="Same as --quant none: every tensor restored bit for bit.")
@click.option("--target-sqnr", "target_sqnr", type=float, metavar="DB",
              help="Choose a step 2^-S per weight tensor (rate-distortion allocation; whole S for bf16/fp16, "
                   "quarter S for fp32) for the fewest coded bits at this SQNR over the quantized tensors.")
@click.option("--bits-per-param", "bits_per_param", type=float, metavar="B",
              help="Rate-distortion allocation for the highest SQNR within B coded bits per quantized "
                   "parameter.")
@click.option("--max-kl", "max_kl", type=float, metavar="K",
              help="Choose a step per weight tensor for the fewest coded bits whose packed model keeps the "
                   "mean next-token KL(original || packed) on --calibration text at or below K nats (Fisher-"
                   "weighted allocation, calibrated by running the packed model). Causal LMs only.")
@click.option("--calibration", "--calib", "calibration", type=click.Path(exists=True), metavar="TEXT",
              help="The text --max-kl is measured on (.txt, .jsonl or a folder of them): use text like your "
                   "model's real inputs. Required with --max-kl.")
@click.option("--calibration-windows", "--calib-windows", "calibration_windows", type=click.IntRange(min=1),
              default=8, show_default=True, metavar="N",
              help="Windows for the Fisher estimate, and as many other (held-out) windows for the KL.")
@click.option("--calibration-length", "--calib-length", "calibration_length", type=click.IntRange(min=2),
              default=128, show_default=True, metavar="T",
              help="Tokens per calibration window, clamped to the model's context.")
@click.option("--step-granularity", "step_granularity", type=click.Choice(["tensor", "row"]),
              default="tensor", show_default=True,
              help="With --target-sqnr / --bits-per-param / --max-kl: one step per weight tensor, or one "
                   "power-of-two step per row (output channel), stored as an int8 per row (format "
                   "version 3).")
@click.option("--rdoq", is_flag=True,
              help="Rate-distortion-optimized rounding of step symbols: a weight moves one step toward zero "
                   "when the bits saved outweigh the added error (decoding unchanged).")
@click.option("--trellis", is_flag=True,
              help="Dependent (trellis-coded) quantization, as NNCodec/VVC: two interleaved quantizers and "
                   "an 8-state machine, Viterbi-searched; step:S's SQNR in 0.20-0.32 bit/param less. With "
                   "--quant step:S, --target-sqnr or --max-kl (best with --coder rans; format version 4).")
@click.option("--workers", type=click.IntRange(0, 256), default=0, show_default=True,
              help="Threads coding lossless chunks (0: the usable CPUs, at most 4).")
@click.option("--coder", type=click.Choice(["eg", "rans"]), default="eg", show_default=True,
              help="eg: exp-Golomb on frequency ranks (the papers' measure, = analyze's eg_bits); "
                   "rans: near-entropy rANS (constriction).")
@click.option("--eg-k", type=_EgOrder(), default="0", show_default=True,
              help="Exp-Golomb order k, or 'auto' for the best order per tensor (also sets the reference "
                   "eg_bits reported with --coder rans).")
@click.option("--granularity", default="channel", show_default=True, metavar="tensor|channel|block:N",
              help="Scale granularity of --quant rf8 / gfK on a dense checkpoint.")
@click.option("--include", metavar="REGEX",
              help="Only quantize eligible tensors whose name matches (re.search); the rest stay lossless.")
@click.option("--exclude", metavar="REGEX", help="Store tensors whose name matches losslessly (re.search).")
@click.option("--fail-if", "fail_if", multiple=True, metavar="EXPR",
              help="Exit 1 when a summary metric satisfies EXPR, e.g. 'bits_per_param>4.5', 'ratio<3', "
                   "'sqnr_db<30' (repeatable; names in docs/pack.md).")
@click.option("--tensors", "per_tensor", is_flag=True, help="Also show one row per coded tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
@click.option("--force", is_flag=True, help="Replace existing containers.")
def pack_cmd(checkpoints: tuple[str, ...], output: str, quant: str | None, lossless: bool,
             target_sqnr: float | None, bits_per_param: float | None, max_kl: float | None,
             calibration: str | None, calibration_windows: int, calibration_length: int,
             step_granularity: str, rdoq: bool, trellis: bool, workers: int, coder: str, eg_k: int | None,
             granularity: str, include: str | None, exclude: str | None, fail_if: tuple[str, ...],
             per_tensor: bool, as_json: bool, force: bool) -> None:
    """Quantize and entropy-code checkpoints into self-describing .ggz containers.

    Weights (float tensors of 2+ dims) are quantized to a uniform step (or RF8 codes), ranked by
    frequency and coded; norms, biases, scales, integer buffers, config and tokenizer files are stored
    as they are. `ggcompress unpack` restores the HF folder; `ggcompress eval` reads .ggz directly.

    `--lossless` stores every tensor bit-exactly instead; `--target-sqnr` / `--bits-per-param` choose a
    step per tensor for a quality or size target; `--max-kl K --calibration TEXT` for a KL target.

    Example: `ggcompress pack model/ -o model.ggz --quant step:10 --coder rans --fail-if 'ratio<3'`.
    """
    gates = tuple(parse_gate(e) for e in fail_if)
    _check_kl_usage(max_kl, calibration, quant, lossless, target_sqnr, bits_per_param, rdoq)
    if lossless:
        if quant is not None and quant.strip().lower() not in ("none", "lossless"):
            raise click.UsageError(f"--lossless and --quant {quant} contradict each other; give one")
        quant = "none"
    # The library imports torch (seconds): here, not at module level, so `pack --help` stays fast.
    from ggcompress.codec.pack import PackOptions, pack

    options = PackOptions(quant=quant, coder=coder, eg_k=eg_k, granularity=granularity, include=include,
                          exclude=exclude, gates=gates, workers=workers, target_sqnr_db=target_sqnr,
                          bits_per_param=bits_per_param, rdoq=rdoq, max_kl=max_kl, calibration=calibration,
                          calibration_windows=calibration_windows,
                          calibration_length=calibration_length,
                          step_granularity=step_granularity, trellis=trellis).checked()
    sources = expand_inputs(checkpoints)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        tasks: dict[str, Any] = {}

        def tick(desc: str, done: int, total: int) -> None:
            if desc not in tasks:
                tasks[desc] = bar.add_task(escape(f"packing {desc}"), total=max(total, 1))
            bar.update(tasks[desc], completed=done)

        doc = pack(sources, output, options, force=force, progress=tick)
    if as_json:
        emit_json(doc)
    else:
        out = table_console()
        render_pack(doc, out, per_tensor=per_tensor)
    _report_gates(doc)


def _check_kl_usage(max_kl: float | None, calibration: str | None, quant: str | None, lossless: bool,
                    target_sqnr: float | None, bits_per_param: float | None, rdoq: bool) -> None:
    """--max-kl's usage errors (exit 2), before anything is read."""
    if max_kl is None:
        if calibration is not None:
            raise click.UsageError("--calibration is the text of --max-kl; give --max-kl K too")
        return
    if not (math.isfinite(max_kl) and max_kl > 0):
        raise click.BadParameter(f"{max_kl:g} is not a positive number of nats", param_hint="'--max-kl'")
    clash = [flag for flag, given in (("--target-sqnr", target_sqnr is not None),
                                      ("--bits-per-param", bits_per_param is not None),
                                      ("--lossless", lossless), (f"--quant {quant}", quant is not None),
                                      ("--rdoq", rdoq)) if given]
    if clash:
        raise click.UsageError(f"--max-kl chooses per-tensor steps for a KL target; it does not combine with "
                               f"{clash[0]}")
    if calibration is None:
        raise click.UsageError("--max-kl needs --calibration TEXT: the text the KL is measured on (use text "
                               "like the model's real inputs)")


@click.command("unpack")
@click.argument("container", metavar="CONTAINER.ggz")
@click.option("-o", "--output", "output", required=True, metavar="FOLDER", help="The HF folder to write.")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def unpack_cmd(container: str, output: str, as_json: bool, force: bool) -> None:
    """Restore the HF folder (safetensors + config + tokenizer files) a .ggz container holds.

    Quantized weights come back as their dequantized values (symbol·step in the source dtype) or as the
    RF8 codes + scales quantize-rf8 writes; every tensor is checked against its checksums first.

    Example: `ggcompress unpack model.ggz -o model-restored/`.
    """
    from ggcompress.codec.pack import unpack  # imports torch: not at module level (fast --help)

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(escape(f"unpacking {container}"), total=None)

        def tick(desc: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, 1))

        doc = unpack(container, output, force=force, progress=tick)
    if as_json:
        emit_json(doc)
    else:
        console.print(f"wrote {escape(doc['output'])}: {doc['tensors']} tensors, {doc['files']} files, "
                      f"{_size(doc['container_bytes'])} → {_size(doc['restored_bytes'])} "
                      f"in {doc['seconds']:.1f} s ({doc['mb_per_s']:.0f} MB/s)")


# ---------------------------------------------------------------------------------------------- rendering


def render_pack(doc: dict[str, Any], out: Console, *, per_tensor: bool = False) -> None:
    """People's view of a ``ggcompress.pack/1`` document."""
    for ck in doc["checkpoints"]:
        coder = "byte planes + rANS" if ck["quantization"]["method"] == "none" else doc["settings"]["coder"]
        how = f"{_quant_label(ck['quantization'])}, {coder}"
        head = f"{ck['source']} → {ck['output']} ({how})"
        if per_tensor:
            out.print(_tensor_table(ck, head))
        out.print(_summary_table(ck, head))
        if "max_kl" in (ck.get("allocation") or {}):
            out.print(_kl_table(ck["allocation"]))


def _quant_label(q: dict[str, Any]) -> str:
    if q["method"] == "none":
        return "lossless"
    if q["method"] == "steps":
        goal = (f"SQNR {q['target_sqnr_db']:g} dB" if "target_sqnr_db" in q
                else f"KL ≤ {q['max_kl']:g} nats" if "max_kl" in q
                else f"{q['bits_per_param']:g} bits/param")
        trellis = f", {q['trellis']} trellis-coded" if q.get("trellis") else ""
        return f"per-{'row' if q.get('granularity') == 'row' else 'tensor'} steps for {goal}{trellis}"
    if q["method"] == "step":
        return f"step {q['step_label']}"
    if q["method"] == "trellis":
        return f"trellis at step {q['step_label']} ({q['states']} states)"
    scheme = q["scheme"]
    gran = f"block:{scheme['block_size']}" if scheme["granularity"] == "block" else scheme["granularity"]
    return f"{scheme['format']} codes, {gran}"


def _tensor_table(ck: dict[str, Any], head: str) -> Table:
    table = Table(title=escape(f"{head} — per coded tensor (bits/param)"), title_justify="left")
    stepped = any("step" in t for t in ck["tensors"])
    for col in ("tensor", "shape", "dtype", "coder", "distinct") + (("step",) if stepped else ()):
        table.add_column(col, overflow="fold")
    for col in ("stored", "payload", "tables", "entropy", "eg ref", "bytes"):
        table.add_column(col, justify="right")
    for t in ck["tensors"]:
        if t["encoding"] == "raw":
            continue
        n = t["numel"]
        table.add_row(escape(t["name"]), "×".join(map(str, t["shape"])), t["dtype"], t["coder"],
                      _num(t["distinct"], "d"), *((t.get("step", ""),) if stepped else ()),
                      _num(t["bits_per_param"], ".3f"),
                      _num(t["payload_bits"] / n if n else None, ".3f"),
                      _num(t["table_bits"] / n if n else None, ".4f"),
                      _num(t["entropy_bits_per_param"], ".3f"),
                      _num(t["eg_bits_per_param"], ".3f"), _size(t["stored_bytes"]))
    return table


def _summary_table(ck: dict[str, Any], head: str) -> Table:
    s = ck["summary"]
    table = Table(title=escape(f"{head} — totals"), title_justify="left",
                  caption="bits/param of the coded tensors; ratio = source tensor bytes / container bytes")
    cols = ("coded tensors", "source → container", "ratio", "vs bf16", "stored b/p", "payload", "tables",
            "entropy", "over entropy", "eg ref", "SQNR dB", "time", "MB/s")
    for col in cols:
        table.add_column(col, justify="right")
    table.add_row(
        f"{s['coded_tensors']}/{s['tensors']}", f"{_size(s['source_bytes'])} → {_size(s['container_bytes'])}",
        _num(s["ratio"], ".3f", "×"), _num(s["ratio_bf16"], ".3f", "×"),
        _num(s["coded_bits_per_param"], ".3f"),
        _num(s["payload_bits_per_param"], ".3f"), _num(s["table_bits_per_param"], ".4f"),
        _num(s["entropy_bits_per_param"], ".3f"), _pct(s["overhead_vs_entropy"]),
        _num(s["eg_bits_per_param"], ".3f"), _num(s.get("sqnr_db"), ".2f"), f"{s['seconds']:.1f} s",
        _num(s["mb_per_s"], ".0f"),
    )
    return table


def _kl_table(a: dict[str, Any]) -> Table:
    """The --max-kl search: each measured allocation, then the calibration's cost in the caption."""
    c = a["calibration"]
    table = Table(title=f"KL search: {a['method']}-weighted allocation, max KL {a['max_kl']:g} nats",
                  title_justify="left", caption=escape(
                      f"chosen: predicted KL {a['predicted_kl']:.4g}, measured {a['measured_kl']:.4g} nats "
                      f"(max {a['max_kl']:g}); Fisher: {c['fisher_windows']} windows × {c['window_tokens']} "
                      f"tokens, {c['fisher_seconds_cpu']:.1f} s CPU; KL: {c['kl_tokens']} held-out tokens, "
                      f"{a['kl_evaluations']} evaluations, {a['kl_seconds_cpu']:.1f} s CPU"))
    for col in ("#", "coded b/p (predicted)", "predicted KL", "measured KL", "meets"):
        table.add_column(col, justify="right")
    for i, e in enumerate(a["evaluations"], 1):
        table.add_row(str(i), f"{e['coded_bits_per_param']:.3f}", f"{e['predicted_kl']:.4g}",
                      f"{e['measured_kl']:.4g}", "yes" if e["meets"] else "no")
    return table


def _report_gates(doc: dict[str, Any]) -> None:
    """FAIL lines on stderr and exit 1 when a --fail-if gate broke (after the report was printed)."""
    missing = False
    for ck in doc["checkpoints"]:
        for f in ck["failed_gates"]:
            console.print(f"[red]FAIL[/red] {escape(ck['source'])}: {escape(f['reason'])}", soft_wrap=True)
            missing = missing or f["value"] is None
    if not doc["passed"]:
        if missing:
            summary = doc["checkpoints"][-1]["summary"]
            names = sorted(k for k, v in summary.items() if isinstance(v, int | float))
            console.print(f"metrics available to gates: {escape(', '.join(names))}", soft_wrap=True)
        raise SystemExit(1)


def _size(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _num(v: float | None, fmt: str, suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{fmt}}{suffix}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f}%"
