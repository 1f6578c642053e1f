"""BackSlash: the rate term's math, that it lowers coded bits vs plain training, the CLI, resume, errors.

Tiny random Llama + in-process BPE on the real Wikipedia fixture text (tests/tinylm.py).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from scipy import special

from ggcompress import fixtures
from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.methods.backslash import (
    NU_HI,
    NU_LO,
    REPORT_NAME,
    SCHEMA,
    TRAIN_DIR,
    BackSlashConfig,
    RateHook,
    estimate_shapes,
    run_backslash,
    select_weights,
    shrink_,
)
from ggcompress.methods.train import TrainConfig, load_causal_lm
from ggcompress.stats import gg
from ggcompress.stats.rate import SymbolHistogram

sys.path.insert(0, str(Path(__file__).parent))
from tinylm import build_model_folder  # noqa: E402

SUMMARY_KEYS = {
    "val_loss", "val_ppl", "val_tokens", "val_ppl_quantized", "params", "nu_global", "nu_mean", "sparsity",
    "zero_fraction_quantized", "eg_bits_per_param", "entropy_bits_per_param", "best_k",
    "eg_bits_per_param_best_k", "distinct_symbols", "coded_bytes", "source_bits_per_param",
}  # fmt: skip



@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    train_txt, _ = fixtures.text()
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text(train_txt.read_text(encoding="utf-8")[:150_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(corpus, tmp_path_factory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "llama", corpus.read_text())


def _tcfg(**over) -> TrainConfig:
    return TrainConfig(**{"lr": 3e-3, "batch_size": 8, "block_size": 32, "eval_blocks": 16, "save_every": 0,
                          "log_every": 5, **over})


# ---------------------------------------------------------------------------------------------- the math


def test_rate_gradient_matches_autograd() -> None:
    """The custom backward (one pow) equals autograd of the formula, in float64."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, generator=g, dtype=torch.float64) * 0.05
    w[:5] = 0.0
    model = torch.nn.Linear(300, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w[None])
    for nu in (0.5, 1.0, 1.7):
        hook = RateHook(select_weights(model), BackSlashConfig(nu=nu, eps=1e-3, mode="loss"))
        model.weight.grad = None
        r = hook.rate()
        r.backward()
        ref_w = w.clone().requires_grad_(True)
        ref = (ref_w.abs() + 1e-3).pow(nu).sum() / 300
        ref.backward()
        assert float(r.detach()) == pytest.approx(float(ref.detach()), rel=1e-14)
        torch.testing.assert_close(model.weight.grad[0], ref_w.grad, rtol=1e-13, atol=0)
        assert torch.all(model.weight.grad[0, :5] == 0)  # sign(0) = 0: no push at exactly zero


def test_decoupled_shrink_formula_and_no_sign_crossing() -> None:
    w = torch.tensor([0.3, -0.2, 0.05, -1e-4, 1e-7, 0.0, -0.01], dtype=torch.float64)
    lam, n, c = 40.0, 7, 1e-3
    for nu in (0.6, 1.0, 1.5):
        p = w.clone()
        shrink_([p], [nu], lam, n, c)
        mag = lam * nu / n * (w.abs() + c) ** (nu - 1)  # float64 reference of the reference's step
        wn, mn = w.numpy(), mag.numpy()
        expect = np.where(np.abs(wn) > mn, wn - np.sign(wn) * mn, 0.0)
        np.testing.assert_allclose(p.numpy(), expect, rtol=1e-15, atol=1e-18)
        assert torch.all(p * w >= 0)  # never crosses zero
        assert torch.all(p.abs() <= w.abs())


