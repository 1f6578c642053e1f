"""BackSlash: rate-constrained training with a generalized-Gaussian prior (arXiv 2504.16968).

The objective is J = D + λ·R with the GG negative log-prior of the selected weights

    R = (1/N) · Σ (|θ| + ε)^ν        (N: number of selected weights; ν = 1 is L1, ν = 2 is L2)

and ν re-estimated from the weights every `shape_every` steps: the authors' moment ratio about 0,
ρ̂ = N·Σθ²/(Σ|θ|)², inverted by `gg.beta_from_ratio`, per tensor or one global ν over all selected
weights, clamped to the authors' table range [0.1, 2.99].
Two ways to apply it (`mode`):

- ``loss``: λ·R is added to the training loss with ν held constant (detached), so the rate gradient
  λ·ν/N·sign(θ)(|θ|+ε)^(ν−1) goes through AdamW with the task gradient.
- ``decoupled`` (the reference's way): after every optimizer step, not scaled by the learning rate,
  θ ← θ − λ·ν/N·sign(θ)·(|θ|+c)^(ν−1) with c = ε. Ours: the step never moves a weight across zero
  (it stops at exactly 0), a proximal-style clamp; without it a weight near 0 with ν < 1 and small c
  would be thrown to ±(huge) values, since (|θ|+c)^(ν−1) → c^(ν−1).

Recipe: `rate_steps` steps with the rate term, then `recover_steps` plain steps, on one learning-rate
schedule. λ is the reference's raw λ (its shrink is per weight ∝ λ/N, so a model 10× larger needs a 10×
larger λ for the same per-weight push); both modes use the same λ.

The rate is measured as the papers do (`ggcompress.stats.rate`): quantize with a step 2^-s, rank symbols by
frequency over all selected weights together, exp-Golomb order k code lengths; plus the empirical
entropy, the share of zeros, ν per tensor, and validation perplexity of the model as saved and with
its selected weights quantized to the step (what the bits describe). `run_backslash` trains, measures
before/after (and a plain fine-tune with identical data and steps when `baseline`), writes an HF folder
and the report (schema ``ggcompress.backslash/1``, docs/backslash.md).
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ggcompress import __version__
from ggcompress.errors import GGError, as_os_error, check_patterns
from ggcompress.io.checkpoint import log, output_error
from ggcompress.io.context import model_context
from ggcompress.io.layers import linear_modules
from ggcompress.methods.distributed import (
    check_launch,
    export_hf,
    gather_histograms,
    is_sharded,
    load_sharded,
    local,
    sum_over_ranks,
)
from ggcompress.methods.rundir import RunFolder
from ggcompress.methods.train import (
    Hook,
    TextData,
    TrainConfig,
    barrier,
    dist_info,
    fit_block_size,
    load_causal_lm,
    load_data,
    perplexity,
    round_trip_,
    source_dtype,
    train,
)
from ggcompress.names import BACKSLASH_MODES as MODES
from ggcompress.names import BACKSLASH_SHAPES as SHAPES
from ggcompress.names import TRAIN_SAVE_DTYPES as SAVE_DTYPES
from ggcompress.reports.jsonsafe import json_safe
from ggcompress.stats import gg
from ggcompress.stats.rate import SymbolHistogram, format_step

SCHEMA = "ggcompress.backslash/1"
#: ν range: the authors' lookup table covers β ∈ [0.1, 2.99].
NU_LO, NU_HI = 0.1, 2.99
REPORT_NAME = "backslash_report.json"
#: Folder (inside the output) holding the training checkpoints until the run succeeds.
TRAIN_DIR = "training"


@dataclass
class BackSlashConfig:
    """The rate term and the measurement; training settings live in `TrainConfig` (steps excluded:
    rate_steps + recover_steps)."""

    lam: float = 1e5
    mode: str = "decoupled"
    rate_steps: int = 100
    recover_steps: int = 20
    shape_every: int = 10
    shape: str = "tensor"
    nu: float | None = None  # fixed ν (1.0: the L1 baseline); None: re-estimated from the weights
    eps: float = 1e-5
    step: float = 2.0**-8  # quantization step of the rate measure
    eg_k: int = 0
    include: str | None = None
    exclude: str | None = None
    baseline: bool = False
    save_dtype: str = "auto"
    quantized_ppl: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}"),
            (self.shape in SHAPES, f"shape must be one of {', '.join(SHAPES)}"),
            (self.lam >= 0 and math.isfinite(self.lam), "lambda must be a finite number >= 0"),
            (self.rate_steps >= 0 and self.recover_steps >= 0, "rate/recover steps must be >= 0"),
            (self.shape_every >= 1, "shape-every must be >= 1"),
            (self.nu is None or NU_LO <= self.nu <= NU_HI, f"a fixed nu must be in [{NU_LO}, {NU_HI}]"),
            (self.eps > 0, "eps must be > 0"),
            (self.step > 0 and math.isfinite(self.step), "step must be a positive number"),
            (0 <= self.eg_k <= 16, "eg-k must be in 0..16"),
            (self.save_dtype in SAVE_DTYPES, f"save dtype must be one of {', '.join(SAVE_DTYPES)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise GGError(f"backslash: {msg}")
        check_patterns(self.include, self.exclude)

    @property
    def steps(self) -> int:
        return self.rate_steps + self.recover_steps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lambda"] = d.pop("lam")
        d["step_label"] = format_step(self.step)
        return d


# ---------------------------------------------------------------------------------------------- selection


def select_weights(model: Any, include: str | None = None, exclude: str | None = None
                   ) -> list[tuple[str, torch.nn.Parameter]]:
    """The 2-D weights of the model's linear layers (a tied head counts once), filtered by regex.

    Linear layers are nn.Linear and transformers' Conv1D (GPT-2's c_attn/c_proj/c_fc, weight [in, out]):
    the rate term and the reshaping are elementwise, so the orientation does not matter here.
    """
    seen: set[int] = set()
    out = []
    for mod_name, mod in linear_modules(model):
        if not mod.weight.requires_grad:
            continue
        name = f"{mod_name}.weight" if mod_name else "weight"
        if id(mod.weight) in seen:
            continue
        if include is not None and not re.search(include, name):
            continue
        if exclude is not None and re.search(exclude, name):
            continue
        seen.add(id(mod.weight))
        out.append((name, mod.weight))
    if not out:
        raise GGError("no weights selected (no linear layer's weight matches --include/--exclude)")
    return out


def shape_sums(p: torch.Tensor) -> tuple[int, float, float]:
    """(n, Σθ², Σ|θ|) of one tensor: the sufficient statistics of the shape estimate.

    torch's `sum` reduces pairwise (~1e-7 relative in fp32 over 1e8 values); vector_norm and dot
    accumulate serially on CPU and were measured 1e-2 / 4e-4 off on 2.8e7 values, so they are avoided.
    A sharded (FSDP) tensor gives its local shard's sums; `global_shape_sums` adds the ranks up.
    """
    w = local(p.detach())
    return w.numel(), float(w.square().sum()), float(w.abs().sum())


def global_shape_sums(params: list[torch.Tensor]) -> list[tuple[int, float, float]]:
    """`shape_sums` of every tensor over all ranks: local sums, then one all-reduce of 3 numbers per
    tensor when the weights are FSDP shards (never the weights themselves)."""
    sums = [shape_sums(p) for p in params]
    if not (params and is_sharded(params[0])):
        return sums
    t = sum_over_ranks(torch.tensor(sums, dtype=torch.float64), True)
    return [(int(round(n)), float(s2), float(s1)) for n, s2, s1 in t.tolist()]


def nu_from_sums(n: int, s2: float, s1: float) -> float:
    """ν from the moment ratio about 0, ρ̂ = n·Σθ²/(Σ|θ|)², clamped to [NU_LO, NU_HI].

    About 0, not the mean: 0 is the prior's center, and this is the authors' ρ̂. A tensor that cannot
    be fitted (all zeros) gets NU_LO, the peakiest prior, which is what its histogram is.
    """
    if not (s1 > 0 and s2 > 0):
        return NU_LO
    beta, _ = gg.beta_from_ratio(n * s2 / (s1 * s1), NU_LO, NU_HI)
    return float(beta)


def estimate_shapes(params: list[tuple[str, torch.Tensor]], shape: str = "tensor") -> list[float]:
    """ν per tensor (or one global ν over all selected weights, repeated), see `nu_from_sums`."""
    sums = global_shape_sums([p for _, p in params])
    if shape == "global":
        n, s2, s1 = (sum(col) for col in zip(*sums, strict=True))
        return [nu_from_sums(n, s2, s1)] * len(params)
    return [nu_from_sums(*s) for s in sums]


class _GGRate(torch.autograd.Function):
    """Σ(|θ|+ε)^ν with ν constant; the backward reuses the forward's powers (one pow, not two)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, nu: float, eps: float) -> torch.Tensor:
        y = w.detach().abs().add(eps).pow_(nu)
        ctx.save_for_backward(w, y)
        ctx.nu, ctx.eps = nu, eps
        return y.sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        w, y = ctx.saved_tensors
        # d/dθ (|θ|+ε)^ν = ν·(|θ|+ε)^ν / (|θ|+ε) · sign(θ)   (sign(0) = 0: no push at exactly 0)
        return y.div(w.abs().add_(ctx.eps)).mul_(w.sign()).mul_(grad * ctx.nu), None, None


