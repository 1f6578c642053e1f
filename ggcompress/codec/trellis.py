"""Dependent (trellis-coded) quantization: the choice of levels NNCodec and VVC use, vectorized for torch.

Why: plain rounding codes each weight on its own, so the cell of every quantizer is a cube. Two
interleaved quantizers, Q0 with the even multiples of a step Δ and Q1 with the odd multiples and zero,
and a small state machine driven by the parity of the transmitted index (which quantizer the next
weight uses) make the reachable sequences a trellis code: a Viterbi search picks the sequence that
minimizes squared error + λ·bits: the granular gain of trellis-coded quantization (~1 dB). In pack, at
the same SQNR, 0.20–0.32 bit/param less than rounding on MiniLM and the Wikipedia LM
(benchmarks/bench_pack_rd.py; tests/test_trellis.py checks ≥ 0.1 on a Laplacian from ~1.6 bits up);
8 states give ~0.07 dB (~0.012 bit) more than VVC's 4 (benchmarks/bench_trellis.py). The decoder only
tracks the state: level = 2k·Δ in Q0 states, (2k − sgn k)·Δ in Q1 states.

Layout choices (ours): a tensor is flattened in row-major order and cut into *lanes* of ``LANE``
weights (the last one padded with zero indices); every lane starts in state 0 and is searched on its own
(the search is a Python loop over ``LANE`` steps, vectorized over all lanes). Indices are coded in two
contexts, by the quantizer of their state (``Coded.context_streams``): the stream of each context lists
its indices step-major (step 0 of every lane, then step 1, ...), so the decoder can decode both streams
in bulk and then walk all lanes in lockstep, taking each lane's next index from the stream of its
current state (``walk_contexts``). Measured by benchmarks/bench_trellis.py (entropy): conditioning on
the quantizer saves 0.27 bit/weight against coding the parity first on a Laplacian at ~1.6 bits (0.025
on MiniLM at 2^-5); the full state would add 0.0002–0.026 bit before its twice as many tables. At high
rates one shared table (``Coded.merged``) costs less than the contexts save; pack picks per tensor.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ggcompress.errors import GGError

#: Weights per lane (the trellis restarts in state 0 at each lane; docs/format.md).
LANE = 128
#: λ in units of Δ² per bit: the high-rate slope of rounding's own RD curve at the step it replaces,
#: 2 ln 2 · step²/12 = 2 ln 2 / (12 · (9/16)²) ≈ 0.365 Δ² (benchmarks/bench_trellis.py sweeps 0.2–0.6).
LAMBDA = 0.35
#: λ for KL targets (pack --max-kl --trellis). The SQNR-tuned λ shrinks weights toward zero in a way the
#: model's output feels more than its MSE says: on the Wikipedia LM at steps 2^-4.25…2^-6 it raised the
#: next-token KL by 3–78% over rounding at the same step for −0.38…−0.06 dB. At 0.1 the KL is within
#: −1…+10% of rounding's, in 6–12% fewer bits; λ = 0 lowers the KL 10–23% but gives the bits back (−2.9…+4.2%
#: against rounding). benchmarks/bench_pack_kl.py --models wiki --trellis-lambdas 0.35 0.1 0.
KL_LAMBDA = 0.1
#: Union step Δ as a fraction of the plain step it replaces: at Δ = 9/16·step the trellis has about the
#: SQNR of rounding at ``step`` (MiniLM, 2^-6…2^-12: within ±0.2 dB), so --quant step:S --trellis keeps
#: the quality of step:S and saves bits.
STEP_FACTOR = 9 / 16
#: Weights processed per chunk of lanes (bounds the search's temporaries to ~100 bytes a weight).
CHUNK = 1 << 20
_UNSEEN_BITS = 32.0

#: The trellises: next state [state][parity of k], and the quantizer (0: Q0, 1: Q1) of each state.
#: 4 states: VVC's dependent quantization; 8 states: the 8-state TCQ NNCodec uses (quantizer = state & 1).
TRELLISES = {
    4: (((0, 2), (2, 0), (1, 3), (3, 1)), (0, 0, 1, 1)),
    8: (((0, 2), (7, 5), (1, 3), (6, 4), (2, 0), (5, 7), (3, 1), (4, 6)), (0, 1, 0, 1, 0, 1, 0, 1)),
}
STATES = 8


class _Machine:
    """One trellis as tensors: transitions, quantizers and, per state, the two incoming branches."""

    def __init__(self, states: int) -> None:
        if states not in TRELLISES:
            raise GGError(f"trellis states {states!r}: choose from {', '.join(map(str, TRELLISES))}")
        nxt, qid = TRELLISES[states]
        self.states = states
        self.next = torch.tensor(nxt, dtype=torch.int64).reshape(-1)  # index: state·2 + parity
        self.qid = torch.tensor(qid, dtype=torch.int64)
        pred: list[list[tuple[int, int]]] = [[] for _ in nxt]
        for s, row in enumerate(nxt):
            for p, s2 in enumerate(row):
                pred[s2].append((s, p))
        if any(len(p) != 2 for p in pred):
            raise AssertionError("every trellis state needs exactly two predecessors")
        self.pred_s = torch.tensor([[s for s, _ in p] for p in pred])
        pred_p = torch.tensor([[q for _, q in p] for p in pred])
        self.pred_qp = self.qid[self.pred_s] * 2 + pred_p  # column (quantizer·2 + parity) per branch


_MACHINES = {n: _Machine(n) for n in TRELLISES}


def machine(states: int) -> _Machine:
    if states not in _MACHINES:
        raise GGError(f"trellis states {states!r}: choose from {', '.join(map(str, TRELLISES))}")
    return _MACHINES[states]


def levels(k: torch.Tensor, qid: torch.Tensor) -> torch.Tensor:
    """Reconstruction level in units of Δ: 2k in Q0, 2k − sgn(k) in Q1 (int64)."""
    return 2 * k - qid.to(torch.int64) * torch.sign(k)


class _Rates:
    """−log2 p(k | quantizer) from counts, as dense float32 tables over k ∈ [−span, span]; symbols never
    seen cost ``_UNSEEN_BITS``. ``span`` covers every candidate index of values up to ``amax`` (in Δ)."""

    def __init__(self, by_quantizer: tuple[torch.Tensor, torch.Tensor], amax: float) -> None:
        self.span = int(math.ceil(amax / 2)) + 4
        self.tables = []
        for k in by_quantizer:  # integral values, int64 or float (bins built without an int64 copy)
            kk = (k + self.span).to(torch.int32)
            if kk.numel() and not 0 <= int(kk.min()) <= int(kk.max()) <= 2 * self.span:
                raise AssertionError("trellis index outside the rate table")
            c = torch.bincount(kk, minlength=2 * self.span + 1).to(torch.float32)
            bits = torch.where(c > 0, -torch.log2(c / max(kk.numel(), 1)), torch.full_like(c, _UNSEEN_BITS))
            self.tables.append(bits)
        self.zero_bits = [float(t[self.span]) for t in self.tables]

    def lookup(self, k: torch.Tensor, q: int) -> torch.Tensor:
        """Bits of indices ``k`` (float, integral, |k| ≤ span) under quantizer q."""
        idx = (k + self.span).to(torch.int64)
        return self.tables[q].index_select(0, idx.reshape(-1)).view(idx.shape)  # 4x faster than t[idx]


def _branch_costs(x: torch.Tensor, rates: _Rates, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight (x in units of Δ) and per (quantizer, parity): the cheapest index and its cost.

    Each (quantizer, parity) pair allows one level set, symmetric about zero (magnitudes: Q0 even k
    0, 4, 8…; Q0 odd 2, 6, 10…; Q1 odd 1, 5, 9…; Q1 even 0, 3, 7…). The candidate is the set's level
    nearest to x, and for the even sets also zero (rounding to zero when the bits saved are worth it).
    Returns (cost, index as float), each of shape (x.shape[0], 4, *x.shape[1:]), column = quantizer·2 +
    parity: contiguous per step for the search loop.
    """
    a = x.abs()
    sign = torch.sign(x)
    sign[sign == 0] = 1
    a2 = a.square()
    shape = (x.shape[0], 4) + x.shape[1:]
    j, kk = torch.empty(shape, dtype=x.dtype), torch.empty(shape, dtype=x.dtype)
    for col, (q, offset) in enumerate(((0, 0.0), (0, 2.0), (1, 3.0), (1, 1.0))):
        mag = torch.round((a - offset) * 0.25).clamp_(min=0).mul_(4).add_(offset)  # nearest level >= offset
        if offset == 3.0:  # Q1 even also holds 0: nearer than 3 below 1.5
            mag.masked_fill_(a < 1.5, 0.0)
        k = (mag * 0.5) if q == 0 else (mag + 1).mul_(0.5).masked_fill_(mag == 0, 0.0)
        k.mul_(sign)
        jc = (a - mag).square_().add_(rates.lookup(k, q), alpha=lam)
        if col in (0, 2):  # even sets hold zero: take it where it is cheaper
            jz = a2 + lam * rates.zero_bits[q]
            use0 = jz < jc
            jc = torch.where(use0, jz, jc)
            k.masked_fill_(use0, 0.0)
        j[:, col] = jc
        kk[:, col] = k
    return j, kk


