"""Per-tensor steps for a KL target (``pack --max-kl K``): the fewest coded bits whose packed model keeps
the mean next-token KL(original ‖ packed) on a calibration text at or below K nats.

Why: an SQNR target weighs every weight alike, but the model's output does not: the same error energy
costs far more in some tensors than in others. Method:

1. The text is cut into 2N windows of T tokens spread evenly over it (``split_windows``); the
   even-numbered ones estimate the diagonal Fisher F̂ (stats/sensitivity.py, with next tokens drawn
   from the model's own distribution: the Fisher of the model's predictions, which is the Hessian of
   exactly this KL), the odd-numbered ones are held out to measure the KL, so the search is not scored
   on the windows that steered it.
2. Sensitivity weight per tensor: its mean F̄_t. To second order a perturbation costs
   KL ≈ ½ Σ_t F̄_t · noise_t per token (noise_t = Σ (w − ŵ)² of tensor t, the error uncorrelated with
   F̂ inside the tensor). F̂ is a window-level squared gradient, 1/(T−1) of the per-token Fisher when
   the drawn tokens' scores are independent, so the *predicted* KL is ½ (T−1) Σ_t F̄_t · noise_t.
3. Calibration: the prediction is only a model (second order, diagonal, per-tensor means, a few windows).
   ``rdalloc.allocate`` gives the fewest bits at a weighted-error budget D = Σ_t w_t · noise_t
   (w_t = F̄_t / F̄, F̄ the parameter-weighted mean), and the search moves D until the *measured* KL
   meets K: the steps are applied exactly as unpack restores them (``pack.restore_step``), the float32
   model runs on the held-out windows, and the KL against the original model's logits is taken per
   token in float64 (``evaluation.compare_logits``). It starts where the prediction says K, then a
   log–log secant brackets K and interpolation inside the bracket narrows it (a handful of
   evaluations); the answer is the cheapest evaluated allocation whose measured KL ≤ K.

Steps whose error reaches the tensor's signal (SQNR below ``MIN_SQNR_DB``) are left out of the per-tensor
allocations: there the second-order model fails badly (see the constant). The same loop runs with
``method="mse"`` (all weights 1: the SQNR-style allocation) and ``method="uniform"`` (one step for every
tensor, the coarsest that meets K), which is how benchmarks/bench_pack_kl.py measures what the
sensitivity weighting buys.

Per-row steps (``search_rows``, pack --max-kl --step-granularity row): the same loop over
``rdalloc.allocate_rows``, each row (output channel) weighted by its own mean Fisher F̄_r shrunk half-way
toward its tensor's F̄_t (``row_weights``: a few thousand calibration tokens estimate rows poorly, and an
input embedding's rows of tokens absent from them have F̂ = 0), with the per-row SQNR floor.

Costs: one model load (float32), N forward+backward passes (Fisher), one forward pass over the N
held-out windows per KL evaluation, and the original model's logits on them kept in memory
(N·(T−1)·vocab float32: 200 MB for SmolLM2 at N = 8, T = 128). The library returns data, never prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ggcompress.codec import rdalloc
from ggcompress.errors import GGError

#: Calibration defaults: N windows for the Fisher plus N held out for the KL, T tokens each (clamped
#: to the model's context). About a CPU-minute on SmolLM2-135M with one thread (docs/pack.md).
WINDOWS = 8
LENGTH = 128
#: KL evaluations the search may spend; it stops earlier once the bracket is this tight in bits.
MAX_EVALS = 8
BITS_TOL = 0.01
#: A tensor's sensitivity weight is at least this fraction of the mean: a tensor that no calibration
#: window touched is not thereby free to be rounded to nothing.
WEIGHT_FLOOR = 1e-4
METHODS = ("fisher", "mse", "uniform")
#: Per-tensor SQNR floor of the allocations (dB). Steps so coarse that a tensor's error nears its whole
#: signal (most weights rounded to 0) are outside the second-order model, and one such tensor can
#: multiply the KL: on the Wikipedia LM, without a floor, an MLP matrix of weight 0.07 dropped to step
#: 2^0 took the KL from 0.015 to 0.10 nats. The KL is measured anyway; the floor keeps it near monotone
#: in D. 6 dB was the best of 3 / 6 / 9 dB on that model (KL 0.01–0.1; docs/benchmarks.md).
MIN_SQNR_DB = 6.0


# ------------------------------------------------------------------------------------- calibration


def split_windows(tokenizer: Any, text: str, windows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Fisher windows, held-out KL windows): 2·``windows`` windows of ``length`` tokens spread evenly
    over the text, alternately assigned, so both sets sample the whole text and never overlap."""
    from ggcompress.stats.sensitivity import calibration_windows

    both = calibration_windows(tokenizer, text, 2 * windows, length)
    if both.shape[0] < 2:
        raise GGError(f"the calibration text holds {both.shape[1]} tokens, one window of {length}: --max-kl "
                      "needs two (Fisher windows and held-out KL windows); give a longer text or a "
                      "shorter --calibration-length")
    return both[0::2], both[1::2]