@pytest.mark.parametrize("beta", [0.7, 1.0, 2.0])
def test_shape_estimate_recovers_beta(beta) -> None:
    """ν from ρ̂ = n·Σθ²/(Σ|θ|)² on zero-mean GG samples; independent check: ρ from scipy's gamma."""
    g = torch.Generator().manual_seed(1)
    x = gg.sample(400_000, beta, 0.02, generator=g)
    (nu,) = estimate_shapes([("w", x)])
    # Sampling sd of the moment estimate at n = 4e5 is < 0.01 for these β; 0.03 is 3+ sd.
    assert nu == pytest.approx(beta, abs=0.03)
    rho = math.exp(special.gammaln(1 / nu) + special.gammaln(3 / nu) - 2 * special.gammaln(2 / nu))
    xd = x.double()
    # fp32 pairwise sums vs float64: ~1e-7 relative each, so ρ agrees to well within 1e-6.
    assert rho == pytest.approx(float(len(x) * (xd * xd).sum() / xd.abs().sum() ** 2), rel=1e-6)


def test_shape_global_and_clamps() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = gg.sample(50_000, 0.8, 0.1, generator=g), gg.sample(50_000, 2.0, 0.01, generator=g)
    per = estimate_shapes([("a", a), ("b", b)], "tensor")
    glob = estimate_shapes([("a", a), ("b", b)], "global")
    assert glob[0] == glob[1]
    # Summing per-tensor fp32 sums vs one pairwise sum over the concatenation: ~1e-7 relative apart.
    assert glob[0] == pytest.approx(estimate_shapes([("ab", torch.cat([a, b]))])[0], rel=1e-6)
    assert glob[0] < min(per)  # a mixture of scales is peakier than either part
    assert estimate_shapes([("z", torch.zeros(10))]) == [NU_LO]
    assert estimate_shapes([("u", torch.tensor([1.0, -1.0] * 50))]) == [NU_HI]  # ρ = 1 < ρ(2.99)


def test_selection_counts_tied_head_once(tiny) -> None:
    model, _, _ = load_causal_lm(tiny)
    names = [n for n, _ in select_weights(model)]
    assert len(names) == 2 * 7 + 1 and names[-1] == "lm_head.weight"  # 7 Linear per layer + tied head
    assert [n for n, _ in select_weights(model, exclude="lm_head|mlp")] == [
        n for n in names if "self_attn" in n]
    with pytest.raises(GGError, match="no weights selected"):
        select_weights(model, include="nothing-matches")


# ---------------------------------------------------------------------------------------------- the effect


@pytest.mark.parametrize("mode, lam", [("decoupled", 3000.0), ("loss", 100.0)])
def test_rate_term_lowers_bits_vs_plain_training(tiny, corpus, tmp_path, mode, lam) -> None:
    """Same seed, data and steps: BackSlash codes into fewer bits than the plain fine-tune."""
    cfg = BackSlashConfig(lam=lam, mode=mode, rate_steps=30, recover_steps=6, shape_every=5, baseline=True)
    rep = run_backslash(str(tiny), str(corpus), tmp_path / "out", cfg, _tcfg())
    after, base = rep["after"], rep["baseline"]
    # Recount the headline from the saved file with an independent histogram (same step, k=0).
    saved = load_file(tmp_path / "out" / "model.safetensors")
    hist = SymbolHistogram(cfg.step)
    for t in rep["tensors"]:
        hist.update(saved["model.embed_tokens.weight" if t["name"] == "lm_head.weight" else t["name"]])
    assert hist.stats(k=0).eg_bits_per_param == pytest.approx(after["eg_bits_per_param"], rel=1e-12)
    red = rep["reduction_vs_baseline"]
    # Plain training does not shrink anything; these λ remove >20% of the bits on this model (observed
    # 31-37% exp-Golomb, 19-28% entropy); the model still learned (observed ppl 0.53-0.62x the input's).
    assert red["eg_bits_per_param"] > 0.2 and red["entropy_bits_per_param"] > 0.1
    assert after["eg_bits_per_param"] < base["eg_bits_per_param"]
    assert after["val_ppl"] < 0.75 * rep["before"]["val_ppl"]
    assert rep["training"]["history"][0]["nu"] > 0 and "R" in rep["training"]["history"][0]


def test_fixed_nu_is_l1(tiny, corpus, tmp_path) -> None:
    model, _, _ = load_causal_lm(tiny)
    hook = RateHook(select_weights(model), BackSlashConfig(nu=1.0, shape_every=1))
    hook.before_step(model, 0)
    assert set(hook.nu) == {1.0}


