"""What every 8-bit weight codec shares: granularity, per-group scales, the one decode rule.

All formats decode the same way, ``value = lut[code] * scale[row, col // N]`` (one float32 multiply,
rounded once), so a single kernel family serves them all; a format only decides its 256-entry table,
how a group's scale is chosen and which code a scaled value gets. A tensor of any shape is handled as
its (out, in) matrix view: rows = shape[0], columns = the rest flattened (1-D: one row).

Work is done in row chunks of about ``CHUNK_ELEMENTS`` values so that encoding a large embedding
matrix never holds more than a few float32 copies of one chunk, not of the whole tensor.
"""

from __future__ import annotations

import abc
import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ggcompress.errors import GGError

GRANULARITIES = ("tensor", "channel", "block")
CHUNK_ELEMENTS = 1 << 22  # ~16 MiB of float32 per chunk
# Smallest scale the codecs emit: the smallest normal float32, so a scale never underflows to 0.
MIN_SCALE = 2.0**-126


def label(name: str) -> str:
    """How errors name a tensor whose caller gave no name."""
    return name or "<tensor>"


@dataclass(frozen=True)
class Granularity:
    """Which weights share one scale: the whole tensor, one output row, or N consecutive inputs of a row."""

    kind: str
    block_size: int | None = None

    @property
    def spec(self) -> str:
        """The string form accepted by ``parse_granularity`` (``"block:128"``)."""
        return f"block:{self.block_size}" if self.kind == "block" else self.kind

    def n_groups(self, cols: int) -> int:
        """Scale columns G for a row of ``cols`` inputs (the last block may be partial)."""
        if self.kind == "block":
            return -(-cols // self.block_size)
        return 1

    def scale_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """(1, 1) for tensor, (out, 1) for channel, (out, ceil(in / N)) for block."""
        return (1, 1) if self.kind == "tensor" else (rows, self.n_groups(cols))


def parse_granularity(spec: str | Granularity, block_size: int | None = None) -> Granularity:
    """``"tensor"``, ``"channel"``, ``"block:128"`` or ``"block"`` with ``block_size=128``."""
    if isinstance(spec, Granularity):
        return parse_granularity(spec.kind, spec.block_size)
    text = str(spec).strip().lower()
    kind, _, size_text = text.partition(":")
    if kind not in GRANULARITIES:
        raise GGError(f"granularity {spec!r}: expected tensor, channel or block:N")
    if size_text:
        if kind != "block":
            raise GGError(f"granularity {spec!r}: only block takes a size (block:N)")
        try:
            size = int(size_text)
        except ValueError:
            raise GGError(f"granularity {spec!r}: block size must be an integer") from None
        if block_size is not None and block_size != size:
            raise GGError(f"granularity {spec!r}: conflicts with block_size={block_size}")
        block_size = size
    if kind == "block":
        if block_size is None:
            raise GGError(f"granularity {spec!r}: block needs a size (block:N or block_size=N)")
        try:
            size = operator.index(block_size)  # ints incl. numpy ints; not floats or strings
        except TypeError:
            size = 0
        if isinstance(block_size, bool) or size < 1:
            raise GGError(f"granularity {spec!r}: block size must be a positive integer, got {block_size!r}")
        return Granularity("block", size)
    if block_size is not None:
        raise GGError(f"granularity {spec!r}: block_size={block_size} only applies to block granularity")
    return Granularity(kind)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (out, in) view codes are stored in: rows = shape[0], columns = the rest (1-D and 0-D: one row)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), math.prod(int(d) for d in shape[1:])