class KLProbe:
    """A float32 causal LM, its own next-token logits on held-out windows, and ``kl(steps)``: the mean
    per-token KL(original ‖ model with those tensors packed at those steps).

    ``quantizer``: "round" restores a per-tensor step as plain rounding does, "trellis" as
    ``pack --max-kl --trellis`` does (codec/pack.trellis_plan with λ = trellis.KL_LAMBDA: the very values
    the container will hold) and records each (tensor, step)'s estimated coded bits in ``coded_bits``."""

    def __init__(self, model: Any, windows: torch.Tensor, originals: Mapping[str, torch.Tensor],
                 params: Mapping[str, torch.nn.Parameter], batch: int = 8):
        self.model = model
        self.windows = windows
        self.originals = dict(originals)  # name -> tensor in its checkpoint dtype
        self.params = dict(params)
        self.batch = batch
        self._applied: dict[str, Any] = dict.fromkeys(self.params)  # None: original values
        self.quantizer = "round"
        self.trellis_lambda = 0.0  # the trellis search's λ (use_quantizer sets it)
        self.coded_bits: dict[tuple[str, float], float] = {}  # trellis: (name, step) -> estimated bits
        self.evaluations = 0
        self.seconds_cpu = 0.0
        self.base = self._logits()

    def use_quantizer(self, quantizer: str, lam: float | None = None) -> None:
        """Switch how steps are restored ("round" or "trellis", searched with λ = ``lam``, default
        trellis.KL_LAMBDA); the model gets its original weights and the bit estimates are dropped."""
        from ggcompress.codec.trellis import KL_LAMBDA

        if quantizer not in ("round", "trellis"):
            raise GGError(f"quantizer {quantizer!r}: choose round or trellis")
        self.restore()
        self.quantizer = quantizer
        self.trellis_lambda = KL_LAMBDA if lam is None else float(lam)
        self.coded_bits.clear()

    @property
    def tokens(self) -> int:
        return int(self.windows.shape[0] * (self.windows.shape[1] - 1))

    def _logits(self) -> list[torch.Tensor]:
        from ggcompress.integrations.evaluation import next_token_logits

        return [block for _, block in next_token_logits(self.model, self.windows, self.batch)]

    def apply(self, steps: Mapping[str, Any]) -> None:
        """Put each named tensor into the model as unpack would restore it at its step (absent or None:
        the original; an int array: per-row S, steps 2^-S_r); only tensors whose step changed are
        re-quantized."""
        from ggcompress.codec.pack import restore_rows, restore_step, trellis_plan

        with torch.no_grad():
            for name, p in self.params.items():
                step = steps.get(name)
                key = ("rows", np.asarray(step).tobytes()) if isinstance(step, np.ndarray) else step
                if self._applied[name] == key:
                    continue
                x = self.originals[name]
                if step is None:
                    y = x
                elif isinstance(step, np.ndarray):
                    if self.quantizer == "trellis":
                        raise GGError("per-row steps are not trellis-coded (--step-granularity row)")
                    y = restore_rows(x, step, name)
                elif self.quantizer == "trellis":
                    plan = trellis_plan(x, float(step), name, lam=self.trellis_lambda)
                    self.coded_bits[(name, float(step))] = plan.estimated_bits
                    y = plan.restored
                else:
                    y = restore_step(x, step, name)
                p.copy_(y.to(p.dtype).reshape(p.shape))
                self._applied[name] = key

    def kl(self, steps: Mapping[str, float | None]) -> float:
        """Mean over every held-out token of KL(P_original ‖ P_packed), nats (float64 from log_softmax)."""
        from ggcompress.integrations.evaluation import compare_logits

        t0 = time.process_time()
        self.apply(steps)
        total, count = 0.0, 0
        for (start, block), base in zip(self._iter_blocks(), self.base, strict=True):
            for j in range(block.shape[0]):
                kl = compare_logits(base[j], block[j], self.windows[start + j, 1:])["kl"]
                total += float(kl.sum())
                count += kl.numel()
        self.evaluations += 1
        self.seconds_cpu += time.process_time() - t0
        return total / count

    def _iter_blocks(self):
        from ggcompress.integrations.evaluation import next_token_logits

        return next_token_logits(self.model, self.windows, self.batch)

    def restore(self) -> None:
        """Put the original weights back."""
        self.apply({})