def _viterbi(x: torch.Tensor, rates: _Rates, lam: float, m: _Machine) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices k and the quantizer of their state (int64, x's shape) for x of shape (lane, lanes) in units
    of Δ, each lane from state 0."""
    lane, lanes = x.shape
    j, kk = _branch_costs(x, rates, lam)  # (lane, 4, lanes)
    cost = torch.full((m.states, lanes), math.inf, dtype=j.dtype)
    cost[0] = 0
    took1 = torch.empty((lane, m.states, lanes), dtype=torch.bool)
    ps0, ps1 = m.pred_s[:, 0].contiguous(), m.pred_s[:, 1].contiguous()
    qp0, qp1 = m.pred_qp[:, 0].contiguous(), m.pred_qp[:, 1].contiguous()
    for t in range(lane):
        jt = j[t]
        c0 = cost.index_select(0, ps0).add_(jt.index_select(0, qp0))
        c1 = cost.index_select(0, ps1).add_(jt.index_select(0, qp1))
        torch.lt(c1, c0, out=took1[t])
        cost = torch.minimum(c0, c1)
    # Back from the cheapest final state. Small tables are read with torch.take, keyed by state·2 + the
    # branch taken: advanced indexing costs ~3x more per call at these sizes (30 vs 17 ns a weight).
    qp_of = torch.stack((qp0, qp1), 1).reshape(-1)  # key -> column (quantizer·2 + parity) of the branch
    ps_of = torch.stack((ps0, ps1), 1).reshape(-1)  # key -> the state before the step
    s = cost.argmin(0)  # (lanes,): the state after the last step
    out = torch.empty((lane, lanes), dtype=kk.dtype)
    qid = torch.empty((lane, lanes), dtype=torch.int64)
    for t in range(lane - 1, -1, -1):
        key = s * 2 + took1[t].gather(0, s.unsqueeze(0))[0]
        torch.gather(kk[t], 0, torch.take(qp_of, key).unsqueeze(0), out=out[t].unsqueeze(0))
        s = torch.take(ps_of, key)
        qid[t] = torch.take(m.qid, s)
    return out.to(torch.int64), qid


def _initial_rates(x: torch.Tensor, amax: float) -> _Rates:
    """Rates from each quantizer used alone (nearest level), before any search."""
    k0 = torch.round(x * 0.5)
    k1 = torch.floor(x * 0.5)  # nearest odd level 2·k1 + 1 (zero is left to the search) ...
    k1 += (k1 >= 0).to(k1.dtype)  # ... is index k1 + 1 above zero, k1 below
    return _Rates((k0, k1), amax)


@dataclass
class Coded:
    """A searched (or decoded) tensor in the trellis's step-major layout: ``k[t, l]`` is the index of weight
    ``l·lane + t`` (lanes past the n weights are padding), ``qid`` the quantizer of its state."""

    k: torch.Tensor  # (lane, lanes) int64
    qid: torch.Tensor  # (lane, lanes) int64, 0 or 1
    n: int
    states: int

    def indices(self) -> torch.Tensor:
        """The n indices in weight (row-major) order."""
        return self.k.T.reshape(-1)[:self.n]

    def levels(self) -> torch.Tensor:
        """The n reconstruction levels (units of Δ) in weight order."""
        return levels(self.k, self.qid).T.reshape(-1)[:self.n]

    def context_streams(self, lane_class: torch.Tensor | None = None, classes: int = 1) -> list[torch.Tensor]:
        """The 2·classes context streams, context = quantizer·classes + the lane's class (no classes: the
        Q0 and Q1 streams), each step-major over the lanes."""
        k = self.k.reshape(-1)
        if lane_class is None:  # two contexts: two masked copies beat a sort (14 vs 23 ns a weight)
            q1 = self.qid.reshape(-1).bool()
            return [k[~q1], k[q1]]
        ctx = (self.qid * classes + lane_class.reshape(1, -1)).reshape(-1)
        if 2 * classes <= 1 << 15:  # a narrow key sorts faster (17 vs 25 ns a weight for 16 contexts)
            ctx = ctx.to(torch.int16)
        order = torch.argsort(ctx, stable=True)  # stable: step-major order kept within each context
        counts = torch.bincount(ctx.to(torch.int64), minlength=2 * classes).tolist()
        return list(torch.split(k[order], counts))

    def merged(self) -> torch.Tensor:
        """Every index, step-major (one stream for one shared table)."""
        return self.k.reshape(-1)


def search(x: torch.Tensor, delta: float, lam: float = LAMBDA, passes: int = 1, lane: int = LANE,
           name: str = "tensor", states: int = STATES) -> Coded:
    """Trellis-quantize ``x`` (flattened, row-major) at union step ``delta``.

    ``passes`` Viterbi searches, the first with rates from each quantizer used alone, each later one with
    the rates of the indices the previous pass chose (a second pass saved < 0.001 bit/weight on MiniLM).
    """
    if not (math.isfinite(delta) and delta > 0):
        raise GGError(f"{name}: trellis step {delta!r} must be a positive number")
    m = machine(states)
    flat = x.reshape(-1)
    n = flat.numel()
    lanes = -(-n // lane)
    if n == 0:
        return Coded(torch.zeros((lane, 0), dtype=torch.int64), torch.zeros((lane, 0), dtype=torch.int64), 0,
                     states)
    if not bool(torch.isfinite(flat).all()):
        raise GGError(f"{name}: NaN or Inf: a trellis needs finite weights")
    amax = float(flat.abs().max()) / delta
    if amax > 2.0**40:
        raise GGError(f"{name}: values up to {amax:.3g} steps: too many levels for a trellis")
    # float32 holds the search exactly enough while levels stay below 2^22 (Δ/2 resolution to spare)
    work = torch.float32 if amax < 2.0**22 else torch.float64
    padded = torch.zeros(lanes * lane, dtype=work)
    torch.div(flat.to(work), delta, out=padded[:n])
    xl = padded.reshape(lanes, lane).T.contiguous()
    rates = _initial_rates(padded[:n], amax)
    k = torch.empty((lane, lanes), dtype=torch.int64)
    qid = torch.empty((lane, lanes), dtype=torch.int64)
    per = max(1, CHUNK // lane)
    for i in range(max(1, passes)):
        if i:
            rates = _Rates((k[qid == 0], k[qid == 1]), amax)
        for c in range(0, lanes, per):
            k[:, c:c + per], qid[:, c:c + per] = _viterbi(xl[:, c:c + per].contiguous(), rates, lam, m)
    return Coded(k, qid, n, states)


def trellis_indices(x: torch.Tensor, delta: float, lam: float = LAMBDA, passes: int = 1,
                    lane: int = LANE, name: str = "tensor", states: int = STATES) -> torch.Tensor:
    """The trellis indices of ``x`` (int64, flat, weight order): ``search(...).indices()``."""
    return search(x, delta, lam, passes, lane, name, states).indices()


def from_indices(k: torch.Tensor, lane: int = LANE, states: int = STATES) -> Coded:
    """The layout of n indices given in weight order (padding lanes with zero indices), states walked."""
    n = k.numel()
    lanes = -(-n // lane)
    kp = torch.zeros(lanes * lane, dtype=torch.int64)
    kp[:n] = k.reshape(-1)
    kt = kp.reshape(lanes, lane).T.contiguous()
    return Coded(kt, _walk_states(kt, machine(states)), n, states)


def _walk_states(kt: torch.Tensor, m: _Machine) -> torch.Tensor:
    """Quantizer of the state before each index of a (lane, lanes) layout, every lane from state 0."""
    lane, lanes = kt.shape
    qid = torch.empty_like(kt)
    s = torch.zeros(lanes, dtype=torch.int64)
    for t in range(lane):
        qid[t] = torch.take(m.qid, s)
        s = torch.take(m.next, s * 2 + (kt[t] & 1))
    return qid


def lane_classes(row_class: torch.Tensor, n: int, cols: int, lane: int = LANE) -> torch.Tensor:
    """The class of each lane: that of the row holding its first weight (int64, one per lane)."""
    lanes = -(-n // lane)
    first_row = torch.div(torch.arange(lanes, dtype=torch.int64) * lane, max(cols, 1), rounding_mode="floor")
    return row_class.to(torch.int64)[first_row.clamp(max=row_class.numel() - 1)]


def walk_contexts(streams: list[torch.Tensor], lane_class: torch.Tensor | None, classes: int, n: int,
                  lane: int = LANE, states: int = STATES) -> Coded:
    """The decoder: walk every lane's state machine in lockstep; at every step each lane takes its next
    index from the stream of its context (its state's quantizer·classes + its class; no classes: the Q0
    and Q1 streams), lanes of one context in ascending order. Raises ValueError when the streams do not
    match the walk.

    No sort per step: lanes are grouped by class once (stably), so at every step the quantizer-0 lanes,
    class by class, take the next indices of their classes' Q0 streams in one masked copy, and likewise
    the quantizer-1 lanes (29 instead of 38 ns a weight for two contexts)."""
    lanes = -(-n // lane)
    if lane_class is None:
        lane_class = torch.zeros(lanes, dtype=torch.int64)
    if len(streams) != 2 * classes or sum(x.numel() for x in streams) != lanes * lane:
        raise ValueError(f"trellis streams hold {sum(x.numel() for x in streams)} indices in {len(streams)} "
                         f"contexts, {lanes * lane} in {2 * classes} expected")
    m = machine(states)
    k = torch.empty((lane, lanes), dtype=torch.int64)
    qid = torch.empty((lane, lanes), dtype=torch.int64)
    cls = lane_class.to(torch.int64)
    order = None if classes == 1 else torch.argsort(cls, stable=True)  # lanes grouped by class, once
    per = [lanes] if classes == 1 else torch.bincount(cls, minlength=classes).tolist()
    ends = torch.tensor([e - 1 for e in itertools.accumulate(per)], dtype=torch.int64)
    ks = k if order is None else torch.empty_like(k)  # columns in class order while walking
    qs = qid if order is None else torch.empty_like(qid)
    s = torch.zeros(lanes, dtype=torch.int64)
    ptr = [0] * (2 * classes)
    for t in range(lane):
        q = torch.take(m.qid, s)  # take: small tables, cheaper than advanced indexing
        qs[t] = q
        q1 = q.bool()
        if classes == 1:
            ones = [int(q1.sum())]
        else:  # Q1 lanes per class: the running count at each class's last lane, differenced
            upto = torch.cumsum(q, 0)[ends].tolist()
            ones = [b - a for a, b in zip([0, *upto[:-1]], upto, strict=True)]
        zeros_parts, ones_parts = [], []
        for c in range(classes):
            o, z = ones[c], per[c] - ones[c]
            if ptr[c] + z > streams[c].numel() or ptr[classes + c] + o > streams[classes + c].numel():
                raise ValueError("a trellis context stream ends before the walk does")
            zeros_parts.append(streams[c][ptr[c]:ptr[c] + z])
            ones_parts.append(streams[classes + c][ptr[classes + c]:ptr[classes + c] + o])
            ptr[c] += z
            ptr[classes + c] += o
        row = ks[t]
        row[~q1] = zeros_parts[0] if classes == 1 else torch.cat(zeros_parts)
        row[q1] = ones_parts[0] if classes == 1 else torch.cat(ones_parts)
        s = torch.take(m.next, s * 2 + (row & 1))
    if order is not None:
        k[:, order] = ks
        qid[:, order] = qs
    return Coded(k, qid, n, states)


def walk_merged(k: torch.Tensor, n: int, lane: int = LANE, states: int = STATES) -> Coded:
    """The decoder for one merged stream (step-major, one shared table)."""
    lanes = -(-n // lane)
    if k.numel() != lanes * lane:
        raise ValueError(f"trellis stream holds {k.numel()} indices, {lanes * lane} expected")
    kt = k.reshape(lane, lanes)
    return Coded(kt, _walk_states(kt, machine(states)), n, states)


def restore(k: torch.Tensor, delta: float, n: int, lane: int = LANE, states: int = STATES) -> torch.Tensor:
    """Level · Δ in float64 of n trellis indices (flat, weight order)."""
    return from_indices(k.reshape(-1)[:n], lane, states).levels().to(torch.float64) * delta
