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
from ggcompress.io.qlayout import (
    check_tensors,
    decode_parts,
    part_names,
    read_scheme,
    unstored_shape,
    weight_name,
)

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
                                 dtype=target, module=module)
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


def dequantize_to_gguf(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    gguf_metadata: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``out`` as a GGUF file: quantized weights decoded (``lut[code] * scale``), others as they are.

    ``source`` may also be a dense HF folder. The GGUF metadata and tokenizer come from the folder's
    ``gguf_metadata.json`` (kept when it was made from a GGUF) or from ``gguf_metadata`` (a .gguf file or
    such a JSON). ``dtype``: bf16 / fp16 / fp32 for the matrices (1-D tensors stay F32); default: the
    dtype the weights had before quantization.
    """
    from ggcompress.io.gguf import read_metadata, write_gguf

    ck = open_checkpoint(source)
    scheme = read_scheme(ck)
    if scheme is not None:
        check_tensors(ck, scheme)
    if ck.config is None:
        raise GGError(f"{ck.source}: no config.json, so the GGUF tensor names cannot be derived; pass the "
                      "model folder")
    fields = read_metadata(ck.root, gguf_metadata)
    target = output_dtype(dtype, scheme.source_dtype if scheme else None)
    gguf_dtype = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[target]
    modules = scheme.modules if scheme else ()
    names = {m: part_names(scheme, m) for m in modules}
    role_of = {name: (m, role) for m, roles in names.items() for role, name in roles.items()}
    shapes = []
    for t in ck.tensors:
        hit = role_of.get(t.name)
        if hit is None:
            shapes.append((t.name, tuple(t.shape)))
        elif hit[1] == "codes":
            shapes.append((weight_name(hit[0]), _dense_shape(ck, scheme, hit[0], t.shape, names[hit[0]])))

    def tensors():
        pending: dict[str, dict[str, torch.Tensor]] = {}  # a module's parts until all are read (adjacent)
        for info, t in ck.iter_tensors():
            hit = role_of.get(info.name)
            if hit is None:
                yield info.name, t
                continue
            module, role = hit
            got = pending.setdefault(module, {})
            got[role] = t
            if len(got) == len(names[module]):
                del pending[module]
                yield weight_name(module), decode_parts(got, scheme.for_module(module),
                                                        f"{info.file}: {weight_name(module)}", module=module)

    # the writer expects tensors in ``shapes`` order; codes and their scale are adjacent in our files
    order = [n for n, _ in shapes]
    report = write_gguf(_in_order(tensors, order), shapes, ck.config, fields, out, dtype=gguf_dtype,
                        force=force, inputs=[ck.source])
    return {"schema": SCHEMA, "ggcompress_version": __version__, "source": ck.source, "to": "gguf",
            "format": scheme.format if scheme else None, "dequantized_tensors": len(modules), **report}


def _dense_shape(ck: Any, scheme: Any, module: str, codes_shape: tuple[int, ...],
                 names: dict[str, str]) -> tuple[int, ...]:
    """The decoded weight's shape, known before decoding: GF stores it, other formats' codes have it
    (after the layout's leading axis; transposed back for a module listed in ``transposed``)."""
    if "shape" in names:
        shape = tuple(int(d) for d in ck.get(names["shape"]).tolist())
    else:
        shape = unstored_shape(tuple(codes_shape), scheme.for_module(module), names["codes"])
    return shape[::-1] if module in scheme.transposed else shape


def _in_order(tensors, order: list[str]):
    """Yield ``tensors()`` in ``order`` (buffering only the few that arrive early)."""
    def gen():
        early: dict[str, torch.Tensor] = {}
        it = tensors()
        for name in order:
            while name not in early:
                try:
                    n, t = next(it)
                except StopIteration:
                    raise GGError(f"tensor {name} was not produced") from None
                early[n] = t
            yield name, early.pop(name)
    return gen