@dataclass
class Calibration:
    """What the search needs from the model: Fisher weights and a KL probe."""

    probe: KLProbe
    fisher_mean: dict[str, float]  # F̄ per tensor (mean window-level squared gradient)
    info: dict[str, Any]  # windows, tokens, loss, seconds
    fisher_rows: dict[str, np.ndarray] = field(default_factory=dict)  # F̄ per row (dim 0) of 2+-dim tensors

    def weights(self, names: Sequence[str]) -> tuple[dict[str, float], float]:
        """(w_t = F̄_t / F̄ floored at WEIGHT_FLOOR, F̄): relative weights and the parameter-weighted mean."""
        numel = {n: self.probe.originals[n].numel() for n in names}
        mean = sum(self.fisher_mean[n] * numel[n] for n in names) / max(sum(numel.values()), 1)
        if not (math.isfinite(mean) and mean > 0):
            raise GGError("the calibration windows gave no gradient to any quantized tensor (Fisher 0); "
                          "use a text the model reads, or more windows")
        return {n: max(self.fisher_mean[n] / mean, WEIGHT_FLOOR) for n in names}, mean


def calibrate(folder: str | Path, names: Sequence[str], text: str, *, windows: int = WINDOWS,
              length: int = LENGTH, device: str = "cpu") -> Calibration:
    """Load ``folder`` as a float32 causal LM, estimate F̄ of the ``names`` tensors on N windows of the
    text and keep the model's logits on N other windows. ``names`` must be parameters of the model
    under the checkpoint's own names (two names of one tied parameter are refused)."""
    from ggcompress.io.checkpoint import open_checkpoint
    from ggcompress.io.loading import load_model
    from ggcompress.stats.sensitivity import context_length, diagonal_fisher

    if windows < 1 or length < 2:
        raise GGError("--calibration-windows must be ≥ 1 and --calibration-length ≥ 2")
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    lm = load_model(folder, device=device, dtype="float32")
    ctx = context_length(lm.model, lm.tokenizer)
    win = min(length, ctx) if ctx else length
    fisher_win, kl_win = split_windows(lm.tokenizer, text, windows, win)
    named = dict(lm.model.named_parameters(remove_duplicate=False))
    canonical: dict[int, str] = {}
    for n, p in lm.model.named_parameters():
        canonical[id(p)] = n
    ck = open_checkpoint(folder)
    originals = {}
    params: dict[str, torch.nn.Parameter] = {}  # checkpoint name -> the model's parameter
    taken: dict[int, str] = {}
    for info, x in ck.iter_tensors(names):
        n = info.name
        p = named.get(n)
        if p is None:
            p = _parameter_holding(named, x)
        if p is None:
            raise GGError(f"{folder}: tensor {n!r} of the checkpoint is not a parameter of the loaded model "
                          "(by name or by value); --max-kl needs each quantized tensor to be one")
        if tuple(x.shape) != tuple(p.shape):
            raise GGError(f"{folder}: tensor {n!r} is {list(x.shape)} in the checkpoint but {list(p.shape)} "
                          "in the loaded model")
        if id(p) in taken:
            raise GGError(f"{folder}: {taken[id(p)]!r} and {n!r} are one tied parameter of the "
                          "model; leave one of them unquantized (--exclude)")
        taken[id(p)] = n
        params[n] = p
        originals[n] = x
    fisher, loss = diagonal_fisher(lm.model, fisher_win, sample_labels=True)
    fisher_mean = {n: float(fisher[canonical[id(params[n])]].mean(dtype=torch.float64)) for n in names}
    fisher_rows = {n: fisher[canonical[id(params[n])]].reshape(params[n].shape[0], -1)
                   .mean(1, dtype=torch.float64).numpy() for n in names if params[n].dim() >= 2}
    f_cpu, f_wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    del fisher
    probe = KLProbe(lm.model, kl_win, originals, params)
    info = {
        "fisher_windows": int(fisher_win.shape[0]), "kl_windows": int(kl_win.shape[0]),
        "window_tokens": int(win), "requested_tokens": int(length), "context": ctx,
        "kl_tokens": probe.tokens, "loss": loss,
        "fisher_seconds_cpu": f_cpu, "fisher_seconds_wall": f_wall,
        "seconds_cpu": time.process_time() - t_cpu, "seconds_wall": time.perf_counter() - t_wall,
    }
    return Calibration(probe, fisher_mean, info, fisher_rows)