# ---------------------------------------------------------------------------------------------- the hook


class RateHook(Hook):
    """The BackSlash rate term as a training hook; with lam = 0 it only measures (baseline runs)."""

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], cfg: BackSlashConfig):
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        self.cfg = cfg
        self.n = sum(p.numel() for p in self.params)
        fixed = cfg.nu is not None
        self.nu: list[float] = [cfg.nu] * len(params) if fixed else estimate_shapes(params, cfg.shape)
        self.last_rate: float | None = None

    def active(self, step: int) -> bool:
        return self.cfg.lam > 0 and step < self.cfg.rate_steps

    def on_wrap(self, model: Any) -> None:
        """FSDP swapped each weight for a DTensor shard: take the new ones, by name."""
        self.params = [model.get_submodule(n.rpartition(".")[0]).weight for n in self.names]

    def before_step(self, model: Any, step: int) -> None:
        if self.active(step) and self.cfg.nu is None and step % self.cfg.shape_every == 0:
            self.nu = estimate_shapes(list(zip(self.names, self.params, strict=True)), self.cfg.shape)

    def rate(self) -> torch.Tensor:
        """R = (1/N)·Σ(|θ|+ε)^ν with ν constant (differentiable in θ).

        On FSDP shards this is the local part of the sum: its gradient is exactly the global term's
        gradient on this rank's shard (the sum is separable), and it reaches the sharded parameter's
        .grad directly, not through FSDP's averaging reduce-scatter. `global_rate` adds the ranks up.
        """
        eps = self.cfg.eps
        total = sum(_GGRate.apply(local(p), nu, eps) for p, nu in zip(self.params, self.nu, strict=True))
        return total / self.n

    def global_rate(self) -> float:
        """R over all ranks' shards (one all-reduced number)."""
        with torch.no_grad():
            r = self.rate().detach().double().reshape(1)
        return float(sum_over_ranks(r, is_sharded(self.params[0]))[0])

    def loss_term(self, model: Any, step: int) -> torch.Tensor | None:
        if self.cfg.mode != "loss" or not self.active(step):
            return None
        r = self.rate()
        self.last_rate = float(r.detach())  # this rank's part under FSDP; metrics() reports the total
        return self.cfg.lam * r

    def after_step(self, model: Any, step: int) -> None:
        if self.cfg.mode != "decoupled" or not self.active(step):
            return
        shrink_(self.params, self.nu, self.cfg.lam, self.n, self.cfg.eps)

    def metrics(self, model: Any, step: int) -> dict[str, float]:
        hist = SymbolHistogram(self.cfg.step)
        sharded = is_sharded(self.params[0])
        with torch.no_grad():
            nonzero = torch.zeros(1, dtype=torch.float64)
            for name, p in zip(self.names, self.params, strict=True):
                hist.update(local(p.detach()), name)
                nonzero += int(torch.count_nonzero(local(p.detach())))
            gather_histograms([hist], sharded)
            zeros = self.n - int(sum_over_ranks(nonzero, sharded)[0])
            st = hist.stats(k=self.cfg.eg_k, huffman=False)
            out = {"eg_bits": st.eg_bits_per_param, "entropy_bits": st.entropy_bits_per_param,
                   "zero_frac_q": st.zero_fraction_quantized, "sparsity": zeros / self.n}
            if self.cfg.lam > 0:
                out["R"] = self.global_rate()
                out["nu"] = sum(nu * p.numel() for nu, p in zip(self.nu, self.params, strict=True)) / self.n
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"nu": list(self.nu)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["nu"]) != len(self.params):
            raise GGError("backslash: the checkpoint's ν list does not match the selected weights")
        self.nu = [float(v) for v in state["nu"]]