@dataclass
class QuantizedTensor:
    """One quantized weight: uint8 ``codes`` (out, in) and float32 ``scale`` (see ``Granularity``)."""

    codes: torch.Tensor  # (out, in) uint8
    scale: torch.Tensor  # (1, 1) | (out, 1) | (out, ceil(in / N)) float32
    format: str
    granularity: str  # "tensor" | "channel" | "block"
    block_size: int | None
    shape: tuple[int, ...]  # the original tensor's shape; decode reshapes to it

    @property
    def granularity_spec(self) -> str:
        """``"tensor"``, ``"channel"`` or ``"block:N"``, e.g. for checkpoint metadata."""
        return Granularity(self.granularity, self.block_size).spec

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight including the float32 scales (8 plus the scale overhead)."""
        n = self.codes.numel()
        return 8.0 + 32.0 * self.scale.numel() / n if n else 0.0


def row_chunks(rows: int, cols: int) -> Iterator[tuple[int, int]]:
    """Row ranges of about ``CHUNK_ELEMENTS`` values each."""
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def group_view(x: torch.Tensor, gran: Granularity) -> torch.Tensor:
    """(r, cols) -> (r, G, N) for block granularity, zero-padding a partial last block.

    Zero padding is neutral for the reductions done here (amax of |w|, sums of squared errors).
    """
    r, cols = x.shape
    n = gran.block_size
    g = gran.n_groups(cols)
    if g * n != cols:
        x = torch.nn.functional.pad(x, (0, g * n - cols))
    return x.reshape(r, g, n)


def reduce_groups(
    w2: torch.Tensor,
    gran: Granularity,
    fn: Callable[[torch.Tensor, int, int], torch.Tensor],
    op: str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-group ``op`` ("amax" or "sum") of ``fn(chunk_float32, r0, r1)`` over the matrix ``w2``.

    Returns the scale-shaped tensor (``gran.scale_shape``); chunks of rows are visited in order so the
    result does not depend on the chunk size except through float summation order within a group.
    """
    rows, cols = w2.shape
    out = torch.zeros(gran.scale_shape(rows, cols), dtype=dtype, device=w2.device)
    if rows * cols == 0:  # empty reductions are errors in torch; an empty group reduces to 0 here
        return out
    for r0, r1 in row_chunks(rows, cols):
        v = fn(w2[r0:r1].to(torch.float32), r0, r1).to(dtype)  # (r, cols)
        if gran.kind == "tensor":
            part = v.amax() if op == "amax" else v.sum()
            out[0, 0] = torch.maximum(out[0, 0], part) if op == "amax" else out[0, 0] + part
        elif gran.kind == "channel":
            out[r0:r1, 0] = v.amax(dim=1) if op == "amax" else v.sum(dim=1)
        else:
            gv = group_view(v, gran)  # (r, G, N)
            out[r0:r1] = gv.amax(dim=2) if op == "amax" else gv.sum(dim=2)
    return out


def expand_scale(scale: torch.Tensor, gran: Granularity, r0: int, r1: int, cols: int) -> torch.Tensor:
    """The scales of rows r0:r1, broadcastable against the (r1 - r0, cols) chunk."""
    if gran.kind == "tensor":
        return scale.reshape(1, 1)
    if gran.kind == "channel":
        return scale[r0:r1]
    return scale[r0:r1].repeat_interleave(gran.block_size, dim=1)[:, :cols]


def group_amax(w2: torch.Tensor, gran: Granularity) -> torch.Tensor:
    """max |w| per group, scale-shaped, float32."""
    return reduce_groups(w2, gran, lambda c, r0, r1: c.abs(), "amax")


