"""The papers' rate measure: quantize to a step, rank symbols by frequency, exp-Golomb code the ranks.

BackSlash (arXiv 2504.16968) scores a set of weights by the size of a simple entropy code:
q = round(θ / step) with step = 2^-s, distinct symbols ranked by frequency (the most frequent,
usually 0, gets rank 0), each rank written with an exp-Golomb code of order k, whose length is
2⌊log2(r + 2^k)⌋ − k + 1 bits. Baselines reported next to it: the fixed-length code
(⌈log2 #distinct⌉ bits), the source dtype's width, a Huffman code and the empirical entropy.

Choices made here (ours, not the papers'):
- Rounding is round-half-to-even (torch.round / numpy.round). Power-of-two steps scale by an exact
  multiply in fp32 (fp64 for fp64 input); other steps divide in float64 (correctly rounded). Every
  float dtype converts exactly to these, so bf16/fp16/fp8 weights and their fp32 copies give the
  same symbols bit for bit.
- NaN/Inf raise GGError naming the tensor (a rate is undefined there); so does |θ|/step > 2^60.
- Equal frequencies are ranked by smaller |symbol| first, then the negative symbol before the
  positive one, so the ranking (and every bit count) is deterministic.
- The rank→symbol table cost (reported separately, not in eg_bits) is two 64-bit header words
  (count, minimum symbol) plus one fixed-width offset from the minimum per distinct symbol.
- The bitstream of eg_encode is the plain concatenation of codewords, MSB first, zero-padded to a
  whole byte: its length in bits is exactly the exp-Golomb total.
"""

from __future__ import annotations

import math
import re
import sys
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ggcompress.errors import GGError

#: Values quantized per chunk: temporaries of a few MB stay cache-friendly, and the per-chunk
#: Python overhead is noise.
CHUNK = 1 << 18
#: Values per chunk in eg_encode: its ~10 int64 temporaries then fit in cache (measured ~7x faster
#: than 4M-value chunks on the 2-core dev machine).
CODE_CHUNK = 1 << 16
#: Largest |symbol| accepted: keeps offsets, tie-break keys and exp-Golomb values inside int64.
MAX_ABS_SYMBOL = 1 << 60
#: Largest rank exp_golomb_lengths / eg_encode accept (2·MAX_ABS_SYMBOL + 1 symbols can exist).
MAX_RANK = (1 << 61) + 1
#: Largest exp-Golomb order accepted; with MAX_RANK every value r + 2^k stays below 2^62.
MAX_K = 32
#: A chunk is counted with a dense bincount while its max−min+1 ≤ this (< 2^24 keeps the fp32
#: offset subtraction exact); wider chunks go through torch.unique (sort-based, no big arrays).
DENSE_RANGE = 1 << 20
#: Dense chunk counts are summed into one running array (int64) spanning at most this many symbols
#: before being folded into the sparse histogram, so a tensor costs one sparse merge, not one a chunk.
DENSE_ACC_MAX = 1 << 22
#: Huffman totals are computed (an O(D) Python merge) only up to this many distinct symbols.
HUFFMAN_MAX_SYMBOLS = 1 << 20