def _parameter_holding(named: Mapping[str, torch.nn.Parameter], x: torch.Tensor) -> torch.nn.Parameter | None:
    """The one parameter whose values are exactly ``x``'s, for checkpoint names the model renames on load
    (transformers 5 stores GPT-NeoX's ``lm_head`` as ``embed_out``); None when none or several match."""
    found = {id(p): p for p in named.values()
             if tuple(p.shape) == tuple(x.shape) and torch.equal(p.detach(), x.to(p.dtype))}
    return next(iter(found.values())) if len(found) == 1 else None


# ------------------------------------------------------------------------------------------ search


@dataclass
class KLEvaluation:
    """One allocation the search measured."""

    budget: float  # weighted-error budget D (rd methods) or S of the uniform step
    steps: dict[str, float]  # tensor -> S (step 2^-S)
    bits: float  # predicted coded bits (curves)
    predicted_kl: float  # ½ Σ F̄_t noise_t
    measured_kl: float
    meets: bool

    def to_dict(self, params: int) -> dict[str, Any]:
        return {"budget": self.budget, "coded_bits_per_param": self.bits / params,
                "predicted_kl": self.predicted_kl, "measured_kl": self.measured_kl, "meets": self.meets}


@dataclass
class KLAllocation:
    """The cheapest measured allocation within the KL target, and how it was found."""

    method: str
    max_kl: float
    steps: dict[str, float]  # tensor -> S
    bits: float
    params: int
    signal: float
    noise: float
    predicted_kl: float
    measured_kl: float
    evaluations: list[KLEvaluation]
    calibration: dict[str, Any]
    seconds_cpu: float  # the search: allocations and KL evaluations
    kl_seconds_cpu: float  # of which the KL evaluations
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_param(self) -> float:
        return self.bits / self.params

    @property
    def sqnr_db(self) -> float:
        return 10 * math.log10(self.signal / self.noise) if self.noise > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """The pack report's ``allocation`` (without ``steps``, which pack adds as labels)."""
        return {
            "max_kl": self.max_kl, "method": self.method,
            "predicted_coded_bits_per_param": self.bits_per_param, "predicted_sqnr_db": self.sqnr_db,
            "predicted_kl": self.predicted_kl, "measured_kl": self.measured_kl,
            "kl_scale": self.measured_kl / self.predicted_kl if self.predicted_kl > 0 else None,
            "kl_evaluations": len(self.evaluations),
            "evaluations": [e.to_dict(self.params) for e in self.evaluations],
            "calibration": self.calibration, "search_seconds_cpu": self.seconds_cpu,
            "kl_seconds_cpu": self.kl_seconds_cpu, **self.extra,
        }


def _check_search(max_kl: float, curves: Sequence) -> None:
    if not (math.isfinite(max_kl) and max_kl > 0):
        raise GGError(f"--max-kl {max_kl!r}: must be a positive number of nats")
    if not curves:
        raise GGError("no tensors to allocate steps to (nothing is eligible for quantization)")


