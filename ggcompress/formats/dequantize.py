"""`dequantize`: turn a ggcompress-quantized folder back into a plain dense checkpoint.

Why: tools that cannot read 8-bit codes (other inference stacks, fine-tuning scripts) still get the
quantized model, with exactly the weights ggcompress computes with: each ``X.weight`` is decoded as
``lut[code] * scale`` in float32 and rounded once to the output dtype; ``X.weight_scale`` is dropped and
every other tensor is copied unchanged. config.json loses its ``quantization_config``. Streams one tensor
at a time and writes atomically, like every ggcompress output.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ggcompress import __version__
from ggcompress.errors import GGError
from ggcompress.io.checkpoint import TORCH_TO_ST, CheckpointWriter, open_checkpoint
from ggcompress.io.qlayout import check_tensors, decode_parts, part_names, read_scheme, weight_name

SCHEMA = "ggcompress.dequantize/1"
#: --dtype choices; None keeps the dtype the weights had before quantization (``source_dtype``).
OUTPUT_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def output_dtype(name: str | None, source_dtype: str | None) -> torch.dtype:
    """The dtype dequantized weights are written in: ``name`` if given, else the recorded source dtype."""
    key = name if name is not None else (source_dtype or "float32")
    if key not in OUTPUT_DTYPES:
        raise GGError(f"unknown dtype {key!r}: choose from bf16, fp16, fp32")
    return OUTPUT_DTYPES[key]


def dequantize_checkpoint(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``out``, a dense copy of the quantized checkpoint ``source``; returns a small report."""
    ck = open_checkpoint(source)
    scheme = read_scheme(ck)
    if scheme is None:
        raise GGError(f"{ck.source}: not a ggcompress-quantized checkpoint (no quantization_config)")
    check_tensors(ck, scheme)
    target = output_dtype(dtype, scheme.source_dtype)
    names = {m: part_names(scheme, m) for m in scheme.modules}
    role_of = {name: (m, role) for m, roles in names.items() for role, name in roles.items()}
    notify = progress or (lambda desc, done, total: None)
    pending: dict[str, dict[str, torch.Tensor]] = {}  # a module's parts until all are read (adjacent)
    bytes_before = bytes_after = 0
    done = 0
    with CheckpointWriter(out, force=force, inputs=[ck.source]) as writer:
        writer.metadata = {"format": "pt"}
        for info, t in ck.iter_tensors():
            bytes_before += info.nbytes
            done += 1
            notify(ck.source, done, len(ck.tensors))
            hit = role_of.get(info.name)
            if hit is None:
                writer.add_tensor(info.name, t)
                bytes_after += info.nbytes
                continue
            module, role = hit
            got = pending.setdefault(module, {})
            got[role] = t
            if len(got) < len(names[module]):
                continue
            dense = decode_parts(got, scheme.for_module(module), f"{info.file}: {weight_name(module)}",
                                 dtype=target)
            writer.add_tensor(weight_name(module), dense)
            bytes_after += dense.numel() * dense.element_size()
            del pending[module], dense
        writer.copy_support_files(ck.root, skip=["config.json"])
        config = ck.config
        if config is not None:
            config = {k: v for k, v in config.items() if k != "quantization_config"}
            writer.write_json("config.json", config)
    return {
        "schema": SCHEMA,
        "ggcompress_version": __version__,
        "source": ck.source,
        "output": str(Path(out).expanduser().absolute()),
        "format": scheme.format,
        "granularity": scheme.granularity_spec,
        "dtype": TORCH_TO_ST[target],
        "dequantized_tensors": len(scheme.modules),
        "tensors": len(ck.tensors) - len(role_of),  # copied unchanged (each module's parts become one)
        "bytes_before": bytes_before,
        "bytes_after": bytes_after,
    }
