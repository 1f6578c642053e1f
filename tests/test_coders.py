"""Coders of packed checkpoints: exp-Golomb lanes vs rate.eg_encode, bit-packed tables, constriction rANS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ggcompress.codec import coders
from ggcompress.errors import GGError
from ggcompress.stats import rate


def ref_bits(values: list[int], width: int) -> bytes:
    """Fixed-width fields MSB first, written out as a '0'/'1' string (independent of numpy bit ops)."""
    s = "".join(format(v, f"0{width}b") for v in values) if width else ""
    s += "0" * (-len(s) % 8)
    return bytes(int(s[i:i + 8], 2) for i in range(0, len(s), 8))


def geometric_ranks(rng: np.random.Generator, n: int, distinct: int) -> np.ndarray:
    """Mostly small ranks, like frequency-ranked weights, capped at distinct − 1 (so it is used)."""
    r = np.minimum(rng.geometric(rng.uniform(0.02, 0.9), size=n) - 1, distinct - 1)
    r[rng.integers(0, n)] = distinct - 1
    return r.astype(np.int64)


@pytest.mark.parametrize("seed", range(40))
def test_lanes_encode_is_rate_eg_encode_and_decodes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6000))
    distinct = int(rng.integers(1, 4000))
    k = int(rng.integers(0, 7))
    lane = int(2 ** rng.integers(3, 10))
    ranks = geometric_ranks(rng, n, distinct)
    stream = coders.eg_encode_lanes(ranks.astype(np.int32), k, distinct, lane)
    assert stream.payload == rate.eg_encode(ranks, k)
    assert stream.bits == int(rate.exp_golomb_lengths(ranks, k).sum())
    assert stream.lane_bits.size == math.ceil(n / lane) and int(stream.lane_bits.sum()) == stream.bits
    values = rng.integers(-2**15, 2**15, size=distinct).astype(np.int16)
    out = coders.eg_decode_lanes(stream.payload, n, k, lane, stream.lane_bits, values)
    np.testing.assert_array_equal(out, values[ranks])


@pytest.mark.parametrize("distinct", [2**16 + 5, 2**19])
def test_lanes_wide_alphabet_takes_the_bit_length_path(distinct: int) -> None:
    # Codewords of 33+ bits: their leading 1 is past the 16-bit lookup table, so lengths come from frexp.
    rng = np.random.default_rng(distinct)
    ranks = rng.integers(0, distinct, size=20_000)
    stream = coders.eg_encode_lanes(ranks, 0, distinct, 256)
    assert stream.payload == rate.eg_encode(ranks, 0)
    out = coders.eg_decode_lanes(stream.payload, ranks.size, 0, 256, stream.lane_bits,
                                 np.arange(distinct, dtype=np.int64))
    np.testing.assert_array_equal(out, ranks)


def test_lanes_fall_back_to_rate_for_codewords_past_64_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coders, "MAX_LANE_CODEWORD", 8)
    ranks = geometric_ranks(np.random.default_rng(1), 3000, 300)
    stream = coders.eg_encode_lanes(ranks, 1, 300, 64)
    assert stream.payload == rate.eg_encode(ranks, 1)
    out = coders.eg_decode_lanes(stream.payload, ranks.size, 1, 64, stream.lane_bits, np.arange(300))
    np.testing.assert_array_equal(out, ranks)


def test_lanes_detect_a_wrong_table_or_stream() -> None:
    ranks = geometric_ranks(np.random.default_rng(2), 5000, 50)
    s = coders.eg_encode_lanes(ranks, 0, 50, 64)
    values = np.arange(50, dtype=np.int32)
    shifted = s.lane_bits.copy()
    shifted[3] += 1
    shifted[4] -= 1
    with pytest.raises(GGError, match="exp-Golomb stream corrupt"):
        coders.eg_decode_lanes(s.payload, ranks.size, 0, 64, shifted, values, "w")
    with pytest.raises(GGError, match="lane table does not match"):
        coders.eg_decode_lanes(s.payload[:-1], ranks.size, 0, 64, s.lane_bits, values, "w")
    flipped = bytearray(s.payload)
    flipped[len(flipped) // 2] ^= 0x10
    try:  # a flip either breaks a lane boundary (caught here) or changes values (the CRC's job)
        out = coders.eg_decode_lanes(bytes(flipped), ranks.size, 0, 64, s.lane_bits, values, "w")
    except GGError:
        return
    assert not np.array_equal(out, values[ranks])


@pytest.mark.parametrize("width", [0, 1, 3, 8, 13, 31, 64])
def test_fixed_width_tables_match_reference(width: int) -> None:
    rng = np.random.default_rng(width)
    hi = 2**width - 1 if width else 0
    values = [int(v) for v in rng.integers(0, hi, size=70_001, endpoint=True, dtype=np.uint64)]
    values[:2] = [0, hi]
    buf = coders.pack_uints(np.array(values, dtype=np.uint64), width)
    if width <= 13:  # the string reference is slow: check it where fields cross bytes in every way
        assert buf == ref_bits(values, width)
    assert len(buf) == (width * len(values) + 7) // 8
    np.testing.assert_array_equal(coders.unpack_uints(buf, width, len(values)), np.array(values, np.uint64))
    if width:
        with pytest.raises(GGError, match="needs"):
            coders.unpack_uints(buf + b"\0", width, len(values))


def test_rans_weights_sum_to_precision_and_follow_counts() -> None:
    counts = np.array([10**9, 5 * 10**8, 123_456, 17, 1, 1, 1])
    w = coders.rans_weights(counts)
    assert int(w.sum()) == 2**coders.RANS_PRECISION and int(w.min()) >= 1
    exact = counts / counts.sum() * (2**24 - counts.size)
    assert np.all(np.abs(w - 1 - exact) <= 1.0)  # floor + at most one extra unit each
    assert list(w) == sorted(w, reverse=True)


@pytest.mark.parametrize(("weights", "symbol"), [([2**24 - 1, 1], 1), ([2**24 - 3, 1, 2], 2),
                                                 ([2**23, 2**23 - 5, 5], 2), ([2**23, 2**23 - 5, 5], 1)])
def test_rans_model_is_exactly_the_stored_weights(weights: list[int], symbol: int) -> None:
    # The cost of a symbol repeated n times is n·log2(2^24 / w) bits to within the coder's final words:
    # only true if constriction's model gives that symbol exactly weight w (not a re-quantized one).
    w = np.array(weights)
    n = 4000
    buf = coders.rans_encode(np.full(n, symbol), w)
    expected = n * (24 - math.log2(w[symbol]))
    assert abs(8 * len(buf) - expected) <= 64
    np.testing.assert_array_equal(coders.rans_decode(buf, n, w), np.full(n, symbol))


def test_rans_round_trip_near_entropy_and_rejects_leftovers() -> None:
    rng = np.random.default_rng(3)
    ranks = geometric_ranks(rng, 200_000, 300)
    counts = np.bincount(ranks, minlength=300)
    w = coders.rans_weights(counts)
    buf = coders.rans_encode(ranks, w)
    np.testing.assert_array_equal(coders.rans_decode(buf, ranks.size, w), ranks)
    p = counts[counts > 0] / ranks.size
    entropy = float(-(p * np.log2(p)).sum()) * ranks.size
    # 24-bit weights cost < 0.1% here; the coder adds at most two 32-bit words.
    assert 8 * len(buf) <= entropy * 1.001 + 64
    with pytest.raises(GGError, match="rANS stream corrupt"):
        coders.rans_decode(buf, ranks.size - 1000, w, "w")
    with pytest.raises(GGError, match="whole 32-bit words"):
        coders.rans_decode(buf[:-1], ranks.size, w, "w")


@pytest.mark.parametrize("head", [2, 4, 8, 16])
def test_rans_split_matches_plain_rate_and_round_trips(head: int) -> None:
    """Head ranks plus an escape, then the escaped ranks: same rate as one model, exact round trip."""
    rng = np.random.default_rng(head)
    ranks = geometric_ranks(rng, 100_000, 24)
    counts = np.bincount(ranks, minlength=24)
    plain = coders.rans_encode(ranks, coders.rans_weights(counts))
    buf = coders.rans_encode_split(ranks, counts, head)
    assert abs(len(buf) - len(plain)) <= 8  # rounding of 24-bit weights and the final state only
    np.testing.assert_array_equal(coders.rans_decode_split(buf, ranks.size, counts, head), ranks)
    w_head, w_tail = coders.split_weights(counts, head)
    assert w_head.size == head and w_tail.size == 24 - head + 1
    assert w_head.sum() == w_tail.sum() == 1 << coders.RANS_PRECISION
    with pytest.raises(GGError, match="rANS stream corrupt"):
        coders.rans_decode_split(buf, ranks.size - 1000, counts, head, "w")
    with pytest.raises(GGError, match="whole 32-bit words"):
        coders.rans_decode_split(buf[:-2], ranks.size, counts, head, "w")
    with pytest.raises(ValueError, match="does not split"):
        coders.split_weights(counts, 24)


def test_best_eg_order() -> None:
    # 1000 + 2^k: k = 9 -> 1512 (2·10 − 9 + 1 = 12 bits), k = 10 -> 2024 (11 bits), k = 11 -> 12 bits
    assert coders.best_eg_order(np.full(100, 1000)) == 10
    assert coders.best_eg_order(np.zeros(10, dtype=np.int64)) == 0


@pytest.mark.parametrize(("distinct", "k", "lane"),
                         [(300, 0, 4096), (5000, 2, 256), (3, 0, 1024), (40, 5, 64)])
def test_lanes_encode_across_chunks(distinct: int, k: int, lane: int) -> None:
    # Several ENCODE_CHUNKs, so words are continued across chunk boundaries (a chunk's first word can be
    # the previous chunk's last, and a codeword piece can spill over it).
    rng = np.random.default_rng(distinct + k)
    n = 3 * coders.ENCODE_CHUNK + 1234
    ranks = geometric_ranks(rng, n, distinct)
    stream = coders.eg_encode_lanes(ranks.astype(np.int32), k, distinct, lane)
    assert stream.payload == rate.eg_encode(ranks, k)
    lengths = rate.exp_golomb_lengths(ranks, k).numpy()
    np.testing.assert_array_equal(stream.lane_bits, np.add.reduceat(lengths, np.arange(0, n, lane)))
