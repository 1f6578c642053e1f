"""Rate measure: exp-Golomb lengths and bitstream vs a pure-Python reference, ranking, entropy, merging."""

from __future__ import annotations

import heapq
import math
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ggcompress.errors import GGError
from ggcompress.stats import rate
from ggcompress.stats.rate import (
    SymbolHistogram,
    eg_decode,
    eg_encode,
    exp_golomb_lengths,
    format_step,
    parse_step,
    quantize,
    rate_stats,
)

# ------------------------------------------------------------------ independent references


def ref_codeword(r: int, k: int) -> str:
    """Textbook order-k exp-Golomb: write r + 2^k in binary, prefixed by (bits − k − 1) zeros."""
    b = bin(r + (1 << k))[2:]
    return "0" * (len(b) - k - 1) + b


def ref_bytes(ranks: list[int], k: int) -> bytes:
    s = "".join(ref_codeword(r, k) for r in ranks)
    s += "0" * (-len(s) % 8)
    return bytes(int(s[i:i + 8], 2) for i in range(0, len(s), 8))


def ref_ranking(values: list[int]) -> list[int]:
    """Symbols in rank order: count desc, |symbol| asc, negative before positive."""
    c = Counter(values)
    return sorted(c, key=lambda s: (-c[s], abs(s), s > 0))