_POW_RE = re.compile(r"^2\s*(?:\^|\*\*)\s*([+-]?\d+)$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_DECODE_CHUNK_BITS = 1 << 18
_MAX_CODEWORD_BITS = 2 * 62 + 1


# ----------------------------------------------------------------------------------------- steps


def _is_pow2(step: float) -> bool:
    return math.frexp(step)[0] == 0.5


def _validate_step(value: float, label: object) -> float:
    if not (math.isfinite(value) and value >= sys.float_info.min):
        raise GGError(f"step {label!r}: must be a finite positive number (got {value!r})")
    return float(value)


def parse_step(text: str) -> float:
    """Read a quantization step the way a CLI user types it: '2^-8', '2**-8', '8' (= 2^-8), '0.004'.

    A bare non-negative integer S means 2^-S, matching the papers' "s = 8, 13, 16"; anything else
    must parse as a positive float.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_step expects a string, got {type(text).__name__}")
    t = text.strip()
    m = _POW_RE.match(t)
    if m:
        e = int(m.group(1))
        if abs(e) > 64:
            raise GGError(f"step {text!r}: exponent {e} is outside -64..64")
        return _validate_step(2.0**e, text)
    if _INT_RE.match(t):
        s = int(t)
        if s < 0 or s > 64:
            raise GGError(f"step {text!r}: a bare integer S means 2^-S and must be in 0..64 "
                          "(write e.g. 2^3 for a step of 8)")
        return _validate_step(2.0**-s, text)
    try:
        value = float(t)
    except ValueError:
        raise GGError(f"step {text!r}: expected 2^-S, an integer S (meaning 2^-S) or a positive number"
                      ) from None
    return _validate_step(value, text)


def format_step(step: float) -> str:
    """Human label for a step: '2^-8' for powers of two, else the shortest float form."""
    if _is_pow2(step):
        return f"2^{math.frexp(step)[1] - 1}"
    return repr(float(step))


def _coerce_step(step: float | str) -> float:
    return parse_step(step) if isinstance(step, str) else _validate_step(float(step), step)


# ------------------------------------------------------------------------------------ quantizing


def _check_float(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise GGError(f"{name}: dtype {x.dtype} is not floating point; the rate measure quantizes floats")


def _scaled(xc: torch.Tensor, step: float) -> torch.Tensor:
    """x / step, computed exactly for power-of-two steps, correctly rounded in float64 otherwise."""
    xc = xc.detach().cpu()
    if _is_pow2(step) and 2.0**-100 <= step <= 2.0**100:
        # Multiplying by a power of two only moves the exponent: exact unless the result is
        # subnormal, and then |x/step| < 2^-126 rounds to 0 anyway.
        dtype = torch.float64 if xc.dtype == torch.float64 else torch.float32
        return xc.to(dtype) * (1.0 / step)
    return xc.to(torch.float64) / step


def _raise_bad_values(x: torch.Tensor, step: float, name: str) -> None:
    finite = torch.isfinite(x.detach().cpu().to(torch.float32) if x.dtype != torch.float64 else x)
    bad = int((~finite).sum())
    if bad:
        raise GGError(f"{name}: contains {bad} NaN/Inf value(s); the rate measure needs finite weights")
    raise GGError(f"{name}: |value|/step exceeds 2^60 at step {format_step(step)}; use a coarser step")


def _quantize_chunk(xc: torch.Tensor, step: float, x: torch.Tensor, name: str
                    ) -> tuple[torch.Tensor, int, int]:
    """Scaled-and-rounded chunk (float tensor, integral values) with its min and max symbol."""
    s = _scaled(xc, step)
    lo, hi = (float(v) for v in torch.aminmax(s))
    if not (-MAX_ABS_SYMBOL <= lo and hi <= MAX_ABS_SYMBOL):  # NaN fails both comparisons
        _raise_bad_values(x, step, name)
    s.round_()  # half to even
    return s, round(lo), round(hi)  # Python round is half-to-even too, and monotone like torch's


def scaled_and_rounded(x: torch.Tensor, step: float | str, name: str = "tensor"
                       ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(x / step, its symbols round_half_even(x / step) as floats, min symbol, max symbol) of flat x.

    The same values and checks as ``quantize`` in one pass without int64 copies, for callers (RDOQ) that
    need the unrounded ratio too: float32 for power-of-two steps (exact), float64 otherwise.
    """
    step = _coerce_step(step)
    _check_float(x, name)
    w = _scaled(x.reshape(-1), step)
    q = torch.round(w)
    if q.numel() == 0:
        return w, q, 0, 0
    lo, hi = (float(v) for v in torch.aminmax(q))
    if not (-MAX_ABS_SYMBOL <= lo and hi <= MAX_ABS_SYMBOL):  # NaN fails both comparisons
        _raise_bad_values(x, step, name)
    return w, q, round(lo), round(hi)


def quantize(x: torch.Tensor, step: float | str, name: str = "tensor") -> torch.Tensor:
    """Integer symbols q = round_half_even(x / step) as an int64 tensor of x's shape."""
    step = _coerce_step(step)
    _check_float(x, name)
    flat = x.reshape(-1)
    out = torch.empty(flat.numel(), dtype=torch.int64)
    for i in range(0, flat.numel(), CHUNK):
        s, _, _ = _quantize_chunk(flat[i:i + CHUNK], step, x, name)
        out[i:i + CHUNK] = s.to(torch.int64)
    return out.reshape(x.shape)


def quantize_counted(x: torch.Tensor, step: float | str, name: str = "tensor"
                     ) -> tuple[torch.Tensor, SymbolHistogram]:
    """(quantize(x, step, name) flattened, SymbolHistogram(step).update(x, name)) from one rounding pass.

    Why: coding a tensor needs both, and rounding it twice (scale, round, convert) is most of their
    cost. The symbols are int32 when every one fits (else int64, from quantize); the histogram is the
    same one update() builds (the same symbols and exact counts).
    """
    step = _coerce_step(step)
    _check_float(x, name)
    flat = x.reshape(-1)
    out = torch.empty(flat.numel(), dtype=torch.int32)
    lo_all, hi_all = 0, -1
    for i in range(0, flat.numel(), CHUNK):
        s, lo, hi = _quantize_chunk(flat[i:i + CHUNK], step, x, name)
        if lo < -(1 << 31) or hi >= 1 << 31:  # beyond int32: the general path (rare: very fine steps)
            return quantize(x, step, name).reshape(-1), SymbolHistogram(step).update(x, name)
        out[i:i + CHUNK] = s
        lo_all, hi_all = (lo, hi) if i == 0 else (min(lo, lo_all), max(hi, hi_all))
    hist = SymbolHistogram(step)
    if out.numel() and hi_all - lo_all < DENSE_ACC_MAX:  # int32 offsets: exact, no overflow
        hist._add_dense(lo_all, torch.bincount(out - lo_all, minlength=hi_all - lo_all + 1).to(torch.int64))
    elif out.numel():
        sym, cnt = torch.unique(out.to(torch.int64), sorted=True, return_counts=True)
        hist._add(sym, cnt.to(torch.int64))
    hist.n = flat.numel()
    hist.source_bits = flat.numel() * x.element_size() * 8
    return out, hist


#: Weights per bincount when counting the bit patterns of 2-byte floats (bounds its int64 temporary).
VALUE_COUNT_CHUNK = 1 << 18


def pattern_counts(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Bit patterns present, as int64 0..65535; their counts, int64; the patterns of the weights,
    flat uint16 view) of a bf16/fp16 tensor.

    Why: a 2-byte float tensor has at most 65536 distinct values, so one count of its bit patterns
    (~1 ns a weight) replaces rounding every weight: symbols, histograms and energies at any step follow
    from the distinct values (pattern_values), and a 65536-entry table maps each weight to its symbol.
    """
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise GGError(f"pattern counts need a 2-byte float tensor, not {x.dtype}")
    u = x.detach().cpu().contiguous().reshape(-1).view(torch.int16).numpy().view(np.uint16)
    counts = np.zeros(1 << 16, dtype=np.int64)
    for i in range(0, u.size, VALUE_COUNT_CHUNK):
        counts += np.bincount(u[i:i + VALUE_COUNT_CHUNK], minlength=1 << 16)
    present = np.flatnonzero(counts)
    return present, counts[present], u


def pattern_values(patterns: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The float64 value of each 2-byte bit pattern (0..65535) of ``dtype`` (exact)."""
    return torch.from_numpy(patterns.astype(np.uint16).view(np.int16)).view(dtype).to(torch.float64)


def pattern_lookup(patterns: np.ndarray, per_pattern: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Each weight's entry of ``per_pattern`` (one value per present pattern), through a 65536-entry
    table indexed by the weights' bit patterns ``u`` (pattern_counts' third result)."""
    table = np.zeros(1 << 16, dtype=per_pattern.dtype)
    table[patterns] = per_pattern
    return np.take(table, u)


# ------------------------------------------------------------------------------- exp-Golomb math


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Exact bit length of positive int64/uint64 values (floor(log2 v) + 1)."""
    if v.size == 0:
        return v.astype(np.int64)
    if int(v.max()) < (1 << 53):  # float64 holds them exactly, frexp's exponent is the bit length
        return np.frexp(v.astype(np.float64))[1].astype(np.int64)
    x = v.astype(np.uint64)
    n = np.zeros(v.shape, dtype=np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        m = x >= np.uint64(1 << s)
        n += m * s
        x = np.where(m, x >> np.uint64(s), x)
    return n + 1


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= MAX_K:
        raise GGError(f"exp-Golomb order k={k!r}: must be an integer in 0..{MAX_K}")
    return int(k)


def _ranks_numpy(ranks: Any) -> np.ndarray:
    if isinstance(ranks, torch.Tensor):
        if ranks.is_floating_point() or ranks.is_complex():
            raise GGError(f"ranks: dtype {ranks.dtype} is not an integer type")
        r = ranks.detach().cpu().reshape(-1).to(torch.int64).numpy()
    else:
        a = np.asarray(ranks)
        if a.size and a.dtype.kind not in "iu":
            raise GGError(f"ranks: dtype {a.dtype} is not an integer type")
        if a.dtype == np.uint64 and a.size and int(a.max()) > MAX_RANK:
            raise GGError(f"ranks: values above {MAX_RANK} are not supported")
        r = a.reshape(-1).astype(np.int64)
    if r.size and int(r.min()) < 0:
        raise GGError("ranks: exp-Golomb codes non-negative integers; got a negative rank")
    if r.size and int(r.max()) > MAX_RANK:
        raise GGError(f"ranks: values above {MAX_RANK} are not supported")
    return r


def exp_golomb_lengths(ranks: Any, k: int = 0) -> torch.Tensor:
    """Codeword length of each rank, 2⌊log2(r + 2^k)⌋ − k + 1 bits, as exact int64."""
    k = _check_k(k)
    r = _ranks_numpy(ranks)
    nb = _bit_length(r + (1 << k))
    return torch.from_numpy(2 * nb - k - 1)


def _rank_lengths(d: int, k: int) -> torch.Tensor:
    """Lengths of ranks 0..d-1 without building them one by one: piecewise constant in r + 2^k."""
    return exp_golomb_lengths(np.arange(d, dtype=np.int64), k)


# ------------------------------------------------------------------------------ the bit stream


def eg_encode(ranks: Any, k: int = 0) -> bytes:
    """Exp-Golomb order-k bitstream of the ranks: codewords back to back, MSB first, zero-padded.

    Each codeword is v = r + 2^k written in 2·bitlen(v) − k − 1 bits (leading zeros, then v).
    Built with 64-bit word arithmetic: v's bits land in at most two big-endian words, and since
    codewords never share bits, OR-ing them equals summing them per word (np.add.reduceat).
    """
    k = _check_k(k)
    r = _ranks_numpy(ranks)
    if r.size == 0:
        return b""
    total = 0
    for i in range(0, r.size, CODE_CHUNK):
        nb = _bit_length(r[i:i + CODE_CHUNK] + (1 << k))
        total += int((2 * nb - k - 1).sum())
    words = np.zeros(total // 64 + 2, dtype=np.uint64)
    pos = 0
    u64 = np.uint64
    for i in range(0, r.size, CODE_CHUNK):
        v = r[i:i + CODE_CHUNK] + (1 << k)
        nb = _bit_length(v)
        end = pos + np.cumsum(2 * nb - k - 1)
        pos = int(end[-1])
        start = end - nb  # v's first bit; the zeros before it are already in the buffer
        w0 = start >> 6
        fit = (start & 63) + nb  # v occupies bits [start&63, fit) of word w0 (and spills past 64)
        vu = v.astype(u64)
        single = fit <= 64
        # top part of v into w0: shift left when it fits, right (dropping the spilled bits) if not
        prim = (vu << np.maximum(64 - fit, 0).astype(u64)) >> np.maximum(fit - 64, 0).astype(u64)
        first = np.flatnonzero(np.concatenate(([True], w0[1:] != w0[:-1])))
        words[w0[first]] |= np.add.reduceat(prim, first)
        spill = ~single  # at most one codeword crosses each word boundary: indices are unique
        words[w0[spill] + 1] |= vu[spill] << (128 - fit[spill]).astype(u64)
    return words.astype(">u8").tobytes()[: (total + 7) // 8]


def eg_decode(buf: bytes, n: int, k: int = 0) -> torch.Tensor:
    """Inverse of eg_encode: the n ranks (int64) of an order-k exp-Golomb stream.

    Vectorized per chunk of bits: a codeword is decoded speculatively at every bit position (the
    zero run to the next 1 gives its length), then the chain of real codeword starts is followed
    with pointer jumping (up to 2^7 codewords per Python step) and values are read as 64-bit windows.
    The buffer must hold exactly ceil(bits/8) bytes with zero padding, as eg_encode writes it.
    """
    k = _check_k(k)
    if n < 0:
        raise GGError(f"exp-Golomb stream: value count {n} is negative")
    data = np.frombuffer(bytes(buf), dtype=np.uint8)
    total_bits = data.size * 8
    padded = np.concatenate([data, np.zeros(16, dtype=np.uint8)])
    # Unaligned big-endian 64-bit view starting at every byte: one gather reads any 64-bit window.
    win64 = np.ndarray(shape=(padded.size - 8,), dtype=">u8", buffer=padded, strides=(1,))
    out = np.empty(n, dtype=np.int64)
    got, p = 0, 0
    while got < n:
        if p >= total_bits:
            raise GGError(f"exp-Golomb stream truncated: decoded {got} of {n} values")
        c = min(_DECODE_CHUNK_BITS, total_bits - p)  # codeword starts considered in this round
        w = min(c + _MAX_CODEWORD_BITS + 3, total_bits - p)  # bits visible to them
        b0, off = p >> 3, p & 7
        bits = np.unpackbits(data[b0:(p + w + 7) >> 3])[off:off + w].view(np.bool_)
        idx = np.arange(w, dtype=np.int32)
        # next_one[i]: first 1 at or after i; a codeword starting at i has z = next_one − i zeros
        # and ends at i + 2z + k + 1. Starts past the chunk map to the absorbing sentinel c.
        next_one = np.minimum.accumulate(np.where(bits, idx, np.int32(w))[::-1])[::-1][:c]
        end = next_one * 2 - idx[:c] + np.int32(k + 1)
        nxt = np.empty(c + 1, dtype=np.int32)
        nxt[:c] = np.where(end < c, end, np.int32(c))
        nxt[c] = c
        # Pointer jumping: jump = nxt^(2^j). Follow it in Python (one step per 2^j codewords),
        # then expand each head by 2^j single steps, vectorized across heads. j balances the
        # j full-chunk gathers against the Python steps, given the average codeword length.
        # Measured on 2 cores: about 100 × (codewords per bit), so j = 3 at ~10 bits/codeword.
        j = min(7, max(1, round(math.log2(max(100 * n / total_bits, 1.0)))))
        jump = nxt
        for _ in range(j):
            jump = jump[jump]
        heads = []
        h = 0
        while h < c:
            heads.append(h)
            h = int(jump[h])
        rows = np.empty((1 << j, len(heads)), dtype=np.int32)
        rows[0] = heads
        for i in range(1, 1 << j):
            rows[i] = nxt[rows[i - 1]]
        chain = rows.T.reshape(-1)
        take = chain[chain < c][: n - got].astype(np.int64)
        first1 = next_one[take].astype(np.int64)
        nb = first1 - take + (k + 1)  # bits of v = r + 2^k
        stop = first1 + nb
        valid = (first1 < w) & (nb <= 62) & (stop <= w)
        if not valid.all():
            t = int(np.argmin(valid))
            raise GGError(f"exp-Golomb stream truncated or corrupt at bit {p + int(take[t])}: "
                          f"decoded {got + t} of {n} values")
        g = p + first1  # global position of v's leading 1
        sh = (g & 7).astype(np.uint64)
        window = (win64[g >> 3].astype(np.uint64) << sh) | (padded[(g >> 3) + 8].astype(np.uint64)
                                                           >> (np.uint64(8) - sh))
        v = window >> (64 - nb).astype(np.uint64)
        out[got:got + take.size] = v.astype(np.int64) - (1 << k)
        p += int(stop[-1])
        got += take.size
    if (p + 7) // 8 != data.size or (p % 8 and int(data[-1]) & ((1 << (8 - p % 8)) - 1)):
        raise GGError(f"exp-Golomb stream: {data.size} bytes but the {n} codewords use {p} bits "
                      "(trailing data or non-zero padding)")
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------- the histogram


def _merge_sparse(s1: torch.Tensor, c1: torch.Tensor, s2: torch.Tensor, c2: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    if s1.numel() == 0:
        return s2, c2
    if s2.numel() == 0:
        return s1, c1
    sym, inv = torch.unique(torch.cat([s1, s2]), sorted=True, return_inverse=True)
    counts = torch.zeros(sym.numel(), dtype=torch.int64).index_add_(0, inv, torch.cat([c1, c2]))
    return sym, counts


def _huffman_bits(counts: torch.Tensor) -> int:
    """Total bits of a Huffman code: the sum of the internal node weights (two-queue O(D) merge)."""
    leaves = deque(torch.sort(counts).values.tolist())
    if len(leaves) <= 1:
        return 0  # like the fixed-length code: one symbol costs nothing once n is known
    inner: deque[int] = deque()
    total = 0

    def pop() -> int:
        if not inner or (leaves and leaves[0] <= inner[0]):
            return leaves.popleft()
        return inner.popleft()

    while len(leaves) + len(inner) > 1:
        s = pop() + pop()
        total += s
        inner.append(s)
    return total


@dataclass(frozen=True)
class RateStats:
    """Rate of one histogram (a tensor, or several merged) at one step and exp-Golomb order."""

    n: int  # number of parameters
    step: float
    k: int  # exp-Golomb order
    distinct: int  # number of distinct quantized symbols
    symbol_min: int
    symbol_max: int
    eg_bits: int  # exact exp-Golomb total over all parameters (table excluded)
    eg_bits_per_param: float
    entropy_bits_per_param: float  # empirical zeroth-order entropy of the symbols
    huffman_bits: int | None  # None when distinct > HUFFMAN_MAX_SYMBOLS
    huffman_bits_per_param: float | None
    fixed_bits_per_param: int  # ceil(log2(distinct))
    source_bits_per_param: float  # width of the input dtype(s), e.g. 16 for bf16
    zero_fraction_quantized: float  # share of parameters whose symbol is 0
    table_bits: int  # rank→symbol table: 2×64-bit header + distinct × offset width

    @property
    def compression_ratio(self) -> float:
        """Source size over exp-Golomb size including the table."""
        return self.source_bits_per_param * self.n / max(self.eg_bits + self.table_bits, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["step_label"] = format_step(self.step)
        d["compression_ratio"] = self.compression_ratio
        return d


class SymbolHistogram:
    """Streaming, mergeable count of quantized symbols at one step.

    Feed tensors (any float dtype, any size: processed in chunks) with update(); merge() histograms
    of several tensors to get the whole-model rate under one global ranking; stats() gives the rate.
    Stored sparsely as sorted distinct symbols with their counts.
    """

    def __init__(self, step: float | str):
        self.step = _coerce_step(step)
        self._symbols = torch.empty(0, dtype=torch.int64)
        self._counts = torch.empty(0, dtype=torch.int64)
        self.n = 0
        self.source_bits = 0
        self._order: torch.Tensor | None = None

    @property
    def symbols(self) -> torch.Tensor:
        """Distinct symbols, ascending (int64)."""
        return self._symbols

    @property
    def counts(self) -> torch.Tensor:
        """Count of each symbol in `symbols` (int64)."""
        return self._counts

    def _add(self, sym: torch.Tensor, cnt: torch.Tensor) -> None:
        self._symbols, self._counts = _merge_sparse(self._symbols, self._counts, sym, cnt)
        self._order = None

    def update(self, x: torch.Tensor, name: str = "tensor") -> SymbolHistogram:
        """Add every value of x (quantized at this step); returns self for chaining."""
        _check_float(x, name)
        flat = x.reshape(-1)
        acc: torch.Tensor | None = None  # running dense counts of symbols acc_lo, acc_lo + 1, ...
        acc_lo = 0
        for i in range(0, flat.numel(), CHUNK):
            s, lo, hi = _quantize_chunk(flat[i:i + CHUNK], self.step, x, name)
            if hi - lo + 1 > DENSE_RANGE:
                sym, cnt = torch.unique(s.to(torch.int64), sorted=True, return_counts=True)
                self._add(sym, cnt.to(torch.int64))
                continue
            # Exact in the float dtype: integral operands, integral result < 2^24.
            counts = torch.bincount(s.sub_(lo).to(torch.int32), minlength=hi - lo + 1)
            if acc is not None:
                new_lo, new_hi = min(acc_lo, lo), max(acc_lo + acc.numel(), hi + 1)
                if new_hi - new_lo > DENSE_ACC_MAX:
                    self._add_dense(acc_lo, acc)
                    acc = None
                elif new_hi - new_lo > acc.numel():
                    grown = torch.zeros(new_hi - new_lo, dtype=torch.int64)
                    grown[acc_lo - new_lo:acc_lo - new_lo + acc.numel()] = acc
                    acc, acc_lo = grown, new_lo
            if acc is None:
                acc, acc_lo = counts, lo
            else:
                acc[lo - acc_lo:hi + 1 - acc_lo] += counts
        if acc is not None:
            self._add_dense(acc_lo, acc)
        self.n += flat.numel()
        self.source_bits += flat.numel() * x.element_size() * 8
        return self

    def update_counts(
        self, values: torch.Tensor, counts: torch.Tensor, *, itemsize: int, name: str = "tensor"
    ) -> SymbolHistogram:
        """Add distinct `values` seen `counts` times (e.g. from `gg.value_counts`); same as `update`
        on the expanded tensor, whose element size in bytes is `itemsize`."""
        v = values.to(torch.float64)
        if not bool(torch.isfinite(v).all()):
            bad = int(counts[~torch.isfinite(v)].sum())
            raise GGError(f"{name}: contains {bad} NaN/Inf value(s); the rate measure needs finite weights")
        s, lo, hi = _quantize_chunk(v, self.step, v, name)
        sym, inv = torch.unique(s.to(torch.int64), sorted=True, return_inverse=True)
        self._add(sym, torch.zeros(sym.numel(), dtype=torch.int64).index_add_(0, inv, counts.to(torch.int64)))
        n = int(counts.sum())
        self.n += n
        self.source_bits += n * itemsize * 8
        return self

    @classmethod
    def from_counts(cls, lo: int, counts: torch.Tensor, step: float | str = 1.0) -> SymbolHistogram:
        """A histogram of integer symbols given as dense counts of lo, lo + 1, ... (int64)."""
        h = cls(step)
        h._add_dense(lo, counts.to(torch.int64))
        h.n = int(counts.sum())
        h.source_bits = 64 * h.n
        return h

    def dense_counts(self) -> tuple[int, np.ndarray]:
        """(lowest symbol, int64 counts of every symbol from it to the highest, zeros included)."""
        lo, hi = int(self.symbols[0]), int(self.symbols[-1])
        dense = np.zeros(hi - lo + 1, dtype=np.int64)
        dense[(self.symbols - lo).numpy()] = self.counts.numpy()
        return lo, dense

    def _add_dense(self, lo: int, counts: torch.Tensor) -> None:
        nz = torch.nonzero(counts).squeeze(1)
        self._add(nz + lo, counts[nz])

    def merge(self, other: SymbolHistogram) -> SymbolHistogram:
        """Add another histogram's counts (same step) in place; returns self."""
        if other.step != self.step:
            raise GGError(f"cannot merge histograms at steps {format_step(self.step)} and "
                          f"{format_step(other.step)}")
        self._add(other._symbols, other._counts)
        self.n += other.n
        self.source_bits += other.source_bits
        return self

    def _ranking(self) -> torch.Tensor:
        """Indices into `symbols` in rank order: count desc, then |symbol| asc, negative first."""
        if self._order is None:
            s = self._symbols
            tie = s.abs() * 2 + (s > 0).to(torch.int64)  # unique per symbol, < 2^62
            by_tie = torch.sort(tie, stable=True).indices
            by_count = torch.sort(-self._counts[by_tie], stable=True).indices
            self._order = by_tie[by_count]
        return self._order

    def symbols_by_rank(self) -> torch.Tensor:
        """The rank→symbol table: entry r is the symbol coded as rank r."""
        return self._symbols[self._ranking()]

    def to_ranks(self, q: torch.Tensor) -> torch.Tensor:
        """Map quantized symbols (from quantize at this step) to their ranks in this histogram."""
        if self._symbols.numel() == 0:
            raise GGError("rate measure: the histogram is empty, no symbol has a rank")
        q = q.to(torch.int64)
        pos = torch.searchsorted(self._symbols, q).clamp_(max=self._symbols.numel() - 1)
        if not bool((self._symbols[pos] == q).all()):
            raise GGError("rate measure: a symbol is not in this histogram (different step or data?)")
        rank_of = torch.empty_like(self._symbols)
        order = self._ranking()
        rank_of[order] = torch.arange(order.numel(), dtype=torch.int64)
        return rank_of[pos]

    def eg_bits(self, k: int = 0) -> int:
        """Exact exp-Golomb total (bits) under the frequency ranking."""
        k = _check_k(k)
        ranked = self._counts[self._ranking()]
        return int((ranked * _rank_lengths(ranked.numel(), k)).sum())

    def best_k(self, max_k: int = 16) -> int:
        """Order in 0..max_k giving the fewest bits (smallest k on ties).

        The default reaches past 8: real MiniLM weights at step 2^-13 are cheapest at k = 9.
        """
        _check_k(max_k)
        totals = [self.eg_bits(k) for k in range(max_k + 1)]
        return totals.index(min(totals))

    def stats(self, k: int | None = 0, huffman: bool = True) -> RateStats:
        """Rate summary at order k (None = best_k()); Huffman only up to HUFFMAN_MAX_SYMBOLS."""
        if self.n == 0:
            raise GGError("rate measure: no values were added to the histogram")
        k = self.best_k() if k is None else _check_k(k)
        d = self._symbols.numel()
        lo, hi = int(self._symbols[0]), int(self._symbols[-1])
        eg = self.eg_bits(k)
        p = self._counts.to(torch.float64) / self.n
        entropy = float(-(p * torch.log2(p)).sum())
        huff = _huffman_bits(self._counts) if huffman and d <= HUFFMAN_MAX_SYMBOLS else None
        zero_pos = int(torch.searchsorted(self._symbols, torch.tensor(0)))
        zeros = int(self._counts[zero_pos]) if zero_pos < d and int(self._symbols[zero_pos]) == 0 else 0
        return RateStats(
            n=self.n,
            step=self.step,
            k=k,
            distinct=d,
            symbol_min=lo,
            symbol_max=hi,
            eg_bits=eg,
            eg_bits_per_param=eg / self.n,
            entropy_bits_per_param=max(entropy, 0.0),
            huffman_bits=huff,
            huffman_bits_per_param=None if huff is None else huff / self.n,
            fixed_bits_per_param=(d - 1).bit_length(),
            source_bits_per_param=self.source_bits / self.n,
            zero_fraction_quantized=zeros / self.n,
            table_bits=128 + d * (hi - lo).bit_length(),
        )


def rate_stats(x: torch.Tensor, step: float | str, k: int | None = 0, name: str = "tensor") -> RateStats:
    """Rate of one tensor under its own ranking (k=None picks the best order in 0..16)."""
    return SymbolHistogram(step).update(x, name).stats(k)