def shrink_(params: list[torch.Tensor], nus: list[float], lam: float, n: int, c: float) -> None:
    """The decoupled step θ ← θ − λ·ν/N·sign(θ)(|θ|+c)^(ν−1), stopping at 0 (never crossing it)."""
    with torch.no_grad():
        for p, nu in zip(params, nus, strict=True):
            w = local(p)  # elementwise: an FSDP shard is shrunk where it lives
            a = w.abs()
            step = a.add(c).pow_(nu - 1.0).mul_(lam * nu / n)
            w.copy_(a.sub_(step).clamp_min_(0.0).copysign_(w))  # a zeroed weight may become -0.0: still 0


# ---------------------------------------------------------------------------------------------- measuring


def measure(
    model: Any,
    data: TextData,
    params: list[tuple[str, torch.nn.Parameter]],
    cfg: BackSlashConfig,
    tcfg: TrainConfig,
) -> dict[str, Any]:
    """Validation perplexity, ν per tensor, sparsity and coded bits/param of the selected weights.

    Bits: one frequency ranking over all selected weights (the papers' "all parameters
    concatenated") at cfg.step; per-tensor rows use each tensor's own ranking, as `analyze` does.
    """
    ev = perplexity(model, data.validation, batch_size=tcfg.batch_size, max_blocks=tcfg.eval_blocks,
                    bf16=tcfg.bf16)
    total = SymbolHistogram(cfg.step)
    rows = []
    zeros = n = 0
    s1 = s2 = 0.0
    sharded = bool(params) and is_sharded(params[0][1])
    with torch.no_grad():
        # FSDP: each rank histograms and sums its shards; the sparse histograms, the sums and the
        # non-zero counts are exchanged (kilobytes), the weights never are.
        sums = global_shape_sums([p for _, p in params])
        hists = gather_histograms([SymbolHistogram(cfg.step).update(local(p.detach()), name)
                                   for name, p in params], sharded)
        nonzero = sum_over_ranks(torch.tensor([float(torch.count_nonzero(local(p.detach())))
                                               for _, p in params], dtype=torch.float64), sharded)
        for (name, p), (k, t2, t1), h, nz in zip(params, sums, hists, nonzero.tolist(), strict=True):
            w = p.detach()
            s1, s2 = s1 + t1, s2 + t2
            st = h.stats(k=cfg.eg_k, huffman=False)
            total.merge(h)
            z = int(k - nz)
            zeros += z
            n += k
            rows.append({"name": name, "shape": list(w.shape), "numel": k, "nu": nu_from_sums(k, t2, t1),
                         "rms": math.sqrt(t2 / k), "sparsity": z / k,
                         "zero_fraction_quantized": st.zero_fraction_quantized,
                         "eg_bits": st.eg_bits_per_param, "entropy_bits": st.entropy_bits_per_param})
    g = total.stats(k=cfg.eg_k, huffman=False)
    best_k = total.best_k()
    out = {
        "val_loss": ev["loss"], "val_ppl": ev["ppl"], "val_tokens": ev["tokens"],
        "val_ppl_quantized": None,
        "params": n, "nu_global": nu_from_sums(n, s2, s1),
        "nu_mean": sum(r["nu"] * r["numel"] for r in rows) / n,
        "sparsity": zeros / n, "zero_fraction_quantized": g.zero_fraction_quantized,
        "eg_bits_per_param": g.eg_bits_per_param, "entropy_bits_per_param": g.entropy_bits_per_param,
        "best_k": best_k, "eg_bits_per_param_best_k": total.eg_bits(best_k) / n,
        "distinct_symbols": g.distinct, "coded_bytes": (g.eg_bits + g.table_bits) / 8,
        "source_bits_per_param": g.source_bits_per_param,
        "tensors": rows,
    }
    if cfg.quantized_ppl:
        with _quantized(params, cfg.step):
            q = perplexity(model, data.validation, batch_size=tcfg.batch_size, max_blocks=tcfg.eval_blocks,
                           bf16=tcfg.bf16)
        out["val_ppl_quantized"] = q["ppl"]
    return out


