"""`pack` / `unpack`: one self-describing, entropy-coded `.ggz` container per checkpoint, restored exactly.

Why: `analyze` says how many bits the weights would take; this makes the saving real on disk. Each
weight tensor is quantized (a uniform step as in BackSlash, or the RF8 codes of `quantize-rf8`), its
symbols are ranked by frequency and entropy-coded (exp-Golomb, the papers' measure, or constriction's
rANS); everything else (norms, biases, scales, integer buffers, config and tokenizer files) is stored
as it is. The container (docs/format.md) is a fixed preamble, a JSON header (names, shapes, dtypes,
quantization, coder tables, offsets, a CRC-32 per tensor of both the stored bytes and the restored
tensor) and the coded bytes. `unpack` writes back an HF folder; `read_packed` streams tensors to loaders.

Memory stays near a few copies of the largest tensor; outputs are written atomically (a temp file in
the target folder, then a rename); the header holds nothing but content, so pack → unpack → pack gives
identical bytes. The library returns the `ggcompress.pack/1` document and never prints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ggcompress import __version__
from ggcompress.codec import coders
from ggcompress.codec import lossless as lossless_codec
from ggcompress.codec.header import (
    LOSSLESS_SPLIT_VERSION,
    ROW_STEPS_VERSION,
    TRELLIS_VERSION,
    validate_header,
)
from ggcompress.errors import GGError, check_patterns, nothing_selected
from ggcompress.io.checkpoint import (
    DTYPES,
    TORCH_TO_ST,
    WEIGHT_NAMES,
    WEIGHT_SUFFIXES,
    Checkpoint,
    CheckpointWriter,
    TensorInfo,
    check_output_path,
    make_parent,
    missing_parents,
    open_checkpoint,
    output_error,
    remove_empty_folders,
    support_files,
    temp_prefix,
)
from ggcompress.io.limits import loads_json
from ggcompress.names import PACK_METRICS
from ggcompress.reports.gates import Gate, check_gates
from ggcompress.reports.jsonsafe import json_safe
from ggcompress.stats import rate

SCHEMA = "ggcompress.pack/1"
UNPACK_SCHEMA = "ggcompress.unpack/1"
MAGIC = b"\x89GGZ\r\n\x1a\n"
FORMAT_VERSION = 1
#: Version of containers holding a ``lossless`` tensor (docs/format.md).
LOSSLESS_VERSION = 2
#: The newest version this module reads. Later ones (codec/header.py) added per-row steps (3, pack
#: --step-granularity row), trellis-coded tensors (4, pack --trellis) and split rANS sections in
#: lossless tensors (5, codec/lossless.py); docs/format.md has each.
READ_VERSION = LOSSLESS_SPLIT_VERSION
#: magic, format version, CRC-32 of the header, header length, data length (little-endian).
PREAMBLE = struct.Struct("<8sIIQQ")
ALIGN = 8
COPY_CHUNK = 16 << 20
COST_KEYS = ("payload_bits", "table_bits", "entropy_bits", "eg_bits")
#: Per-dtype integer views used to move tensor bits through numpy.
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

#: 8-bit float dtypes: stored as they are (step mode skips them).
_FLOAT8 = ("F8_E4M3", "F8_E5M2")
#: progress(description, parameters done, parameters in this checkpoint)
Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class PackOptions:
    """What to quantize and how to code it; defaults match the CLI."""

    quant: str | None = None  # "step:S" | "rf8" | "none" (bit-exact); None: step:8, or the stored codes
    coder: str = "eg"  # "eg" (exp-Golomb, the papers' measure) | "rans" (near-entropy)
    eg_k: int | None = 0  # exp-Golomb order; None picks the best order per tensor
    granularity: str = "channel"  # RF8 scales (--quant rf8 on a dense input)
    include: str | None = None  # regex: only matching eligible tensors are quantized (the rest: lossless)
    exclude: str | None = None
    gates: tuple[Gate, ...] = field(default_factory=tuple)
    workers: int = 0  # threads coding chunks of lossless tensors; 0: lossless.default_workers()
    target_sqnr_db: float | None = None  # RD allocation of per-tensor steps (codec/rdalloc.py) to this SQNR
    bits_per_param: float | None = None  # ... or to this many coded bits per quantized parameter
    rdoq: bool = False  # step symbols by rate-distortion-optimized rounding (codec/rdoq.py)
    max_kl: float | None = None  # ... or to this mean next-token KL on calibration text (codec/klalloc.py)
    calibration: str | None = None  # the text --max-kl is measured on (.txt / .jsonl / a folder of them)
    calibration_windows: int = 8  # windows for the Fisher, and as many held out for the KL
    calibration_length: int = 128  # tokens per window, clamped to the model's context
    step_granularity: str = "tensor"  # RD modes: one step per tensor, or per row (output channel)
    trellis: bool = False  # dependent (trellis-coded) quantization at the step (codec/trellis.py)

    def checked(self) -> PackOptions:
        mode, _ = parse_quant(self.quant)
        if self.max_kl is not None:
            if self.target_sqnr_db is not None or self.bits_per_param is not None:
                raise GGError("--max-kl, --target-sqnr and --bits-per-param are alternative targets; "
                              "give one")
            if mode != "auto":
                raise GGError(f"--quant {self.quant}: --max-kl chooses per-tensor steps itself; omit --quant "
                              "(and --lossless)")
            if self.rdoq:
                raise GGError("--rdoq does not apply to --max-kl (the KL is measured with plain rounding)")
            if not (isinstance(self.max_kl, int | float) and math.isfinite(self.max_kl) and self.max_kl > 0):
                raise GGError(f"--max-kl {self.max_kl!r}: must be a positive number of nats")
            if self.calibration is None:
                raise GGError("--max-kl needs --calibration TEXT: the text the KL is measured on")
            if not (isinstance(self.calibration_windows, int) and self.calibration_windows >= 1
                    and isinstance(self.calibration_length, int) and self.calibration_length >= 2):
                raise GGError("--calibration-windows must be ≥ 1 and --calibration-length ≥ 2")
        elif self.calibration is not None:
            raise GGError("--calibration is the text of --max-kl; give --max-kl too")
        if mode == "none" and (self.include is not None or self.exclude is not None):
            raise GGError("--quant none stores every tensor bit-exactly; --include/--exclude do not apply")
        if self.rdoq and mode in ("rf8", "none"):
            raise GGError(f"--rdoq rounds step symbols; it does not apply to --quant {self.quant}")
        if self.target_sqnr_db is not None or self.bits_per_param is not None:
            if self.target_sqnr_db is not None and self.bits_per_param is not None:
                raise GGError("--target-sqnr and --bits-per-param are alternative targets; give one")
            if mode != "auto":
                raise GGError(f"--quant {self.quant}: a quality target chooses per-tensor steps itself; "
                              "omit --quant")
            target = self.target_sqnr_db if self.target_sqnr_db is not None else self.bits_per_param
            if not (isinstance(target, int | float) and math.isfinite(target) and target > 0):
                raise GGError(f"target {target!r}: must be a positive number")
        if self.step_granularity not in ("tensor", "row"):
            raise GGError(f"step granularity {self.step_granularity!r}: choose tensor or row")
        if self.step_granularity == "row":
            if self.target_sqnr_db is None and self.bits_per_param is None and self.max_kl is None:
                raise GGError("--step-granularity row applies to the allocation targets (--target-sqnr, "
                              "--bits-per-param, --max-kl); give one")
            if self.rdoq:
                raise GGError("--rdoq does not combine with --step-granularity row")
        if self.trellis:
            clash = ("--rdoq" if self.rdoq else "--bits-per-param" if self.bits_per_param is not None
                     else "--step-granularity row" if self.step_granularity == "row"
                     else f"--quant {self.quant}" if mode not in ("step", "auto") else None)
            if clash:
                raise GGError(f"--trellis applies to --quant step:S, --target-sqnr and --max-kl; it does not "
                              f"combine with {clash}")
        if not (isinstance(self.workers, int) and 0 <= self.workers <= 256):
            raise GGError(f"workers {self.workers!r}: must be an integer in 0..256 (0: automatic)")
        if self.coder not in ("eg", "rans"):
            raise GGError(f"coder {self.coder!r}: choose eg or rans")
        if self.eg_k is not None and not (isinstance(self.eg_k, int) and 0 <= self.eg_k <= rate.MAX_K):
            raise GGError(f"exp-Golomb order {self.eg_k!r}: must be an integer in 0..{rate.MAX_K}")
        check_patterns(self.include, self.exclude)
        return self


#: --quant values that store quantize-rf8 codes (RF8, or GF-k packed codes coded as bytes).
CODE_FORMATS = ("rf8", "gf3", "gf4", "gf5", "gf6", "gf8")


def parse_quant(text: str | None) -> tuple[str, float | None]:
    """'step:S' (S as rate.parse_step reads it: 8, 2^-8, 0.004) -> ('step', step); 'rf8' -> ('rf8', None);
    'none' (or 'lossless') -> ('none', None)."""
    if text is None:
        return "auto", None
    t = str(text).strip().lower()
    if t in CODE_FORMATS:
        return t, None
    if t in ("none", "lossless"):
        return "none", None
    if t.startswith("step:"):
        return "step", rate.parse_step(t[5:])
    raise GGError(f"--quant {text!r}: expected step:S (e.g. step:8 = step 2^-8, step:2^-10), rf8, gf3..gf8 "
                  "or none (lossless)")


# ------------------------------------------------------------------------------------- symbol coding


@dataclass
class _Coded:
    """One coded tensor: header entry (offsets relative to the tensor), its bytes and its costs."""

    entry: dict[str, Any]
    blob: bytes
    restored: np.ndarray  # the restored tensor's bits (flat, integer view)
    costs: dict[str, Any]
    sections: dict[str, int] | None = None  # lossless: sections per kind
    split: int = 0  # lossless: split rANS sections (format version 5)


def _code_symbols(hist: rate.SymbolHistogram, symbols: torch.Tensor | None, values: np.ndarray,
                  opts: PackOptions, name: str, ranks: np.ndarray | None = None) -> _Coded:
    """Rank ``symbols`` with ``hist`` and code the ranks (or code ``ranks``, each symbol's rank already
    found); ``values[r]`` is rank r's restored bits."""
    by_rank = hist.symbols_by_rank()
    counts = hist.counts[torch.searchsorted(hist.symbols, by_rank)].numpy()
    d = by_rank.numel()
    lo, hi = int(hist.symbols[0]), int(hist.symbols[-1])
    if ranks is None:
        assert symbols is not None
        ranks = _ranks(hist, symbols, by_rank, lo, hi)
    width = coders.uint_bits(hi - lo)
    table = coders.pack_uints((by_rank - lo).numpy().astype(np.uint64), width)
    k = hist.best_k() if opts.eg_k is None else opts.eg_k
    st = hist.stats(k, huffman=False)
    costs = {"entropy_bits": st.entropy_bits_per_param * st.n, "eg_bits": float(st.eg_bits)}
    entry: dict[str, Any] = {"symbols": {"count": d, "min": lo, "bits": width, "offset": 0,
                                         "length": len(table)}}
    parts = [table]
    offset = _aligned(len(table))
    coder = opts.coder if d > 1 else "const"
    if coder == "rans" and d > coders.RANS_MAX_SYMBOLS:
        coder = "eg"  # a table this large costs more than rANS saves; noted per tensor
    if coder == "eg":
        stream = coders.eg_encode_lanes(ranks, k, d, coders.lane_size(ranks.size))
        lmin = int(stream.lane_bits[:-1].min()) if stream.lane_bits.size > 1 else 0
        lwidth = coders.uint_bits(int(stream.lane_bits[:-1].max()) - lmin) if stream.lane_bits.size > 1 else 0
        lanes = coders.pack_uints((stream.lane_bits[:-1] - lmin).astype(np.uint64), lwidth)
        entry["eg"] = {"k": k, "bits": stream.bits, "lane": stream.lane,
                       "lanes": {"min": lmin, "bits": lwidth, "offset": offset, "length": len(lanes)}}
        offset = _pad_to(parts, offset, lanes)
        entry["eg"].update(offset=offset, length=len(stream.payload))
        offset = _pad_to(parts, offset, stream.payload)
        costs["payload_bits"] = float(stream.bits)
        costs["table_bits"] = 8.0 * (len(table) + len(lanes))
    elif coder == "rans":
        weights = coders.rans_weights(counts)
        model_k = coders.best_eg_order(weights - 1)
        model = rate.eg_encode(weights - 1, model_k)
        payload = coders.rans_encode(ranks, weights)
        entry["rans"] = {"precision": coders.RANS_PRECISION,
                         "model": {"k": model_k, "offset": offset, "length": len(model)}}
        offset = _pad_to(parts, offset, model)
        entry["rans"].update(offset=offset, length=len(payload))
        offset = _pad_to(parts, offset, payload)
        costs["payload_bits"] = 8.0 * len(payload)
        costs["table_bits"] = 8.0 * (len(table) + len(model))
    else:
        costs["payload_bits"] = 0.0
        costs["table_bits"] = 8.0 * len(table)
    entry["coder"] = coder
    return _Coded(entry, b"".join(parts), np.take(values, ranks), costs)  # take: faster than values[ranks]