def search(curves: Sequence[rdalloc.Curve], cal: Calibration, max_kl: float, *, method: str = "fisher",
           max_evals: int = MAX_EVALS, bits_tol: float = BITS_TOL, min_sqnr_db: float = MIN_SQNR_DB
           ) -> KLAllocation:
    """The cheapest steps (per tensor, or one for all with ``uniform``) whose measured KL ≤ ``max_kl``.

    Per-tensor methods only consider steps that keep each tensor's SQNR ≥ ``min_sqnr_db``. Raises
    GGError when even the finest steps exceed the target.
    """
    if method not in METHODS:
        raise GGError(f"method {method!r}: choose {', '.join(METHODS)}")
    _check_search(max_kl, curves)
    t0 = time.process_time()
    kl0 = cal.probe.seconds_cpu
    if method != "uniform":
        curves = [_floored(c, min_sqnr_db) for c in curves]
    names = [c.name for c in curves]
    rel, fbar = cal.weights(names)
    # per-token Fisher ≈ (scored tokens per window) × the window-level F̂ (uncorrelated token gradients)
    per_token = cal.info["window_tokens"] - 1
    fisher_abs = np.array([cal.fisher_mean[n] for n in names]) * per_token

    def predicted(idx: Sequence[int]) -> float:
        return 0.5 * float(sum(f * c.noise[i] for f, c, i in zip(fisher_abs, curves, idx, strict=True)))

    measured: dict[tuple, KLEvaluation] = {}

    def evaluate(budget: float, idx: Sequence[int]) -> KLEvaluation:
        key = tuple(idx)
        if key not in measured:
            steps = {c.name: float(c.s[i]) for c, i in zip(curves, idx, strict=True)}
            m = cal.probe.kl({n: 2.0 ** -s for n, s in steps.items()})
            if cal.probe.quantizer == "trellis":  # the trellis coding's own estimate (the curves: rounding)
                bits = float(sum(cal.probe.coded_bits[(n, 2.0 ** -s)] for n, s in steps.items()))
            else:
                bits = float(sum(c.bits[i] for c, i in zip(curves, idx, strict=True)))
            measured[key] = KLEvaluation(budget, steps, bits, predicted(idx), m, m <= max_kl)
        return measured[key]

    if method == "uniform":
        trace = _search_uniform(curves, evaluate, predicted, max_kl, max_evals)
    else:
        weights = rel if method == "fisher" else dict.fromkeys(names, 1.0)
        trace = _search_budget(curves, weights, fbar * per_token, evaluate, max_kl, max_evals, bits_tol)
    best = _cheapest_meeting(trace, lambda: evaluate(math.nan, [c.s.size - 1 for c in curves]), cal, max_kl,
                             curves[0].s[-1])
    idx = _indices(curves, best.steps)
    noise = float(sum(c.noise[i] for c, i in zip(curves, idx, strict=True)))
    cal.probe.restore()
    return KLAllocation(method, float(max_kl), best.steps, best.bits, sum(c.numel for c in curves),
                        sum(c.signal for c in curves), noise, best.predicted_kl, best.measured_kl,
                        trace, dict(cal.info), time.process_time() - t0, cal.probe.seconds_cpu - kl0,
                        {"min_tensor_sqnr_db": min_sqnr_db if method != "uniform" else None})


def _floored(c: rdalloc.Curve, min_sqnr_db: float) -> rdalloc.Curve:
    """``c`` without the steps whose error exceeds the tensor's signal / 10^(min_sqnr_db/10) (the
    finest step always stays)."""
    keep = np.nonzero(c.noise * 10 ** (min_sqnr_db / 10) <= c.signal)[0]
    first = int(keep[0]) if keep.size else c.s.size - 1
    return replace(c, s=c.s[first:], bits=c.bits[first:], noise=c.noise[first:])


def _indices(curves: Sequence[rdalloc.Curve], steps: Mapping[str, float]) -> list[int]:
    return [int(np.searchsorted(c.s, steps[c.name])) for c in curves]


