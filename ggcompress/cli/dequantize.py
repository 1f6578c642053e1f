"""`ggcompress dequantize`: a ggcompress-quantized folder back to a plain dense checkpoint."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ggcompress.cli._common import console, emit_json
from ggcompress.formats.dequantize import dequantize_checkpoint


@click.command("dequantize")
@click.argument("checkpoint", metavar="QUANTIZED")
@click.option("-o", "--output", "output", required=True, metavar="DENSE", help="Output HF folder.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="dtype of the decoded weights. [default: the dtype they had before quantization]")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
@click.option("--force", is_flag=True, help="Replace DENSE if it exists.")
def dequantize(checkpoint: str, output: str, dtype: str | None, as_json: bool, force: bool) -> None:
    """Decode every quantized weight of QUANTIZED (lut[code] · scale, rounded once) into DENSE.

    For tools that cannot read RF8/FP8/INT8 codes: the result is an ordinary HF folder with the weights
    ggcompress computes with; other tensors, tokenizer and config (minus quantization_config) are copied.
    """
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(escape(f"dequantizing {checkpoint}"), total=None)
        report = dequantize_checkpoint(checkpoint, output, dtype=dtype, force=force,
                                       progress=lambda _, done, total: bar.update(task, completed=done,
                                                                                  total=total))
    if as_json:
        emit_json(report)
    else:
        console.print(f"wrote {escape(report['output'])}: {report['dequantized_tensors']} {report['format']} "
                      f"weights decoded to {report['dtype']}, {report['tensors']} other tensors copied "
                      f"({report['bytes_before'] / 2**20:.1f} MiB → {report['bytes_after'] / 2**20:.1f} MiB)")