def _ranks(hist: rate.SymbolHistogram, symbols: torch.Tensor, by_rank: torch.Tensor, lo: int, hi: int
           ) -> np.ndarray:
    """Rank of every symbol: a dense lookup table when the symbol range is small, else hist.to_ranks."""
    if hi - lo < 1 << 24:
        lut = np.empty(hi - lo + 1, dtype=np.int32)
        lut[(by_rank - lo).numpy()] = np.arange(by_rank.numel(), dtype=np.int32)
        return lut[symbols.reshape(-1).numpy() - lo]
    return hist.to_ranks(symbols.reshape(-1)).numpy()


def _step_ranks(x: torch.Tensor, step: float, name: str) -> tuple[rate.SymbolHistogram, np.ndarray]:
    """(SymbolHistogram(step).update(x), each weight's rank in it, flat) — what rounding x at ``step``
    twice (histogram, then symbols to rank) gives, at a fraction of the cost: one rounding pass
    (rate.quantize_counted), or for bf16/fp16 a count of the bit patterns and one table lookup a weight
    (the distinct values are rounded, ranked, and the ranks indexed by pattern)."""
    if x.dtype in (torch.bfloat16, torch.float16) and x.numel():
        patterns, counts, u = rate.pattern_counts(x)
        vals = rate.pattern_values(patterns, x.dtype)
        hist = rate.SymbolHistogram(step).update_counts(vals, torch.from_numpy(counts), itemsize=2, name=name)
        by_rank = hist.symbols_by_rank()
        lo, hi = int(hist.symbols[0]), int(hist.symbols[-1])
        r = _ranks(hist, rate.quantize(vals, step, name), by_rank, lo, hi)  # the distinct values' ranks
        return hist, rate.pattern_lookup(patterns, r, u)
    q, hist = rate.quantize_counted(x, step, name)
    by_rank = hist.symbols_by_rank()
    return hist, _ranks(hist, q, by_rank, int(hist.symbols[0]), int(hist.symbols[-1]))


def _aligned(n: int) -> int:
    return n + (-n % ALIGN)


def _pad_to(parts: list[bytes], offset: int, blob: bytes) -> int:
    """Append zero padding up to ``offset`` then ``blob``; returns the next aligned offset."""
    have = sum(len(p) for p in parts)
    parts.append(b"\0" * (offset - have))
    parts.append(blob)
    return _aligned(offset + len(blob))


