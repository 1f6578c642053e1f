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
whichever is smallest; a rANS chunk of a wide alphabet (bf16 exponents: 17-24 ranks) splits its model
into a head of the common ranks plus an escape and a tail of the rare ones (SPLIT, format version 5):
same size, ~12 instead of ~16 ns per value to decode. The layout is specified in docs/format.md §4
("lossless").
"""

from __future__ import annotations

import math
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
#: Section kinds in a tensor's directory (SPLIT: rANS with a head/escape model, format version 5).
RAW, CONST, RANS, SPLIT = 0, 1, 2, 3
#: Head alphabets (escape included) a SPLIT section may use; the writer picks one by decode_ns.
SPLIT_HEADS = (4, 8, 16)
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


def decode_ns(symbols: int) -> float:
    """Model of constriction's decode time per value (ns) for an alphabet of ``symbols`` ranks.

    Measured with constriction 0.5 on one core (x86-64): ~4.5 ns per value plus ~2.3 ns per step of
    the binary search over the model's cdf — it does not depend on the distribution, only on the size.
    """
    return 4.5 + 2.3 * math.ceil(math.log2(max(symbols, 2)))


def split_head(counts: np.ndarray) -> int:
    """Head alphabet size for a SPLIT section over ``counts`` (rank order), or 0: plain rANS decodes faster.

    A head of K ranks (the last one an escape) decodes every value in a K-symbol search and only the
    escaped values (the rare ranks) again in the tail's: ~12 ns instead of ~16 for bf16 exponents.
    """
    c = np.asarray(counts, dtype=np.float64)
    d, total = c.size, float(c.sum())
    best, head = decode_ns(d), 0
    tail_mass = total - np.cumsum(c)  # tail_mass[k - 2]: the mass of ranks >= k - 1
    for k in SPLIT_HEADS:
        if k >= d:
            break
        cost = decode_ns(k) + 0.3 + tail_mass[k - 2] / total * (decode_ns(d - k + 1) + 1.0)
        if cost < best - 0.5:
            best, head = cost, k
    return head


def encode_chunk(sym: np.ndarray, min_gain: float = 0.0, split: bool = True) -> Section:
    """The smallest of raw bytes, one constant byte, or rANS under the chunk's own 12-bit histogram.

    rANS is kept only when it saves at least ``min_gain`` bits per symbol over raw bytes: a near-uniform
    plane would decode at ~22 ns/byte to save a fraction of a percent. With ``split`` a rANS chunk whose
    alphabet is large enough is written as a SPLIT section (the same table and rate, faster to decode).
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
    heads = split_head(q[order]) if split else 0
    if heads:  # head ranks straight from a clipped table; the few escaped bytes ranked on their own
        head_ranks = np.minimum(lut, heads - 1)[sym]
        tail = lut[sym[head_ranks == heads - 1]] - (heads - 1)
        words = coders.rans_encode_parts(head_ranks, tail, q[order], heads)
    else:
        words = coders.rans_encode(lut[sym], weights)
    if head + len(words) >= n:
        return Section(RAW, sym.tobytes(), h, 0.0)
    blob = bytes([k, heads, 0, 0]) + len(table).to_bytes(4, "little") + table + b"\0" * (-len(table) % 4) \
        + words
    return Section(SPLIT if heads else RANS, blob, h, 8.0 * head)