class Codec(abc.ABC):
    """An 8-bit weight format: a 256-entry float32 decode table plus rules for scales and codes."""

    name: str

    def __init__(self, lut: torch.Tensor) -> None:
        if lut.shape != (256,) or lut.dtype != torch.float32:
            raise ValueError("a codec's lut must be 256 float32 values")
        self._lut = lut
        self._lut_finite = bool(torch.isfinite(lut).all())

    @property
    def lut(self) -> torch.Tensor:
        """The decode table: ``lut[code]`` is the value of ``code`` before scaling (a copy)."""
        return self._lut.clone()

    # -- format-specific rules ---------------------------------------------------------------------

    @abc.abstractmethod
    def scale_from_amax(self, amax: torch.Tensor) -> torch.Tensor:
        """Per-group float32 scale from per-group max |w| (all-zero groups must get a valid scale)."""

    @abc.abstractmethod
    def encode_scaled(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """uint8 codes of a float32 chunk ``w`` given its broadcastable scales."""

    def choose_scale(self, w2: torch.Tensor, gran: Granularity) -> torch.Tensor:
        """Per-group scales; the default derives them from max |w| (formats may search instead)."""
        return self.scale_from_amax(group_amax(w2, gran))

    def check_scale(self, scale: torch.Tensor, name: str) -> None:
        """Reject scales a correct encoder never writes (decoding files must not trust them)."""
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise GGError(f"{label(name)}: {self.name} scale has non-positive or non-finite values")

    # -- the shared driver -------------------------------------------------------------------------

    def encode(
        self,
        w: torch.Tensor,
        granularity: str | Granularity = "channel",
        block_size: int | None = None,
        name: str = "",
    ) -> QuantizedTensor:
        """Quantize ``w`` (any float dtype, treated as float32 values) with one scale per group."""
        gran = parse_granularity(granularity, block_size)
        w2 = as_matrix(w, name)
        check_finite(w2, name)
        rows, cols = w2.shape
        scale = self.choose_scale(w2, gran).to(torch.float32)
        codes = torch.empty((rows, cols), dtype=torch.uint8, device=w2.device)
        for r0, r1 in row_chunks(rows, cols):
            s = expand_scale(scale, gran, r0, r1, cols)
            codes[r0:r1] = self.encode_scaled(w2[r0:r1].to(torch.float32), s)
        return QuantizedTensor(codes, scale, self.name, gran.kind, gran.block_size, tuple(w.shape))

    def decode(self, q: QuantizedTensor, dtype: torch.dtype = torch.float32, name: str = "") -> torch.Tensor:
        """``lut[code] * scale`` in float32 (rounded once), cast to ``dtype``, in the original shape."""
        if q.format != self.name:
            raise GGError(f"{label(name)}: format {q.format!r} cannot be decoded by the {self.name} codec")
        gran = validate(q, name)
        self.check_scale(q.scale, name)
        rows, cols = q.codes.shape
        lut = self._lut.to(q.codes.device)
        out = torch.empty((rows, cols), dtype=dtype, device=q.codes.device)
        for r0, r1 in row_chunks(rows, cols):
            v = lut[q.codes[r0:r1].long()]  # (r, cols) float32
            if not self._lut_finite and not bool(torch.isfinite(v).all()):
                raise GGError(f"{label(name)}: {self.name} codes include NaN/Inf codes "
                              "(encode never writes them)")
            out[r0:r1] = (v * expand_scale(q.scale, gran, r0, r1, cols)).to(dtype)
        return out.reshape(q.shape)


def as_matrix(w: torch.Tensor, name: str) -> torch.Tensor:
    """The (out, in) view of a floating-point tensor (a copy only if it is not contiguous)."""
    if not isinstance(w, torch.Tensor):
        raise GGError(f"{label(name)}: expected a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise GGError(f"{label(name)}: dtype {w.dtype} is not floating point; only float weights quantize")
    return w.detach().reshape(matrix_shape(tuple(w.shape)))


def check_finite(w2: torch.Tensor, name: str) -> None:
    """NaN/Inf weights have no code; say which tensor and where, rather than writing garbage."""
    rows, cols = w2.shape
    for r0, r1 in row_chunks(rows, cols):
        bad = ~torch.isfinite(w2[r0:r1])
        if bool(bad.any()):
            r, c = (int(i) for i in bad.nonzero()[0])
            count = int(bad.sum())
            raise GGError(f"{label(name)}: {count}+ NaN/Inf values (first at row {r0 + r}, column {c}); "
                          "cannot quantize")


def validate(q: QuantizedTensor, name: str) -> Granularity:
    """Check dtypes and shapes of a QuantizedTensor (e.g. one read from a file) before decoding it."""
    where = label(name)
    try:
        gran = parse_granularity(q.granularity, q.block_size)
    except GGError as exc:
        raise GGError(f"{where}: {exc}") from None
    if q.codes.dtype != torch.uint8:
        raise GGError(f"{where}: codes must be uint8, got {q.codes.dtype}")
    if q.scale.dtype != torch.float32:
        raise GGError(f"{where}: scale must be float32, got {q.scale.dtype}")
    rows, cols = matrix_shape(tuple(q.shape))
    if tuple(q.codes.shape) != (rows, cols):
        raise GGError(f"{where}: codes shape {tuple(q.codes.shape)} does not match ({rows}, {cols}) "
                      f"for tensor shape {tuple(q.shape)}")
    expected = gran.scale_shape(rows, cols)
    if tuple(q.scale.shape) != expected:
        raise GGError(f"{where}: scale shape {tuple(q.scale.shape)} should be {expected} "
                      f"for {gran.spec} granularity")
    return gran
