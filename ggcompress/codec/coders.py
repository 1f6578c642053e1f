"""Entropy coders of packed checkpoints: exp-Golomb in lanes, rANS (constriction), bit-packed tables.

Why a module of its own: ``pack`` must write the papers' exp-Golomb bitstream (byte for byte what
``rate.eg_encode`` writes, so its size is exactly ``analyze``'s eg_bits) yet decode it at disk speed.
``rate.eg_decode`` decodes any stream but is ~50x slower than a read pass, because one codeword's start
depends on all before it. Here the stream is cut into *lanes* of ``lane`` symbols whose bit lengths are
stored beside it (a few bits per lane); numpy then decodes all lanes in lockstep, one codeword of every
lane per vector step. The stream itself is unchanged: the lane table only says where lanes start.

The near-entropy coder is constriction's rANS (``AnsCoder``, 32-bit words, 24-bit probabilities) with a
categorical model over ranks whose integer weights we choose and store, so decoding never depends on
how a library turns floats into fixed point. The layouts are specified in docs/format.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ggcompress.errors import GGError
from ggcompress.stats import rate

#: Symbols per chunk in the encoder: its temporaries stay in cache (see rate.CODE_CHUNK).
ENCODE_CHUNK = 1 << 16
#: Longest codeword the lane decoder reads from one 64-bit window; longer codes use rate.eg_decode.
MAX_LANE_CODEWORD = 64
#: rANS probability precision (bits): model weights sum to 2^RANS_PRECISION, constriction's default.
RANS_PRECISION = 24
#: Largest alphabet the rANS model takes (each rank needs weight >= 1, constriction needs n < 2^24 - 1).
RANS_MAX_SYMBOLS = 1 << 20
_U64 = np.uint64


# ---------------------------------------------------------------------------------- fixed-width tables


def pack_uints(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers as ``bits``-bit fields, MSB first, back to back, zero-padded to a byte."""
    v = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    if bits == 0 or v.size == 0:
        if bits == 0 and v.size and int(v.max()) != 0:
            raise ValueError("pack_uints: non-zero value in a 0-bit field")
        return b""
    if not 0 < bits <= 64 or (bits < 64 and int(v.max()) >> bits):
        raise ValueError(f"pack_uints: a value does not fit in {bits} bits")
    out = []
    step = 1 << 15  # a multiple of 8 rows keeps every chunk byte-aligned
    for i in range(0, v.size, step):
        b = np.unpackbits(v[i:i + step].astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
        out.append(np.packbits(b[:, 64 - bits:].reshape(-1)).tobytes())
    return b"".join(out)


def unpack_uints(buf: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_uints: ``count`` values (uint64) of ``bits`` bits each."""
    if bits == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    need = (bits * count + 7) // 8
    data = np.frombuffer(buf, dtype=np.uint8)
    if data.size != need:
        raise GGError(f"table of {count} {bits}-bit values needs {need} bytes, found {data.size}")
    out = np.empty(count, dtype=np.uint64)
    step = 1 << 15
    for i in range(0, count, step):
        c = min(step, count - i)
        lo = i * bits // 8  # i is a multiple of 8, so chunks start on a byte
        b = np.unpackbits(data[lo:lo + (c * bits + 7) // 8])[: c * bits].reshape(c, bits)
        full = np.zeros((c, 64), dtype=np.uint8)
        full[:, 64 - bits:] = b
        out[i:i + c] = np.packbits(full, axis=1).view(">u8").reshape(-1)
    return out


def uint_bits(max_value: int) -> int:
    """Field width holding 0..max_value (0 bits for a table of zeros)."""
    return int(max_value).bit_length()


# ------------------------------------------------------------------------------ exp-Golomb in lanes


def eg_tables(distinct: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Codeword length (int64) and value v = r + 2^k (uint64) of each rank 0..distinct-1."""
    v = np.arange(distinct, dtype=np.int64) + (1 << k)
    return rate.exp_golomb_lengths(np.arange(distinct, dtype=np.int64), k).numpy(), v.astype(_U64)


def lane_size(n: int) -> int:
    """Symbols per lane: the power of two >= n/2048, clamped to 256..4096.

    Lanes trade table bits (~8-10 bits per lane) for decode speed: one numpy step decodes a codeword of
    every lane, and below ~1500 lanes the per-step overhead dominates (measured on 2 cores: 17 ns/param
    with 1728 lanes, 29 with 864). This costs ~0.02 bit/param on 1M-value matrices, <0.01 on larger ones.
    """
    target = max(1, n // 2048)
    return int(min(4096, max(256, 1 << (target - 1).bit_length())))


@dataclass
class EGStream:
    """An exp-Golomb bitstream (rate.eg_encode's bytes) plus the bit length of each lane."""

    payload: bytes
    bits: int
    lane: int  # symbols per lane (the last lane may be shorter)
    lane_bits: np.ndarray  # int64, one per lane


def eg_encode_lanes(ranks: np.ndarray, k: int, distinct: int, lane: int) -> EGStream:
    """rate.eg_encode(ranks, k), byte for byte, with lane lengths; ranks must be < distinct.

    Faster than the generic writer for small alphabets: lengths and values come from per-rank
    tables, and neighbouring codewords are merged pairwise while two fit in 64 bits, so the bit
    placement (the costly part) runs on 2-8x fewer pieces.
    """
    r = np.asarray(ranks).reshape(-1)
    if r.dtype.kind not in "iu":
        raise GGError(f"ranks: dtype {r.dtype} is not an integer type")
    n = r.size
    if n == 0:
        return EGStream(b"", 0, lane, np.zeros(0, dtype=np.int64))
    len_tab, val_tab = eg_tables(distinct, k)
    lmax = int(len_tab.max())
    if lmax > MAX_LANE_CODEWORD:
        lengths = len_tab[r]
        lane_bits = np.add.reduceat(lengths, np.arange(0, n, lane))
        return EGStream(rate.eg_encode(r, k), int(lane_bits.sum()), lane, lane_bits)
    # one table, one lookup a symbol: value << 8 | length (a codeword of <= 64 bits, k <= 32: value < 2^48)
    both = (val_tab << _U64(8)) | len_tab.astype(_U64)
    words = np.zeros(n * lmax // 64 + 3, dtype=_U64)
    lane_bits = np.empty(-(-n // lane), dtype=np.int64)
    chunk = max(ENCODE_CHUNK // lane, 1) * lane
    pos = 0
    for i in range(0, n, chunk):
        ri = r[i:i + chunk]
        lv = np.take(both, ri)  # take: faster than fancy indexing
        length = (lv & _U64(255)).view(np.int64)
        value = lv >> _U64(8)
        sums = np.add.reduceat(length, np.arange(0, ri.size, lane))
        lane_bits[i // lane:i // lane + sums.size] = sums
        width = lmax
        while 2 * width <= 64 and length.size > 1:
            if length.size & 1:
                length = np.append(length, 0)
                value = np.append(value, _U64(0))
            value = (value[0::2] << length[1::2].astype(_U64)) | value[1::2]
            length = length[0::2] + length[1::2]
            width *= 2
        end = np.cumsum(length)
        end += pos
        start = end - length
        w0 = start >> 6
        fit = (start & 63) + length
        prim = (value << np.maximum(64 - fit, 0).astype(_U64)) >> np.maximum(fit - 64, 0).astype(_U64)
        # Pieces are at most 64 bits, so a piece starts in every word from w0[0] to w0[-1], and only the
        # last piece of a word can spill into the next. Per-word sums (pieces never share bits: sum ==
        # or) by differences of a running sum, which wraps mod 2^64 and so still gives them exactly.
        last = np.empty(0, dtype=np.int64) if w0.size < 2 else np.flatnonzero(w0[1:] != w0[:-1])
        last = np.append(last, w0.size - 1)  # the last piece of each word
        per_word = np.cumsum(prim)[last]
        per_word[1:] -= per_word[:-1].copy()
        f = fit[last]
        spill = np.where(  # the low bits of a spilling last piece, for the next word
            f > 64, value[last] << ((128 - f) & 63).astype(_U64), _U64(0))
        per_word[1:] |= spill[:-1]
        first_word = int(w0[0])
        g = per_word.size
        words[first_word:first_word + g] |= per_word
        words[first_word + g] |= spill[-1]
        pos = int(end[-1])
    total = pos
    big_endian = words[: (total + 63) // 64].byteswap()
    return EGStream(big_endian.view(np.uint8)[: (total + 7) // 8].tobytes(), total, lane, lane_bits)


@lru_cache(maxsize=64)
def _lz_tables(k: int, zmax: int) -> tuple[np.ndarray, np.ndarray]:
    """For the top 16 bits t of a window: codeword length and 64 - length (zero runs capped at zmax).

    A run longer than zmax cannot occur in a valid stream; capping it keeps the value read inside the
    value table, and the checksum of the decoded tensor reports the corruption.
    """
    t = np.arange(1 << 16, dtype=np.int64)
    nb = np.zeros(1 << 16, dtype=np.int64)
    nb[1:] = np.frexp(t[1:].astype(np.float64))[1]
    z = np.minimum(16 - nb, zmax)
    length = 2 * z + k + 1
    return length.astype(_U64), (64 - length).astype(_U64)


def eg_decode_lanes(payload: bytes | memoryview, n: int, k: int, lane: int, lane_bits: np.ndarray,
                    values: np.ndarray, name: str = "tensor") -> np.ndarray:
    """values[rank] for each of the n codewords of an EGStream (values: one entry per rank).

    Every lane decodes ``lane`` codewords in lockstep; m = 64 // max_codeword_length codewords (a
    power of two, at most 8) are taken from each 64-bit window. Lane ends are checked against the
    table, so a corrupt stream raises GGError instead of returning shifted values.
    """
    distinct = values.size
    if n == 0:
        return values[:0].copy()
    if distinct == 0:
        raise GGError(f"{name}: empty symbol table for {n} values")
    lanes = -(-n // lane)
    lane_bits = np.asarray(lane_bits, dtype=np.int64)
    total = int(lane_bits.sum())
    if lane_bits.size != lanes or (lane_bits < 0).any() or (total + 7) // 8 != len(payload):
        raise GGError(f"{name}: exp-Golomb lane table does not match the stream "
                      f"({lane_bits.size} lanes for {n} values, {len(payload)} bytes)")
    len_tab, _ = eg_tables(distinct, k)
    lmax = int(len_tab.max())
    if lmax > MAX_LANE_CODEWORD:
        return values[rate.eg_decode(bytes(payload), n, k).numpy()]
    zmax = (lmax - k - 1) // 2
    m = 1
    while m < 8 and 2 * m * lmax <= 64:
        m *= 2
    data = np.frombuffer(payload, dtype=np.uint8)
    pad = (-data.size) % 8 + 8 * lane + 16  # a runaway lane advances <= 64 bits per codeword
    words = np.concatenate([data, np.zeros(pad, dtype=np.uint8)]).view(">u8").astype(_U64)
    next_half = np.append(words[1:] >> _U64(1), _U64(0))  # W[q+1] >> 1: the window needs W[q+1] >> (64 - r)
    # v = r + 2^k < 2^(zmax + k + 1); entries outside [2^k, 2^k + distinct) are never valid.
    table = np.zeros(1 << (zmax + k + 1), dtype=values.dtype)
    table[1 << k:(1 << k) + distinct] = values
    starts = np.zeros(lanes, dtype=np.int64)
    np.cumsum(lane_bits[:-1], out=starts[1:])
    pos = starts.astype(_U64)
    out = np.empty((lane, lanes), dtype=values.dtype)
    last_count = n - (lanes - 1) * lane
    last_end = -1
    use_lut = zmax <= 15
    if use_lut:
        len16, shift16 = _lz_tables(k, zmax)
    s48, s63, s11 = _U64(48), _U64(63), _U64(11)
    for it in range(0, lane, m):
        q = pos >> _U64(6)
        r = pos & s63
        w = (words[q] << r) | (next_half[q] >> (s63 - r))  # the 64 bits starting at pos
        for j in range(m):
            if use_lut:
                top = w >> s48
                length = len16[top]
                shift = shift16[top]
            else:  # leading 1 within the top 32 bits for valid codes: bitlen(w) = bitlen(w >> 11) + 11
                nb = np.frexp((w >> s11).astype(np.float64))[1].astype(np.int64) + 11
                z = np.minimum(64 - nb, zmax).astype(_U64)
                length = z * _U64(2) + _U64(k + 1)
                shift = _U64(64) - length
            table.take(w >> shift, out=out[it + j])
            pos += length  # w was read at the old pos; the next codeword is the bits after this one
            if it + j + 1 == last_count:
                last_end = int(pos[-1])
            if j + 1 < m:
                w = w << length
    ends = pos.astype(np.int64)
    if lanes > 1 and not np.array_equal(ends[:-1], starts[1:]):
        bad = int(np.argmax(ends[:-1] != starts[1:]))
        raise GGError(f"{name}: exp-Golomb stream corrupt (lane {bad} ends at bit {int(ends[bad])}, "
                      f"the table says {int(starts[bad + 1])})")
    if last_end != total:
        raise GGError(f"{name}: exp-Golomb stream corrupt (it ends at bit {last_end}, the table says "
                      f"{total})")
    return out.T.reshape(-1)[:n]


# ------------------------------------------------------------------------------------------- rANS


def rans_weights(counts: np.ndarray, precision: int = RANS_PRECISION) -> np.ndarray:
    """Integer weights >= 1 summing to 2^precision, proportional to counts (largest remainders).

    w = 1 + floor(c·F/N) with F = 2^precision − D, then +1 for the F − Σfloor ranks with the largest
    remainders (ties: lower rank). Only the encoder runs this; the weights themselves are stored.
    """
    c = np.asarray(counts, dtype=np.uint64)
    d = c.size
    total = int(c.sum())
    free = (1 << precision) - d
    if d < 2 or free <= 0 or total == 0 or total >= 1 << 40:
        raise ValueError(f"rans_weights: unsupported table ({d} symbols, {total} values)")
    prod = c * _U64(free)
    base = prod // _U64(total)
    rem = prod % _U64(total)
    short = free - int(base.sum())
    w = base.astype(np.int64) + 1
    if short:
        order = np.lexsort((np.arange(d), -rem.astype(np.float64)))  # exact: rem < 2^40
        w[order[:short]] += 1
    return w


def _model(weights: np.ndarray):  # -> constriction Categorical
    import constriction

    # Passing w − 1 makes constriction's fast float→fixed-point map the identity: it gives every symbol
    # 1 plus floor(cumsum(p)·scale) with scale = (2^24 − D)/Σp = 1, and these sums are exact integers.
    p = (np.asarray(weights, dtype=np.float64) - 1.0)
    return constriction.stream.model.Categorical(p, perfect=False)


def rans_encode(ranks: np.ndarray, weights: np.ndarray) -> bytes:
    """constriction AnsCoder words (little-endian uint32) of the ranks under the given weights."""
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.ascontiguousarray(ranks, dtype=np.int32).reshape(-1), _model(weights))
    return coder.get_compressed().astype("<u4").tobytes()


def rans_decode(buf: bytes | memoryview, n: int, weights: np.ndarray, name: str = "tensor") -> np.ndarray:
    """Inverse of rans_encode: n ranks (int32). Leftover words mean a corrupt stream (GGError)."""
    return _decode_words(buf, n, name, lambda coder: coder.decode(_model(weights), n))


def _decode_words(buf: bytes | memoryview, n: int, name: str, decode: Any) -> np.ndarray:
    """``decode(AnsCoder over buf's words)``, with a malformed stream (not whole words, constriction's own
    errors, words left over) reported as one GGError line."""
    import constriction

    if len(buf) % 4:
        raise GGError(f"{name}: rANS stream of {len(buf)} bytes is not whole 32-bit words")
    words = np.frombuffer(buf, dtype="<u4")
    if words.dtype != np.uint32:  # a big-endian machine: the stream is little-endian words
        words = words.astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        out = decode(coder)
    except BaseException as exc:  # constriction raises its own types on malformed streams
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise GGError(f"{name}: rANS stream corrupt ({exc})") from None
    if not coder.is_empty():
        raise GGError(f"{name}: rANS stream corrupt (data left after {n} values)")
    return out


def split_weights(counts: np.ndarray, head: int) -> tuple[np.ndarray, np.ndarray]:
    """(head, tail) weights of a split rANS model over counts in rank order (docs/format.md §4).

    Head: ranks 0..head−2 with their own counts and one escape (rank head−1) with the rest's sum; tail:
    the ranks from head−1 on. P(escape)·P(tail rank) is the rank's probability, so the split costs no
    rate beyond rounding, but the decoder searches a head-symbol table for nearly every value.
    """
    c = np.asarray(counts, dtype=np.int64)
    if not 2 <= head < c.size:
        raise ValueError(f"split_weights: head {head} does not split {c.size} ranks")
    return (rans_weights(np.append(c[:head - 1], c[head - 1:].sum())), rans_weights(c[head - 1:]))


def rans_encode_split(ranks: np.ndarray, counts: np.ndarray, head: int) -> bytes:
    """One AnsCoder stream: every rank under the head model (escape for ranks >= head−1), then the
    escaped ranks (minus head−1) under the tail model, in that decoding order."""
    r = np.ascontiguousarray(ranks, dtype=np.int32).reshape(-1)
    return rans_encode_parts(np.minimum(r, head - 1), r[r >= head - 1] - (head - 1), counts, head)


def rans_encode_parts(head_ranks: np.ndarray, tail_ranks: np.ndarray, counts: np.ndarray, head: int) -> bytes:
    """rans_encode_split of ranks already split: min(rank, head−1), and rank − (head−1) where escaped."""
    import constriction

    w_head, w_tail = split_weights(counts, head)
    coder = constriction.stream.stack.AnsCoder()
    if tail_ranks.size:  # a stack: what is encoded last is decoded first
        coder.encode_reverse(np.ascontiguousarray(tail_ranks, dtype=np.int32), _model(w_tail))
    coder.encode_reverse(np.ascontiguousarray(head_ranks, dtype=np.int32), _model(w_head))
    return coder.get_compressed().astype("<u4").tobytes()


def rans_decode_split(buf: bytes | memoryview, n: int, counts: np.ndarray, head: int,
                      name: str = "tensor") -> np.ndarray:
    """Inverse of rans_encode_split: n ranks (int32). Leftover words mean a corrupt stream (GGError)."""
    w_head, w_tail = split_weights(counts, head)

    def decode(coder: Any) -> np.ndarray:
        out = coder.decode(_model(w_head), n)
        escaped = np.flatnonzero(out == head - 1)
        if escaped.size:
            out[escaped] = coder.decode(_model(w_tail), escaped.size) + (head - 1)
        return out

    return _decode_words(buf, n, name, decode)


def best_eg_order(values: np.ndarray, max_k: int = 24) -> int:
    """Exp-Golomb order in 0..max_k with the fewest bits for these non-negative values."""
    v = np.asarray(values, dtype=np.int64)
    totals = [int(rate.exp_golomb_lengths(v, k).sum()) for k in range(max_k + 1)]
    return totals.index(min(totals))


# ------------------------------------------------------------------------------- count tables


def count_table_encode(counts: np.ndarray) -> bytes:
    """A dense histogram (counts ≥ 0 of consecutive symbol values) as zigzag differences of neighbours,
    each in exp-Golomb of order bitlen(previous count) // 2, MSB first, zero-padded to a byte.

    Why: a rANS table listing each symbol and its weight costs ~20 bits a symbol; the histogram of
    quantized weights is smooth, so neighbour differences are small next to the counts themselves:
    3.0–4.3x fewer table bits for the trellis's streams on MiniLM / the Wikipedia LM from step 2^-8 on
    (0.045 / 0.069 bit/param at 2^-12; benchmarks/bench_trellis.py). The
    reader rebuilds the rANS weights with ``rans_weights`` from the exact counts.
    """
    parts: list[str] = []
    prev = 0
    for c in np.asarray(counts, dtype=np.int64).tolist():
        d = c - prev
        x = (2 * d if d >= 0 else -2 * d - 1) + (1 << (prev.bit_length() // 2))
        k = prev.bit_length() // 2
        parts.append("0" * (x.bit_length() - k - 1) + format(x, "b"))
        prev = c
    bits = "".join(parts)
    if not bits:
        return b""
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def count_table_bits(counts: np.ndarray) -> int:
    """Exact length in bits of count_table_encode(counts) (before the byte padding), vectorized."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size == 0:
        return 0
    prev = np.concatenate([[0], c[:-1]])
    k = _bitlen(prev) // 2
    d = c - prev
    x = np.where(d >= 0, 2 * d, -2 * d - 1) + (np.int64(1) << k)
    return int((2 * _bitlen(x) - k - 1).sum())


def _bitlen(v: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values below 2^53 (0 for 0)."""
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def count_table_decode(buf: bytes | memoryview, span: int, total: int) -> np.ndarray:
    """Inverse of count_table_encode: ``span`` counts (int64). ValueError unless they are non-negative
    and add up to ``total`` (checked as they are read, so a crafted table cannot run away)."""
    data = bytes(buf)
    if span < 0 or 8 * len(data) < span:  # every count takes at least one bit
        raise ValueError(f"a count table of {len(data)} bytes cannot hold {span} counts")
    bits = (np.unpackbits(np.frombuffer(data, dtype=np.uint8)) + 48).tobytes().decode("ascii")
    out = np.empty(span, dtype=np.int64)
    pos, prev, seen = 0, 0, 0
    for i in range(span):
        k = prev.bit_length() // 2
        one = bits.find("1", pos)
        if one < 0:
            raise ValueError("a count table ends early")
        width = one - pos + k + 1
        if one + width > len(bits):
            raise ValueError("a count table ends early")
        x = int(bits[one:one + width], 2) - (1 << k)
        c = prev + ((x >> 1) ^ -(x & 1))
        if c < 0 or c > total - seen:
            raise ValueError("a count table holds a negative count or more values than its stream")
        out[i] = c
        seen += c
        prev = c
        pos = one + width
    if seen != total:
        raise ValueError(f"a count table holds {seen} values, its stream {total}")
    return out