def _rans_ranks(kind: int, blob: memoryview, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, rank -> symbol) of a RANS or SPLIT section: n decoded ranks (int32, each < the alphabet)."""
    if len(blob) < 8:
        raise GGError(f"{name}: unknown or short section (kind {kind}, {len(blob)} bytes)")
    width = blob[0]
    heads = blob[1] if kind == SPLIT else 0
    tlen = int.from_bytes(blob[4:8], "little")
    start = 8 + tlen + (-tlen % 4)
    if not 1 <= width <= 16 or tlen < 32 or start > len(blob):
        raise GGError(f"{name}: malformed rANS section header")
    q = unpack_table(width, blob[8:8 + tlen])
    total = int(q.sum())
    if total == 0 or total >= 1 << 30:
        raise GGError(f"{name}: malformed rANS chunk table")
    order = ranked(q)
    if order.size < 2:
        raise GGError(f"{name}: rANS chunk table with {order.size} symbol(s)")
    if kind == SPLIT:
        if not 2 <= heads < order.size:
            raise GGError(f"{name}: split rANS head of {heads} ranks for a table of {order.size}")
        ranks = coders.rans_decode_split(blob[start:], n, q[order], heads, name)
    else:
        ranks = coders.rans_decode(blob[start:], n, coders.rans_weights(q[order]), name)
    if ranks.size and int(ranks.max()) >= order.size:
        raise GGError(f"{name}: a decoded rank is outside the chunk table")
    return ranks, order


def _check_plain(kind: int, blob: memoryview, n: int, name: str, split: bool) -> None:
    """GGError unless a raw / const section has the length its kind needs (or the kind is unknown).

    ``split``: SPLIT sections are allowed (containers of format version 5 and later).
    """
    if kind == SPLIT and not split:
        raise GGError(f"{name}: a split rANS section (kind {SPLIT}) needs container format version 5")
    if kind == RAW and len(blob) != n:
        raise GGError(f"{name}: raw section of {len(blob)} bytes for {n} values")
    if kind == CONST and len(blob) != 1:
        raise GGError(f"{name}: constant section of {len(blob)} bytes")
    if kind not in (RAW, CONST, RANS, SPLIT):
        raise GGError(f"{name}: unknown or short section (kind {kind}, {len(blob)} bytes)")


def decode_chunk(kind: int, blob: memoryview, out: np.ndarray, name: str, split: bool = True) -> None:
    """Inverse of encode_chunk: fills ``out`` (uint8, the chunk's symbols); GGError on a bad section."""
    n = out.size
    _check_plain(kind, blob, n, name, split)
    if kind == RAW:
        out[:] = np.frombuffer(blob, dtype=np.uint8)
    elif kind == CONST:
        out.fill(blob[0])
    else:
        ranks, order = _rans_ranks(kind, blob, n, name)
        np.take(order.astype(np.uint8), ranks, out=out, mode="clip")  # ranks < order.size: checked


def _f16_chunk(exp: tuple[int, memoryview], low: tuple[int, memoryview], word: np.ndarray,
               tmp: np.ndarray, name: str, split: bool) -> None:
    """Decode one chunk of both f16 planes straight into its 16-bit words (merge_planes, fused).

    Why fused: assembling each chunk while its planes are in cache, and mapping exponent ranks through a
    table of ``symbol << 7`` words, saves two passes and two copies over the whole tensor per read.
    """
    n = word.size
    kind, blob = exp
    _check_plain(kind, blob, n, name, split)
    if kind == RAW:
        np.left_shift(np.frombuffer(blob, dtype=np.uint8), 7, out=word, dtype=np.uint16)
    elif kind == CONST:
        word.fill(blob[0] << 7)
    else:
        ranks, order = _rans_ranks(kind, blob, n, name)
        np.take(order.astype(np.uint16) << 7, ranks, out=word, mode="clip")  # ranks < order.size: checked
    kind, blob = low
    _check_plain(kind, blob, n, name, split)
    if kind == CONST:  # sign -> bit 15, mantissa bits 6..0 stay
        word |= (blob[0] & 0x7F) | ((blob[0] & 0x80) << 8)
        return
    t = tmp[:n]
    if kind == RAW:
        t[:] = np.frombuffer(blob, dtype=np.uint8)
    else:
        ranks, order = _rans_ranks(kind, blob, n, name)
        np.take(order.astype(np.uint16), ranks, out=t, mode="clip")
    t *= 0x101  # the byte in both halves; keep its sign bit high and its low 7 bits low
    t &= 0x807F
    word |= t


# ------------------------------------------------------------------------------------------ tensors


@dataclass
class Encoded:
    """One tensor coded losslessly: header keys, its bytes, and its costs in bits."""

    entry: dict
    blob: bytes
    payload_bits: float
    table_bits: float
    entropy_bits: float
    kinds: dict[str, int]  # sections per kind (raw / const / rans: SPLIT sections counted as rans)
    split: int = 0  # SPLIT sections: the container needs format version 5


def _map(fn: Callable, items: list, workers: int) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def encode_tensor(raw: np.ndarray, dtype: str, workers: int = 1, min_gain: float = MIN_GAIN,
                  split: bool = True) -> Encoded:
    """Code the element bytes ``raw`` (uint8, little-endian, C order) of a ``dtype`` tensor.

    Blob: a directory of planes × chunks (kind, length) little-endian uint32 pairs, then the sections
    in plane-major order, each padded to a multiple of 4 bytes. ``split=False`` writes no SPLIT section
    (what a format-version-2 reader reads).
    """
    layout = layout_of(dtype)
    itemsize = _ITEMSIZE[dtype]
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    n = raw.size // itemsize
    planes = split_planes(raw, layout, itemsize) if n else []
    chunks = -(-n // CHUNK)
    jobs = [(p, c) for p in range(len(planes)) for c in range(chunks)]
    sections = _map(lambda pc: encode_chunk(planes[pc[0]][pc[1] * CHUNK:(pc[1] + 1) * CHUNK], min_gain,
                                            split), jobs, workers)
    directory = np.array([(s.kind, len(s.blob)) for s in sections], dtype=_DIR).reshape(-1)
    parts = [directory.tobytes()]
    for s in sections:
        parts += [s.blob, b"\0" * (-len(s.blob) % 4)]
    blob = b"".join(parts)
    table = 8.0 * directory.nbytes + sum(s.table_bits for s in sections)
    kinds = {name: sum(s.kind in group for s in sections)
             for group, name in (((RAW,), "raw"), ((CONST,), "const"), ((RANS, SPLIT), "rans"))}
    entry = {"dtype": dtype, "source_dtype": dtype, "encoding": "lossless", "coder": "lossless",
             "lossless": {"layout": layout, "planes": len(planes), "chunk": CHUNK}}
    return Encoded(entry, blob, 8.0 * len(blob) - table, table, sum(s.entropy_bits for s in sections), kinds,
                   sum(s.kind == SPLIT for s in sections))


def decode_tensor(data: memoryview | bytes, entry: dict, n: int, workers: int = 1, split: bool = True
                  ) -> np.ndarray:
    """Inverse of encode_tensor: the element bytes (uint8, n·itemsize); GGError on malformed data.

    ``split``: whether SPLIT sections are allowed (the container's format version is 5 or later).
    """
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

    kinds = directory[:, 0].tolist()
    lengths = directory[:, 1].tolist()
    offsets = starts.tolist()
    sections = [(kinds[i], view[offsets[i]:offsets[i] + lengths[i]]) for i in range(count)]

    if layout == "f16":
        word = np.empty(n, dtype="<u2")
        temps = [np.empty(min(chunk, n), dtype=np.uint16) for _ in range(max(1, min(workers, chunks)))]
        free = list(temps)

        def column(c: int) -> None:
            tmp = free.pop()  # one temporary per running thread
            try:
                _f16_chunk(sections[c], sections[chunks + c], word[c * chunk:(c + 1) * chunk], tmp, name,
                           split)
            finally:
                free.append(tmp)

        _map(column, list(range(chunks)), workers)
        return word.view(np.uint8)

    planes = np.empty((nplanes, n), dtype=np.uint8)

    def one(i: int) -> None:
        p, c = divmod(i, chunks)
        decode_chunk(sections[i][0], sections[i][1], planes[p, c * chunk:(c + 1) * chunk], name, split)

    _map(one, list(range(count)), workers)
    return merge_planes(list(planes), layout, itemsize)