def _search_budget(curves: Sequence[rdalloc.Curve], weights: Mapping[str, float], fbar: float,
                   evaluate: Callable[[float, Sequence[int]], KLEvaluation], max_kl: float, max_evals: int,
                   bits_tol: float) -> list[KLEvaluation]:
    """Move the weighted-error budget D (log–log secant, then inside the bracket) until the cheapest
    allocation meeting the KL is pinned down: the bracket's two allocations within ``bits_tol`` in bits
    or 1% in D, no untried allocation left between them, or ``max_evals`` spent."""
    w = np.array([weights[c.name] for c in curves])
    d_min = float(sum(wi * c.noise[-1] for wi, c in zip(w, curves, strict=True)))
    d_max = float(sum(wi * c.noise[0] for wi, c in zip(w, curves, strict=True)))

    def allocation(d: float) -> tuple[int, ...]:
        return tuple(_indices(curves, rdalloc.allocate(curves, max_distortion=d, weights=weights).steps))

    return _search_d(allocation, d_min, d_max, fbar, evaluate, max_kl, max_evals, bits_tol)


def _search_d(allocation: Callable[[float], Any], d_min: float, d_max: float, fbar: float,
              evaluate: Callable[[float, Any], KLEvaluation], max_kl: float, max_evals: int,
              bits_tol: float) -> list[KLEvaluation]:
    """The budget search of _search_budget on any allocation ``D -> hashable key`` in D_min..D_max."""
    cache: dict[float, Any] = {}

    def alloc(d: float) -> Any:
        d = min(max(d, d_min), d_max)
        if d not in cache:
            cache[d] = allocation(d)
        return cache[d]

    points: list[tuple[float, KLEvaluation]] = []  # (D, evaluation)

    def fresh(candidates: Iterable[float]) -> float | None:
        """The first candidate budget whose allocation has not been measured yet."""
        seen = {alloc(pd) for pd, _ in points}
        for c in candidates:
            c = min(max(c, d_min), d_max)
            if alloc(c) not in seen:
                return c
        return None

    # predicted KL = ½ F̄ Σ w_t noise_t for the fisher weights; the same starting scale serves "mse"
    d: float | None = 2.0 * max_kl / fbar
    trace: list[KLEvaluation] = []
    for _ in range(max_evals):
        assert d is not None
        d = min(max(d, d_min), d_max)
        e = evaluate(d, alloc(d))
        if all(e is not t for t in trace):
            trace.append(e)
        points.append((d, e))
        good = [pt for pt in points if pt[1].meets]
        bad = [pt for pt in points if not pt[1].meets]
        lo = max(good, key=lambda pt: pt[0]) if good else None
        hi = min(bad, key=lambda pt: pt[0]) if bad else None
        if lo is not None and hi is not None:
            if lo[1].bits - hi[1].bits <= bits_tol * lo[1].bits or hi[0] <= lo[0] * 1.01:
                break
            la, lb = math.log(lo[0]), math.log(hi[0])
            ts = (_interpolate(lo, hi, max_kl), 0.5, 0.25, 0.75, 0.125, 0.875, 0.0625, 0.9375)
            d = fresh(math.exp(la + t * (lb - la)) for t in ts)
        elif lo is not None:  # everything met the target so far: a coarser allocation may too
            f = max(_ratio(points, lo, max_kl, 1.0), 1.02)
            d = fresh(lo[0] * f ** (2 ** j) for j in range(5)) if lo[0] < d_max else None
        else:  # nothing met it yet: aim a little below the target
            assert hi is not None
            f = min(_ratio(points, hi, max_kl, 0.9), 1 / 1.02)
            d = fresh(hi[0] * f ** (2 ** j) for j in range(5)) if hi[0] > d_min else None
        if d is None:
            break
    return trace


def _ratio(points: list[tuple[float, KLEvaluation]], at: tuple[float, KLEvaluation], max_kl: float,
           aim: float) -> float:
    """Factor on D that should bring the KL to aim·max_kl: KL ∝ D^p, p from the last two points
    (clamped to 0.5..2), else 1."""
    d, e = at
    m = max(e.measured_kl, 1e-300)
    p = 1.0
    others = [(pd, pe) for pd, pe in points if pd != d and pe.measured_kl > 0]
    if others and e.measured_kl > 0:
        od, oe = min(others, key=lambda q: abs(math.log(q[0] / d)))
        p = math.log(e.measured_kl / oe.measured_kl) / math.log(d / od)
        p = min(max(p, 0.5), 2.0) if math.isfinite(p) else 1.0
    return min(max((aim * max_kl / m) ** (1.0 / p), 1e-3), 1e3)