# ---------------------------------------------------------------------------------------------- CLI


def _cli(*args: str):
    return CliRunner().invoke(cli, ["backslash", *args])


def test_cli_end_to_end(tiny, corpus, tmp_path) -> None:
    out = tmp_path / "bs"
    args = [str(tiny), "--data", str(corpus), "-o", str(out), "--rate-steps", "6", "--recover-steps", "2",
            "--lambda", "300", "--block-size", "32", "--batch-size", "4", "--eval-blocks", "8",
            "--lr", "3e-3", "--step", "2^-7"]
    res = _cli(*args, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == SCHEMA and doc["settings"]["step_label"] == "2^-7"
    assert set(doc["after"]) == SUMMARY_KEYS == set(doc["before"])
    assert doc["baseline"] is None and doc["reduction_vs_baseline"] is None
    assert {"name", "nu", "nu_before", "sparsity", "eg_bits", "entropy_bits"} <= set(doc["tensors"][0])
    assert json.loads((out / REPORT_NAME).read_text()) == doc
    assert not (out / TRAIN_DIR).exists() and not list(out.glob(".tmp*"))
    # An ordinary HF folder: transformers loads it; analyze reads it.
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out)
    assert m.config.tie_word_embeddings
    an = CliRunner().invoke(cli, ["analyze", str(out), "--json", "--fit", "moments"])
    assert an.exit_code == 0, an.output
    # Existing output: refused without --force; --resume of a finished run returns its report.
    again = _cli(*args)
    assert again.exit_code == 1 and "already exists" in again.output
    assert json.loads(_cli(*args, "--resume", "--json").stdout) == doc
    human = _cli(*args, "--force")
    assert human.exit_code == 0 and "fewer exp-Golomb bits" in human.output


def test_resume_after_interruption_equals_uninterrupted(tiny, corpus, tmp_path) -> None:
    cfg = BackSlashConfig(lam=300.0, mode="decoupled", rate_steps=7, recover_steps=2, shape_every=3)
    tcfg = _tcfg(save_every=2, eval_blocks=4)
    full = run_backslash(str(tiny), str(corpus), tmp_path / "full", cfg, tcfg)

    def crash(event):
        if event.get("event") == "step" and event["step"] == 6:  # after step 6, checkpoint at 4 only
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_backslash(str(tiny), str(corpus), tmp_path / "cut", cfg, tcfg, progress=crash)
    assert (tmp_path / "cut" / TRAIN_DIR / "backslash" / "checkpoints" / "step-000004").is_dir()
    resumed = run_backslash(str(tiny), str(corpus), tmp_path / "cut", cfg, tcfg, resume=True)
    assert resumed["training"]["resumed_from"] == 4
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # ν state and the shrink resumed exactly
    for key in ("eg_bits_per_param", "val_ppl", "nu_mean", "sparsity"):
        assert resumed["after"][key] == full["after"][key]


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("empty", "empty corpus"),
    ("bert", "not a causal language model"),
])
def test_cli_errors_are_one_line(tiny, corpus, minilm_dir, tmp_path, case, message) -> None:
    (tmp_path / "empty.txt").write_text("\n")
    model = str(minilm_dir) if case == "bert" else str(tiny)
    data = {"missing": str(tmp_path / "no" / "data.txt"), "empty": str(tmp_path / "empty.txt"),
            "bert": str(corpus)}[case]
    res = _cli(model, "--data", data, "-o", str(tmp_path / "out"), "--rate-steps", "1",
               "--recover-steps", "0")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], res.output
    assert "Traceback" not in res.output


def test_bad_flags_are_usage_errors(tiny, corpus, tmp_path) -> None:
    res = _cli(str(tiny), "--data", str(corpus), "-o", str(tmp_path / "o"), "--mode", "sideways")
    assert res.exit_code == 2
    res = _cli(str(tiny), "--data", str(corpus), "-o", str(tmp_path / "o"), "--step", "2^-x")
    assert res.exit_code == 1 and "step" in res.output
