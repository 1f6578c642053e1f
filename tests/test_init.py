"""GG initialization: variance ξ/fan, the requested shape β, determinism, per-role β, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import integrate, special, stats

from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.methods.init import gg_, init_model, shapes_from_checkpoint, shapes_from_report
from ggcompress.stats import gg

torch.set_num_threads(1)


def _beta_sd(beta: float, n: int) -> float:
    """Asymptotic sd of the MLE of β with α also estimated (Cramér–Rao), by numerical integration.

    With u = (|x|/α)^β ~ Gamma(1/β, 1) the scores are s_β = 1/β + ψ(1/β)/β² − u·ln(u)/β and
    α·s_α = β·u − 1; the Fisher matrix is their second moments under Gamma(1/β).
    """
    a = 1.0 / beta
    psi = special.digamma(a)

    def e(f):
        return integrate.quad(lambda u: f(u) * stats.gamma.pdf(u, a), 0, np.inf, limit=200)[0]

    def sb(u):
        return 1 / beta + psi / beta**2 - u * np.log(u) / beta

    def sa(u):
        return beta * u - 1

    fisher = np.array([[e(lambda u: sb(u) ** 2), e(lambda u: sb(u) * sa(u))],
                       [e(lambda u: sb(u) * sa(u)), e(lambda u: sa(u) ** 2)]])
    return math.sqrt(np.linalg.inv(fisher)[0, 0] / n)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_variance_and_shape(beta: float, mode: str) -> None:
    xi = 2.0
    w = torch.empty(256, 512)  # nn.Linear layout [out, in]: fan_in 512, fan_out 256
    gg_(w, shape=beta, xi=xi, mode=mode, generator=torch.Generator().manual_seed(1))
    fan = 512 if mode == "fan_in" else 256
    x = w.double().flatten()
    n = x.numel()
    # Var of the sample variance (mean known to be 0): σ⁴(κ−1)/n with κ the GG kurtosis, exact.
    kappa = gg.excess_kurtosis(beta) + 3
    sd_var = (xi / fan) * math.sqrt((kappa - 1) / n)
    assert abs(float(x.pow(2).mean()) - xi / fan) < 5 * sd_var  # 5 sd: false alarm < 1e-6
    # MLE β of the draw against the request, within 5 Cramér–Rao sds (plus the fit's 1e-5 tolerance);
    # n = 2^17 ≤ the MLE's 2^18 default, so the fit sees every value.
    fit = gg.fit(w, "mle")
    assert abs(fit.beta - beta) < 5 * _beta_sd(beta, n) + 1e-4, (fit.beta, beta)
    # The same draw is not a Gaussian unless asked for one: the Gaussian's β lies outside that band.
    if beta < 2:
        assert abs(fit.beta - 2.0) > 5 * _beta_sd(beta, n)


def test_seed_determinism_and_dtype() -> None:
    a = gg_(torch.empty(64, 32), 0.8, generator=torch.Generator().manual_seed(7))
    b = gg_(torch.empty(64, 32), 0.8, generator=torch.Generator().manual_seed(7))
    c = gg_(torch.empty(64, 32), 0.8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    h = gg_(torch.empty(64, 32, dtype=torch.bfloat16), 0.8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(h, a.to(torch.bfloat16))  # drawn in float64, then cast once


@pytest.mark.parametrize("bad", [dict(shape=0.0), dict(shape=float("nan")), dict(xi=-1.0), dict(mode="fan")])
def test_bad_arguments(bad: dict) -> None:
    with pytest.raises(GGError, match="GG init"):
        gg_(torch.empty(8, 8), **bad)
    with pytest.raises(GGError, match="2\\+ dimensions"):
        gg_(torch.empty(8))


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4))


def test_init_model_gpt2_roles_norms_biases() -> None:
    model = _tiny_gpt2()
    by_role = {"mlp_up": 0.7}
    recs = init_model(model, shape=1.5, xi=1.0, shape_by_role=by_role,
                      generator=torch.Generator().manual_seed(0))
    byname = {r.name: r for r in recs}
    # Tied head: drawn once, under the embedding's name.
    assert "lm_head.weight" not in byname and model.lm_head.weight is model.transformer.wte.weight
    c_fc = byname["transformer.h.0.mlp.c_fc.weight"]  # Conv1D [in=48, out=192]: fan_in 48
    assert (c_fc.action, c_fc.fan, c_fc.beta) == ("gg", 48, 0.7)
    c_proj = byname["transformer.h.0.mlp.c_proj.weight"]  # Conv1D [192, 48]
    assert (c_proj.fan, c_proj.beta) == (192, 1.5)
    assert byname["transformer.wte.weight"].fan == 48  # Embedding [97, 48]: torch's fan_in rule
    for name, p in model.named_parameters():
        if name.endswith("ln_1.weight") or name.endswith("ln_f.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        if name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
    w = model.transformer.h[1].mlp.c_fc.weight.detach().double()  # 9216 values
    kappa = gg.excess_kurtosis(0.7) + 3
    assert abs(float(w.pow(2).mean()) * 48 - 1) < 5 * math.sqrt((kappa - 1) / w.numel())


def test_init_model_include_and_mode_fan_out() -> None:
    model = _tiny_gpt2()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recs = init_model(model, 1.0, mode="fan_out", include=r"\.attn\.c_attn\.weight$",
                      generator=torch.Generator().manual_seed(0))
    assert [r.name for r in recs] == [f"transformer.h.{i}.attn.c_attn.weight" for i in range(2)]
    assert all(r.fan == 144 for r in recs)  # Conv1D [48, 144]: outputs 144
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {r.name for r in recs}
    with pytest.raises(GGError, match="no parameters selected"):
        init_model(model, include="nothing-matches")
    with pytest.raises(GGError, match="regular expression"):
        init_model(model, include="(")


def test_shapes_from_real_checkpoint_and_report(minilm_dir) -> None:
    from ggcompress.stats.analyze import AnalyzeOptions, analyze

    measured = shapes_from_checkpoint(minilm_dir)
    assert {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down", "embedding"} <= set(measured)
    # Trained weights are not Gaussian-shaped: every matrix role of MiniLM fits β clearly below 2.
    assert all(0.5 < b < 1.95 for b in measured.values()), measured
    doc = analyze([str(minilm_dir)], AnalyzeOptions(sample=2**16, seed=0, fit="mle"))
    assert shapes_from_report(doc) == pytest.approx(measured, rel=1e-12)
    with pytest.raises(GGError, match="not an analyze report"):
        shapes_from_report({"schema": "something/1"})


def _write_config(tmp_path):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    folder = tmp_path / "cfg"
    cfg.save_pretrained(folder)
    return folder / "config.json"


def test_cli_init_from_config(tmp_path) -> None:
    from safetensors.torch import load_file

    cfg = _write_config(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["init", str(cfg), "-o", str(out), "--shape", "0.9", "--xi", "2",
                                   "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "ggcompress.init/1" and doc["settings"]["shape"] == 0.9
    sd = load_file(out / "model.safetensors")
    up = sd["model.layers.0.mlp.up_proj.weight"]  # [64, 32]
    assert up.dtype == torch.float32 and torch.equal(sd["model.norm.weight"], torch.ones(32))
    # Same seed, same bytes.
    out2 = tmp_path / "out2"
    assert CliRunner().invoke(cli, ["init", str(cfg), "-o", str(out2), "--shape", "0.9", "--xi", "2",
                                    "--seed", "3"]).exit_code == 0
    assert (out / "model.safetensors").read_bytes() == (out2 / "model.safetensors").read_bytes()
    # All matrices together: variance 2/32 on the fan_in-32 layers.
    x = torch.cat([sd[f"model.layers.{i}.{m}.weight"].flatten() for i in range(2)
                   for m in ("self_attn.q_proj", "mlp.up_proj", "mlp.gate_proj")]).double()
    kappa = gg.excess_kurtosis(0.9) + 3
    assert abs(float(x.pow(2).mean()) * 16 - 1) < 5 * math.sqrt((kappa - 1) / x.numel())


def test_cli_init_shape_from_checkpoint(tmp_path, minilm_dir) -> None:
    from transformers import AutoModel

    out = tmp_path / "bert"
    res = CliRunner().invoke(cli, ["init", str(minilm_dir), "-o", str(out), "--shape-from", str(minilm_dir),
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["roles"]["attn_q"]["beta"] == pytest.approx(doc["settings"]["shape_by_role"]["attn_q"])
    assert doc["settings"]["shape_by_role"]["attn_q"] < 1.95 and doc["architecture"] == "BertModel"
    assert "tokenizer.json" in doc["tokenizer_files"] and (out / "vocab.txt").is_file()
    model = AutoModel.from_pretrained(out)  # an ordinary HF folder
    q = model.encoder.layer[0].attention.self.query.weight.detach()
    # 147k values, β ≥ 0.5 (κ ≤ 25.2): sd of the variance estimate ≤ 0.013, so 0.07 is > 5 sd.
    assert q.shape == (384, 384) and abs(float(q.pow(2).mean()) * 384 - 1) < 0.07


def test_cli_errors(tmp_path) -> None:
    cfg = _write_config(tmp_path)
    out = tmp_path / "out"
    run = CliRunner().invoke
    assert run(cli, ["init", str(cfg), "-o", str(out)]).exit_code == 0
    res = run(cli, ["init", str(cfg), "-o", str(out)])
    assert res.exit_code == 1 and "already exists" in res.output
    res = run(cli, ["init", str(cfg), "-o", str(tmp_path / "x"), "--shape", "-1"])
    assert res.exit_code == 1 and "shape β must be a positive number" in res.output
    res = run(cli, ["init", str(tmp_path / "missing"), "-o", str(tmp_path / "y")])
    assert res.exit_code == 1 and "no such file or folder" in res.output
    bad = tmp_path / "report.json"
    bad.write_text('{"schema": "nope"}')
    res = run(cli, ["init", str(cfg), "-o", str(tmp_path / "z"), "--shape-from", str(bad)])
    assert res.exit_code == 1 and "not an analyze report" in res.output
    assert run(cli, ["init", str(cfg), "-o", str(tmp_path / "w"), "--mode", "sideways"]).exit_code == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
