"""DeepShape: the rank remap (order, target histogram, tails), the recovery fine-tune, sweeps, the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.methods.deepshape import (
    DeepShapeConfig,
    core_limit,
    parse_sweep,
    reshape_,
    reshape_values,
    run_deepshape,
    run_sweep,
    target_counts,
)
from ggcompress.methods.train import TrainConfig, load_causal_lm, load_data, train
from ggcompress.stats import gg

sys.path.insert(0, str(Path(__file__).parent))
import tinylm  # noqa: E402

torch.set_num_threads(1)
STEP = 2.0**-8  # coarse grid for the tiny model: its 1-2k-value matrices leave a 2^-13 grid nearly empty


def _weights(n: int = 2**16, seed: int = 0) -> torch.Tensor:
    """Laplace-like weights plus a few large outliers (the tails DeepShape must leave alone)."""
    g = torch.Generator().manual_seed(seed)
    w = gg.sample(n, 1.0, 0.02, generator=g, dtype=torch.float64)
    w[:20] = torch.linspace(-0.6, 0.6, 20, dtype=torch.float64)
    return w[torch.randperm(n, generator=g)]


def test_remap_keeps_order_matches_target_and_tails() -> None:
    w = _weights()
    cfg = DeepShapeConfig(shape_scale=0.8, scale_scale=0.6, step=2.0**-13, core_threshold=3)
    new, rec = reshape_values(w, cfg)
    q = torch.round(w / cfg.step)
    # The core ends at the first magnitude whose count, averaged over a σ/32-wide window (per-tensor
    # smoothing; fp64 data, so no storage gaps), is ≤ 3; recomputed here with numpy.
    counts = np.bincount(np.abs(q.numpy()).astype(np.int64)).astype(float)
    width = round(float(w.std()) / (32 * cfg.step))
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    lo = np.clip(np.arange(counts.size) - width // 2, 0, None)
    hi = np.minimum(lo + width, counts.size)
    avg = (cum[hi] - cum[lo]) / (hi - lo)
    m = int(np.argmax(avg <= 3))
    assert width > 1 and avg[m] <= 3 and np.all(avg[:m] > 3) and rec.core_limit == m
    assert core_limit(q, 3) < m  # the raw counts (no smoothing) hit 3 earlier, by sampling noise
    core = q.abs() < m
    assert rec.core_numel == int(core.sum()) and 0.9 * w.numel() < rec.core_numel < w.numel()
    # Tails: bit-identical.
    assert torch.equal(new[~core], w[~core])
    # Order: sorting by the old values leaves the new values non-decreasing (a monotone map).
    order = torch.argsort(w[core], stable=True)
    assert bool((new[core][order].diff() >= 0).all())
    # Histogram: the core lands exactly on the target counts of the grid points |j| < m...
    sym = torch.round(new[core] / cfg.step).long()
    assert torch.equal(new[core], sym.double() * cfg.step)  # on the grid
    got = torch.bincount(sym + (m - 1), minlength=2 * m - 1)
    want = target_counts(rec.core_numel, m, cfg.step, rec.target_beta, rec.target_alpha, rec.mu)
    assert torch.equal(got, want)
    # ...and those counts are K·p within the apportionment's one unit, p from scipy's gennorm (an
    # independent reference for the GG bin masses, renormalized over the core range).
    j = np.arange(-(m - 1), m)
    dist = stats.gennorm(rec.target_beta, loc=rec.mu, scale=rec.target_alpha)
    p = dist.cdf((j + 0.5) * cfg.step) - dist.cdf((j - 0.5) * cfg.step)
    raw = rec.core_numel * p / p.sum()
    assert want.sum() == rec.core_numel
    assert np.all(want.numpy() >= np.floor(raw) - 1e-9) and np.all(want.numpy() <= np.floor(raw) + 1 + 1e-9)
    assert rec.target_beta == pytest.approx(0.8 * rec.beta)
    assert rec.target_alpha == pytest.approx(0.6 * rec.alpha)


def test_remap_makes_the_core_peakier() -> None:
    w = _weights(seed=1)
    step = 2.0**-13
    new, rec = reshape_values(w, DeepShapeConfig(step=step, core_threshold=3))
    core = torch.round(w / step).abs() < rec.core_limit
    before, after = gg.fit(w[core], "mle"), gg.fit(new[core], "mle")
    # Reference: a scipy draw from the target GG, cut to the same core range and put on the same grid
    # (the remap renormalizes the target over the core, and a truncated GG fits a larger β than its
    # own). Its MLE β has a Cramér–Rao sd ≈ 0.006 at this size; the remapped core is deterministic
    # quantiles, so 0.04 is > 5 sd of the difference.
    dist = stats.gennorm(rec.target_beta, loc=rec.mu, scale=rec.target_alpha)
    x = dist.rvs(4 * rec.core_numel, random_state=np.random.default_rng(0))
    x = np.round(x / step) * step
    x = torch.from_numpy(x[np.abs(np.round(x / step)) < rec.core_limit][: rec.core_numel])
    assert after.beta == pytest.approx(gg.fit(x, "mle").beta, abs=0.04)
    assert after.beta < before.beta - 0.15  # the requested change is 0.2·β ≈ 0.24


def test_core_spans_bf16_lattice_gaps() -> None:
    # bf16 weights (even loaded as fp32) occupy only every 2nd/4th/... point of a 2^-13 grid beyond
    # 2^-5; the core must not end at the first empty grid point there (256 steps), but where the
    # density thins out, as for the same weights in fp32.
    w = _weights(seed=4)
    wb = w.to(torch.bfloat16).to(torch.float32)
    cfg = DeepShapeConfig(step=2.0**-13, core_threshold=3)
    _, r32 = reshape_values(w, cfg)
    newb, rb = reshape_values(wb, cfg)
    # Both cores hold the bulk (a raw-count cut at the first gap would keep |w| < 2^-5: 79% here).
    assert rb.core_limit > 2 * 256 and min(rb.core_numel, r32.core_numel) > 0.97 * w.numel()
    tail = torch.round(wb.double() / 2.0**-13).abs() >= rb.core_limit
    assert torch.equal(newb[tail], wb.double()[tail])


def test_global_scope_remaps_all_weights_together() -> None:
    a = torch.nn.Parameter(_weights(2**14, 2).float().reshape(128, 128))
    b = torch.nn.Parameter((3 * _weights(2**14, 3)).float().reshape(64, 256))
    old = torch.cat([a.detach().flatten(), b.detach().flatten()]).double()
    recs = reshape_([("a", a), ("b", b)], DeepShapeConfig(scope="global", step=2.0**-10, core_threshold=5))
    assert len(recs) == 1 and recs[0].numel == 2**15
    new = torch.cat([a.detach().flatten(), b.detach().flatten()]).double()
    core = torch.round(old / 2.0**-10).abs() < recs[0].core_limit
    order = torch.argsort(old[core], stable=True)
    assert bool((new[core][order].diff() >= 0).all())  # one order across both tensors
    assert torch.equal(new[~core], old[~core])


def test_bad_arguments() -> None:
    for bad, msg in ((dict(shape_scale=0), "shape scale"), (dict(scale_scale=-1), "scale scale"),
                     (dict(scope="layer"), "scope"), (dict(step=float("nan")), "step"),
                     (dict(include="("), "regular expression"), (dict(rate_lambda=-1), "rate lambda")):
        with pytest.raises(GGError, match=msg):
            DeepShapeConfig(**bad)
    with pytest.raises(GGError, match="core is too small"):
        reshape_values(_weights(), DeepShapeConfig(step=2.0**-13, core_threshold=10**6), "w")
    with pytest.raises(GGError, match="below"):
        reshape_values(_weights(), DeepShapeConfig(step=2.0**-13, core_threshold=3, shape_scale=0.01), "w")
    with pytest.raises(GGError, match="NaN"):
        reshape_values(torch.tensor([1.0, math.nan] * 100), DeepShapeConfig(), "w")
    with pytest.raises(GGError, match="bad sweep entry"):
        parse_sweep("0.8:0.6,0.5")
    assert parse_sweep("1:0.8, 0.8:0.6") == [(1.0, 0.8), (0.8, 0.6)]


# ------------------------------------------------------------------------------------------ tiny model runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, text_files):
    """A tiny Llama trained briefly on real Wikipedia text (so reshaping has something to damage)."""
    root = tmp_path_factory.mktemp("deepshape")
    train_txt, val_txt = text_files
    text = train_txt.read_text()[:300_000]
    (root / "calib.txt").write_text(text)
    (root / "val.txt").write_text(val_txt.read_text()[:60_000])
    tinylm.build_model_folder(root / "base", text)
    model, tok, _ = load_causal_lm(str(root / "base"))
    data = load_data(str(root / "calib.txt"), tok, 64, validation=str(root / "val.txt"))
    train(model, data, TrainConfig(steps=200, lr=3e-3, batch_size=8, block_size=64, save_every=0))
    model.save_pretrained(root / "trained")
    tok.save_pretrained(root / "trained")
    return root


def _tcfg(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=1e-3, batch_size=8, block_size=64, eval_blocks=32, save_every=0)


def test_finetune_recovers_perplexity(tiny) -> None:
    cfg = DeepShapeConfig(shape_scale=0.8, scale_scale=0.4, step=STEP, distill=True)
    rep = run_deepshape(str(tiny / "trained"), str(tiny / "calib.txt"), tiny / "out", cfg, _tcfg(60),
                        validation=str(tiny / "val.txt"))
    o, r, f = rep["original"], rep["reshaped"], rep["finetuned"]
    # Reshaping buys bits and costs perplexity; the fine-tune wins back most of that perplexity.
    assert r["eg_bits_per_param"] < 0.85 * o["eg_bits_per_param"]
    assert r["entropy_bits_per_param"] < o["entropy_bits_per_param"]
    assert r["val_ppl"] > 1.3 * o["val_ppl"]
    assert f["val_ppl"] - o["val_ppl"] < 0.5 * (r["val_ppl"] - o["val_ppl"])
    assert f["eg_bits_per_param"] < o["eg_bits_per_param"]
    assert rep["training"]["history"][-1]["kl"] > 0
    saved = json.loads((tiny / "out" / "deepshape_report.json").read_text())
    assert saved["schema"] == "ggcompress.deepshape/1"
    assert len(saved["reshape"]) == 15  # 2 layers × 7 + the (tied) lm_head
    model, _, _ = load_causal_lm(str(tiny / "out"))  # an ordinary HF folder
    assert model.config.vocab_size == tinylm.VOCAB


def test_sweep_writes_curve_and_plot(tiny) -> None:
    cfg = DeepShapeConfig(step=STEP, rate_lambda=50.0)
    doc = run_sweep(str(tiny / "trained"), str(tiny / "calib.txt"), tiny / "sweep", cfg, _tcfg(5),
                    [(1.0, 0.8), (0.8, 0.4)], validation=str(tiny / "val.txt"))
    bits = [p["reshaped"]["eg_bits_per_param"] for p in doc["points"]]
    assert bits[1] < bits[0] < doc["original"]["eg_bits_per_param"]  # narrower target, fewer bits
    assert all(p["finetuned"] is not None for p in doc["points"])
    png = (tiny / "sweep" / "deepshape_sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli(tiny) -> None:
    run = CliRunner().invoke
    base = ["deepshape", str(tiny / "trained"), "--data", str(tiny / "calib.txt"), "--validation",
            str(tiny / "val.txt"), "--step", "2^-8", "--block-size", "64", "--eval-blocks", "8"]
    res = run(cli, [*base, "-o", str(tiny / "cli"), "--finetune-steps", "0", "--scope", "global",
                    "--core-threshold", "20", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["finetuned"] is None and doc["settings"]["scope"] == "global" and len(doc["reshape"]) == 1
    res = run(cli, [*base, "-o", str(tiny / "cli"), "--finetune-steps", "0"])
    assert res.exit_code == 1 and "already exists" in res.output
    res = run(cli, [*base, "-o", str(tiny / "x"), "--shape-scale", "0"])
    assert res.exit_code == 1 and "shape scale must be a positive number" in res.output
    res = run(cli, [*base, "-o", str(tiny / "x"), "--sweep", "a:b"])
    assert res.exit_code == 1 and "bad sweep entry" in res.output
    res = run(cli, [*base, "-o", str(tiny / "x"), "--core-threshold", "100000", "--finetune-steps", "0"])
    assert res.exit_code == 1 and "core is too small" in res.output
    assert run(cli, [*base, "-o", str(tiny / "x"), "--scope", "layer"]).exit_code == 2
    assert not (tiny / "x").exists()