def ref_huffman_bits(counts: list[int]) -> int:
    """Huffman total from explicit tree depths (not the internal-node-sum shortcut)."""
    if len(counts) <= 1:
        return 0
    heap = [(c, i, [i]) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    depth = [0] * len(counts)
    tick = len(counts)
    while len(heap) > 1:
        c1, _, l1 = heapq.heappop(heap)
        c2, _, l2 = heapq.heappop(heap)
        for i in l1 + l2:
            depth[i] += 1
        heapq.heappush(heap, (c1 + c2, tick, l1 + l2))
        tick += 1
    return sum(c * d for c, d in zip(counts, depth, strict=True))


def _some_ranks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mostly small ranks (a geometric-like mass at 0) plus powers of two ± 1 and a few huge ones."""
    small = rng.geometric(0.3, size=n) - 1
    edges = np.array([0, 1, 2, 3, 7, 8, 15, 16, 255, 256, 2**31 - 1, 2**31, 2**40 + 3], dtype=np.int64)
    return np.concatenate([small, edges, rng.integers(0, 2**45, size=20)]).astype(np.int64)


# ------------------------------------------------------------------------ exp-Golomb lengths


@pytest.mark.parametrize("k", range(5))
def test_lengths_match_reference_encoder(k: int) -> None:
    ranks = _some_ranks(np.random.default_rng(k), 2000)
    got = exp_golomb_lengths(torch.from_numpy(ranks), k)
    assert got.dtype == torch.int64
    assert got.tolist() == [len(ref_codeword(int(r), k)) for r in ranks]
    # the closed form from the papers, k = 0: 2⌊log2(r+1)⌋ + 1 (small r: float log2 is exact here)
    if k == 0:
        small = ranks[ranks < 2**20]
        assert exp_golomb_lengths(small, 0).tolist() == [2 * math.floor(math.log2(r + 1)) + 1 for r in small]


def test_lengths_exact_beyond_float53() -> None:
    # Above 2^53 float64 log2 rounds up at 2^m − 1; the integer path must not.
    ranks = [2**53 - 1, 2**53, 2**60 - 1, 2**60, 2**61 + 1]
    for k in (0, 3):
        expected = [2 * (r + (1 << k)).bit_length() - k - 1 for r in ranks]
        assert exp_golomb_lengths(np.array(ranks, dtype=np.int64), k).tolist() == expected


def test_lengths_reject_bad_input() -> None:
    with pytest.raises(GGError, match="negative"):
        exp_golomb_lengths(torch.tensor([0, -1]), 0)
    with pytest.raises(GGError, match="order"):
        exp_golomb_lengths(torch.tensor([0]), -1)
    with pytest.raises(GGError, match="integer"):
        exp_golomb_lengths(torch.tensor([0.5]), 0)


# ---------------------------------------------------------------------------- the bitstream


@pytest.mark.parametrize("k", range(5))
def test_encode_is_byte_exact_and_decodes(k: int) -> None:
    ranks = _some_ranks(np.random.default_rng(100 + k), 3000)
    buf = eg_encode(ranks, k)
    assert buf == ref_bytes(ranks.tolist(), k)
    total = int(exp_golomb_lengths(ranks, k).sum())
    assert len(buf) == (total + 7) // 8
    assert eg_decode(buf, ranks.size, k).tolist() == ranks.tolist()


@settings(max_examples=150, deadline=None)
@given(
    ranks=st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**61 + 1)), max_size=200),
    k=st.integers(0, 8),
)
def test_roundtrip_property(ranks: list[int], k: int) -> None:
    buf = eg_encode(np.array(ranks, dtype=np.int64), k)
    bits = sum(len(ref_codeword(r, k)) for r in ranks)
    assert len(buf) == (bits + 7) // 8
    assert eg_decode(buf, len(ranks), k).tolist() == ranks


@pytest.mark.parametrize("chunk_bits", [1, 7, 97, 1000])
def test_decode_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch, chunk_bits: int) -> None:
    # Tiny decode windows force codewords (some 100+ bits long) to straddle every boundary.
    monkeypatch.setattr(rate, "_DECODE_CHUNK_BITS", chunk_bits)
    ranks = _some_ranks(np.random.default_rng(7), 1500)
    np.random.default_rng(8).shuffle(ranks)
    for k in (0, 2):
        assert eg_decode(eg_encode(ranks, k), ranks.size, k).tolist() == ranks.tolist()


@pytest.mark.parametrize(("n", "p", "k"), [(150_000, 0.03, 1), (1_300_000, 0.97, 0)])
def test_decode_long_stream_default_chunks(n: int, p: float, k: int) -> None:
    # > 2^20 bits so the default chunking is exercised end to end; ~10 bits/codeword and
    # ~1 bit/codeword pick short and long pointer jumps respectively.
    ranks = np.random.default_rng(9).geometric(p, size=n).astype(np.int64) - 1
    ranks[::50_000] = 2**40  # long codewords at chunk-independent places
    buf = eg_encode(torch.from_numpy(ranks), k)
    assert len(buf) * 8 > 1 << 20
    assert torch.equal(eg_decode(buf, ranks.size, k), torch.from_numpy(ranks))


def test_decode_rejects_bad_streams() -> None:
    buf = eg_encode(np.array([5, 0, 9]), 0)  # 5 + 1 + 7 = 13 bits: 3 padding bits
    assert len(buf) == 2
    assert eg_decode(b"", 0, 0).numel() == 0
    with pytest.raises(GGError, match="truncated or corrupt at bit 13: decoded 3 of 9"):
        eg_decode(buf, 9, 0)
    with pytest.raises(GGError, match="truncated: decoded 4 of 5"):  # 16 bits, no padding to misread
        eg_decode(eg_encode(np.array([5, 0, 9, 1]), 0), 5, 0)
    with pytest.raises(GGError, match="trailing"):
        eg_decode(buf + b"\x00", 3, 0)
    with pytest.raises(GGError, match="trailing"):  # fewer codewords than the buffer holds
        eg_decode(buf, 2, 0)
    with pytest.raises(GGError, match="padding"):
        eg_decode(buf[:-1] + bytes([buf[-1] | 1]), 3, 0)
    with pytest.raises(GGError, match="at bit 0"):  # 16 zero bits: no codeword can start at bit 0
        eg_decode(b"\x00\x00", 1, 0)
    with pytest.raises(GGError, match="at bit 0"):  # 7 zeros then a 1: needs 15 bits, only 8 exist
        eg_decode(b"\x01", 1, 0)


# ---------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("step", [2.0**-8, 2.0**-13, 2.0**-16, 1e-3, 0.3, 4.0])
def test_quantize_matches_float64_reference_across_dtypes(step: float) -> None:
    g = torch.Generator().manual_seed(1)
    x32 = torch.randn(5000, generator=g) * 0.05
    ref = np.round(x32.double().numpy() / step).astype(np.int64)  # numpy rounds half to even
    assert quantize(x32, step).numpy().tolist() == ref.tolist()
    for dt in (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2):
        low = x32.to(dt)
        assert torch.equal(quantize(low, step), quantize(low.float(), step)), dt
        assert torch.equal(quantize(low, step), quantize(low.double(), step)), dt


def test_quantize_rounds_half_to_even_and_keeps_shape() -> None:
    step = 2.0**-8
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5], [-1.5, -2.5, 0.49, 3.5]]) * step
    assert quantize(x, step).tolist() == [[0, 2, 2, 0], [-2, -2, 0, 4]]


def test_quantize_rejects_nan_inf_overflow_and_ints() -> None:
    x = torch.zeros(10)
    x[3] = float("nan")
    x[7] = float("inf")
    with pytest.raises(GGError, match=r"layer\.0\.weight: contains 2 NaN/Inf"):
        quantize(x, 2.0**-8, name="layer.0.weight")
    with pytest.raises(GGError, match=r"w: contains 1 NaN/Inf"):
        SymbolHistogram(2.0**-8).update(torch.tensor([1.0, float("-inf")], dtype=torch.bfloat16), name="w")
    with pytest.raises(GGError, match="2\\^60"):
        quantize(torch.tensor([1e30]), 2.0**-16)
    with pytest.raises(GGError, match="not floating point"):
        quantize(torch.arange(4), 1.0)


# ------------------------------------------------------------------------- steps


@pytest.mark.parametrize(
    ("text", "value"),
    [("2^-8", 2.0**-8), ("2**-13", 2.0**-13), (" 2 ^ -16 ", 2.0**-16), ("8", 2.0**-8), ("0", 1.0),
     ("0.00390625", 2.0**-8), ("1e-3", 1e-3), ("2^3", 8.0), ("1.0", 1.0)],
)
def test_parse_step_forms(text: str, value: float) -> None:
    assert parse_step(text) == value


@pytest.mark.parametrize("text", ["0.0", "-0.1", "nan", "inf", "-8", "abc", "", "2^-999", "1e-320"])
def test_parse_step_errors(text: str) -> None:
    with pytest.raises(GGError, match="step"):
        parse_step(text)


def test_format_step() -> None:
    assert format_step(2.0**-13) == "2^-13"
    assert format_step(4.0) == "2^2"
    assert format_step(1e-3) == "0.001"


# -------------------------------------------------------------------- histogram and stats


def _random_weights(seed: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Laplace-ish: peaky at 0 like trained weights, so ranking and k matter
    return (torch.randn(n, generator=g) * torch.rand(n, generator=g) ** 2 * 0.05).to(dtype)


@pytest.mark.parametrize("step", [2.0**-8, 2.0**-13])
def test_stats_against_independent_reference(step: float) -> None:
    x = _random_weights(2, 20_000)
    values = quantize(x, step).tolist()
    order = ref_ranking(values)
    rank = {s: i for i, s in enumerate(order)}
    c = Counter(values)
    counts = [c[s] for s in order]
    for k in range(4):
        s = rate_stats(x, step, k=k)
        assert isinstance(s.eg_bits, int)
        assert s.eg_bits == sum(len(ref_codeword(rank[v], k)) for v in values)
        assert s.eg_bits_per_param == s.eg_bits / len(values)
    s = rate_stats(x, step)
    # float64 sums of ≤ 10^4 terms: agreement to 1e-12 relative is far above rounding noise
    assert s.entropy_bits_per_param == pytest.approx(scipy.stats.entropy(counts, base=2), rel=1e-12)
    assert s.huffman_bits == ref_huffman_bits(counts)
    assert s.distinct == len(c)
    assert s.fixed_bits_per_param == math.ceil(math.log2(len(c)))
    assert s.zero_fraction_quantized == c[0] / len(values)
    assert s.source_bits_per_param == 32
    assert (s.symbol_min, s.symbol_max) == (min(values), max(values))
    assert s.table_bits == 128 + len(c) * (max(values) - min(values)).bit_length()
    # Shannon: entropy ≤ Huffman < entropy + 1, and no prefix code beats Huffman
    assert s.entropy_bits_per_param <= s.huffman_bits_per_param < s.entropy_bits_per_param + 1
    assert s.huffman_bits <= s.eg_bits
    d = s.to_dict()
    assert d["step_label"] == format_step(step) and d["eg_bits"] == s.eg_bits


def test_ranking_frequency_first_and_ties_deterministic() -> None:
    step = 1.0
    vals = [3] * 9 + [-1] * 5 + [1] * 5 + [2] * 5 + [-2] * 5 + [0] * 3
    x = torch.tensor(vals, dtype=torch.float32)
    expected = [3, -1, 1, -2, 2, 0]
    for perm_seed in range(3):
        perm = torch.randperm(len(vals), generator=torch.Generator().manual_seed(perm_seed))
        h = SymbolHistogram(step).update(x[perm])
        assert h.symbols_by_rank().tolist() == expected
        assert h.to_ranks(torch.tensor([3, 0, -2])).tolist() == [0, 5, 3]
    h = SymbolHistogram(step).update(x)
    with pytest.raises(GGError, match="not in this histogram"):
        h.to_ranks(torch.tensor([7]))


def test_rank_zero_is_most_frequent_symbol() -> None:
    x = _random_weights(3, 50_000)
    h = SymbolHistogram("2^-8").update(x)
    top = int(h.symbols_by_rank()[0])
    assert top == 0 and int(h.counts[h.symbols == 0]) == int(h.counts.max())
    ranked_counts = h.counts[torch.searchsorted(h.symbols, h.symbols_by_rank())]
    assert bool((ranked_counts[:-1] >= ranked_counts[1:]).all())


def test_merge_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    a = _random_weights(4, 30_000, torch.bfloat16)
    b = _random_weights(5, 20_000) * 3
    one = SymbolHistogram(2.0**-10).update(torch.cat([a.float(), b]))
    merged = SymbolHistogram(2.0**-10).update(a).merge(SymbolHistogram(2.0**-10).update(b))
    assert torch.equal(one.symbols, merged.symbols) and torch.equal(one.counts, merged.counts)
    assert merged.n == one.n == 50_000
    assert merged.source_bits == 30_000 * 16 + 20_000 * 32
    assert merged.stats(2).eg_bits == one.stats(2).eg_bits
    ref = Counter(quantize(torch.cat([a.float(), b]), 2.0**-10).tolist())
    assert dict(zip(one.symbols.tolist(), one.counts.tolist(), strict=True)) == ref
    # Small chunks exercise the running dense array (growing as chunk ranges widen), its flushes
    # when it would get too wide, and the torch.unique path for wide chunks: same histogram.
    monkeypatch.setattr(rate, "CHUNK", 777)
    for dense_range, acc_max in [(1 << 20, 1 << 22), (1 << 20, 40), (1, 1 << 22)]:
        monkeypatch.setattr(rate, "DENSE_RANGE", dense_range)
        monkeypatch.setattr(rate, "DENSE_ACC_MAX", acc_max)
        chunked = SymbolHistogram(2.0**-10).update(torch.cat([a.float(), b]))
        assert torch.equal(one.symbols, chunked.symbols) and torch.equal(one.counts, chunked.counts)
    with pytest.raises(GGError, match="steps"):
        one.merge(SymbolHistogram(2.0**-8))


def test_wide_symbol_range_uses_sparse_counting() -> None:
    # max−min ≈ 2^50 at step 1: a dense bincount would need petabytes.
    x = torch.tensor([0.0, 1e15, -1e15, 1e15, 3.0], dtype=torch.float64)
    s = rate_stats(x, 1.0)
    assert (s.distinct, s.symbol_min, s.symbol_max) == (4, -10**15, 10**15)
    h = SymbolHistogram(1.0).update(x)
    assert h.symbols_by_rank().tolist() == [10**15, 0, 3, -10**15]


def test_best_k_and_edge_cases() -> None:
    x = _random_weights(6, 10_000)
    h = SymbolHistogram(2.0**-13).update(x)
    totals = [h.eg_bits(k) for k in range(17)]
    assert h.best_k() == totals.index(min(totals))
    assert h.stats(None).k == h.best_k()
    one = rate_stats(torch.zeros(100, dtype=torch.float16), 2.0**-8)
    assert (one.distinct, one.eg_bits, one.fixed_bits_per_param, one.huffman_bits) == (1, 100, 0, 0)
    assert one.entropy_bits_per_param == 0.0 and one.zero_fraction_quantized == 1.0
    assert one.source_bits_per_param == 16
    with pytest.raises(GGError, match="no values"):
        SymbolHistogram(1.0).stats()


@pytest.mark.parametrize("step", ["2^-8", "2^-13", "0.003"])
def test_update_counts_equals_update_on_the_expanded_tensor(step: str) -> None:
    from ggcompress.stats import gg

    x = (torch.randn(200_000, generator=torch.Generator().manual_seed(2)) * 0.05).to(torch.bfloat16)
    vals, counts = gg.value_counts(x)
    a = rate.SymbolHistogram(step).update(x)
    b = rate.SymbolHistogram(step).update_counts(vals, counts, itemsize=2)
    assert torch.equal(a.symbols, b.symbols) and torch.equal(a.counts, b.counts)
    assert (a.n, a.source_bits) == (b.n, b.source_bits)
    assert a.stats(0) == b.stats(0)
    bad = x.clone()
    bad[3] = float("nan")
    with pytest.raises(GGError, match="1 NaN/Inf"):
        rate.SymbolHistogram(step).update_counts(*gg.value_counts(bad), itemsize=2, name="w")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("step", [2.0**-8, 2.0**-8.5, 0.004, 2.0**-40])
def test_quantize_counted_is_quantize_and_update(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype,
                                                 step: float) -> None:
    monkeypatch.setattr(rate, "CHUNK", 1000)  # several chunks with different ranges
    x = (_random_weights(8, 4321) * torch.linspace(0.1, 3, 4321)).to(dtype)
    q, hist = rate.quantize_counted(x, step, "w")
    ref = SymbolHistogram(step).update(x, "w")
    assert torch.equal(q.to(torch.int64), quantize(x, step).reshape(-1))
    assert q.dtype == (torch.int64 if step == 2.0**-40 else torch.int32)  # 2^-40: symbols past int32
    assert torch.equal(hist.symbols, ref.symbols) and torch.equal(hist.counts, ref.counts)
    assert (hist.n, hist.source_bits) == (ref.n, ref.source_bits)
    with pytest.raises(GGError, match="NaN/Inf"):
        rate.quantize_counted(torch.tensor([0.5, float("nan")], dtype=dtype), step, "w")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pattern_counts_are_the_value_counts(dtype: torch.dtype) -> None:
    x = (_random_weights(9, 30_000) * 0.1).to(dtype).reshape(100, 300)
    x[0, :7] = 0.0
    x[1, :5] = -0.0  # another pattern, the same value
    patterns, counts, flat = rate.pattern_counts(x)
    assert torch.equal(rate.pattern_values(flat.astype(np.int64), dtype), x.reshape(-1).to(torch.float64))
    by_value: Counter[float] = Counter()
    for v, n in zip(rate.pattern_values(patterns, dtype).tolist(), counts.tolist(), strict=True):
        by_value[v] += n
    u, c = torch.unique(x.to(torch.float64), return_counts=True)
    assert by_value == dict(zip(u.tolist(), c.tolist(), strict=True))
    assert by_value[0.0] >= 12
    with pytest.raises(GGError, match="2-byte"):
        rate.pattern_counts(x.float())