class _quantized:
    """Context: the selected weights rounded to the step grid (round half to even, as `rate`)."""

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], step: float):
        self.params, self.step = params, step
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> None:
        with torch.no_grad():
            for _, p in self.params:
                w = local(p.detach())  # elementwise: shards are rounded where they live
                self.saved.append(w.clone())
                q = torch.round(w.to(torch.float64) / self.step) * self.step
                w.copy_(q.to(w.dtype))

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for (_, p), s in zip(self.params, self.saved, strict=True):
                local(p.detach()).copy_(s)
        self.saved = []


# ---------------------------------------------------------------------------------------------- the run


#: progress(event) as in ggcompress.methods.train, plus {"phase": "backslash"|"baseline"|"measure", ...}
Progress = Callable[[dict[str, Any]], None]


def run_backslash(
    model_spec: str,
    data_spec: str,
    out: str | os.PathLike[str],
    cfg: BackSlashConfig,
    tcfg: TrainConfig,
    *,
    validation: str | None = None,
    resume: bool = False,
    force: bool = False,
    keep_checkpoints: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train with the rate term, measure, write an HF folder + report to `out`; returns the report.

    tcfg.steps is replaced by rate_steps + recover_steps. Under torch.distributed every rank trains
    and only rank 0 writes. `resume` continues from the checkpoints in out/training (or starts fresh
    when there are none); a finished output is returned as it is.
    """
    notify = progress or (lambda event: None)
    info = dist_info(tcfg.device)
    tcfg = TrainConfig(**{**tcfg.to_dict(), "steps": cfg.steps})
    check_launch(tcfg.shard, tcfg.grad_bits, info.world)
    folder = RunFolder(Path(out).expanduser().absolute(), "backslash", TRAIN_DIR, REPORT_NAME, SCHEMA)
    if resume and (finished := folder.finished_report()) is not None:
        return finished
    inputs = [model_spec, data_spec] + ([validation] if validation else [])
    folder.plan(inputs, resume=resume, force=force)  # checks only: nothing is written before the inputs load
    t0 = time.perf_counter()

    notify({"event": "phase", "phase": "load", "model": model_spec})
    model, tokenizer, source = _load(model_spec, info.device, tcfg)
    tcfg, note = fit_block_size(model, tcfg)
    notes = [note] if note else []
    for n in notes:
        notify({"event": "note", "message": n})
    context = model_context(model).to_dict()
    data = load_data(data_spec, tokenizer, tcfg.block_size, validation=validation)
    dtype = _save_dtype(cfg.save_dtype, model)
    params = select_weights(model, cfg.include, cfg.exclude)
    run_key = {"backslash": cfg.to_dict(), "model": source, "data": str(data_spec)}
    barrier()
    if info.is_main:
        folder.start(run_key)  # removes what it made itself if interrupted inside
    try:  # from here on an interruption (SIGTERM, Ctrl-C) goes through folder.abort() below
        # Every rank writes its DCP shards into the work folder rank 0 made (hidden beside OUT with --force).
        work = _shared_path(folder.work if folder.work is not None else folder.out)
        resume = resume and folder.mode == "resume"
        notify({"event": "phase", "phase": "measure", "what": "before"})
        before = measure(model, data, params, cfg, tcfg)

        def phase(name: str) -> Progress:
            return lambda event: notify({**event, "phase": name})

        notify({"event": "phase", "phase": "backslash", "total": tcfg.steps})
        hook = RateHook(params, cfg)
        result = train(model, data, tcfg, work_dir=work / TRAIN_DIR / "backslash", hooks=[hook],
                       resume=resume, progress=phase("backslash"), run_key=run_key)
        params = select_weights(model, cfg.include, cfg.exclude)  # FSDP: the sharded parameters now
        round_trip_(model, dtype)
        notify({"event": "phase", "phase": "measure", "what": "after"})
        after = measure(model, data, params, cfg, tcfg)
        _write_model(model, tokenizer, work, dtype, info.is_main)
        barrier()
        del model, params, hook
        gc.collect()

        base = base_result = None
        if cfg.baseline:
            notify({"event": "phase", "phase": "baseline", "total": tcfg.steps})
            bmodel, _, _ = _load(model_spec, info.device, tcfg)
            bparams = select_weights(bmodel, cfg.include, cfg.exclude)
            plain = BackSlashConfig(**{**asdict(cfg), "lam": 0.0, "baseline": False})
            base_result = train(bmodel, data, tcfg, work_dir=work / TRAIN_DIR / "baseline",
                                hooks=[RateHook(bparams, plain)], resume=resume, progress=phase("baseline"),
                                run_key={**run_key, "phase": "baseline"})
            bparams = select_weights(bmodel, cfg.include, cfg.exclude)
            round_trip_(bmodel, dtype)
            notify({"event": "phase", "phase": "measure", "what": "baseline"})
            base = measure(bmodel, data, bparams, cfg, tcfg)
            del bmodel, bparams
            gc.collect()

        report = _report(model_spec, source, data, folder.out, cfg, tcfg, info.world, dtype, before, after,
                         result, base, base_result, time.perf_counter() - t0)
        report["context"] = {**context, "notes": notes}
        if info.is_main:
            _atomic_text(work / REPORT_NAME, json.dumps(report, indent=2, allow_nan=False) + "\n")
            if not keep_checkpoints:
                shutil.rmtree(work / TRAIN_DIR, ignore_errors=True)
            folder.commit()
        barrier()
    except BaseException as e:
        if info.is_main:
            note = folder.abort()
            if note:
                log.warning(note)
        os_error = as_os_error(e)
        if os_error is not None and not isinstance(e, GGError):
            raise output_error(folder.out, os_error) from e
        raise
    return report


def _load(model_spec: str, device: str, tcfg: TrainConfig) -> tuple[Any, Any, str]:
    """The model on `device`; with --shard fsdp, read once by rank 0 and broadcast into the shards, so
    no device and only one rank's host memory ever holds the full model (`load_sharded`; every
    measurement below works on shards)."""
    if tcfg.shard != "fsdp":
        return load_causal_lm(model_spec, device)
    return load_sharded(model_spec, device, cpu_offload=tcfg.cpu_offload, bf16=tcfg.bf16)


def _save_dtype(name: str, model: Any) -> torch.dtype:
    return source_dtype(model) if name == "auto" else getattr(torch, name)


def _write_model(model: Any, tokenizer: Any, outp: Path, dtype: torch.dtype, is_main: bool) -> None:
    """HF files into `outp` (collective): rank 0 streams one gathered tensor at a time into a
    CheckpointWriter in a temporary folder inside `outp`, then renames each file into place."""
    tmp = outp / ".tmp-model"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        export_hf(model, tokenizer, tmp / "hf", dtype, is_main=is_main)
        if is_main:
            for f in sorted((tmp / "hf").iterdir()):
                os.replace(f, outp / f.name)
    finally:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)


def _shared_path(path: Path) -> Path:
    """Rank 0's `path` on every rank (the work folder is made by rank 0 alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return path
    msg = [str(path)]
    dist.broadcast_object_list(msg, src=0)
    return Path(msg[0])


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return 1.0 - a / b