def _int_view(t: torch.Tensor) -> np.ndarray:
    """The raw bits of a tensor as a flat numpy integer array (no copy when contiguous)."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(_INT_VIEW[t.element_size()]).numpy()


def _restored_dtype(by_rank: torch.Tensor, step: float, source: torch.dtype) -> torch.dtype:
    """The dtype a step-quantized tensor is restored in: its own when re-quantizing gives the symbols back.

    symbol·step is computed in float64 and rounded once to the dtype. For power-of-two steps and float
    weights this always holds (|q| <= 256 fits bf16's 8 bits; larger |q| come from values already on the
    grid); otherwise (e.g. step 0.004 in bf16) float32, then float64, are used so that unpack → pack
    gives the same symbols.
    """
    for dtype in (source, torch.float32, torch.float64):
        v = (by_rank.to(torch.float64) * step).to(dtype)
        if bool(torch.isfinite(v.to(torch.float64)).all()) and torch.equal(rate.quantize(v, step), by_rank):
            return dtype
    raise GGError(f"step {rate.format_step(step)}: symbols cannot be restored in float64")


# ----------------------------------------------------------------------------------------- the writer


class _Container:
    """Builds one .ggz: coded sections go to a side file, then preamble + header + data are joined."""

    def __init__(self, out: Path, force: bool):
        self.out = out
        self.force = force
        self._made = missing_parents(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, side = tempfile.mkstemp(prefix=temp_prefix(out, "data"), dir=out.parent)
        except OSError as e:
            remove_empty_folders(self._made)
            raise output_error(out, e) from e
        self._data: IO[bytes] = os.fdopen(fd, "wb+")
        self._side = Path(side)
        self.size = 0
        self.tensors: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []

    def add(self, blob: Any) -> tuple[int, int, int]:
        """Append an aligned section (any C-contiguous buffer); returns (offset, length, crc32)."""
        blob = memoryview(blob).cast("B")
        pad = -self.size % ALIGN
        offset = self.size + pad
        try:
            if pad:
                self._data.write(b"\0" * pad)
            self._data.write(blob)
        except OSError as e:
            raise output_error(self.out, e) from e
        self.size = offset + len(blob)
        return offset, len(blob), zlib.crc32(blob)

    def finish(self, header: dict[str, Any]) -> int:
        """Write the container atomically; returns its size in bytes."""
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        text += b" " * (-len(text) % ALIGN)
        preamble = PREAMBLE.pack(MAGIC, header["format_version"], zlib.crc32(text), len(text), self.size)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.out, "tmp"), dir=self.out.parent)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a container gets normal permissions
            with os.fdopen(fd, "wb") as f:
                f.write(preamble)
                f.write(text)
                self._data.seek(0)
                shutil.copyfileobj(self._data, f, COPY_CHUNK)
            if self.out.exists() and not self.force:
                raise GGError(f"{self.out}: already exists (use --force to replace it)")
            os.replace(tmp, self.out)
        except BaseException as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise output_error(self.out, e) from e
            raise
        finally:
            self.abort()
        return len(preamble) + len(text) + self.size

    def abort(self) -> None:
        try:
            self._data.close()
        except OSError:  # a full disk can fail the final flush; the side file goes either way
            pass
        self._side.unlink(missing_ok=True)
        if not self.out.exists():
            remove_empty_folders(self._made)


# -------------------------------------------------------------------------------------------- packing


def pack(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    options: PackOptions | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Pack checkpoints into .ggz containers; returns the ``ggcompress.pack/1`` report.

    With one source ``out`` is the container path; with several it is a folder and each source gets
    ``out/<name>.ggz`` (``name`` as quantize-rf8 names its outputs: the folder name, or the file stem).
    Every input is opened and every output checked before any work.
    """
    opts = (options or PackOptions()).checked()
    srcs = [str(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    if not srcs:
        raise GGError("no input checkpoints given")
    cks = [open_checkpoint(s) for s in srcs]
    if opts.max_kl is not None:
        _check_kl_inputs(cks, opts)
    outs = output_paths(srcs, out)
    for o in outs:
        check_output_path(o, srcs, force=force, kind="file")
    reports = [_pack_one(ck, o, opts, force, progress) for ck, o in zip(cks, outs, strict=True)]
    failed = False
    for r in reports:
        failures = check_gates(gate_values(r["summary"]), opts.gates)
        r["failed_gates"] = [{"gate": str(f.gate), "metric": f.gate.metric, "value": f.value,
                              "reason": f.reason} for f in failures]
        failed = failed or bool(failures)
    settings = {k: v for k, v in asdict(opts).items() if k != "gates"}
    return json_safe({
        "schema": SCHEMA,
        "ggcompress_version": __version__,
        "settings": settings,
        "checkpoints": reports,
        "gates": [str(g) for g in opts.gates],
        "passed": not failed,
    })


def output_paths(sources: Sequence[str], out: str | os.PathLike[str]) -> list[Path]:
    """One source: ``out`` itself; several: ``out/<output_name(source)>.ggz`` (names must differ)."""
    from ggcompress.formats.quantize import output_name

    if len(sources) == 1:
        return [Path(out).expanduser().absolute()]
    seen: dict[str, str] = {}
    paths = []
    for src in sources:
        name = output_name(src) + ".ggz"
        if name in seen:
            raise GGError(f"{src}: its container {Path(out) / name} would also receive {seen[name]} — "
                          "give the inputs distinct folder/file names or pack them separately")
        seen[name] = src
        paths.append((Path(out) / name).expanduser().absolute())
    return paths


#: Every numeric summary metric a pack report can carry: what --fail-if may name, checked before packing
#: (defined in ggcompress.names, which the CLI reads without importing torch).
GATE_METRICS = PACK_METRICS


def gate_values(summary: dict[str, Any]) -> dict[str, float | None]:
    """The numbers --fail-if can name: every numeric summary value."""
    return {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _check_kl_inputs(cks: Sequence[Checkpoint], opts: PackOptions) -> None:
    """--max-kl runs each input as a causal LM on the calibration text: refuse what cannot, before any
    work."""
    from ggcompress.io.loading import check_causal_lm

    for ck in cks:
        if ck.root is None:
            raise GGError(f"{ck.source}: --max-kl runs the model, so it needs its HF folder (config.json, "
                          "tokenizer), not a bare weights file")
        check_causal_lm(ck.root)
    if not Path(str(opts.calibration)).expanduser().exists():
        raise GGError(f"{opts.calibration}: no such calibration text")


def _scheme(ck: Checkpoint) -> Any:
    from ggcompress.io.qlayout import read_scheme

    return read_scheme(ck)


def _pack_one(ck: Checkpoint, out: Path, opts: PackOptions, force: bool, progress: Progress | None
              ) -> dict[str, Any]:
    started = time.perf_counter()
    mode, step = parse_quant(opts.quant)
    scheme = _scheme(ck)
    if mode == "none":
        report = _pack_checkpoint(ck, ck, out, opts, force, progress, lossless=True)
    elif opts.target_sqnr_db is not None or opts.bits_per_param is not None or opts.max_kl is not None:
        if scheme is not None:
            raise GGError(f"{ck.source}: already quantized ({scheme.format} codes); a quality target needs a "
                          "dense checkpoint")
        report = _pack_rd(ck, out, opts, force, progress)
    elif scheme is not None:
        if mode == "step" or (mode in CODE_FORMATS and scheme.format != mode):
            hint = f" or use --quant {scheme.format}" if scheme.format in CODE_FORMATS else ""
            raise GGError(f"{ck.source}: already quantized ({scheme.format} codes); pack stores its codes as "
                          f"they are — omit --quant{hint}")
        if opts.include is not None or opts.exclude is not None:
            raise GGError(f"{ck.source}: already quantized; --include/--exclude choose what to quantize and "
                          "do not apply (its codes are all stored as they are)")
        report = _pack_checkpoint(ck, ck, out, opts, force, progress, scheme=scheme)
    elif mode in CODE_FORMATS:
        report = _pack_rf8(ck, out, opts, force, progress, fmt=mode)
    else:
        step = step if mode == "step" else 2.0**-8
        report = _pack_checkpoint(ck, ck, out, opts, force, progress, step=step)
    seconds = time.perf_counter() - started
    s = report["summary"]
    s["seconds"] = seconds
    s["mb_per_s"] = s["source_bytes"] / seconds / 1e6 if seconds > 0 else None
    return report


def _pack_rd(ck: Checkpoint, out: Path, opts: PackOptions, force: bool, progress: Progress | None
             ) -> dict[str, Any]:
    """Measure each eligible tensor's rate/error curve, allocate steps (codec/rdalloc.py), then pack."""
    from ggcompress.codec import rdalloc

    notify = progress or (lambda desc, d, t: None)
    cal = None
    if opts.max_kl is not None:  # load the model first: a model that cannot run fails before the curves
        cal = _kl_calibration(ck, opts, notify)
    if opts.step_granularity == "row":
        return _pack_rd_rows(ck, out, opts, force, progress, cal)
    curves = _curves(ck, opts, notify, rdalloc.measure_curve, "curves")
    if cal is not None:
        chosen, target, allocation = _kl_search(ck, curves, cal, opts, notify, rows=False)
        del cal  # the calibration model is not needed while packing
    else:
        alloc = rdalloc.allocate(curves, target_sqnr_db=opts.target_sqnr_db,
                                 bits_per_param=opts.bits_per_param)
        chosen, target = alloc.steps, alloc.target
        allocation = {**alloc.target, "lambda": alloc.lam, "predicted_sqnr_db": alloc.sqnr_db,
                      "predicted_coded_bits_per_param": alloc.bits_per_param}
    steps = {name: 2.0 ** -s for name, s in chosen.items()}
    report = _pack_checkpoint(ck, ck, out, opts, force, progress, steps=steps, target=target)
    labels = {name: f"2^-{s:g}" for name, s in chosen.items()}
    for row in report["tensors"]:
        if row["name"] in labels:
            row["step"] = labels[row["name"]]
    report["allocation"] = {**allocation, "steps": labels}
    if opts.max_kl is not None:
        report["summary"]["kl_mean"] = allocation["measured_kl"]
    return report


def _kl_search(ck: Checkpoint, curves: list, cal: Any, opts: PackOptions, notify: Any, rows: bool
               ) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """(steps, the header's target, the report's allocation) of the measured KL search, per tensor or
    per row (klalloc.search / search_rows)."""
    from ggcompress.codec import klalloc

    notify(f"{ck.source} (KL search)", 0, 1)
    found = (klalloc.search_rows if rows else klalloc.search)(curves, cal, float(opts.max_kl))
    allocation = {**found.to_dict(), "calibration": {"text": str(opts.calibration), **found.calibration}}
    return found.steps, {"max_kl": float(opts.max_kl)}, allocation


def _curves(ck: Checkpoint, opts: PackOptions, notify: Any, measure: Any, what: str) -> list:
    """One pass over the checkpoint: ``measure(x, name, per_octave=...)`` of every eligible tensor.
    Fractional octaves only where the restored values stay in the source dtype (fp32/fp64)."""
    curves = []
    done = 0
    total = ck.numel  # a sum over every tensor: once, not per tensor
    for info, x in ck.iter_tensors():
        if _eligible_step(info, opts):
            curves.append(measure(x, info.name, per_octave=4 if info.dtype in ("F32", "F64") else 1))
        done += info.numel
        notify(f"{ck.source} ({what})", done, total)
    return curves


def _pack_rd_rows(ck: Checkpoint, out: Path, opts: PackOptions, force: bool, progress: Progress | None,
                  cal: Any) -> dict[str, Any]:
    """Per-row steps: row curves of each eligible tensor, one λ over every row (rdalloc.allocate_rows, or
    the measured KL search klalloc.search_rows), then pack with the step codes stored."""
    from ggcompress.codec import rdalloc

    notify = progress or (lambda desc, d, t: None)
    curves = _curves(ck, opts, notify, rdalloc.measure_row_curves, "row curves")
    if cal is not None:
        chosen, target, allocation = _kl_search(ck, curves, cal, opts, notify, rows=True)
        del cal  # the calibration model is not needed while packing
    else:
        if not curves:
            raise GGError(f"{ck.source}: no tensor is eligible for quantization")
        alloc = rdalloc.allocate_rows(curves, target_sqnr_db=opts.target_sqnr_db,
                                      bits_per_param=opts.bits_per_param)
        chosen, target = alloc.steps, alloc.target
        allocation = {**alloc.target, "lambda": alloc.lam, "predicted_sqnr_db": alloc.sqnr_db,
                      "predicted_coded_bits_per_param": alloc.bits_per_param}
    report = _pack_checkpoint(ck, ck, out, opts, force, progress, row_steps=chosen, target=target)
    labels = {name: _rows_label(s) for name, s in chosen.items()}
    for row in report["tensors"]:
        if row["name"] in labels:
            row["step"] = labels[row["name"]]
    report["allocation"] = {**allocation, "granularity": "row", "steps": labels,
                            "rows": sum(int(s.size) for s in chosen.values())}
    if opts.max_kl is not None:
        report["summary"]["kl_mean"] = allocation["measured_kl"]
    return report


def _rows_label(codes: np.ndarray) -> str:
    """'rows 2^-a..2^-b' (or one step when every row has it); codes are quarter octaves."""
    lo, hi = int(codes.min()) / 4, int(codes.max()) / 4
    return f"rows 2^-{lo:g}" if lo == hi else f"rows 2^-{lo:g}..2^-{hi:g}"


def _kl_calibration(ck: Checkpoint, opts: PackOptions, notify: Progress) -> Any:
    """Fisher weights and the KL probe of ``ck`` on the calibration text (codec/klalloc.py)."""
    from ggcompress.codec import klalloc
    from ggcompress.methods.train import read_documents

    docs = read_documents(str(opts.calibration))
    if not docs:
        raise GGError(f"{opts.calibration}: the calibration text is empty")
    names = [info.name for info in ck.tensors if _eligible_step(info, opts)]
    if not names:
        raise GGError(f"{ck.source}: no tensor is eligible for quantization, nothing for --max-kl to choose")
    notify(f"{ck.source} (Fisher, {opts.calibration_windows} windows)", 0, 1)
    assert ck.root is not None  # checked by _check_kl_inputs
    cal = klalloc.calibrate(ck.root, names, "\n\n".join(docs), windows=opts.calibration_windows,
                            length=opts.calibration_length)
    if opts.trellis:  # the KL is measured on the trellis-coded values the container will hold
        cal.probe.use_quantizer("trellis")
    return cal


def _pack_rf8(ck: Checkpoint, out: Path, opts: PackOptions, force: bool, progress: Progress | None,
              fmt: str = "rf8") -> dict[str, Any]:
    """RF8 (or GF-k) from a dense checkpoint: quantize-rf8 into a scratch folder beside the output, pack
    its codes (GF-k: the packed code bytes, entropy-coded as bytes; scales and tables stored raw)."""
    from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint

    config = QuantizeConfig(format=fmt, granularity=opts.granularity, include=opts.include,
                            exclude=opts.exclude)
    made = missing_parents(out)
    try:
        scratch = Path(tempfile.mkdtemp(prefix=temp_prefix(out, "rf8"), dir=make_parent(out)))
    except OSError as e:
        remove_empty_folders(made)
        raise output_error(out, e) from e
    try:
        relay = None if progress is None else (
            lambda desc, done, total: progress(f"{fmt} {desc}", done, total))
        qdoc = quantize_checkpoint(ck.source, scratch / "rf8", config, force=True, progress=relay)
        quantized = open_checkpoint(scratch / "rf8")
        report = _pack_checkpoint(quantized, ck, out, opts, force, progress, scheme=_scheme(quantized))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not out.exists():
            remove_empty_folders(made)
    totals = qdoc["checkpoints"][0]["totals"]
    for key in ("sqnr_db", "mean_rel_err", "max_rel_err", "flushed_frac"):
        report["summary"][key] = totals.get(key)
    report["source"] = ck.source
    return report


def _eligible_step(info: TensorInfo, opts: PackOptions) -> bool:
    """Step mode quantizes non-empty floating-point tensors of 2+ dims (matrices, embeddings, convs)."""
    if not info.is_float or info.numel == 0 or len(info.shape) < 2 or info.dtype in _FLOAT8:
        return False  # float8 weights are already 8-bit codes: re-quantizing would widen them
    if opts.include is not None and not re.search(opts.include, info.name):
        return False
    return not (opts.exclude is not None and re.search(opts.exclude, info.name))


def _pack_checkpoint(ck: Checkpoint, origin: Checkpoint, out: Path, opts: PackOptions, force: bool,
                     progress: Progress | None, *, step: float | None = None, scheme: Any = None,
                     lossless: bool = False, steps: dict[str, float] | None = None,
                     target: dict[str, float] | None = None,
                     row_steps: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Write ``ck`` as a container; ``origin`` is what sizes are compared with (the dense source)."""
    from ggcompress.io.qlayout import weight_name

    code_tensors = {weight_name(m) for m in scheme.modules} if scheme is not None else set()
    if step is not None and (opts.include or opts.exclude) and not any(_eligible_step(t, opts)
                                                                       for t in ck.tensors):
        unfiltered = replace(opts, include=None, exclude=None)
        raise nothing_selected(ck.source, [t.name for t in ck.tensors if _eligible_step(t, unfiltered)],
                               opts.include, opts.exclude)
    container = _Container(out, force)
    rows: list[dict[str, Any]] = []
    total = ck.numel
    done = 0
    signal = noise = 0.0
    slack, trellised = 0.0, 0  # --trellis with allocated steps: error saved so far, tensors trellis-coded
    split = 0  # lossless: split rANS sections written (they need format version 5)
    notify = progress or (lambda desc, d, t: None)
    try:
        for rel, data in _read_support(ck.root):
            offset, length, crc = container.add(data)
            container.files.append({"path": rel, "offset": offset, "length": length, "crc32": crc})
        notify(ck.source, 0, total)
        for info, x in ck.iter_tensors():
            if lossless:
                coded = _code_lossless(info, x, opts)
                split += coded.split
            elif scheme is not None and info.name in code_tensors:
                coded = _code_codes(info, x, opts)
            elif row_steps is not None and info.name in row_steps:
                coded, sig, err = _code_step_rows(info, x, row_steps[info.name], opts)
                signal += sig
                noise += err
            elif steps is not None and info.name in steps:
                coded, sig, err = None, 0.0, 0.0
                if opts.trellis and opts.max_kl is not None:  # the KL was measured on these very values
                    lam = _trellis_lambda(opts)
                    coded, sig, err = _code_trellis(info, x, steps[info.name], opts, lam=lam)
                    trellised += 1
                elif opts.trellis:  # keep the allocation's error budget: trellis only within the slack
                    # the exact error of rounding (the curves hold estimates), so that the target holds
                    allowed = _step_error(x, steps[info.name], info.name)
                    coded, sig, err = _code_trellis(info, x, steps[info.name], opts)
                    if err > allowed + slack and err > 0:  # once more, Δ shrunk to the error left (~Δ²)
                        shrink = 0.995 * math.sqrt(max(allowed + slack, 0.0) / err)
                        coded, sig, err = _code_trellis(info, x, steps[info.name], opts, shrink)
                    if err <= allowed + slack:
                        slack += allowed - err
                        trellised += 1
                    else:
                        coded = None
                if coded is None:
                    coded, sig, err = _code_step(info, x, steps[info.name], opts)
                    coded.entry["step"] = steps[info.name]
                signal += sig
                noise += err
            elif step is not None and _eligible_step(info, opts):
                coded, sig, err = (_code_trellis if opts.trellis else _code_step)(info, x, step, opts)
                signal += sig
                noise += err
            else:
                coded = None
            if coded is None:
                blob = _int_view(x) if x.numel() else b""
                offset, length, crc = container.add(blob)
                entry = {"name": info.name, "shape": list(info.shape), "dtype": info.dtype, "encoding": "raw",
                         "offset": offset, "length": length, "crc32": crc}
                rows.append({"name": info.name, "encoding": "raw", "shape": list(info.shape),
                             "dtype": info.dtype, "numel": info.numel, "stored_bytes": length})
            else:
                offset, length, crc = container.add(coded.blob)
                entry = {"name": info.name, "shape": list(info.shape), **coded.entry, "offset": offset,
                         "length": length, "crc32": crc, "decoded_crc32": zlib.crc32(coded.restored)}
                rows.append(_row(info, entry, coded.costs, length) if not lossless
                            else _lossless_row(info, coded, length))
                if "step" in entry:
                    rows[-1]["step"] = rate.format_step(entry["step"])
                elif "row_steps" in entry:
                    rows[-1]["step"] = _rows_label(row_steps[info.name])
            container.tensors.append(entry)
            done += info.numel
            notify(ck.source, done, total)
            del x, coded
        header = {
            "format": "ggcompress.ggz",
            "format_version": (LOSSLESS_SPLIT_VERSION if lossless and split else
                               TRELLIS_VERSION if opts.trellis and (step is not None or trellised) else
                               ROW_STEPS_VERSION if row_steps is not None else
                               LOSSLESS_VERSION if lossless or steps is not None else FORMAT_VERSION),
            "quantization": ({"method": "none"} if lossless else
                             {"method": "steps", **(target or {}), "trellis": trellised,
                              "trellis_lambda": _trellis_lambda(opts)}
                             if steps is not None and trellised else
                             {"method": "steps", "granularity": "row", **(target or {})}
                             if row_steps is not None else {"method": "steps", **(target or {})}
                             if steps is not None else _quant_header(step, scheme, opts.trellis)),
            "coder": ({"name": "lossless", "chunk": lossless_codec.CHUNK} if lossless else
                      {"name": opts.coder, **({"k": opts.eg_k} if opts.coder == "eg" else {}),
                       **({"precision": coders.RANS_PRECISION} if opts.coder == "rans" else {})}),
            "metadata": dict(ck.metadata),
            "files": container.files,
            "tensors": container.tensors,
        }
        size = container.finish(header)
    except BaseException:
        container.abort()
        raise
    return {
        "source": ck.source,
        "output": str(out),
        "summary": _summary(rows, origin, size, container.files, signal, noise,
                            step is not None or steps is not None or row_steps is not None),
        "quantization": header["quantization"],
        "tensors": rows,
    }


def _trellis_lambda(opts: PackOptions) -> float:
    """The search's λ: trellis.KL_LAMBDA for --max-kl (the KL was measured with it), else LAMBDA."""
    from ggcompress.codec import trellis

    return trellis.KL_LAMBDA if opts.max_kl is not None else trellis.LAMBDA


def _quant_header(step: float | None, scheme: Any, trellis: bool = False) -> dict[str, Any]:
    if scheme is not None:
        return {"method": "codes", "scheme": scheme.to_dict(with_version=False)}
    if trellis:
        from ggcompress.codec import trellis as tq

        return {"method": "trellis", "step": step, "step_label": rate.format_step(step),
                "delta": step * tq.STEP_FACTOR, "lane": tq.LANE, "states": tq.STATES, "lambda": tq.LAMBDA}
    return {"method": "step", "step": step, "step_label": rate.format_step(step)}


def _code_step(info: TensorInfo, x: torch.Tensor, step: float, opts: PackOptions
               ) -> tuple[_Coded, float, float]:
    """Step-quantize one tensor and code it; also (signal, noise) energies for the SQNR."""
    if opts.rdoq:
        from ggcompress.codec.rdoq import rdoq_counted

        q, counts, lo = rdoq_counted(x, step, name=info.name)
        hist = rate.SymbolHistogram.from_counts(lo, counts)  # counts of the symbols
        q = q.reshape(x.shape)
        ranks = None
    else:
        hist, ranks = _step_ranks(x, step, info.name)
        q = None
    by_rank = hist.symbols_by_rank()
    dtype = _restored_dtype(by_rank, step, x.dtype)
    values = _int_view((by_rank.to(torch.float64) * step).to(dtype))
    coded = _code_symbols(hist, q, values, opts, info.name, ranks)
    coded.entry = {"dtype": TORCH_TO_ST[dtype], "source_dtype": info.dtype, "encoding": "step", **coded.entry}
    restored = torch.from_numpy(coded.restored).view(dtype).reshape(x.shape)
    sig, err = _energies(x, restored)
    return coded, sig, err


#: Row classes of pack --trellis's row contexts (rows grouped by RMS quantiles; docs/pack.md).
ROW_CLASSES = 8


@dataclass
class TrellisPlan:
    """A trellis-searched tensor with its restored values and the coding layout pack would choose."""

    found: Any  # trellis.Coded
    delta: float
    restored: torch.Tensor  # level·Δ in the restored dtype, x's shape flattened
    layout: list[tuple[str, rate.SymbolHistogram, torch.Tensor, bool]]  # context, hist, symbols, counted
    row_class: torch.Tensor | None  # a class byte per row (the "rows" layout), else None
    classes: int
    estimated_bits: float  # payload + tables + row bytes, from the exact table sizes (coding adds padding)


def trellis_plan(x: torch.Tensor, step: float, name: str, opts: PackOptions | None = None,
                 shrink: float = 1.0, lam: float | None = None) -> TrellisPlan:
    """Trellis-quantize ``x`` at union step Δ = STEP_FACTOR·step·shrink and choose how to code its
    indices: in two contexts, by the quantizer of their state (q0, q1: each stream its own table), as one
    stream with one table (all), or in contexts by quantizer × row class — whichever is smaller. The
    contexts pay at low rates, where they save up to ~0.3 bit/weight, the single table at high rates,
    where a second table of thousands of symbols costs more than the contexts save. Each table is a ranked
    symbol table or, for rANS, a dense count table, whichever is smaller. The choices are made on exact
    table sizes and the payload the weights predict (one histogram pass). Restored values are level·Δ
    rounded once from float64 to the source dtype. ``pack --max-kl --trellis`` measures the KL of exactly
    these restored values (codec/klalloc.py), searched with ``lam`` = trellis.KL_LAMBDA (default: LAMBDA)."""
    from ggcompress.codec import trellis

    opts = opts or PackOptions(coder="rans")
    delta = step * trellis.STEP_FACTOR * shrink
    found = trellis.search(x, delta, trellis.LAMBDA if lam is None else lam, name=name)
    restored = _trellis_restored(found.levels(), delta, x.dtype, name)
    span = int(found.k.abs().max()) if found.k.numel() else 0
    width = 2 * span + 1
    base = (found.k + span).reshape(-1)  # index - min, the bin of each index within its context

    def histograms(ctx: torch.Tensor | None, contexts: int) -> list[rate.SymbolHistogram | None]:
        idx = base if ctx is None else torch.add(base, ctx.reshape(-1), alpha=width)
        counts = torch.bincount(idx, minlength=contexts * width).reshape(contexts, width)
        return [rate.SymbolHistogram.from_counts(-span, c) if int(c.sum()) else None for c in counts]

    def size(hists: list[rate.SymbolHistogram | None]) -> tuple[float, list[bool]]:
        est = [_estimate_bytes(h, opts) if h is not None else (0.0, False) for h in hists]
        return sum(e[0] for e in est), [e[1] for e in est]

    by_q = histograms(found.qid, 2)
    merged = histograms(None, 1)
    options = [(size(merged), "all", None), (size(by_q), "q", None)]
    rows = x.shape[0] if x.dim() >= 2 else 1
    if rows >= 8:  # contexts by row scale too (rows differ in scale; side info: a byte a row)
        rms = x.reshape(rows, -1).to(torch.float64).square().mean(1)
        edges = torch.quantile(rms, torch.linspace(0, 1, ROW_CLASSES + 1, dtype=torch.float64)[1:-1])
        cls = torch.bucketize(rms, edges).to(torch.int64)
        lane_cls = trellis.lane_classes(cls, found.n, x.numel() // rows)
        hists = histograms(found.qid * ROW_CLASSES + lane_cls.reshape(1, -1), 2 * ROW_CLASSES)
        est, kinds = size(hists)
        options.append(((est + rows, kinds), "rows", (cls, lane_cls, hists)))
    (est_bytes, kinds), kind, extra = min(options, key=lambda o: o[0][0])
    row_class, classes = None, 0
    if kind == "all":
        layout = [("all", merged[0], found.merged(), kinds[0])]
    elif kind == "q":
        layout = [(f"q{i}", h, sym, kinds[i])
                  for i, (h, sym) in enumerate(zip(by_q, found.context_streams(), strict=True))
                  if h is not None]
    else:
        row_class, lane_cls, hists = extra
        classes = ROW_CLASSES
        streams = found.context_streams(lane_cls, classes)
        layout = [(f"q{c // classes}r{c % classes}", h, sym, kinds[c])
                  for c, (h, sym) in enumerate(zip(hists, streams, strict=True)) if h is not None]
    return TrellisPlan(found, delta, restored, layout, row_class, classes, 8.0 * est_bytes)


def _code_trellis(info: TensorInfo, x: torch.Tensor, step: float, opts: PackOptions, shrink: float = 1.0,
                  lam: float | None = None) -> tuple[_Coded, float, float]:
    """Trellis-quantize and code one tensor as ``trellis_plan`` chooses. ``shrink`` < 1 narrows Δ
    (allocated steps: to fit an error budget)."""
    from ggcompress.codec import trellis

    plan = trellis_plan(x, step, info.name, opts, shrink, lam)
    found, delta, restored, row_class = plan.found, plan.delta, plan.restored, plan.row_class
    parts: list[bytes] = []
    offset = 0
    groups = []
    costs = dict.fromkeys(COST_KEYS, 0.0)
    for context, hist, sym, counted in plan.layout:
        g = (_code_counted(hist, sym) if counted else None) or \
            _code_symbols(hist, sym, hist.symbols_by_rank().numpy(), opts, info.name)
        groups.append({"context": context, "count": int(sym.numel()), **_shifted(g.entry, offset)})
        offset = _pad_to(parts, offset, g.blob)
        for key in COST_KEYS:
            costs[key] += g.costs[key]
    entry = {"dtype": TORCH_TO_ST[restored.dtype], "source_dtype": info.dtype, "encoding": "trellis",
             "trellis": {"delta": delta, "lane": trellis.LANE, "states": found.states}, "groups": groups}
    if row_class is not None:
        entry["rows"] = {"classes": plan.classes, "offset": offset, "length": int(row_class.numel())}
        _pad_to(parts, offset, row_class.to(torch.uint8).numpy().tobytes())
        costs["table_bits"] += 8.0 * row_class.numel()
    coded = _Coded(entry, b"".join(parts), _int_view(restored), costs)
    sig, err = _energies(x, restored.reshape(x.shape))
    return coded, sig, err


def _estimate_bytes(hist: rate.SymbolHistogram, opts: PackOptions) -> tuple[float, bool]:
    """(Estimated coded bytes of one symbol group, whether a count table beats the ranked one): exact
    table sizes, the rANS payload as Σ count·log2(2^precision / weight); exp-Golomb: its exact size."""
    by_rank = hist.symbols_by_rank()
    counts = hist.counts[torch.searchsorted(hist.symbols, by_rank)].numpy()
    d = counts.size
    lo, hi = int(hist.symbols[0]), int(hist.symbols[-1])
    ranked = (d * coders.uint_bits(hi - lo) + 7) // 8
    if opts.coder != "rans" or d < 2 or d > coders.RANS_MAX_SYMBOLS:
        k = hist.best_k() if opts.eg_k is None else opts.eg_k
        return ranked + hist.stats(k, huffman=False).eg_bits / 8, False
    weights = coders.rans_weights(counts)
    payload = float((counts * (coders.RANS_PRECISION - np.log2(weights))).sum()) / 8
    counted = None
    if hi - lo + 1 <= coders.RANS_MAX_SYMBOLS:
        counted = (coders.count_table_bits(hist.dense_counts()[1]) + 7) // 8
        if counted < ranked:  # below the ranked table's symbol list alone: no need to size its model
            return counted + payload, True
    model = rate.exp_golomb_lengths(torch.from_numpy(weights - 1), coders.best_eg_order(weights - 1))
    ranked += (int(model.sum()) + 7) // 8
    if counted is None:
        return ranked + payload, False
    return min(ranked, counted) + payload, counted < ranked


def _step_error(x: torch.Tensor, step: float, name: str) -> float:
    """Squared error (float64) of what plain rounding at ``step`` restores for ``x``."""
    return float((restore_step(x, step, name).to(torch.float64) - x.to(torch.float64)).square().sum())


def _code_counted(hist: rate.SymbolHistogram, symbols: torch.Tensor) -> _Coded | None:
    """rANS over a dense count table (coders.count_table_encode): the alphabet is the symbols present in
    lo..hi in ascending order, the weights are rans_weights of their counts in that order (the reader
    computes them). None when the span is too wide for a dense table."""
    if int(hist.symbols[-1]) - int(hist.symbols[0]) + 1 > coders.RANS_MAX_SYMBOLS or hist.symbols.numel() < 2:
        return None
    lo, counts = hist.dense_counts()
    span = counts.size
    table = coders.count_table_encode(counts)
    present = np.flatnonzero(counts)
    index = np.full(span, -1, dtype=np.int32)
    index[present] = np.arange(present.size, dtype=np.int32)
    weights = coders.rans_weights(counts[present])
    payload = coders.rans_encode(index[symbols.reshape(-1).numpy() - lo], weights)
    entry = {"coder": "rans", "table": {"kind": "counts", "min": lo, "span": span,
                                        "present": int(present.size), "offset": 0, "length": len(table)},
             "rans": {"precision": coders.RANS_PRECISION}}
    parts = [table]
    offset = _aligned(len(table))
    entry["rans"].update(offset=offset, length=len(payload))
    _pad_to(parts, offset, payload)
    st = hist.stats(0, huffman=False)
    costs = {"entropy_bits": st.entropy_bits_per_param * st.n, "eg_bits": float(st.eg_bits),
             "payload_bits": 8.0 * len(payload), "table_bits": 8.0 * len(table)}
    return _Coded(entry, b"".join(parts), np.empty(0), costs)


def _trellis_restored(levels: torch.Tensor, delta: float, source: torch.dtype, name: str) -> torch.Tensor:
    """level·Δ in float64, rounded once to the first of (source, float32, float64) that holds it finitely."""
    v = levels.to(torch.float64) * delta
    for dtype in (source, torch.float32, torch.float64):
        if dtype.is_floating_point:
            y = v.to(dtype)
            if bool(torch.isfinite(y).all()):
                return y
    raise GGError(f"{name}: trellis levels overflow float64")


def _rows_restored(q: torch.Tensor, codes: np.ndarray, source: torch.dtype) -> torch.Tensor:
    """Per-row restore: q·step_r in float64 rounded once to the first of (source, float32, float64)
    whose values give the symbols back (the source dtype for float weights at power-of-two steps, and
    for fp32 at the quarter steps checked so far)."""
    from ggcompress.codec.rdalloc import row_step_values

    scale = torch.from_numpy(row_step_values(codes)).reshape(-1, 1)
    v = q.to(torch.float64) * scale
    for dtype in (source, torch.float32, torch.float64):
        if not dtype.is_floating_point:
            continue
        y = v.to(dtype)
        back = y.to(torch.float64)
        if bool(torch.isfinite(back).all()) and torch.equal(torch.round(back / scale), q.to(torch.float64)):
            return y
    raise GGError("per-row steps: symbols cannot be restored in float64")


def restore_rows(x: torch.Tensor, s_rows: np.ndarray, name: str = "tensor") -> torch.Tensor:
    """What unpack restores for ``x`` packed with per-row step codes (rows = dim 0; code k is step
    2^-(k/4), rdalloc.row_step_values), in x's shape."""
    from ggcompress.codec.rdalloc import row_symbols

    _check_row_steps(s_rows, x.shape, name)
    try:
        q = row_symbols(x, s_rows)
    except GGError as exc:
        raise GGError(f"{name}: {exc}") from None
    return _rows_restored(q, s_rows, x.dtype).reshape(x.shape)


def _check_row_steps(s_rows: np.ndarray, shape: Sequence[int], name: str) -> None:
    from ggcompress.codec.rdalloc import ROW_CODE_MAX

    s = np.asarray(s_rows)
    if len(shape) < 2 or s.shape != (int(shape[0]),):
        raise GGError(f"{name}: {s.size} per-row steps for shape {list(shape)}")
    if s.size and (int(s.min()) < 0 or int(s.max()) > ROW_CODE_MAX):
        raise GGError(f"{name}: per-row step code outside 0..{ROW_CODE_MAX}")


def _code_step_rows(info: TensorInfo, x: torch.Tensor, s_rows: np.ndarray, opts: PackOptions
                    ) -> tuple[_Coded, float, float]:
    """Per-row-step quantize one tensor: rows are coded in groups, each group's symbols ranked and
    coded with its own table (as _code_step) — one group per step code, or one group for the whole
    tensor, whichever is smaller (per-code tables win on large tensors, 1–2% on the Wikipedia LM; one
    table on small ones, whose tables would dominate) —, then the int8 step code per row as the
    ``row_steps`` section (counted in table_bits)."""
    from ggcompress.codec.rdalloc import row_symbols

    codes = np.asarray(s_rows, dtype=np.int8)
    _check_row_steps(codes, x.shape, info.name)
    try:
        q = row_symbols(x, codes)
    except GGError as exc:
        raise GGError(f"{info.name}: {exc}") from None
    restored = _rows_restored(q, codes, x.dtype)
    distinct = [int(k) for k in np.unique(codes)]
    best = None
    for split in ([[k] for k in distinct], [distinct]) if len(distinct) > 1 else ([distinct],):
        parts: list[bytes] = []
        offset = 0
        groups = []
        costs = dict.fromkeys(COST_KEYS, 0.0)
        for members in split:
            rows = np.nonzero(np.isin(codes, members))[0]
            sym = q[torch.from_numpy(rows)].reshape(-1)
            hist = rate.SymbolHistogram(1.0).update(sym.to(torch.float64), info.name)
            g = _code_symbols(hist, sym, hist.symbols_by_rank().numpy(), opts, info.name)
            groups.append({"codes": members, "rows": int(rows.size), **_shifted(g.entry, offset)})
            offset = _pad_to(parts, offset, g.blob)
            for key in COST_KEYS:
                costs[key] += g.costs[key]
        if best is None or offset < best[0]:
            best = offset, parts, groups, costs
    offset, parts, groups, costs = best
    steps_at = offset
    _pad_to(parts, offset, codes.tobytes())
    costs["table_bits"] += 8.0 * codes.size
    entry = {"dtype": TORCH_TO_ST[restored.dtype], "source_dtype": info.dtype, "encoding": "step",
             "row_steps": {"offset": steps_at, "length": int(codes.size)}, "groups": groups}
    coded = _Coded(entry, b"".join(parts), _int_view(restored), costs)
    sig, err = _energies(x, restored.reshape(x.shape))
    return coded, sig, err


def _shifted(spec: Any, base: int) -> Any:
    """A coded entry with every ``offset`` moved by ``base`` bytes (a group's sections in its tensor)."""
    if isinstance(spec, dict):
        return {k: v + base if k == "offset" else _shifted(v, base) for k, v in spec.items()}
    return spec


def restore_step(x: torch.Tensor, step: float, name: str = "tensor") -> torch.Tensor:
    """What unpack restores for ``x`` packed at ``step`` (plain rounding, no RDOQ): the symbols
    round_half_even(x / step) times the step in float64, rounded once to the dtype ``_code_step`` stores.

    Used to run a packed model without writing it (pack --max-kl). That dtype is x's own whenever the
    restored values give the symbols back (always for power-of-two steps); checked here, and otherwise
    chosen from the distinct symbols exactly as the writer does.
    """
    q = rate.quantize(x, step, name)
    if x.is_floating_point():
        y = (q.to(torch.float64) * step).to(x.dtype)
        if bool(torch.isfinite(y).all()) and torch.equal(rate.quantize(y, step, name), q):
            return y
    dtype = _restored_dtype(torch.unique(q), step, x.dtype)
    return (q.to(torch.float64) * step).to(dtype)


def _energies(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(Σx², Σ(x − y)²) in float64 accumulators, chunked."""
    fx, fy = x.reshape(-1), y.reshape(-1)
    sig = err = 0.0
    for i in range(0, fx.numel(), rate.CHUNK * 4):
        a = fx[i:i + rate.CHUNK * 4].to(torch.float32)
        b = fy[i:i + rate.CHUNK * 4].to(torch.float32)
        sig += float(torch.dot(a, a))
        d = a - b
        err += float(torch.dot(d, d))
    return sig, err


def _code_lossless(info: TensorInfo, x: torch.Tensor, opts: PackOptions) -> _Coded:
    """Code one tensor bit-exactly (byte planes, chunked rANS: codec/lossless.py)."""
    raw = _int_view(x).view(np.uint8) if x.numel() else np.zeros(0, dtype=np.uint8)
    enc = lossless_codec.encode_tensor(raw, info.dtype, opts.workers or lossless_codec.default_workers())
    costs = {"payload_bits": enc.payload_bits, "table_bits": enc.table_bits, "entropy_bits": enc.entropy_bits,
             "eg_bits": None}
    return _Coded(enc.entry, enc.blob, raw, costs, enc.kinds, enc.split)


def _lossless_row(info: TensorInfo, coded: _Coded, length: int) -> dict[str, Any]:
    n = info.numel
    c = coded.costs
    return {
        "name": info.name, "encoding": "lossless", "shape": list(info.shape), "dtype": info.dtype,
        "restored_dtype": info.dtype, "numel": n, "coder": "lossless", "distinct": None, "k": None,
        "sections": coded.sections, "stored_bytes": length,
        **{k: c[k] for k in COST_KEYS},
        "bits_per_param": (c["payload_bits"] + c["table_bits"]) / n if n else None,
        "entropy_bits_per_param": c["entropy_bits"] / n if n else None,
        "eg_bits_per_param": None,
    }


def _code_codes(info: TensorInfo, x: torch.Tensor, opts: PackOptions) -> _Coded:
    """Entropy-code one tensor of 8-bit codes (symbols 0..255, ranked by frequency)."""
    if x.dtype != torch.uint8:
        raise GGError(f"{info.file}: tensor {info.name} should hold U8 codes, found {info.dtype}")
    hist = rate.SymbolHistogram(1.0).update(x.reshape(-1).to(torch.float32), info.name)
    by_rank = hist.symbols_by_rank()
    values = by_rank.to(torch.uint8).numpy()
    coded = _code_symbols(hist, x.reshape(-1).to(torch.int64), values, opts, info.name)
    coded.entry = {"dtype": "U8", "source_dtype": "U8", "encoding": "codes", **coded.entry}
    return coded


def _coder_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """coder / distinct / k of a report row; a per-row-step tensor sums its row groups ("groups:rans")."""
    if "groups" in entry:
        coders_used = sorted({g["coder"] for g in entry["groups"]})
        return {"coder": "groups:" + "+".join(coders_used),
                "distinct": sum(g["symbols"]["count"] if "symbols" in g else g["table"]["present"]
                                for g in entry["groups"]), "k": None,
                ("contexts" if entry["encoding"] == "trellis" else "row_groups"): len(entry["groups"])}
    return {"coder": entry["coder"], "distinct": entry["symbols"]["count"], "k": entry.get("eg", {}).get("k")}


def _row(info: TensorInfo, entry: dict[str, Any], costs: dict[str, float], length: int) -> dict[str, Any]:
    n = info.numel
    return {
        "name": info.name, "encoding": entry["encoding"], "shape": list(info.shape),
        "dtype": entry["source_dtype"], "restored_dtype": entry["dtype"], "numel": n,
        **_coder_fields(entry),
        "stored_bytes": length,
        **{k: costs[k] for k in COST_KEYS},
        "bits_per_param": (costs["payload_bits"] + costs["table_bits"]) / n,
        "entropy_bits_per_param": costs["entropy_bits"] / n,
        "eg_bits_per_param": costs["eg_bits"] / n,
    }


def _summary(rows: list[dict[str, Any]], origin: Checkpoint, size: int, files: list[dict[str, Any]],
             signal: float, noise: float, stepped: bool) -> dict[str, Any]:
    coded = [r for r in rows if r["encoding"] != "raw"]
    raw = [r for r in rows if r["encoding"] == "raw"]
    params = origin.numel
    coded_params = sum(r["numel"] for r in coded)
    sums = {k: sum(r[k] or 0.0 for r in coded) for k in COST_KEYS}
    has_eg = any(r["eg_bits"] is not None for r in coded)
    source_bytes = origin.nbytes
    coded_bits = sums["payload_bits"] + sums["table_bits"]
    out: dict[str, Any] = {
        "tensors": len(rows),
        "params": params,
        "coded_tensors": len(coded),
        "coded_params": coded_params,
        "raw_tensors": len(raw),
        "raw_bytes": sum(r["stored_bytes"] for r in raw),
        "files": len(files),
        "file_bytes": sum(f["length"] for f in files),
        "source_bytes": source_bytes,
        "container_bytes": size,
        "ratio": source_bytes / size if size else None,
        "ratio_bf16": 2 * params / size if size else None,
        "bits_per_param": 8 * size / params if params else None,
        "coded_bits_per_param": coded_bits / coded_params if coded_params else None,
        "payload_bits_per_param": sums["payload_bits"] / coded_params if coded_params else None,
        "table_bits_per_param": sums["table_bits"] / coded_params if coded_params else None,
        "entropy_bits_per_param": sums["entropy_bits"] / coded_params if coded_params else None,
        "eg_bits_per_param": sums["eg_bits"] / coded_params if coded_params and has_eg else None,
        "overhead_vs_entropy": coded_bits / sums["entropy_bits"] - 1 if sums["entropy_bits"] else None,
    }
    if stepped:
        out["sqnr_db"] = (10 * math.log10(signal / noise) if noise and signal else None)
    return out



def _read_support(root: Path | None) -> Iterator[tuple[str, bytes]]:
    """(relative POSIX path, bytes) of the folder's config/tokenizer/... files, in sorted order."""
    for p in support_files(root):
        try:
            yield p.relative_to(root).as_posix(), p.read_bytes()
        except OSError as exc:
            raise GGError(f"{p}: cannot read ({exc.strerror or exc})") from None


# ------------------------------------------------------------------------------------------- reading


@dataclass
class PackedFile:
    """An opened container: its header, and where its data section starts."""

    path: Path
    header: dict[str, Any]
    data_start: int
    data_length: int

    @property
    def tensors(self) -> list[dict[str, Any]]:
        return self.header["tensors"]

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.header["files"]


def open_packed(path: str | os.PathLike[str]) -> PackedFile:
    """Read and validate the preamble and header (no tensor data); refuses newer format versions."""
    p = Path(path).expanduser()
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(PREAMBLE.size)
            if len(head) < PREAMBLE.size or head[:8] != MAGIC:
                raise GGError(f"{p}: not a ggcompress container (.ggz): bad magic bytes")
            magic, version, crc, hlen, dlen = PREAMBLE.unpack(head)
            if version > READ_VERSION:
                raise GGError(f"{p}: container format version {version} is newer than this ggcompress "
                              f"{__version__} reads (up to {READ_VERSION}); upgrade ggcompress")
            if version < 1:
                raise GGError(f"{p}: container format version {version} is invalid")
            if PREAMBLE.size + hlen > size:
                raise GGError(f"{p}: truncated — the header needs {PREAMBLE.size + hlen} bytes, "
                              f"the file has {size}")
            text = f.read(hlen)
    except OSError as exc:
        raise GGError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if zlib.crc32(text) != crc:
        raise GGError(f"{p}: header checksum mismatch — the container is corrupt")
    header = loads_json(text, str(p), "container header")
    validate_header(p, header, version, dlen)
    packed = PackedFile(p, header, PREAMBLE.size + hlen, dlen)
    expected = PREAMBLE.size + hlen + dlen
    if size < expected:
        room = size - packed.data_start
        cut = [t["name"] for t in header["tensors"] if t["offset"] + t["length"] > room]
        what = (f"tensor {cut[0]!r}" + (f" and {len(cut) - 1} more" if len(cut) > 1 else "")
                if cut else "its data")
        raise GGError(f"{p}: truncated ({size} of {expected} bytes): {what} cut off")
    if size > expected:
        raise GGError(f"{p}: {size - expected} unexpected bytes after the data section — corrupt container")
    return packed


def read_packed(path: str | os.PathLike[str], names: Iterable[str] | None = None
                ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) in container order, each decoded and verified against both checksums."""
    packed = open_packed(path)
    wanted = None if names is None else set(names)
    with open(packed.path, "rb") as f:
        for entry in packed.tensors:
            if wanted is not None and entry.get("name") not in wanted:
                continue
            yield entry["name"], _decode_entry(packed, f, entry)


def read_packed_files(path: str | os.PathLike[str]) -> Iterator[tuple[str, bytes]]:
    """Yield (relative path, bytes) of the carried files (config.json, tokenizer...), checksum-verified."""
    packed = open_packed(path)
    with open(packed.path, "rb") as f:
        for entry in packed.files:
            rel = _safe_relpath(packed.path, entry.get("path"))
            data = _section(packed, f, entry, f"file {rel!r}")
            yield rel, data


def _safe_relpath(where: Path, rel: Any) -> str:
    """Carried file names must stay inside the output folder."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel \
            or any(part in ("", ".", "..") for part in rel.split("/")) \
            or Path(rel).suffix.lower() in WEIGHT_SUFFIXES or WEIGHT_NAMES.match(Path(rel).name):
        raise GGError(f"{where}: refusing carried file name {rel!r} (must be a relative path inside the "
                      "folder, not a weights file)")
    return rel


def _section(packed: PackedFile, f: IO[bytes], entry: dict[str, Any], what: str) -> bytes:
    try:
        offset, length, crc = int(entry["offset"]), int(entry["length"]), int(entry["crc32"])
    except (KeyError, TypeError, ValueError):
        raise GGError(f"{packed.path}: malformed header entry for {what}") from None
    if offset < 0 or length < 0 or offset + length > packed.data_length:
        raise GGError(f"{packed.path}: {what} lies outside the data section — corrupt container")
    f.seek(packed.data_start + offset)
    data = f.read(length)
    if len(data) != length:
        raise GGError(f"{packed.path}: {what} is cut off (truncated container)")
    if zlib.crc32(data) != crc:
        raise GGError(f"{packed.path}: {what}: checksum mismatch — stored data is corrupt")
    return data


def _decode_entry(packed: PackedFile, f: IO[bytes], entry: dict[str, Any]) -> torch.Tensor:
    name = entry.get("name")
    what = f"tensor {name!r}"
    data = _section(packed, f, entry, what)
    try:
        shape = tuple(int(d) for d in entry["shape"])
        dtype = DTYPES[entry["dtype"]]
        encoding = entry["encoding"]
    except (KeyError, TypeError, ValueError):
        raise GGError(f"{packed.path}: malformed header entry for {what}") from None
    n = math.prod(shape)
    if encoding == "raw":
        if len(data) != n * dtype.itemsize:
            raise GGError(f"{packed.path}: {what}: {len(data)} bytes stored for {n} {entry['dtype']} values")
        if n == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
    if encoding == "lossless":
        try:
            raw = lossless_codec.decode_tensor(data, entry, n, lossless_codec.default_workers(),
                                               packed.header["format_version"] >= LOSSLESS_SPLIT_VERSION)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise GGError(f"{packed.path}: {what}: corrupt or malformed lossless data ({exc})") from None
        if zlib.crc32(raw) != entry.get("decoded_crc32"):
            raise GGError(f"{packed.path}: {what}: decoded values fail their checksum — corrupt container")
        if n == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.from_numpy(raw).view(dtype).reshape(shape)  # raw is a fresh array: no copy
    try:
        flat = _decode_symbols(packed, entry, data, n, dtype)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise GGError(f"{packed.path}: {what}: corrupt or malformed coded data ({exc})") from None
    if zlib.crc32(flat) != entry.get("decoded_crc32"):
        raise GGError(f"{packed.path}: {what}: decoded values fail their checksum — corrupt container")
    return torch.from_numpy(flat).view(dtype).reshape(shape)


def _part(data: bytes, spec: dict[str, Any]) -> memoryview:
    offset, length = int(spec["offset"]), int(spec["length"])
    if offset < 0 or length < 0 or offset + length > len(data):
        raise ValueError("a section lies outside the tensor's bytes")
    return memoryview(data)[offset:offset + length]


def _decode_symbols(packed: PackedFile, entry: dict[str, Any], data: bytes, n: int, dtype: torch.dtype
                    ) -> np.ndarray:
    name = entry["name"]
    if entry["encoding"] == "step" and "row_steps" in entry:
        return _decode_rows(entry, data, dtype)
    if entry["encoding"] == "trellis":
        return _decode_trellis(entry, data, n, dtype)
    by_rank = _symbol_table(entry, data)
    d = by_rank.numel()
    if entry["encoding"] == "step":
        q = packed.header["quantization"]
        if q.get("method") == "step":
            step = float(q["step"])
        elif q.get("method") == "steps":  # per-tensor steps (format version 2)
            step = float(entry["step"])
        else:
            raise ValueError("step-coded tensor in a container without a step")
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step {step} is not a positive number")
        values = _int_view((by_rank.to(torch.float64) * step).to(dtype))
    elif entry["encoding"] == "codes":
        if dtype != torch.uint8 or (d and (int(by_rank.min()) < 0 or int(by_rank.max()) > 255)):
            raise ValueError("codes must be U8 symbols 0..255")
        values = by_rank.to(torch.uint8).numpy()
    else:
        raise ValueError(f"unknown encoding {entry['encoding']!r}")
    return _decode_ranks(entry, data, n, d, values, name)


def _decode_trellis(entry: dict[str, Any], data: bytes, n: int, dtype: torch.dtype) -> np.ndarray:
    """A trellis-coded tensor (format version 4): the context streams (q0, q1) or the one merged stream
    (all) in bulk, the lockstep walk of the state machine that puts each index in place, then level·Δ."""
    from ggcompress.codec import trellis

    spec = entry["trellis"]
    delta, lane = float(spec["delta"]), int(spec["lane"])
    if not (math.isfinite(delta) and delta > 0) or not 1 <= lane <= 1 << 16 \
            or spec["states"] not in trellis.TRELLISES:
        raise ValueError(f"trellis parameters {spec} are not ones this reader decodes")
    if not dtype.is_floating_point:
        raise ValueError("a trellis-coded tensor must restore to a float dtype")
    contexts = [g.get("context") for g in entry["groups"]]
    classes = int(entry["rows"]["classes"]) if "rows" in entry else 0
    names = (["all"] if contexts == ["all"] else
             [f"q{c // classes}r{c % classes}" for c in range(2 * classes)] if classes else ["q0", "q1"])
    streams = {name: torch.zeros(0, dtype=torch.int64) for name in names}
    for g in entry["groups"]:
        if g["context"] not in streams or streams[g["context"]].numel():
            raise ValueError(f"trellis contexts {contexts} are not q0 / q1, all, or q<quantizer>r<class>")
        count = int(g["count"])
        if "table" in g:
            sym = _decode_counted(g, data, count, entry["name"])
        else:
            by_rank = _symbol_table(g, data)
            if by_rank.numel() and int(by_rank.abs().max()) > 1 << 50:
                raise ValueError("a trellis index is out of range")
            sym = _decode_ranks(g, data, count, by_rank.numel(), by_rank.numpy(), entry["name"])
        streams[g["context"]] = torch.from_numpy(sym)
    states = int(spec["states"])
    if classes:
        shape = [int(d) for d in entry["shape"]]
        row_class = np.frombuffer(_part(data, entry["rows"]), dtype=np.uint8)
        if len(shape) < 2 or row_class.size != shape[0] or (row_class.size
                                                             and int(row_class.max()) >= classes):
            raise ValueError(f"row classes: {row_class.size} for shape {shape}, each below {classes} "
                             "expected")
        row_class = torch.from_numpy(row_class.astype(np.int64))
        lane_cls = trellis.lane_classes(row_class, n, n // max(shape[0], 1), lane)
        walked = trellis.walk_contexts([streams[name] for name in names], lane_cls, classes, n, lane, states)
    elif "all" in streams:
        walked = trellis.walk_merged(streams["all"], n, lane, states)
    else:
        walked = trellis.walk_contexts([streams["q0"], streams["q1"]], None, 1, n, lane, states)
    v = (walked.levels().to(torch.float64) * delta).to(dtype)
    if not bool(torch.isfinite(v).all()):
        raise ValueError("a trellis level overflows the restored dtype")
    return _int_view(v)


def _decode_counted(g: dict[str, Any], data: bytes, n: int, name: str) -> np.ndarray:
    """n symbols (int64) of a group coded over a dense count table (``_code_counted``)."""
    table = g["table"]
    lo, span = int(table["min"]), int(table["span"])
    if table.get("kind") != "counts" or not 2 <= span <= coders.RANS_MAX_SYMBOLS or abs(lo) > 1 << 50 \
            or abs(lo + span) > 1 << 50 or g.get("coder") != "rans":
        raise ValueError(f"count table {table} is not one this reader decodes")
    if int(g["rans"]["precision"]) != coders.RANS_PRECISION:
        raise ValueError(f"rANS precision {g['rans']['precision']} (this reader: {coders.RANS_PRECISION})")
    counts = coders.count_table_decode(_part(data, table), span, n)
    present = np.flatnonzero(counts)
    if present.size < 2 or present.size != table["present"]:
        raise ValueError(f"a count table holds {present.size} symbols (at least 2, {table['present']} "
                         "declared)")
    ranks = coders.rans_decode(_part(data, g["rans"]), n, coders.rans_weights(counts[present]), name)
    return present[ranks].astype(np.int64) + lo


def _symbol_table(spec: dict[str, Any], data: bytes) -> torch.Tensor:
    """The rank → symbol table (int64) of a coded entry or row group."""
    sym = spec["symbols"]
    d, lo, width = int(sym["count"]), int(sym["min"]), int(sym["bits"])
    offsets = coders.unpack_uints(_part(data, sym), width, d)
    return torch.from_numpy(offsets.astype(np.int64)) + lo


def _decode_rows(entry: dict[str, Any], data: bytes, dtype: torch.dtype) -> np.ndarray:
    """A per-row-step tensor (format version 3): each row group's symbols into its rows, then
    symbol·step_r row by row."""
    from ggcompress.codec.rdalloc import row_step_values

    shape = [int(v) for v in entry["shape"]]
    s_rows = np.frombuffer(_part(data, entry["row_steps"]), dtype=np.int8)
    try:
        _check_row_steps(s_rows, shape, entry["name"])
    except GGError as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None
    if not dtype.is_floating_point:
        raise ValueError("a per-row-step tensor must restore to a float dtype")
    rows, cols = shape[0], math.prod(shape[1:])
    q = np.empty((rows, cols), dtype=np.int64)
    for g in entry["groups"]:
        where = np.nonzero(np.isin(s_rows, [int(k) for k in g["codes"]]))[0]
        if where.size != int(g["rows"]):
            raise ValueError(f"row group of step codes {g['codes']} declares {g['rows']} rows, the step "
                             f"codes give {where.size}")
        by_rank = _symbol_table(g, data)
        sym = _decode_ranks(g, data, where.size * cols, by_rank.numel(), by_rank.numpy(), entry["name"])
        q[where] = sym.reshape(where.size, cols)
    q = torch.from_numpy(q)
    scale = torch.from_numpy(row_step_values(s_rows)).reshape(-1, 1)
    return _int_view((q.to(torch.float64) * scale).to(dtype))


def _decode_ranks(entry: dict[str, Any], data: bytes, n: int, d: int, values: np.ndarray, name: str
                  ) -> np.ndarray:
    """values[rank] of the n coded ranks."""
    coder = entry["coder"]
    if coder == "const":
        if d != 1:
            raise ValueError("a constant tensor needs exactly one symbol")
        return np.full(n, values[0], dtype=values.dtype)
    if coder == "eg":
        eg = entry["eg"]
        lanes = eg["lanes"]
        count = max(-(-n // int(eg["lane"])) - 1, 0)
        lane_bits = coders.unpack_uints(_part(data, lanes), int(lanes["bits"]), count).astype(np.int64)
        lane_bits += int(lanes["min"])
        last = int(eg["bits"]) - int(lane_bits.sum())
        lane_bits = np.append(lane_bits, last)
        return coders.eg_decode_lanes(_part(data, eg), n, int(eg["k"]), int(eg["lane"]), lane_bits,
                                      values, name)
    if coder == "rans":
        rans = entry["rans"]
        if int(rans["precision"]) != coders.RANS_PRECISION:
            raise ValueError(f"rANS precision {rans['precision']} (this ggcompress reads "
                             f"{coders.RANS_PRECISION})")
        model = rans["model"]
        weights = rate.eg_decode(bytes(_part(data, model)), d, int(model["k"])).numpy() + 1
        if int(weights.sum()) != 1 << coders.RANS_PRECISION:
            raise ValueError("rANS model weights do not sum to 2^precision")
        ranks = coders.rans_decode(_part(data, rans), n, weights, name)
        if ranks.size and int(ranks.max()) >= d:
            raise ValueError("a decoded rank is outside the symbol table")
        return values[ranks]
    raise ValueError(f"unknown coder {coder!r}")


# ----------------------------------------------------------------------------------------- unpacking


def unpack(path: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False,
           progress: Progress | None = None) -> dict[str, Any]:
    """Restore the HF folder a container was packed from (weights as quantized); returns a report."""
    started = time.perf_counter()
    packed = open_packed(path)
    total = sum(math.prod(t.get("shape", [])) for t in packed.tensors)
    notify = progress or (lambda desc, d, t: None)
    done = 0
    nbytes = 0
    with CheckpointWriter(out, force=force, inputs=[packed.path]) as writer:
        meta = packed.header.get("metadata") or {}
        writer.metadata = {str(k): str(v) for k, v in meta.items()}
        for rel, data in read_packed_files(packed.path):
            target = writer.tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        notify(str(packed.path), 0, total)
        for name, tensor in read_packed(packed.path):
            writer.add_tensor(name, tensor)
            done += tensor.numel()
            nbytes += tensor.numel() * tensor.element_size()
            notify(str(packed.path), done, total)
            del tensor
    seconds = time.perf_counter() - started
    return {
        "schema": UNPACK_SCHEMA,
        "ggcompress_version": __version__,
        "source": str(packed.path),
        "output": str(Path(out).expanduser().absolute()),
        "tensors": len(packed.tensors),
        "params": total,
        "files": len(packed.files),
        "restored_bytes": nbytes,
        "container_bytes": packed.data_start + packed.data_length,
        "quantization": packed.header.get("quantization"),
        "seconds": seconds,
        "mb_per_s": nbytes / seconds / 1e6 if seconds > 0 else None,
    }


@contextlib.contextmanager
def unpacked(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary HF folder holding the container's checkpoint (removed on exit), for loaders."""
    with tempfile.TemporaryDirectory(prefix="ggcompress-ggz-") as tmp:
        folder = Path(tmp) / "model"
        unpack(path, folder)
        yield folder


def is_packed(path: str | os.PathLike[str]) -> bool:
    """True for a file that starts with the .ggz magic bytes."""
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            return p.is_file() and f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
