"""`ggcompress dequantize`: a ggcompress-quantized folder back to a plain dense checkpoint."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ggcompress.cli._common import console, emit_json


@click.command("dequantize")
@click.argument("checkpoint", metavar="QUANTIZED")
@click.option("-o", "--output", "output", required=True, metavar="DENSE",
              help="Output HF folder (with --to gguf: the .gguf file).")
@click.option("--to", "to", type=click.Choice(["hf", "gguf"]), default="hf", show_default=True,
              help="hf: a dense HF folder; gguf: one GGUF file llama.cpp reads (metadata and tokenizer from "
                   "the folder's gguf_metadata.json or --gguf-metadata).")
@click.option("--gguf-metadata", type=click.Path(dir_okay=False), metavar="FILE",
              help="With --to gguf: take the GGUF metadata and tokenizer from this .gguf (e.g. the original "
                   "file) or gguf_metadata.json.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="dtype of the decoded weights. [default: the dtype they had before quantization]")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
@click.option("--force", is_flag=True, help="Replace DENSE if it exists.")
def dequantize(checkpoint: str, output: str, to: str, gguf_metadata: str | None, dtype: str | None,
               as_json: bool, force: bool) -> None:
    """Decode every quantized weight of QUANTIZED (lut[code] · scale, rounded once) into DENSE.

    For tools that cannot read RF8/FP8/INT8 codes: the result is an ordinary HF folder with the weights
    ggcompress computes with; other tensors, tokenizer and config (minus quantization_config) are copied.
    `--to gguf` writes a GGUF file instead (QUANTIZED may then also be a dense HF folder).
    """
    if gguf_metadata is not None and to != "gguf":
        raise click.UsageError("--gguf-metadata only applies with --to gguf")
    # The library imports torch (seconds): here, not at module level, so `dequantize --help` stays fast.
    from ggcompress.formats.dequantize import dequantize_checkpoint, dequantize_to_gguf

    if to == "gguf":
        report = dequantize_to_gguf(checkpoint, output, dtype=dtype, gguf_metadata=gguf_metadata, force=force)
        if as_json:
            emit_json(report)
        else:
            console.print(f"wrote {escape(report['output'])}: {report['tensors']} tensors "
                          f"({report['dequantized_tensors']} decoded) as {report['dtype']}, "
                          f"{report['metadata_keys']} metadata keys, {report['bytes'] / 2**20:.1f} MiB")
        return
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