def _interpolate(lo: tuple[float, KLEvaluation], hi: tuple[float, KLEvaluation], max_kl: float) -> float:
    """Where log KL, linear in log D between the bracket's ends, reaches max_kl, as a fraction of the
    bracket in log D, kept within its middle half so that each step narrows it by a quarter or more
    (pure interpolation creeps from one side when log KL is not linear in log D)."""
    (_, e0), (_, e1) = lo, hi
    m0, m1 = max(e0.measured_kl, 1e-300), max(e1.measured_kl, 1e-300)
    if m1 > m0:
        t = (math.log(max_kl) - math.log(m0)) / (math.log(m1) - math.log(m0))
    else:
        t = 0.5
    return min(max(t, 0.25), 0.75)


def _search_uniform(curves: Sequence[rdalloc.Curve], evaluate: Callable[[float, Sequence[int]], KLEvaluation],
                    predicted: Callable[[Sequence[int]], float], max_kl: float, max_evals: int
                    ) -> list[KLEvaluation]:
    """The coarsest single S (on the grid every tensor has: whole S when any tensor is bf16/fp16) whose
    measured KL ≤ max_kl: start where the (rescaled) prediction meets it, then close the bracket."""
    grid = sorted(set.intersection(*(set(c.s.tolist()) for c in curves)))
    pos = [{float(s): i for i, s in enumerate(c.s)} for c in curves]

    def idx(g: int) -> list[int]:
        return [p[grid[g]] for p in pos]

    pred = [predicted(idx(g)) for g in range(len(grid))]
    scale = 1.0
    trace: list[KLEvaluation] = []
    good: set[int] = set()
    bad: set[int] = set()

    def pick() -> int | None:
        lo = max(bad) + 1 if bad else 0  # finer (larger S) than every failing S
        hi = min(good) - 1 if good else len(grid) - 1  # coarser than the coarsest passing S
        if lo > hi:
            return None
        meets = [g for g in range(lo, hi + 1) if scale * pred[g] <= max_kl]
        g = meets[0] if meets else hi
        if good and bad:  # inside a bracket: stay in its middle half, so each miss shrinks it by ≥ 1/4
            q = (hi - lo) // 4
            g = min(max(g, lo + q), hi - q)
        return g

    for _ in range(max_evals + 4):  # the bracket on a grid closes in ~log2(grid) steps
        g = pick()
        if g is None:
            break
        e = evaluate(float(grid[g]), idx(g))
        trace.append(e)
        (good if e.meets else bad).add(g)
        if pred[g] > 0 and e.measured_kl > 0:
            scale = e.measured_kl / pred[g]
    return trace


# ------------------------------------------------------------------------------------- per-row steps


#: Per-row weights are shrunk this far toward their tensor's mean Fisher (see row_weights).
ROW_SHRINK = 0.5


def row_weights(rows: np.ndarray, tensor_mean: float, fbar: float, shrink: float = ROW_SHRINK) -> np.ndarray:
    """Per-row weights ((1 − shrink)·F̄_r + shrink·F̄_t) / F̄, at least WEIGHT_FLOOR.

    Why shrink: F̂_r comes from a few thousand calibration tokens, and rows whose gradient depends on
    which tokens occur — an input embedding's row of a token absent from the Fisher windows has F̂ = 0
    exactly — would be rounded to nothing and cost KL on any other text. On the Wikipedia LM
    (docs/benchmarks.md) raw F̂_r with a floor of 0.1·F̄_t needed 3.26 bits/param for KL 0.01, the
    geometric mean √(F̂_r·F̄_t) 3.52, max(F̂_r, F̄_t) 2.99 and the half-way mix 3.00 — the only one whose
    predicted KL matched the measured one (0.0097 vs 0.0098)."""
    return np.maximum(((1 - shrink) * rows + shrink * tensor_mean) / fbar, WEIGHT_FLOOR)


def _floored_rows(c: rdalloc.RowCurves, min_sqnr_db: float) -> rdalloc.RowCurves:
    """``c`` with each row's steps whose error exceeds its signal / 10^(min_sqnr_db/10) marked unusable
    (bits +inf; the finest step always stays): the per-row form of _floored."""
    bad = c.noise * 10 ** (min_sqnr_db / 10) > c.signal[:, None]
    bad[:, -1] = False
    return replace(c, bits=np.where(bad, np.inf, c.bits))


