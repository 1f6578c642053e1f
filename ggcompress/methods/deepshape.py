"""DeepShape: post-training reshaping of weight histograms toward a peakier, narrower GG, then recovery.

The reference algorithm (method.md §DeepShape), per tensor by default or over all selected weights
together (`scope="global"`, the reference's way):

1. Quantize to the grid q = round(w/step), step 2^-13 by default.
2. Core: values with |q| < m, m the first magnitude whose count (|q| = m, both signs) is ≤ the
   core threshold (the reference: 1000 over the whole model). The rest is the tail, left untouched.
3. Fit a GG(β, α, μ) to the core values (MLE, `gg.fit`).
4. Target GG(β' = shape_scale·β, α' = scale_scale·α, μ), peakier and narrower for factors < 1.
5. Target counts on the core's grid points j·step, |j| < m: the reference's ⌊K·p(x)⌋ with K the
   core size, p the target's probability of each grid bin renormalized over the core range, and
   (ours) the K − Σ⌊K·p⌋ leftover values given to the bins with the largest fractional parts, so the
   counts add up to K exactly.
6. Histogram specification: sort the core values and give the first c_1 of them the lowest grid
   value, the next c_2 the next one, and so on: a monotone map, so the order of weights is kept
   (w_i < w_j ⇒ w'_i ≤ w'_j) and each weight moves as little as a rank-preserving map allows.

Then fine-tune on calibration text with the training engine (`ggcompress.methods.train`) to recover quality,
optionally distilling to the original model's next-token distributions (a KL term) and optionally
keeping a BackSlash rate term (`ggcompress.methods.backslash.RateHook`) so the weights stay compressible.
Measurements (validation perplexity, exp-Golomb and entropy bits/param at `step`, sparsity) come from
`backslash.measure`, before, after reshaping and after the fine-tune.

Choices that are ours (the reference only ran the global rule on fp32 weights):
- Counts per magnitude are averaged over the storage dtype's spacing (bf16 weights leave grid points
  empty beyond 2^-5 at step 2^-13, which would end the core there), and with `scope="tensor"` over
  σ/32-wide windows too (a small tensor's counts are noisy; dequantized 4-bit weights leave most grid
  points near 0 empty). See `magnitude_counts`.
- With `scope="tensor"` and no core threshold given, the threshold is max(1, round(peak/300)), peak
  the largest (averaged) count: about the relative density (1/300 of the peak) of the reference's
  1000 on a ~10^8-parameter model's global histogram.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ggcompress import __version__
from ggcompress.errors import GGError, check_patterns
from ggcompress.io.checkpoint import CheckpointWriter, check_output_path
from ggcompress.io.context import model_context
from ggcompress.methods.backslash import BackSlashConfig, RateHook, measure, select_weights
from ggcompress.methods.distributed import check_launch, fsdp_wrap, is_fsdp, stream_weights, write_hf_support
from ggcompress.methods.train import (
    Hook,
    TextData,
    TrainConfig,
    barrier,
    dist_info,
    fit_block_size,
    load_causal_lm,
    load_data,
    round_trip_,
    source_dtype,
    train,
)
from ggcompress.names import DEEPSHAPE_SCOPES as SCOPES
from ggcompress.names import TRAIN_SAVE_DTYPES as SAVE_DTYPES
from ggcompress.reports.jsonsafe import json_safe
from ggcompress.stats import gg
from ggcompress.stats.rate import format_step

SCHEMA = "ggcompress.deepshape/1"
SWEEP_SCHEMA = "ggcompress.methods.deepshape-sweep/1"
REPORT_NAME = "deepshape_report.json"
SWEEP_NAME = "deepshape_sweep.json"
SWEEP_PLOT = "deepshape_sweep.png"
#: Reference core threshold (global histogram) and our per-tensor relative default (module doc).
GLOBAL_CORE_THRESHOLD = 1000
TENSOR_CORE_FRACTION = 1 / 300


@dataclass
class DeepShapeConfig:
    """How to reshape and what to add to the recovery fine-tune (its steps/lr live in TrainConfig)."""

    shape_scale: float = 0.8
    scale_scale: float = 0.6
    scope: str = "tensor"
    core_threshold: int | None = None
    step: float = 2.0**-13
    eg_k: int = 0
    include: str | None = None
    exclude: str | None = None
    distill: bool = False
    distill_weight: float = 1.0
    rate_lambda: float = 0.0
    save_dtype: str = "auto"
    quantized_ppl: bool = True

    def __post_init__(self) -> None:
        checks = [
            (_pos(self.shape_scale), f"shape scale must be a positive number, got {self.shape_scale}"),
            (_pos(self.scale_scale), f"scale scale must be a positive number, got {self.scale_scale}"),
            (self.scope in SCOPES, f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}"),
            (self.core_threshold is None or self.core_threshold >= 0, "core threshold must be >= 0"),
            (_pos(self.step), f"step must be a positive number, got {self.step}"),
            (0 <= self.eg_k <= 16, "eg-k must be in 0..16"),
            (self.distill_weight >= 0 and math.isfinite(self.distill_weight), "distill weight must be >= 0"),
            (self.rate_lambda >= 0 and math.isfinite(self.rate_lambda), "rate lambda must be >= 0"),
            (self.save_dtype in SAVE_DTYPES, f"save dtype must be one of {', '.join(SAVE_DTYPES)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise GGError(f"deepshape: {msg}")
        check_patterns(self.include, self.exclude)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["step_label"] = format_step(self.step)
        return d


def _pos(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


# ---------------------------------------------------------------------------------------------- the remap


@dataclass
class Reshape:
    """What reshaping did to one tensor (or, with scope="global", to all selected weights)."""

    name: str
    numel: int
    core_numel: int
    core_threshold: int
    core_limit: int  # m: the core is |q| < m (grid units)
    beta: float
    alpha: float
    mu: float
    target_beta: float
    target_alpha: float
    mean_abs_change: float  # mean |w' − w| over the core
    zero_fraction: float  # share of the tensor at exactly 0 after reshaping


def storage_mantissa_bits(v: torch.Tensor) -> int:
    """Explicit mantissa bits of the narrowest float type holding every value exactly (7 bf16, 10 fp16,
    else 23): a bf16 checkpoint loaded in fp32 is still on the bf16 lattice."""
    if bool((v.to(torch.bfloat16).to(v.dtype) == v).all()):
        return 7
    if bool((v.abs() <= 65504).all()) and bool((v.to(torch.float16).to(v.dtype) == v).all()):
        return 10
    return 23


def magnitude_counts(q: torch.Tensor, step: float, mantissa_bits: int = 23, min_width: int = 1
                     ) -> torch.Tensor:
    """Count of |q| = m for every m, averaged over the storage dtype's spacing at m, and over at least
    `min_width` bins (float64).

    Ours: where the stored values are coarser than the grid (bf16 above 2^-5 at step 2^-13: only every
    2nd, 4th, ... grid point can occur), a raw count would hit 0 between representable points and end
    the core there; averaging over the spacing gives the density the reference's rule means. With
    fp32 weights the window is one bin and this is the plain count. `min_width` smooths lumpy
    histograms (weights dequantized from a 4-bit lattice leave most grid points empty near 0).
    """
    counts = torch.bincount(q.abs().reshape(-1).to(torch.int64)).to(torch.float64)
    n = counts.numel()
    j = torch.arange(n, dtype=torch.float64)
    spacing = torch.exp2(torch.floor(torch.log2((j * step).clamp_min(1e-300))) - mantissa_bits)
    width = torch.clamp(torch.round(spacing / step), min=max(1, min_width)).to(torch.int64)
    if int(width.max()) == 1:
        return counts
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), counts.cumsum(0)])
    lo = (torch.arange(n) - width // 2).clamp(min=0)
    hi = (lo + width).clamp(max=n)
    return (cum[hi] - cum[lo]) / (hi - lo)


def core_limit(q: torch.Tensor, threshold: float, step: float = 1.0, mantissa_bits: int = 23) -> int:
    """m: the first magnitude whose count of |q| = m is ≤ threshold (q: integer-valued symbols;
    counts averaged over the storage spacing, see `magnitude_counts`)."""
    counts = magnitude_counts(q, step, mantissa_bits)
    low = torch.nonzero(counts <= threshold)
    return int(low[0]) if low.numel() else counts.numel()


def target_counts(k: int, m: int, step: float, beta: float, alpha: float, mu: float) -> torch.Tensor:
    """Counts of the K core values on the grid points j·step, j = −(m−1)..m−1 (module doc, step 5)."""
    j = torch.arange(-(m - 1), m, dtype=torch.float64)
    edges = torch.cat([j - 0.5, j[-1:] + 0.5]) * step
    cdf = gg.cdf(edges, beta, alpha, mu)
    p = (cdf[1:] - cdf[:-1]).clamp_min(0)
    if not float(p.sum()) > 0:
        raise GGError(f"deepshape: the target GG (β={beta:.3g}, α={alpha:.3g}) puts no mass on the core grid")
    raw = k * p / p.sum()
    counts = raw.floor().to(torch.int64)
    left = k - int(counts.sum())
    if left > 0:
        order = torch.sort(-(raw - counts), stable=True).indices
        counts[order[:left]] += 1
    return counts


def reshape_values(
    values: torch.Tensor,
    cfg: DeepShapeConfig,
    name: str = "tensor",
) -> tuple[torch.Tensor, Reshape]:
    """Reshape a flat tensor's core (module doc); returns (new values, same dtype as float64, record)."""
    v = values.detach().reshape(-1).to(torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise GGError(f"deepshape: {name} holds NaN/Inf values")
    q = torch.round(v / cfg.step)
    bits = storage_mantissa_bits(v)
    # Per tensor (ours): counts averaged over σ/32-wide windows, so sampling noise and lattice gaps of
    # small or dequantized tensors do not end the core early; global: the reference's raw counts.
    smooth = max(1, round(float(v.std()) / (32 * cfg.step))) if cfg.scope == "tensor" else 1
    counts = magnitude_counts(q, cfg.step, bits, smooth)
    thr = cfg.core_threshold
    if thr is None:
        thr = (GLOBAL_CORE_THRESHOLD if cfg.scope == "global"
               else max(1, round(float(counts.max()) * TENSOR_CORE_FRACTION)))
    low = torch.nonzero(counts <= thr)
    m = int(low[0]) if low.numel() else counts.numel()
    core = q.abs() < m
    k = int(core.sum())
    if m < 2 or k < 64:
        raise GGError(f"deepshape: {name}: the core is too small ({k} values within {m} grid steps of 0 at "
                      f"step {format_step(cfg.step)}): lower --core-threshold or use a coarser step")
    cv = v[core]
    fit = gg.fit(cv, "mle")
    if not fit.ok:
        raise GGError(f"deepshape: {name}: cannot fit a GG to the core values")
    tb, ta = cfg.shape_scale * fit.beta, cfg.scale_scale * fit.alpha
    if tb < gg.BETA_LO:
        raise GGError(f"deepshape: {name}: target shape {tb:.3g} (= {cfg.shape_scale} × β {fit.beta:.3g}) is "
                      f"below {gg.BETA_LO}: raise --shape-scale")
    c = target_counts(k, m, cfg.step, tb, ta, fit.mu)
    grid = torch.arange(-(m - 1), m, dtype=torch.float64) * cfg.step
    order = torch.sort(cv, stable=True).indices
    new_core = torch.empty_like(cv)
    new_core[order] = torch.repeat_interleave(grid, c)
    out = v.clone()
    out[core] = new_core
    rec = Reshape(name=name, numel=v.numel(), core_numel=k, core_threshold=int(thr), core_limit=m,
                  beta=fit.beta, alpha=fit.alpha, mu=fit.mu, target_beta=tb, target_alpha=ta,
                  mean_abs_change=float((new_core - cv).abs().mean()),
                  zero_fraction=float((out == 0).sum()) / v.numel())
    return out, rec


def reshape_(params: list[tuple[str, torch.Tensor]], cfg: DeepShapeConfig) -> list[Reshape]:
    """Reshape the given weights in place, per tensor or all together (cfg.scope)."""
    with torch.no_grad():
        if cfg.scope == "tensor":
            recs = []
            for name, p in params:
                new, rec = reshape_values(p, cfg, name)
                p.copy_(new.reshape(p.shape).to(p.dtype))
                recs.append(rec)
            return recs
        flat = torch.cat([p.detach().reshape(-1).to(torch.float64) for _, p in params])
        new, rec = reshape_values(flat, cfg, "all selected weights")
        start = 0
        for _, p in params:
            p.copy_(new[start:start + p.numel()].reshape(p.shape).to(p.dtype))
            start += p.numel()
        return [rec]


# ---------------------------------------------------------------------------------------------- distillation


class DistillHook(Hook):
    """KL(teacher ‖ student) of next-token distributions on the training batch, as a loss term.

    A forward hook on the student catches the batch and its logits during the training forward; the
    term uses the last micro-batch of each step (all of it with grad_accum = 1, the default).
    """

    def __init__(self, student: Any, teacher: Any, weight: float, device: str = "cpu"):
        self.teacher, self.weight, self.device = teacher, weight, device
        self._ids: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self.last_kl: float | None = None
        self._handle = student.register_forward_hook(self._catch, with_kwargs=True)

    def _catch(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self._ids = kwargs.get("input_ids", args[0] if args else None)
            self._logits = output.logits

    def on_wrap(self, model: Any) -> None:
        """The student is FSDP-sharded: shard the frozen teacher the same way (never a full copy)."""
        if not is_fsdp(self.teacher):
            fsdp_wrap(self.teacher, self.device)

    def loss_term(self, model: Any, step: int) -> torch.Tensor | None:
        if self._ids is None or self._logits is None or self.weight == 0:
            return None
        with torch.no_grad():
            t = self.teacher(input_ids=self._ids).logits.float().log_softmax(-1)  # (B, T, V)
        s = self._logits.float().log_softmax(-1)
        kl = (t.exp() * (t - s)).sum(-1).mean()
        self._ids = self._logits = None
        self.last_kl = float(kl.detach())
        return self.weight * kl

    def metrics(self, model: Any, step: int) -> dict[str, float]:
        return {} if self.last_kl is None else {"kl": self.last_kl}

    def close(self) -> None:
        self._handle.remove()


# ---------------------------------------------------------------------------------------------- runs

#: progress(event): the training engine's events plus {"event": "phase", "phase": ...}.
Progress = Callable[[dict[str, Any]], None]


def _measure(model: Any, data: TextData, params: list, cfg: DeepShapeConfig, tcfg: TrainConfig) -> dict:
    bcfg = BackSlashConfig(step=cfg.step, eg_k=cfg.eg_k, quantized_ppl=cfg.quantized_ppl)
    return measure(model, data, params, bcfg, tcfg)


def _finetune(model: Any, teacher: Any, data: TextData, params: list, cfg: DeepShapeConfig, tcfg: TrainConfig,
              progress: Progress) -> Any:
    hooks: list[Hook] = []
    distill = (DistillHook(model, teacher, cfg.distill_weight, dist_info(tcfg.device).device)
               if teacher is not None else None)
    if distill is not None:
        hooks.append(distill)
    if cfg.rate_lambda > 0:
        rate = BackSlashConfig(lam=cfg.rate_lambda, rate_steps=tcfg.steps, recover_steps=0, step=cfg.step,
                               eg_k=cfg.eg_k)
        hooks.append(RateHook(params, rate))
    try:
        return train(model, data, tcfg, hooks=hooks, progress=progress)
    finally:
        if distill is not None:
            distill.close()


def _relative(new: dict, ref: dict) -> dict[str, float | None]:
    def red(key: str) -> float | None:
        return 1.0 - new[key] / ref[key] if ref.get(key) else None

    return {"eg_bits_reduction": red("eg_bits_per_param"),
            "entropy_bits_reduction": red("entropy_bits_per_param"),
            "val_ppl_increase": new["val_ppl"] / ref["val_ppl"] - 1.0}


def _summary(m: dict) -> dict:
    keys = ("val_loss", "val_ppl", "val_ppl_quantized", "params", "sparsity", "zero_fraction_quantized",
            "eg_bits_per_param", "entropy_bits_per_param", "best_k", "eg_bits_per_param_best_k", "nu_global")
    return {k: m.get(k) for k in keys}


def _check_run(out: str | os.PathLike[str], model_spec: str, data_spec: str, validation: str | None,
               tcfg: TrainConfig, force: bool) -> tuple[Path, list[str]]:
    """Check the output and the launch before any work; returns (absolute output, input paths)."""
    outp = Path(out).expanduser().absolute()
    inputs = [model_spec, data_spec] + ([validation] if validation else [])
    check_output_path(outp, inputs, force=force, kind="folder")
    if tcfg.steps > 0:
        check_launch(tcfg.shard, tcfg.grad_bits, dist_info().world)
    return outp, inputs


def _setup(model_spec: str, data_spec: str, cfg: DeepShapeConfig, tcfg: TrainConfig, validation: str | None,
           device: str, notify: Progress, data: TextData | None = None
           ) -> tuple[Any, Any, str, TextData, list, Any, TrainConfig, dict]:
    """Load the model and data (blocks clamped to the model's context), select weights, copy the teacher."""
    model, tokenizer, source = load_causal_lm(model_spec, device)
    tcfg, note = fit_block_size(model, tcfg)
    context = {**model_context(model).to_dict(), "notes": [note] if note else []}
    if note:
        notify({"event": "note", "message": note})
    if data is None:
        data = load_data(data_spec, tokenizer, tcfg.block_size, validation=validation)
    params = select_weights(model, cfg.include, cfg.exclude)
    teacher = None
    if cfg.distill and tcfg.steps > 0:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    return model, tokenizer, source, data, params, teacher, tcfg, context


def _dtype(cfg: DeepShapeConfig, model: Any) -> torch.dtype:
    return source_dtype(model) if cfg.save_dtype == "auto" else getattr(torch, cfg.save_dtype)


def run_deepshape(
    model_spec: str,
    data_spec: str,
    out: str | Path,
    cfg: DeepShapeConfig,
    tcfg: TrainConfig,
    *,
    validation: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Reshape, fine-tune (tcfg.steps steps; 0 skips it), measure, write an HF folder + report to `out`.

    Weights are rounded through the save dtype before each measurement, so the numbers describe the
    saved model. Returns the report (schema ggcompress.deepshape/1), also written to out/REPORT_NAME.
    """
    notify = progress or (lambda event: None)
    outp, inputs = _check_run(out, model_spec, data_spec, validation, tcfg, force)
    t0 = time.perf_counter()
    notify({"event": "phase", "phase": "load", "model": model_spec})
    model, tokenizer, source, data, params, teacher, tcfg, context = _setup(
        model_spec, data_spec, cfg, tcfg, validation, _device(tcfg.device), notify)
    dtype = _dtype(cfg, model)
    notify({"event": "phase", "phase": "measure", "what": "original"})
    original = _measure(model, data, params, cfg, tcfg)
    notify({"event": "phase", "phase": "reshape"})
    recs = reshape_(params, cfg)
    round_trip_(model, dtype)
    notify({"event": "phase", "phase": "measure", "what": "reshaped"})
    reshaped = _measure(model, data, params, cfg, tcfg)
    result, finetuned = None, None
    if tcfg.steps > 0:
        notify({"event": "phase", "phase": "finetune", "total": tcfg.steps})
        result = _finetune(model, teacher, data, params, cfg, tcfg,
                           lambda e: notify({**e, "phase": "finetune"}))
        params = select_weights(model, cfg.include, cfg.exclude)  # FSDP: the sharded parameters now
        round_trip_(model, dtype)
        notify({"event": "phase", "phase": "measure", "what": "finetuned"})
        finetuned = _measure(model, data, params, cfg, tcfg)
    final = finetuned or reshaped
    report = json_safe({
        "schema": SCHEMA,
        "version": __version__,
        "model": model_spec,
        "source": source,
        "output": str(outp),
        "data": data.summary(),
        "context": context,
        "settings": {**cfg.to_dict(), "train": tcfg.to_dict(), "world_size": dist_info().world,
                     "save_dtype": str(dtype).removeprefix("torch.")},
        "original": _summary(original),
        "reshaped": _summary(reshaped),
        "finetuned": _summary(finetuned) if finetuned else None,
        "vs_original": _relative(final, original),
        "reshape": [asdict(r) for r in recs],
        "tensors": final["tensors"],
        "training": result.to_dict() if result is not None else None,
        "seconds": time.perf_counter() - t0,
    })
    notify({"event": "phase", "phase": "write", "output": str(outp)})
    # Rank 0 streams one gathered tensor at a time into the writer; other ranks join the gathers.
    main = dist_info().is_main
    with CheckpointWriter(outp, force=force, inputs=inputs) if main else contextlib.nullcontext() as writer:
        if writer is not None:
            writer.metadata = {"format": "pt"}
        stream_weights(model, writer, dtype)
        if writer is not None:
            write_hf_support(model, tokenizer, writer.tmp, dtype)
            writer.write_json(REPORT_NAME, report)
    barrier()
    del model, teacher, params
    gc.collect()
    return report


def parse_sweep(text: str) -> list[tuple[float, float]]:
    """`SHAPE:SCALE,SHAPE:SCALE,...` (e.g. "1:0.8,0.8:0.6") → [(shape_scale, scale_scale), ...]."""
    pairs = []
    for item in text.split(","):
        a, sep, b = item.strip().partition(":")
        try:
            pair = (float(a), float(b))
        except ValueError:
            pair = None
        if not sep or pair is None or not all(_pos(x) for x in pair):
            raise GGError(f"deepshape: bad sweep entry {item.strip()!r} (expected SHAPE:SCALE with positive "
                          "numbers, e.g. 0.8:0.6)")
        pairs.append(pair)
    if not pairs:
        raise GGError("deepshape: empty sweep")
    return pairs


def run_sweep(
    model_spec: str,
    data_spec: str,
    out: str | Path,
    cfg: DeepShapeConfig,
    tcfg: TrainConfig,
    factors: list[tuple[float, float]],
    *,
    validation: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Reshape + fine-tune from the original weights once per (shape_scale, scale_scale); writes the
    trade-off curve (out/SWEEP_NAME) and its plot (out/SWEEP_PLOT). No model is saved."""
    notify = progress or (lambda event: None)
    outp, inputs = _check_run(out, model_spec, data_spec, validation, tcfg, force)
    t0 = time.perf_counter()
    model, _, source, data, params, teacher, tcfg, context = _setup(
        model_spec, data_spec, cfg, tcfg, validation, _device(tcfg.device), notify)
    dtype = _dtype(cfg, model)
    fsdp = tcfg.shard == "fsdp"
    saved = None if fsdp else {n: p.detach().clone() for n, p in model.state_dict().items()}
    original = _measure(model, data, params, cfg, tcfg)
    points = []
    for i, (sb, sa) in enumerate(factors):
        notify({"event": "phase", "phase": "sweep", "index": i, "total": len(factors), "shape_scale": sb,
                "scale_scale": sa})
        if i and fsdp:  # the last point left it sharded: the remap needs whole tensors, so reload
            model, _, _, _, params, teacher, tcfg, _ = _setup(model_spec, data_spec, cfg, tcfg, validation,
                                                               _device(tcfg.device), notify, data=data)
        elif saved is not None:
            model.load_state_dict(saved)
        pcfg = DeepShapeConfig(**{**asdict(cfg), "shape_scale": sb, "scale_scale": sa})
        reshape_(params, pcfg)
        round_trip_(model, dtype)
        reshaped = _measure(model, data, params, pcfg, tcfg)
        finetuned = None
        if tcfg.steps > 0:
            _finetune(model, teacher, data, params, pcfg, tcfg, lambda e: notify({**e, "phase": "finetune"}))
            params = select_weights(model, cfg.include, cfg.exclude)
            round_trip_(model, dtype)
            finetuned = _measure(model, data, params, pcfg, tcfg)
        points.append({"shape_scale": sb, "scale_scale": sa, "reshaped": _summary(reshaped),
                       "finetuned": _summary(finetuned) if finetuned else None,
                       "vs_original": _relative(finetuned or reshaped, original)})
    doc = json_safe({"schema": SWEEP_SCHEMA, "version": __version__, "model": model_spec, "source": source,
                  "context": context, "settings": {**cfg.to_dict(), "train": tcfg.to_dict(),
                               "save_dtype": str(dtype).removeprefix("torch.")},
                  "original": _summary(original), "points": points, "seconds": time.perf_counter() - t0})
    if dist_info().is_main:
        with CheckpointWriter(outp, force=force, inputs=inputs) as writer:
            writer.write_json(SWEEP_NAME, doc)
            plot_sweep(doc, writer.tmp / SWEEP_PLOT)
    barrier()
    return doc


def plot_sweep(doc: dict[str, Any], path: Path) -> Path:
    """Validation perplexity against exp-Golomb bits/param: original, reshaped and fine-tuned points."""
    from ggcompress.reports.plot import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    o = doc["original"]
    ax.scatter([o["eg_bits_per_param"]], [o["val_ppl"]], marker="*", s=160, color="black", label="original")
    for key, marker, label in (("reshaped", "o", "after reshaping"), ("finetuned", "s", "after fine-tune")):
        pts = [(p[key]["eg_bits_per_param"], p[key]["val_ppl"], p) for p in doc["points"] if p.get(key)]
        if not pts:
            continue
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker=marker, linestyle=":", label=label)
        for x, y, p in pts:
            ax.annotate(f"{p['shape_scale']:g}β,{p['scale_scale']:g}α", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(f"exp-Golomb bits/param at step {doc['settings']['step_label']}")
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"DeepShape trade-off: {Path(str(doc['model'])).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _device(pref: str) -> str:
    from ggcompress.methods.train import dist_info

    return dist_info(pref).device

