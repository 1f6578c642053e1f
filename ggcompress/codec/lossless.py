"""Bit-exact coding of whole tensors (``pack --quant none``): byte planes, one rANS model per chunk.

Why planes: in a trained float tensor the exponent byte carries ~2.6 bits of information in 8, while
sign and mantissa bits are close to uniform. Splitting every element into byte-sized *planes* (for
floats: exponent / sign + high mantissa / lower mantissa bytes) lets each plane get its own model, so
the exponent is coded near its entropy and near-random planes are stored as they are at memcpy speed.

Why chunks: each plane is cut into chunks of ``CHUNK`` elements with their own 256-symbol histogram
(12-bit counts, exp-Golomb coded: ~0.02 bit/element of table). Local histograms follow structure a
per-tensor one misses (embedding rows of lower precision, zero blocks), chunks decode independently
(a thread pool runs them: constriction releases the GIL), and memory stays bounded. Each chunk is
stored raw, as one constant byte, or rANS-coded (constriction, the coder of ``coders.rans_*``),
whichever is smallest. The layout is specified in docs/format.md §4 ("lossless").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ggcompress.codec import coders
from ggcompress.errors import GGError

#: Elements per chunk of a plane (one histogram each).
CHUNK = 1 << 16
#: Chunk histograms are stored as counts scaled to sum ~2^TABLE_PRECISION (each present symbol >= 1).
TABLE_PRECISION = 12
#: Bits per symbol a chunk's rANS coding must save over raw bytes (speed: see encode_chunk).
MIN_GAIN = 0.1
#: Section kinds in a tensor's directory.
RAW, CONST, RANS = 0, 1, 2
#: How a dtype's elements are split into byte planes (safetensors dtype -> layout name).
LAYOUTS = {"F32": "f32", "BF16": "f16", "F16": "f16"}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
             "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}
_DIR = np.dtype("<u4")


def layout_of(dtype: str) -> str:
    """'f32' | 'f16' (bf16 and fp16) | 'bytes' (every other dtype: little-endian byte i of each element)."""
    if dtype not in _ITEMSIZE:
        raise GGError(f"dtype {dtype}: no lossless layout (known: {', '.join(_ITEMSIZE)})")
    return LAYOUTS.get(dtype, "bytes")


def plane_count(layout: str, itemsize: int) -> int:
    return {"f32": 4, "f16": 2}.get(layout, itemsize)


def default_workers() -> int:
    """Threads for chunk coding: $GGCOMPRESS_WORKERS if set, else the CPUs this process may use, at most 4."""
    env = os.environ.get("GGCOMPRESS_WORKERS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise GGError(f"GGCOMPRESS_WORKERS={env!r}: expected a positive integer") from None
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n))


# ------------------------------------------------------------------------------------------- planes


def split_planes(raw: np.ndarray, layout: str, itemsize: int) -> list[np.ndarray]:
    """Byte planes (uint8 arrays of n elements) of little-endian element bytes ``raw`` (uint8, n·itemsize).

    f32: exponent, sign | mantissa bits 22..16, mantissa byte 15..8, mantissa byte 7..0.
    f16: (bits 14..7: bf16's exponent, fp16's exponent + 2 top mantissa bits), sign | bits 6..0.
    bytes: byte 0 (least significant), byte 1, ...
    """
    b = raw.reshape(-1, itemsize)
    if layout == "f32":
        b2, b3 = b[:, 2], b[:, 3]
        return [(b3 << 1) | (b2 >> 7), (b3 & 0x80) | (b2 & 0x7F), b[:, 1].copy(), b[:, 0].copy()]
    if layout == "f16":  # on 16-bit words: ~1.5x faster than strided byte columns
        u = raw.view("<u2")
        s = (u >> 8).astype(np.uint8)
        s &= 0x80
        s |= u.astype(np.uint8) & 0x7F
        return [(u >> 7).astype(np.uint8), s]
    return [b[:, i].copy() for i in range(itemsize)]


def merge_planes(planes: Sequence[np.ndarray], layout: str, itemsize: int) -> np.ndarray:
    """Inverse of split_planes: the element bytes (uint8, n·itemsize)."""
    n = planes[0].size if planes else 0
    if layout == "f16":
        e, s = planes
        word = e.astype("<u2")
        word <<= 7
        word |= s & 0x7F
        sign = (s & 0x80).astype("<u2")
        sign <<= 8
        word |= sign
        return word.view(np.uint8)
    out = np.empty((n, itemsize), dtype=np.uint8)
    if layout == "f32":
        e, s = planes[0], planes[1]
        out[:, 3] = (s & 0x80) | (e >> 1)
        out[:, 2] = (e << 7) | (s & 0x7F)
        out[:, 1] = planes[2]
        out[:, 0] = planes[3]
    else:
        for i in range(itemsize):
            out[:, i] = planes[i]
    return out.reshape(-1)


# ------------------------------------------------------------------------------------------- chunks


def table_counts(counts: np.ndarray, precision: int = TABLE_PRECISION) -> np.ndarray:
    """Counts scaled to sum ~2^precision; every present symbol keeps >= 1 (what the table stores)."""
    c = counts.astype(np.int64)
    q = (c * (1 << precision) + c.sum() // 2) // max(int(c.sum()), 1)
    return np.where(c > 0, np.maximum(q, 1), 0)


@dataclass
class Section:
    """One coded (plane, chunk): its kind, bytes, and costs in bits."""

    kind: int
    blob: bytes
    entropy_bits: float
    table_bits: float


def _entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if n else 0.0


def pack_table(q: np.ndarray) -> tuple[int, bytes]:
    """(width, bytes) of a chunk table: a 256-bit presence bitmap, then the present counts in width bits."""
    present = q > 0
    width = coders.uint_bits(int(q.max()))
    return width, np.packbits(present).tobytes() + coders.pack_uints(q[present].astype(np.uint64), width)


def unpack_table(width: int, buf: bytes | memoryview) -> np.ndarray:
    """Inverse of pack_table: the 256 table counts (int64)."""
    present = np.unpackbits(np.frombuffer(buf[:32], dtype=np.uint8)).astype(bool)
    q = np.zeros(256, dtype=np.int64)
    q[present] = coders.unpack_uints(buf[32:], width, int(present.sum())).astype(np.int64)
    return q


def ranked(q: np.ndarray) -> np.ndarray:
    """The present symbols (q > 0) by descending table count, ties by symbol: rank -> symbol.

    rANS codes ranks, not bytes: constriction's decoder searches the model's cdf, so an alphabet of only
    the present symbols, most frequent first, decodes faster (~10 ns/symbol for 16 symbols, ~22 for 256).
    """
    present = np.flatnonzero(q)
    return present[np.lexsort((present, -q[present]))]


def encode_chunk(sym: np.ndarray, min_gain: float = 0.0) -> Section:
    """The smallest of raw bytes, one constant byte, or rANS under the chunk's own 12-bit histogram.

    rANS is kept only when it saves at least ``min_gain`` bits per symbol over raw bytes: a near-uniform
    plane would decode at ~22 ns/byte to save a fraction of a percent.
    """
    n = sym.size
    counts = np.bincount(sym, minlength=256)
    h = _entropy_bits(counts)
    if np.count_nonzero(counts) == 1:
        return Section(CONST, bytes([int(sym[0])]), h, 8.0)
    q = table_counts(counts)
    order = ranked(q)
    weights = coders.rans_weights(q[order])
    est = float(-(counts[order] * np.log2(weights / float(1 << coders.RANS_PRECISION))).sum()) + 64
    k, table = pack_table(q)
    head = 8 + len(table) + (-len(table) % 4)
    if est + 8 * head > (8 - min_gain) * n:
        return Section(RAW, sym.tobytes(), h, 0.0)
    lut = np.zeros(256, dtype=np.int32)
    lut[order] = np.arange(order.size, dtype=np.int32)
    words = coders.rans_encode(lut[sym], weights)
    if head + len(words) >= n:
        return Section(RAW, sym.tobytes(), h, 0.0)
    blob = bytes([k, 0, 0, 0]) + len(table).to_bytes(4, "little") + table + b"\0" * (-len(table) % 4) + words
    return Section(RANS, blob, h, 8.0 * head)


def decode_chunk(kind: int, blob: memoryview, out: np.ndarray, name: str) -> None:
    """Inverse of encode_chunk: fills ``out`` (uint8, the chunk's symbols); GGError on a bad section."""
    n = out.size
    if kind == RAW:
        if len(blob) != n:
            raise GGError(f"{name}: raw section of {len(blob)} bytes for {n} values")
        out[:] = np.frombuffer(blob, dtype=np.uint8)
        return
    if kind == CONST:
        if len(blob) != 1:
            raise GGError(f"{name}: constant section of {len(blob)} bytes")
        out.fill(blob[0])
        return
    if kind != RANS or len(blob) < 8:
        raise GGError(f"{name}: unknown or short section (kind {kind}, {len(blob)} bytes)")
    width = blob[0]
    tlen = int.from_bytes(blob[4:8], "little")
    start = 8 + tlen + (-tlen % 4)
    if not 1 <= width <= 16 or tlen < 32 or start > len(blob):
        raise GGError(f"{name}: malformed rANS section header")
    q = unpack_table(width, blob[8:8 + tlen])
    if int(q.sum()) == 0 or int(q.sum()) >= 1 << 30:
        raise GGError(f"{name}: malformed rANS chunk table")
    order = ranked(q)
    if order.size < 2:
        raise GGError(f"{name}: rANS chunk table with {order.size} symbol(s)")
    ranks = coders.rans_decode(blob[start:], n, coders.rans_weights(q[order]), name)
    if ranks.size and int(ranks.max()) >= order.size:
        raise GGError(f"{name}: a decoded rank is outside the chunk table")
    np.take(order.astype(np.uint8), ranks, out=out)


# ------------------------------------------------------------------------------------------ tensors


@dataclass
class Encoded:
    """One tensor coded losslessly: header keys, its bytes, and its costs in bits."""

    entry: dict
    blob: bytes
    payload_bits: float
    table_bits: float
    entropy_bits: float
    kinds: dict[str, int]  # sections per kind (raw / const / rans)


def _map(fn: Callable, items: list, workers: int) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def encode_tensor(raw: np.ndarray, dtype: str, workers: int = 1, min_gain: float = MIN_GAIN) -> Encoded:
    """Code the element bytes ``raw`` (uint8, little-endian, C order) of a ``dtype`` tensor.

    Blob: a directory of planes × chunks (kind, length) little-endian uint32 pairs, then the sections
    in plane-major order, each padded to a multiple of 4 bytes.
    """
    layout = layout_of(dtype)
    itemsize = _ITEMSIZE[dtype]
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    n = raw.size // itemsize
    planes = split_planes(raw, layout, itemsize) if n else []
    chunks = -(-n // CHUNK)
    jobs = [(p, c) for p in range(len(planes)) for c in range(chunks)]
    sections = _map(lambda pc: encode_chunk(planes[pc[0]][pc[1] * CHUNK:(pc[1] + 1) * CHUNK], min_gain),
                    jobs, workers)
    directory = np.array([(s.kind, len(s.blob)) for s in sections], dtype=_DIR).reshape(-1)
    parts = [directory.tobytes()]
    for s in sections:
        parts += [s.blob, b"\0" * (-len(s.blob) % 4)]
    blob = b"".join(parts)
    table = 8.0 * directory.nbytes + sum(s.table_bits for s in sections)
    kinds = {name: sum(s.kind == kind for s in sections) for kind, name in ((RAW, "raw"), (CONST, "const"),
                                                                            (RANS, "rans"))}
    entry = {"dtype": dtype, "source_dtype": dtype, "encoding": "lossless", "coder": "lossless",
             "lossless": {"layout": layout, "planes": len(planes), "chunk": CHUNK}}
    return Encoded(entry, blob, 8.0 * len(blob) - table, table, sum(s.entropy_bits for s in sections), kinds)


def decode_tensor(data: memoryview | bytes, entry: dict, n: int, workers: int = 1) -> np.ndarray:
    """Inverse of encode_tensor: the element bytes (uint8, n·itemsize); GGError on malformed data."""
    name = f"tensor {entry.get('name')!r}"
    spec = entry["lossless"]
    dtype = entry["dtype"]
    layout, chunk, nplanes = spec["layout"], int(spec["chunk"]), int(spec["planes"])
    itemsize = _ITEMSIZE.get(dtype, 0)
    if layout != layout_of(dtype) or chunk < 1 or nplanes != (plane_count(layout, itemsize) if n else 0):
        raise GGError(f"{name}: lossless layout {layout!r} / {nplanes} planes / chunk {chunk} do not fit "
                      f"dtype {dtype}")
    if n == 0:
        return np.empty(0, dtype=np.uint8)
    chunks = -(-n // chunk)
    count = nplanes * chunks
    view = memoryview(data)
    if len(view) < 8 * count:
        raise GGError(f"{name}: lossless section directory cut short")
    directory = np.frombuffer(view[:8 * count], dtype=_DIR).reshape(count, 2).astype(np.int64)
    padded = directory[:, 1] + (-directory[:, 1] % 4)
    starts = 8 * count + np.concatenate(([0], np.cumsum(padded)[:-1]))
    if int(starts[-1] + padded[-1]) != len(view):
        raise GGError(f"{name}: lossless sections do not fill the tensor's bytes")

    planes = np.empty((nplanes, n), dtype=np.uint8)

    def one(i: int) -> None:
        p, c = divmod(i, chunks)
        decode_chunk(int(directory[i, 0]), view[starts[i]:starts[i] + directory[i, 1]],
                     planes[p, c * chunk:(c + 1) * chunk], name)

    _map(one, list(range(count)), workers)
    return merge_planes(list(planes), layout, itemsize)