def search_rows(curves: Sequence[rdalloc.RowCurves], cal: Calibration, max_kl: float, *,
                max_evals: int = MAX_EVALS, bits_tol: float = BITS_TOL, min_sqnr_db: float = MIN_SQNR_DB,
                row_shrink: float = ROW_SHRINK) -> KLAllocation:
    """``search`` with one step per row (rdalloc.allocate_rows): weights F̄_r / F̄ per row (the row's
    mean Fisher, floored at WEIGHT_FLOOR), the weighted-error budget moved until the measured KL ≤ K.
    Steps are dicts name -> int8 S per row; bits include the stored S arrays."""
    _check_search(max_kl, curves)
    t0 = time.process_time()
    kl0 = cal.probe.seconds_cpu
    curves = [_floored_rows(c, min_sqnr_db) for c in curves]
    names = [c.name for c in curves]
    _, fbar = cal.weights(names)
    missing = [n for n in names if n not in cal.fisher_rows]
    if missing:
        raise GGError(f"no per-row Fisher for {missing[0]!r}")
    weights = {n: row_weights(cal.fisher_rows[n], cal.fisher_mean[n], fbar, row_shrink) for n in names}
    per_token = cal.info["window_tokens"] - 1
    side = rdalloc.ROW_SIDE_BITS * sum(c.rows for c in curves)
    w_all = np.concatenate([weights[n] for n in names])
    d_min = float((w_all * np.concatenate([c.noise[:, -1] for c in curves])).sum())
    # the coarsest usable step of every row (bits +inf marks the steps under the SQNR floor)
    d_max = float((w_all * np.concatenate([np.where(np.isfinite(c.bits), c.noise, 0.0).max(axis=1)
                                           for c in curves])).sum())
    allocs: dict[bytes, rdalloc.RowAllocation] = {}

    def allocation(d: float) -> bytes:
        a = rdalloc.allocate_rows(curves, max_distortion=d, weights=weights)
        key = b"".join(a.steps[n].tobytes() for n in names)
        allocs.setdefault(key, a)
        return key

    measured: dict[bytes, KLEvaluation] = {}

    def evaluate(budget: float, key: bytes) -> KLEvaluation:
        if key not in measured:
            a = allocs[key]
            m = cal.probe.kl(a.steps)
            pred = 0.5 * per_token * fbar * a.distortion
            measured[key] = KLEvaluation(budget, dict(a.steps), a.bits, pred, m, m <= max_kl)
        return measured[key]

    trace = _search_d(allocation, d_min, d_max, fbar * per_token, evaluate, max_kl, max_evals, bits_tol)
    best = _cheapest_meeting(trace, lambda: evaluate(math.nan, allocation(d_min)), cal, max_kl,
                             curves[0].s[-1])
    key = b"".join(best.steps[n].tobytes() for n in names)
    a = allocs[key]
    cal.probe.restore()
    return KLAllocation("fisher-rows", float(max_kl), best.steps, best.bits, a.params, a.signal, a.noise,
                        best.predicted_kl, best.measured_kl, trace, dict(cal.info),
                        time.process_time() - t0, cal.probe.seconds_cpu - kl0,
                        {"min_row_sqnr_db": min_sqnr_db, "row_shrink": row_shrink, "granularity": "row",
                         "rows": len(w_all),
                         "row_steps_bits": side})


def _cheapest_meeting(trace: list, finest: Any, cal: Any, max_kl: float, finest_s: float) -> Any:
    """The cheapest evaluation in ``trace`` meeting the KL; else the finest allocation's (``finest()``,
    appended to the trace), or a refusal when even that misses (the model's weights restored first)."""
    ok = [e for e in trace if e.meets]
    if not ok:
        e = finest()
        if all(e is not t for t in trace):
            trace.append(e)
        if not e.meets:
            cal.probe.restore()
            raise GGError(f"KL {max_kl:g} nats is out of reach: the finest steps (2^-{finest_s:g}) "
                          f"give {e.measured_kl:.4g} on the calibration text")
        ok = [e]
    return min(ok, key=lambda e: (e.bits, e.measured_kl))