def _compare(new: dict, ref: dict) -> dict[str, float | None]:
    """Relative size reduction (1 − new/ref, higher is smaller) and perplexity increase of `new`."""
    out = {k: _ratio(new[k], ref[k]) for k in
           ("eg_bits_per_param", "eg_bits_per_param_best_k", "entropy_bits_per_param")}
    out["val_ppl_increase"] = new["val_ppl"] / ref["val_ppl"] - 1.0
    if new.get("val_ppl_quantized") and ref.get("val_ppl_quantized"):
        out["val_ppl_quantized_increase"] = new["val_ppl_quantized"] / ref["val_ppl_quantized"] - 1.0
    return out


def _report(model_spec: str, source: str, data: TextData, outp: Path, cfg: BackSlashConfig, tcfg: TrainConfig,
            world: int, dtype: torch.dtype, before: dict, after: dict, result: Any, base: dict | None,
            base_result: Any, seconds: float) -> dict[str, Any]:
    nu_before = {r["name"]: r["nu"] for r in before["tensors"]}
    for r in after["tensors"]:
        r["nu_before"] = nu_before.get(r["name"])
    doc = {
        "schema": SCHEMA,
        "version": __version__,
        "model": model_spec,
        "source": source,
        "output": str(outp),
        "data": data.summary(),
        "settings": {**cfg.to_dict(), "train": tcfg.to_dict(), "world_size": world,
                     "save_dtype": str(dtype).removeprefix("torch.")},
        "before": _summary(before),
        "after": _summary(after),
        "baseline": _summary(base) if base is not None else None,
        "reduction_vs_before": _compare(after, before),
        "reduction_vs_baseline": _compare(after, base) if base is not None else None,
        "tensors": after["tensors"],
        "training": result.to_dict(),
        "baseline_training": base_result.to_dict() if base_result is not None else None,
        "seconds": seconds,
    }
    return json_safe(doc)


def _summary(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "tensors"}

