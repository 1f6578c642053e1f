"""`quantize-rf8`: write a checkpoint's weights as 8-bit codes (RF8, FP8 or INT8) and report what it cost.

Why this shape: a checkpoint is streamed tensor by tensor (read one, encode it, measure it, write it), so
memory stays near a few copies of the largest tensor whatever the model size, and the report (SQNR,
relative errors, bytes) is computed on exactly what is written. Which tensors are quantized is decided
up front from the headers (``plan``), so the scheme, with its list of modules, is known before the
first byte is written. The layout of the output is in ``qlayout`` and docs/quantize-rf8.md.

The library returns the ``ggcompress.quantize/1`` document and never prints.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ggcompress import __version__
from ggcompress.errors import GGError, check_patterns, nothing_selected
from ggcompress.formats import (
    QuantizedTensor,
    available_formats,
    canonical_format,
    error_stats,
    get_codec,
    parse_granularity,
)
from ggcompress.formats.gf import GFCodec, GFTensor, gf_bits, gf_decode, is_gf
from ggcompress.io.checkpoint import (
    DTYPES,
    Checkpoint,
    CheckpointWriter,
    TensorInfo,
    check_output_path,
    open_checkpoint,
)
from ggcompress.io.qlayout import SCALE_SUFFIX, Scheme, part_names, read_scheme, stored_parts
from ggcompress.reports.jsonsafe import json_safe
from ggcompress.stats.roles import role_of

SCHEMA = "ggcompress.quantize/1"
#: File stems that say nothing about the model: such inputs are named after their folder instead.
GENERIC_STEMS = re.compile(r"^(model|pytorch_model|consolidated|weights|diffusion_pytorch_model)"
                           r"(-\d+-of-\d+)?$")
_CHUNK = 1 << 22

#: progress(description, tensors done, tensors in this checkpoint)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class QuantizeConfig:
    """What to quantize and how; defaults match the CLI (RF8, per-channel, linear weights only)."""

    format: str = "rf8"  # rf8 | fp8_e4m3 (e4m3) | fp8_e5m2 (e5m2) | int8 | gf3 | gf4 | gf5 | gf6 | gf8
    granularity: str = "channel"  # tensor | channel | block:N
    include: str | None = None  # regex (re.search) on tensor names, applied after the role rules
    exclude: str | None = None
    quantize_embeddings: bool = False
    quantize_lm_head: bool = False  # an lm_head tied to the embeddings always stays dense
    quantize_norms: bool = False
    compare: bool = False  # also measure every other format on the same tensors
    layout: str = "ggcompress"  # ggcompress (U8 codes + _scale) | compressed-tensors (vLLM / SGLang)
    bits: float | None = None  # format "auto" only: the bits/weight budget of each tensor

    def checked(self) -> QuantizeConfig:
        """Validate names and patterns now, so a typo fails before any work (one clear line)."""
        fmt = canonical_format(self.format)
        if fmt == "auto" and (self.bits is None or not self.bits > 0):
            raise GGError("--format auto needs --bits B (bits per weight, scales and tables included)")
        if fmt != "auto" and self.bits is not None:
            raise GGError("--bits only applies to --format auto")
        if fmt == "auto" and self.compare:
            raise GGError("--compare measures one format against the others; it does not apply to auto")
        parse_granularity(self.granularity)
        check_patterns(self.include, self.exclude)
        if self.layout == "compressed-tensors":
            from ggcompress.integrations.compressed_tensors import check_settings

            check_settings(self.format, self.granularity, quantize_embeddings=self.quantize_embeddings,
                           quantize_norms=self.quantize_norms)
        elif self.layout != "ggcompress":
            raise GGError(f"unknown layout {self.layout!r}: choose ggcompress or compressed-tensors")
        return self


@dataclass(frozen=True)
class Decision:
    """Whether one tensor is quantized and, if not, why (shown in the report)."""

    info: TensorInfo
    role: str
    quantize: bool
    reason: str = ""


def plan(ck: Checkpoint, config: QuantizeConfig) -> list[Decision]:
    """Decide every tensor from its name, shape and dtype alone (no tensor data is read).

    Default: 2-D float ``.weight`` tensors of linear layers (roles attn_*, mlp_*, other). Embeddings,
    lm_head and norms only with their flags; biases, buffers and integer tensors never. --include /
    --exclude then filter the names among those.
    """
    include = re.compile(config.include) if config.include else None
    exclude = re.compile(config.exclude) if config.exclude else None
    tied = _tied_embeddings(ck)
    names = {t.name for t in ck.tensors}
    out = []
    for info in ck.tensors:
        role = role_of(info.name, len(info.shape))
        reason = _kept_reason(info, role, config, tied)
        if not reason and include is not None and not include.search(info.name):
            reason = "not matched by --include"
        if not reason and exclude is not None and exclude.search(info.name):
            reason = "matched by --exclude"
        if not reason and info.name + SCALE_SUFFIX in names:
            raise GGError(f"{ck.source}: tensor {info.name + SCALE_SUFFIX} already exists, so {info.name} "
                          "cannot get a scale tensor of that name")
        out.append(Decision(info, role, not reason, reason))
    if (include or exclude) and not any(d.quantize for d in out):
        filtered = ("not matched by --include", "matched by --exclude")
        eligible = [d.info.name for d in out if d.reason in filtered]
        raise nothing_selected(ck.source, eligible, config.include, config.exclude, "weight")
    return out


def _kept_reason(info: TensorInfo, role: str, config: QuantizeConfig, tied: bool) -> str:
    if not info.is_float:
        return "not floating point"
    if info.numel == 0:
        return "empty"
    if not info.name.endswith(".weight"):
        return "bias" if role == "bias" else "not a weight"
    if role == "norm":
        return "" if config.quantize_norms else "norm (--quantize-norms)"
    if len(info.shape) != 2:
        return f"{len(info.shape)}-D (only 2-D weights)"
    if role == "embedding":
        return "" if config.quantize_embeddings else "embedding (--quantize-embeddings)"
    if role == "lm_head":
        if tied:
            return "lm_head tied to the embeddings"
        return "" if config.quantize_lm_head else "lm_head (--quantize-lm-head)"
    return ""


def _tied_embeddings(ck: Checkpoint) -> bool:
    """config.json ``tie_word_embeddings``; without a config, assume tied (keeping lm_head dense is safe)."""
    config = ck.config
    return True if config is None else bool(config.get("tie_word_embeddings", True))


# ---------------------------------------------------------------------------------------------- measuring


class _Totals:
    """Sums that aggregate error measures over tensors (SQNR from energies, mean rel. err from L1 sums)."""

    def __init__(self) -> None:
        self.signal = self.noise = self.abs_sum = self.err_abs_sum = 0.0
        self.max_rel = 0.0
        self.nonzero = self.flushed = 0
        self.params = self.tensors = self.bytes_before = self.bytes_after = 0

    def add(self, stats: dict[str, Any], abs_sum: float, nonzero: int, before: int, after: int,
            n: int) -> None:
        self.signal += stats["signal_energy"]
        self.noise += stats["noise_energy"]
        self.abs_sum += abs_sum
        self.err_abs_sum += stats["mean_rel_err"] * abs_sum if abs_sum else 0.0
        self.max_rel = max(self.max_rel, stats["max_rel_err"])
        self.flushed += round(stats["flushed_frac"] * nonzero)
        self.nonzero += nonzero
        self.params += n
        self.tensors += 1
        self.bytes_before += before
        self.bytes_after += after

    def errors(self) -> dict[str, Any]:
        return {
            "sqnr_db": _db(self.signal, self.noise),
            "mean_rel_err": self.err_abs_sum / self.abs_sum if self.abs_sum else 0.0,
            "max_rel_err": self.max_rel,
            "flushed_frac": self.flushed / self.nonzero if self.nonzero else 0.0,
        }


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal else -math.inf


def _abs_sum_nonzero(w: torch.Tensor) -> tuple[float, int]:
    """(sum |w| in float64, count of nonzero values), in chunks like ``error_stats``."""
    flat = w.reshape(-1)
    total, nonzero = 0.0, 0
    for i in range(0, flat.numel(), _CHUNK):
        part = flat[i:i + _CHUNK].to(torch.float64).abs()
        total += float(part.sum())
        nonzero += int((part > 0).sum())
    return total, nonzero


def measure(codec_name: str, w: torch.Tensor, granularity: str,
            name: str) -> tuple[QuantizedTensor | GFTensor, dict]:
    """Encode ``w`` and measure the decoded float32 weight against it (what QuantLinear computes with)."""
    if is_gf(codec_name):
        g = GFCodec(gf_bits(codec_name)).encode(w, granularity, name=name)
        return g, error_stats(w, gf_decode(g, name=name))
    codec = get_codec(codec_name)
    q = codec.encode(w, granularity, name=name)
    stats = error_stats(w, codec.decode(q, name=name))
    return q, stats


def _row_errors(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: stats[k] for k in ("sqnr_db", "mean_rel_err", "max_rel_err", "flushed_frac")}


# ---------------------------------------------------------------------------------------------- running


def quantize_checkpoint(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None,
    config: QuantizeConfig | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Quantize one or more checkpoints; returns the ``ggcompress.quantize/1`` report.

    ``out`` None is a dry run: everything is measured, nothing is written. With one source ``out`` is the
    output folder; with several it is a parent folder and each source gets ``out/<output_name(source)>``.
    All inputs are opened and all outputs checked before any work, so a bad path fails fast.
    """
    config = (config or QuantizeConfig()).checked()
    srcs = [str(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    if not srcs:
        raise GGError("no input checkpoints given")
    cks = [open_checkpoint(s) for s in srcs]
    for ck in cks:
        _refuse_quantized(ck)
    outs = output_folders(srcs, out)
    if out is not None:
        for o in outs:
            check_output_path(o, srcs, force=force, kind="folder")
    reports = [_quantize_one(ck, o, config, force, progress) for ck, o in zip(cks, outs, strict=True)]
    return {
        "schema": SCHEMA,
        "ggcompress_version": __version__,
        "settings": {**asdict(config), "format": canonical_format(config.format), "dry_run": out is None},
        "checkpoints": reports,
    }


def compare_formats(
    source: str | os.PathLike[str],
    config: QuantizeConfig | None = None,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Every format's totals on the same tensors at ``config``'s granularity: {format: totals}.

    Nothing is written; this is ``quantize_checkpoint(source, None, config with compare=True)``.
    """
    cfg = QuantizeConfig(**{**asdict(config or QuantizeConfig()), "compare": True})
    return quantize_checkpoint(source, None, cfg, progress=progress)["checkpoints"][0]["compare"]


def output_name(source: str) -> str:
    """Subfolder name for ``source`` when several inputs share one ``-o`` folder.

    A folder gives its name, a hub id its last part, a ``*.index.json`` or a generically named file
    (model.safetensors, model-00001-of-00002.safetensors, pytorch_model.bin...) its folder's name, any
    other file its stem (``a/llama-7b.safetensors`` -> ``llama-7b``).
    """
    p = Path(source.rstrip("/\\") or source).expanduser()
    if p.is_dir():
        return p.resolve().name or "checkpoint"
    if p.is_file():
        stem = p.name.split(".")[0]
        if p.name.endswith(".index.json") or GENERIC_STEMS.match(stem):
            return p.resolve().parent.name or stem
        return p.stem
    return p.name  # a hub id: org/name -> name


def output_folders(sources: Sequence[str], out: str | os.PathLike[str] | None) -> list[Path | None]:
    if out is None:
        return [None] * len(sources)
    if len(sources) == 1:
        return [Path(out)]
    names = [output_name(s) for s in sources]
    seen: dict[str, str] = {}
    for src, name in zip(sources, names, strict=True):
        if name in seen:
            raise GGError(f"{src}: its output folder {Path(out) / name} would also receive {seen[name]} — "
                          "give the inputs distinct folder/file names or quantize them separately")
        seen[name] = src
    return [Path(out) / n for n in names]


def _refuse_quantized(ck: Checkpoint) -> None:
    config = ck.config or {}
    method = (config.get("quantization_config") or {}).get("quant_method")
    if read_scheme(ck) is not None or method is not None:
        raise GGError(f"{ck.source}: already quantized (quant_method {method or 'ggcompress'!r}); "
                      "ggcompress quantizes dense checkpoints — dequantize it first")


def _transposed(ck: Checkpoint, decisions: list[Decision]) -> set[str]:
    """Quantized weights stored [in, out] (transformers Conv1D), which are encoded as their transpose."""
    if not any(d.quantize for d in decisions):
        return set()
    from ggcompress.io.quantized import transposed_weights

    return {d.info.name for d in decisions if d.quantize} & transposed_weights(ck)


def _source_dtype(decisions: list[Decision]) -> str | None:
    """The torch dtype name shared by the quantized weights (float32 if they differ; None if none)."""
    dtypes = Counter(d.info.dtype for d in decisions if d.quantize)
    if not dtypes:
        return None
    st = next(iter(dtypes)) if len(dtypes) == 1 else "F32"
    return str(DTYPES[st]).removeprefix("torch.")


def _quantize_one(ck: Checkpoint, out: Path | None, config: QuantizeConfig, force: bool,
                  progress: Progress | None) -> dict[str, Any]:
    decisions = plan(ck, config)
    fmt = canonical_format(config.format)
    gran = parse_granularity(config.granularity)
    transposed = _transposed(ck, decisions)
    modules = tuple(d.info.name.removesuffix(".weight") for d in decisions if d.quantize)
    module_formats: tuple[tuple[str, str], ...] = ()
    if fmt == "auto":  # choose every tensor's format first: the scheme is written before the tensors
        module_formats = _auto_choices(ck, decisions, float(config.bits or 0), transposed, progress)
    scheme = Scheme(fmt, gran.kind, gran.block_size, modules, _source_dtype(decisions),
                    transposed=tuple(d.info.name.removesuffix(".weight") for d in decisions
                                     if d.info.name in transposed),
                    module_formats=module_formats)
    export = None
    if config.layout == "compressed-tensors" and out is not None:
        from ggcompress.integrations.compressed_tensors import plan_export

        export = plan_export(ck.config, list(scheme.modules), fmt, gran.spec, ck.source)
    others = [f for f in available_formats() if f != fmt] if config.compare else []
    totals = {f: _Totals() for f in [fmt, *others]}
    kept_totals = _Totals()
    by_name = {d.info.name: d for d in decisions}
    rows: dict[str, dict[str, Any]] = {}
    notify = progress or (lambda desc, done, total: None)
    label = ck.source

    def process(info: TensorInfo, w: torch.Tensor, writer: CheckpointWriter | None) -> None:
        d = by_name[info.name]
        row: dict[str, Any] = {"name": info.name, "role": d.role, "shape": list(info.shape),
                               "dtype": info.dtype, "action": "quantized" if d.quantize else "kept",
                               "reason": d.reason or None, "bytes_before": info.nbytes}
        if not d.quantize:
            row.update(bytes_after=info.nbytes, ratio=1.0)
            kept_totals.bytes_before += info.nbytes
            kept_totals.bytes_after += info.nbytes
            kept_totals.params += info.numel
            kept_totals.tensors += 1
            if writer is not None:
                writer.add_tensor(info.name, w)
        else:
            if info.name in transposed:  # Conv1D [in, out] -> [out, in]: per-output scales, QuantLinear codes
                w = w.t().contiguous()
                row["transposed"] = True
            try:
                own = scheme.for_module(info.name.removesuffix(".weight"))
                q, stats = measure(own.format, w, own.granularity_spec, info.name)
                if fmt == "auto":
                    row["format"] = f"{own.format} {own.granularity_spec}"
                compared = {f: measure(f, w, gran.spec, info.name)[1] for f in others}
            except GGError as exc:
                raise GGError(f"{info.file}: {exc}") from None
            parts = stored_parts(q, tuple(w.shape))
            after = sum(t.numel() * t.element_size() for t in parts.values())
            abs_sum, nonzero = _abs_sum_nonzero(w)
            row.update(bytes_after=after, ratio=info.nbytes / after, bits_per_weight=8 * after / info.numel,
                       **_row_errors(stats))
            totals[fmt].add(stats, abs_sum, nonzero, info.nbytes, after, info.numel)
            if others:
                row["compare"] = {fmt: _row_errors(stats)}
                for f, st in compared.items():
                    row["compare"][f] = _row_errors(st)
                    totals[f].add(st, abs_sum, nonzero, info.nbytes, after, info.numel)
            if writer is not None and export is not None:
                for name, t in export.tensors(info.name.removesuffix(".weight"), q, info.name).items():
                    writer.add_tensor(name, t)
            elif writer is not None:
                names = part_names(scheme, info.name.removesuffix(".weight"))
                for role, t in parts.items():
                    writer.add_tensor(names[role], t)
            del q, parts
        rows[info.name] = row

    total = len(decisions) if out is not None else sum(d.quantize for d in decisions)
    done = 0
    notify(label, 0, total)
    if out is None:
        for info, w in ck.iter_tensors(d.info.name for d in decisions if d.quantize):
            process(info, w, None)
            del w
            done += 1
            notify(label, done, total)
        for d in decisions:
            if not d.quantize:
                process(d.info, torch.empty(0), None)  # kept: only its size is reported
    else:
        with CheckpointWriter(out, force=force, inputs=[ck.source]) as writer:
            writer.metadata = scheme.metadata() if export is None else {"format": "pt"}
            for info, w in ck.iter_tensors():
                process(info, w, writer)
                del w
                done += 1
                notify(label, done, total)
            writer.copy_support_files(ck.root, skip=["config.json"])
            if ck.config is not None:
                qc = scheme.to_dict() if export is None else export.quantization_config()
                writer.write_json("config.json", {**ck.config, "quantization_config": qc})
    return _checkpoint_report(ck, out, scheme, [rows[d.info.name] for d in decisions], totals[fmt],
                              kept_totals, {f: totals[f] for f in [fmt, *others]} if others else None)


def _auto_choices(ck: Checkpoint, decisions: list[Decision], budget: float, transposed: set[str],
                  progress: Progress | None) -> tuple[tuple[str, str], ...]:
    """(module, "format granularity") of every quantized tensor under ``--format auto --bits budget``."""
    from ggcompress.formats.auto import choose

    wanted = [d.info.name for d in decisions if d.quantize]
    notify = progress or (lambda desc, done, total: None)
    out = []
    for i, (info, w) in enumerate(ck.iter_tensors(wanted)):
        if info.name in transposed:  # chosen on the [out, in] matrix it will be stored as
            w = w.t().contiguous()
        try:
            cand, _, _ = choose(w, budget, info.name)
        except GGError as exc:
            raise GGError(f"{info.file}: {exc}") from None
        out.append((info.name.removesuffix(".weight"), f"{cand.format} {cand.granularity}"))
        notify(f"{ck.source} (choosing formats)", i + 1, len(wanted))
    return tuple(out)


def _size_totals(q: _Totals, kept: _Totals) -> dict[str, Any]:
    before, after = q.bytes_before + kept.bytes_before, q.bytes_after + kept.bytes_after
    return {
        "bytes_before": before,
        "bytes_after": after,
        "ratio": before / after if after else None,
        "quantized_bytes_before": q.bytes_before,
        "quantized_bytes_after": q.bytes_after,
        "quantized_ratio": q.bytes_before / q.bytes_after if q.bytes_after else None,
        "bits_per_weight": 8 * q.bytes_after / q.params if q.params else None,
    }


def _checkpoint_report(ck: Checkpoint, out: Path | None, scheme: Scheme, rows: list[dict[str, Any]],
                       chosen: _Totals, kept: _Totals, compare: dict[str, _Totals] | None) -> dict[str, Any]:
    totals = {
        "tensors": chosen.tensors + kept.tensors,
        "quantized_tensors": chosen.tensors,
        "params": chosen.params + kept.params,
        "quantized_params": chosen.params,
        **_size_totals(chosen, kept),
        **chosen.errors(),
    }
    report = {
        "source": ck.source,
        "output": str(Path(out).expanduser().absolute()) if out is not None else None,
        "written": out is not None,
        "quantization_config": scheme.to_dict(),
        "totals": totals,
        "compare": None,
        "tensors": rows,
    }
    if compare is not None:
        report["compare"] = {f: {**t.errors(), **_size_totals(t, kept)} for f, t in compare.items()}
    return json_safe(report)

