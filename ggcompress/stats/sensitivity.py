"""How much the loss cares about each weight: a diagonal-Fisher (mean squared gradient) estimate per
tensor and per row, from a few calibration windows of text through a causal LM.

Why: a rate–distortion allocation spends bits where distortion costs loss. To second order the loss
increase of a small weight perturbation δ is ½ Σ F_ii δ_i², so Σ F_ii over a tensor (or a row) is
the weight its mean squared error gets. Estimated as

    F̂_i = (1/W) Σ_w (∂ℓ̄_w/∂θ_i)²,   ℓ̄_w = mean next-token NLL of window w,

the squared gradient of each window's loss, averaged over W windows (the "empirical Fisher" at the
window level, as SqueezeLLM and OBS-style allocators use it). It is a relative weight between
tensors and rows: one window-level squared gradient is not the per-token Fisher, so F̂ should not be
read as a loss increase in nats. Costs W forward+backward passes in float32 and three model-sized
float32 buffers (weights, gradients, the sum); the report states the seconds and windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ggcompress.errors import GGError

QUANTILES = (0.01, 0.5, 0.99)
#: Config keys that hold a model's context length, in the order transformers families use them.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


@dataclass
class TensorSensitivity:
    """F̂ of one parameter tensor: totals, and per row (dim 0) where the tensor has rows."""

    name: str
    numel: int
    fisher_sum: float
    fisher_mean: float
    fisher_max: float
    share: float  # fisher_sum / Σ fisher_sum over every parameter of the model
    row_sum: np.ndarray | None = field(default=None, repr=False)  # Σ F̂ per row
    top: int = 5

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"fisher_sum": self.fisher_sum, "fisher_mean": self.fisher_mean,
                             "fisher_max": self.fisher_max, "share": self.share}
        if self.row_sum is not None and self.row_sum.size:
            q = np.quantile(self.row_sum, QUANTILES)
            d["row_sum"] = {f"p{round(100 * p)}": float(v) for p, v in zip(QUANTILES, q, strict=True)}
            order = np.argsort(-self.row_sum, kind="stable")[: self.top]
            d["top_rows"] = [{"row": int(i), "fisher_sum": float(self.row_sum[i])} for i in order]
        return d


@dataclass
class SensitivityReport:
    """F̂ of every parameter of a causal LM, with what it cost."""

    source: str
    windows: int
    window_tokens: int
    requested_tokens: int  # --calib-length before clamping to the context
    context: int | None
    loss: float  # mean next-token NLL over the windows (nats)
    seconds_cpu: float
    seconds_wall: float
    tensors: dict[str, TensorSensitivity]

    def summary(self) -> dict[str, Any]:
        return {"windows": self.windows, "window_tokens": self.window_tokens,
                "requested_tokens": self.requested_tokens, "context": self.context, "loss": self.loss,
                "seconds_cpu": self.seconds_cpu, "seconds_wall": self.seconds_wall,
                "tensors": len(self.tensors)}


def context_length(model: Any, tokenizer: Any = None) -> int | None:
    """The longest sequence the model takes: its config's position limit, capped by the tokenizer's."""
    cfg = getattr(model, "config", None)
    ctx = None
    for key in CONTEXT_KEYS:
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            ctx = v
            break
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10**7:
        ctx = tok_max if ctx is None else min(ctx, tok_max)
    return ctx


def calibration_windows(tokenizer: Any, text: str, windows: int, length: int) -> torch.Tensor:
    """(n, length) token ids: up to `windows` non-overlapping windows spread evenly over the text.

    A text shorter than `windows` full windows gives fewer; shorter than one, a single window of all
    its tokens (at least 2, so something is predicted).
    """
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < 2:
        raise GGError("--calib: the text has fewer than 2 tokens; give a longer text")
    length = min(length, len(ids))
    available = len(ids) // length
    n = max(1, min(windows, available))
    starts = np.unique(np.linspace(0, available - 1, n).round().astype(np.int64)) * length
    return torch.tensor(np.array([ids[s:s + length] for s in starts]), dtype=torch.long)


def diagonal_fisher(model: Any, windows: torch.Tensor, *, sample_labels: bool = False, seed: int = 0
                    ) -> tuple[dict[str, torch.Tensor], float]:
    """F̂ (module doc) of every trainable parameter, float32, and the mean window loss (on the text).

    One window per backward pass, so each squared gradient is one window's; the model's own
    parameters are not changed (gradients are cleared afterwards).

    ``sample_labels``: the gradient is taken of the NLL of next tokens *drawn from the model's own
    distribution* at each position (one draw per position, torch.Generator seeded with ``seed``)
    instead of the text's — the "true" Fisher E_{y~P}[(∂ log p(y)/∂θ)²], the Hessian of KL(P ‖ P_θ+δ)
    at δ = 0. The drawn tokens' scores have zero mean and are independent given the (real) contexts,
    so (scored tokens per window) × F̂ estimates the per-token Fisher without bias; pack --max-kl
    uses it to predict the KL (codec/klalloc.py).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    was_training = model.training
    model.eval()
    losses = []
    gen = torch.Generator().manual_seed(seed)
    try:
        for w in windows:
            model.zero_grad(set_to_none=True)
            ids = w[None].to(next(model.parameters()).device)
            if sample_labels:
                logits = model(input_ids=ids).logits[0, :-1].float()
                with torch.no_grad():
                    drawn = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=gen)[:, 0]
                    losses.append(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:])))
                loss = torch.nn.functional.cross_entropy(logits, drawn.to(logits.device))
            else:
                loss = model(input_ids=ids, labels=ids).loss
                losses.append(float(loss.detach()))
            loss.backward()
            for n, p in params:
                if p.grad is not None:
                    g = p.grad.float()
                    acc[n].addcmul_(g, g)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for a in acc.values():
        a.div_(len(windows))
    return acc, float(np.mean(losses))


def measure(source: str | Path, text: str, *, windows: int = 8, length: int = 512, top: int = 5,
            device: str = "cpu") -> SensitivityReport:
    """Load `source` as a causal LM (float32), cut `windows` windows of `length` tokens (clamped to the
    model's context) from `text`, and estimate F̂ per tensor and per row."""
    from ggcompress.io.loading import load_model

    if windows < 1 or length < 2:
        raise GGError("--calib-windows must be ≥ 1 and --calib-length ≥ 2")
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    lm = load_model(source, device=device, dtype="float32")
    ctx = context_length(lm.model, lm.tokenizer)
    win = calibration_windows(lm.tokenizer, text, windows, min(length, ctx) if ctx else length)
    fisher, loss = diagonal_fisher(lm.model, win)
    total = sum(float(f.sum(dtype=torch.float64)) for f in fisher.values()) or float("nan")
    out: dict[str, TensorSensitivity] = {}
    for name, f in fisher.items():
        s = float(f.sum(dtype=torch.float64))
        rows = f.reshape(f.shape[0], -1).sum(1, dtype=torch.float64).numpy() if f.dim() >= 2 else None
        out[name] = TensorSensitivity(name, f.numel(), s, s / f.numel(), float(f.max()), s / total, rows, top)
    del fisher, lm
    return SensitivityReport(str(source), int(win.shape[0]), int(win.shape[1]), length, ctx, loss,
                             time.process_time() - t_cpu, time.perf_counter() - t_wall, out)
