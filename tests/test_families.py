"""Every command on every model family: it works, or refuses with a GGError that says why.

Tiny random models of nine transformers families (tests/families.py), each with a 128-position context
(BERT: 64) so that every default window (backslash/deepshape blocks of 256, eval windows of 512) must be
clamped. The matrix: analyze, quantize-rf8 + ggcompress.load, pack -> unpack -> load, eval, init,
backslash, deepshape. GPT-2 (transformers Conv1D, weights [in, out]) gets extra checks: its Conv1D
weights are selected by backslash/deepshape, fanned in along dim 0 by init, and quantized as their
[out, in] transpose so they load as QuantLinear.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ggcompress.errors import GGError

sys.path.insert(0, str(Path(__file__).parent))
from families import CONTEXT, FAMILIES, build_all  # noqa: E402

FAMILY_NAMES = list(FAMILIES)
ENCODER_REFUSAL = r"not a causal language model \(BertForMaskedLM\).*needs a decoder LM"
#: Linear-layer names each family must expose to backslash/deepshape (fused and Conv1D layers included).
EXPECTED_LINEAR = {
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "gpt_neox": ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    "opt": ("self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2"),
    "llama": ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"),
    "mistral": ("self_attn.k_proj", "mlp.up_proj"),
    "qwen3": ("self_attn.v_proj", "mlp.gate_proj"),
    "gemma2": ("self_attn.o_proj", "mlp.down_proj"),
    "phi3": ("self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, text_files) -> tuple[str, Path, Path]:
    """(tokenizer training text, train.txt, validation.txt): real Wikipedia text, cut small."""
    train, val = text_files
    text = train.read_text(encoding="utf-8")[:60_000]
    root = tmp_path_factory.mktemp("family-text")
    (root / "train.txt").write_text(text[:30_000], encoding="utf-8")
    (root / "val.txt").write_text(val.read_text(encoding="utf-8")[:6_000], encoding="utf-8")
    return text, root / "train.txt", root / "val.txt"


@pytest.fixture(scope="module")
def models(tmp_path_factory, corpus) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("families"), corpus[0])


def _reference_model(folder: Path, family: str):
    """The folder loaded by plain transformers (the independent reference for forwards)."""
    import transformers

    cls = transformers.AutoModelForCausalLM if FAMILIES[family].causal else transformers.AutoModelForMaskedLM
    return cls.from_pretrained(folder, dtype=torch.float32).eval()


def _ids(n: int = 24) -> torch.Tensor:
    return torch.randint(1, 384, (2, n), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- analyze


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_analyze(models, family) -> None:
    from ggcompress.stats.analyze import analyze

    doc = analyze([str(models[family])])
    roles = {t["name"]: t["role"] for t in doc["checkpoints"][0]["tensors"]}
    assert roles, "no tensors analyzed"
    for fragment in EXPECTED_LINEAR.get(family, ()):
        hits = [r for n, r in roles.items() if f"{fragment}.weight" in n]
        assert hits and all(r not in ("other", "norm", "bias") for r in hits), (fragment, hits)
    if family == "phi3":
        assert {r for n, r in roles.items() if "gate_up_proj.weight" in n} == {"mlp_gate_up"}
        assert {r for n, r in roles.items() if "qkv_proj.weight" in n} == {"attn_qkv"}
    if family == "gpt_neox":
        assert roles["gpt_neox.embed_in.weight"] == "embedding"


# ------------------------------------------------------------------------------------------ quantize + load


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_quantize_load_forward_equals_dequantized(models, family, tmp_path) -> None:
    import ggcompress
    from ggcompress.formats.dequantize import dequantize_checkpoint
    from ggcompress.formats.quantize import quantize_checkpoint
    from ggcompress.io.quantized import quantized_modules

    report = quantize_checkpoint(str(models[family]), tmp_path / "q")
    scheme = report["checkpoints"][0]["quantization_config"]
    model = ggcompress.load(str(tmp_path / "q"))
    # Every quantized weight of these families belongs to a linear layer, so every one stays 1-byte.
    assert sorted(quantized_modules(model)) == sorted(scheme["modules"])
    if family == "gpt2":  # the Conv1D weights are stored [out, in] and listed as transposed
        assert sorted(scheme["transposed"]) == sorted(scheme["modules"]) and len(scheme["modules"]) == 8
        codes = load_file(tmp_path / "q" / "model.safetensors")
        assert list(codes["transformer.h.0.attn.c_attn.weight"].shape) == [1, 96, 32]  # layout 2
    else:
        assert "transposed" not in scheme
    dequantize_checkpoint(tmp_path / "q", tmp_path / "dq")
    if family == "gpt2":  # dequantize restores the source orientation
        dense = load_file(tmp_path / "dq" / "model.safetensors")
        assert list(dense["transformer.h.0.attn.c_attn.weight"].shape) == [32, 96]
    reference = _reference_model(tmp_path / "dq", family)
    ids = _ids()
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = reference(input_ids=ids).logits
    # Same fp32 weights (dequantize writes lut[code]*scale in fp32, what QuantLinear computes with); only the
    # matmul's blocking may differ (QuantLinear decodes in row chunks), a few fp32 ulps on O(1) logits.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- pack


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_pack_trellis_unpack_load(models, family, tmp_path) -> None:
    """pack --trellis on every family: shapes and dtypes kept (GPT-2's Conv1D [in, out] included), the
    restored weights within the trellis's error of the source, and the container runs as it unpacks."""
    import ggcompress
    from ggcompress.codec.pack import PackOptions, pack, unpack

    doc = pack(str(models[family]), tmp_path / "t.ggz", PackOptions(trellis=True, coder="rans"))
    plain = pack(str(models[family]), tmp_path / "p.ggz", PackOptions(coder="rans"))
    t, p = doc["checkpoints"][0]["summary"], plain["checkpoints"][0]["summary"]
    assert abs(t["sqnr_db"] - p["sqnr_db"]) < 0.5 and t["coded_bits_per_param"] < p["coded_bits_per_param"]
    unpack(tmp_path / "t.ggz", tmp_path / "u")
    original = load_file(models[family] / "model.safetensors")
    restored = load_file(tmp_path / "u" / "model.safetensors")
    for name, w in original.items():
        r = restored[name]
        assert r.shape == w.shape and r.dtype == w.dtype, name
        if w.is_floating_point() and w.ndim >= 2:  # levels are multiples of Δ = 9/16·2^-8, |error| < 2Δ
            assert float((r.double() - w.double()).abs().max()) < 2 * 9 / 16 * 2.0**-8, name
        else:
            assert torch.equal(r, w), name
    model = ggcompress.load(str(tmp_path / "t.ggz"))
    reference = _reference_model(tmp_path / "u", family)
    with torch.no_grad():
        assert torch.equal(model(input_ids=_ids()).logits, reference(input_ids=_ids()).logits)


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if FAMILIES[f].causal])
def test_pack_max_kl_trellis_meets_the_kl(models, corpus, family, tmp_path) -> None:
    """pack --max-kl --trellis on every causal family: the unpacked model's KL on the held-out windows is
    the one the search measured (GPT-NeoX's lm_head, stored as embed_out, found by its values)."""
    import ggcompress
    from ggcompress.codec import klalloc
    from ggcompress.codec.pack import PackOptions, pack

    k = 0.05
    opts = PackOptions(max_kl=k, calibration=str(corpus[2]), trellis=True, coder="rans",
                       calibration_windows=2, calibration_length=64)
    ck = pack(str(models[family]), tmp_path / "k.ggz", opts)["checkpoints"][0]
    assert ck["quantization"]["trellis"] >= 1 and ck["allocation"]["measured_kl"] <= k
    reference = _reference_model(models[family], family)
    from transformers import AutoTokenizer

    from ggcompress.methods.train import read_documents

    tok = AutoTokenizer.from_pretrained(models[family])
    _, held = klalloc.split_windows(tok, "\n\n".join(read_documents(str(corpus[2]))), 2, 64)
    model = ggcompress.load(str(tmp_path / "k.ggz"))
    with torch.no_grad():
        lp = torch.log_softmax(reference(input_ids=held).logits[:, :-1].double(), -1)
        lq = torch.log_softmax(model(input_ids=held).logits[:, :-1].double(), -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert kl == pytest.approx(ck["allocation"]["measured_kl"], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_pack_unpack_load(models, family, tmp_path) -> None:
    """Default pack (step 2^-8 on 2-D float tensors): unpacked weights equal round(w/step)·step exactly."""
    import ggcompress
    from ggcompress.codec.pack import pack, unpack

    pack(str(models[family]), tmp_path / "m.ggz")
    unpack(tmp_path / "m.ggz", tmp_path / "u")
    original = load_file(models[family] / "model.safetensors")
    restored = load_file(tmp_path / "u" / "model.safetensors")
    assert sorted(restored) == sorted(original)
    step = 2.0**-8
    for name, w in original.items():
        r = restored[name]
        assert r.shape == w.shape, name
        if w.is_floating_point() and w.ndim >= 2:
            grid = torch.round(w.double() / step) * step  # float64 reference, round half to even
            assert torch.equal(r.double(), grid), name
        else:
            assert torch.equal(r, w), name
    if not FAMILIES[family].causal:  # eval's loader refuses it, naming the container (not a temp folder)
        from ggcompress.io.loading import load_model

        with pytest.raises(GGError, match=rf"^{tmp_path / 'm.ggz'}: not a causal language model"):
            load_model(tmp_path / "m.ggz")
    model = ggcompress.load(str(tmp_path / "m.ggz"))  # the container loads directly too
    reference = _reference_model(tmp_path / "u", family)
    with torch.no_grad():
        # Identical weights and the same modules: bit-identical logits.
        assert torch.equal(model(input_ids=_ids()).logits, reference(input_ids=_ids()).logits)


# ---------------------------------------------------------------------------------------------- eval


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_eval_clamps_window_to_context(models, corpus, family, tmp_path) -> None:
    from ggcompress.formats.quantize import quantize_checkpoint
    from ggcompress.integrations.evaluation import EvalOptions, evaluate

    options = EvalOptions(tasks=(), text=corpus[2], window=512, max_tokens=1024)
    if not FAMILIES[family].causal:
        with pytest.raises(GGError, match=ENCODER_REFUSAL):
            evaluate([str(models[family])], options)
        return
    quantize_checkpoint(str(models[family]), tmp_path / "q")
    report = evaluate([str(models[family]), str(tmp_path / "q")], options)
    assert report["text"]["window"] == CONTEXT and report["text"]["window_requested"] == 512
    assert any("--window 512 is longer than the model's context (128 tokens" in n for n in report["notes"])
    base, quant = report["models"]
    assert base["context"]["tokens"] == CONTEXT
    assert base["text"]["kl_mean"] == 0.0 and math.isfinite(quant["text"]["kl_mean"])


def test_eval_cli_lm_eval_tasks_clamp_max_length(models, corpus) -> None:
    """lm-eval's rolling perplexity on GPT-2 (learned positions) with --max-length past the context."""
    from ggcompress.cli import cli

    res = CliRunner().invoke(cli, ["eval", str(models["gpt2"]), "--text", str(corpus[2]), "--tasks",
                                   "ggc_perplexity", "--limit", "2", "--max-length", "4096", "--json"])
    assert res.exit_code == 0, res.output
    assert "note: gpt2: --max-length 4096 is longer than the model's context (128 tokens" in res.stderr
    assert "note: gpt2: --window 512" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["models"][0]["tasks"]["ggc_perplexity"]["metrics"]


def test_eval_refuses_candidate_with_shorter_context(models, corpus, tmp_path) -> None:
    """Windows come from the baseline; a candidate that cannot read them is refused, not crashed."""
    from ggcompress.integrations.evaluation import EvalOptions, evaluate

    short = tmp_path / "short"
    short.mkdir()
    for f in models["gpt2"].iterdir():
        (short / f.name).write_bytes(f.read_bytes())
    config = json.loads((short / "config.json").read_text())
    config["n_positions"] = 64
    (short / "config.json").write_text(json.dumps(config))
    state = load_file(short / "model.safetensors")
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:64].clone()
    from safetensors.torch import save_file

    save_file(state, short / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(GGError, match=r"context is 64 tokens.*128-token windows; pass --window 64"):
        evaluate([str(models["gpt2"]), str(short)], EvalOptions(tasks=(), text=corpus[2]))


# ---------------------------------------------------------------------------------------------- init


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_init(models, family, tmp_path) -> None:
    """init builds any family (encoders too: it only needs a config); Conv1D fan-in is dim 0."""
    from ggcompress.methods.init import init_checkpoint

    report = init_checkpoint(str(models[family]), tmp_path / "init", shape=1.0, seed=1)
    gg_rows = [t for t in report["tensors"] if t["action"] == "gg"]
    assert gg_rows
    for fragment in EXPECTED_LINEAR.get(family, ()):
        assert any(f"{fragment}.weight" in t["name"] for t in gg_rows), fragment
    if family == "gpt2":
        c_attn = next(t for t in gg_rows if t["name"].endswith("h.0.attn.c_attn.weight"))
        assert c_attn["shape"] == [32, 96] and c_attn["fan"] == 32  # [in, out]: fan-in is the 32 inputs
        c_proj = next(t for t in gg_rows if t["name"].endswith("h.0.mlp.c_proj.weight"))
        assert c_proj["shape"] == [128, 32] and c_proj["fan"] == 128
    # The written weights load with plain transformers.
    _reference_model(tmp_path / "init", family)


# ---------------------------------------------------------------------------------------------- backslash


def _tcfg(**over):
    from ggcompress.methods.train import TrainConfig

    return TrainConfig(**{"lr": 1e-3, "batch_size": 2, "block_size": 256, "eval_blocks": 2, "save_every": 0,
                          "log_every": 1, "device": "cpu", **over})


def _linear_weight_names(folder: Path, family: str) -> set[str]:
    from ggcompress.io.layers import linear_modules

    model = _reference_model(folder, family)
    seen, names = set(), set()
    for name, mod in linear_modules(model):
        if id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            names.add(f"{name}.weight")
    return names


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_backslash(models, corpus, family, tmp_path) -> None:
    from ggcompress.methods.backslash import BackSlashConfig, run_backslash

    cfg = BackSlashConfig(lam=1e3, rate_steps=2, recover_steps=1, quantized_ppl=False)
    events: list[dict] = []
    run = lambda: run_backslash(str(models[family]), str(corpus[1]), tmp_path / "out", cfg, _tcfg(),  # noqa: E731
                                progress=events.append)
    if not FAMILIES[family].causal:
        with pytest.raises(GGError, match=ENCODER_REFUSAL):
            run()
        return
    report = run()
    assert report["settings"]["train"]["block_size"] == CONTEXT == report["data"]["block_size"]
    assert report["context"]["tokens"] == CONTEXT
    note = "block size 256 is longer than the model's context (128 tokens"
    assert any(note in n for n in report["context"]["notes"])
    assert any(e.get("event") == "note" and note in e["message"] for e in events)
    trained = {t["name"] for t in report["tensors"]}
    assert trained == _linear_weight_names(models[family], family)  # every linear layer, Conv1D included
    for fragment in EXPECTED_LINEAR[family]:
        assert any(f"{fragment}.weight" in n for n in trained), fragment
    assert math.isfinite(report["after"]["val_ppl"])


def test_backslash_cli_says_clamp_on_stderr(models, corpus, tmp_path) -> None:
    from ggcompress.cli import cli

    res = CliRunner().invoke(cli, ["backslash", str(models["gpt2"]), "--data", str(corpus[1]), "-o",
                                   str(tmp_path / "o"), "--rate-steps", "1", "--recover-steps", "0",
                                   "--batch-size", "2", "--eval-blocks", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "note: block size 256 is longer than the model's context (128 tokens, config n_positions)" \
        in " ".join(res.stderr.split())


def test_gpt2_backslash_moves_conv1d_weights(models, corpus, tmp_path) -> None:
    """The rate term reaches GPT-2's Conv1D weights (before the fix only the tied head was trained)."""
    from ggcompress.methods.backslash import BackSlashConfig, run_backslash

    cfg = BackSlashConfig(lam=1e5, rate_steps=2, recover_steps=0, quantized_ppl=False)
    run_backslash(str(models["gpt2"]), str(corpus[1]), tmp_path / "out", cfg, _tcfg(lr=0.0))
    before = load_file(models["gpt2"] / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    name = "transformer.h.0.attn.c_attn.weight"
    # lr 0: AdamW does nothing, so any change is the decoupled shrink toward 0.
    assert after[name].abs().sum() < before[name].abs().sum()
    assert torch.equal(after["transformer.h.0.attn.c_attn.bias"], before["transformer.h.0.attn.c_attn.bias"])


# ---------------------------------------------------------------------------------------------- deepshape


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_deepshape(models, corpus, family, tmp_path) -> None:
    from ggcompress.methods.deepshape import DeepShapeConfig, run_deepshape

    # step 2^-10 and a threshold of 1: tensors of 512-2048 weights have too small a core at the defaults
    # (a clear GGError says so); those are for real models.
    cfg = DeepShapeConfig(step=2.0**-10, core_threshold=1, quantized_ppl=False)
    run = lambda: run_deepshape(str(models[family]), str(corpus[1]), tmp_path / "out", cfg,  # noqa: E731
                                _tcfg(steps=1))
    if not FAMILIES[family].causal:
        with pytest.raises(GGError, match=ENCODER_REFUSAL):
            run()
        return
    report = run()
    assert report["settings"]["train"]["block_size"] == CONTEXT
    assert any("block size 256" in n for n in report["context"]["notes"])
    reshaped = {r["name"] for r in report["reshape"]}
    assert reshaped == _linear_weight_names(models[family], family)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_deepshape_default_core_on_tiny_model_refuses_clearly(models, corpus, tmp_path) -> None:
    from ggcompress.methods.deepshape import DeepShapeConfig, run_deepshape

    refusal = r"the core is too small .* lower --core-threshold or use a coarser step"
    with pytest.raises(GGError, match=refusal):
        run_deepshape(str(models["llama"]), str(corpus[1]), tmp_path / "out", DeepShapeConfig(),
                      _tcfg(steps=0))
    assert not (tmp_path / "out").exists()


def test_gpt2_pack_rf8_keeps_conv1d_one_byte(models, tmp_path) -> None:
    """pack --quant rf8 goes through quantize-rf8, so GPT-2's Conv1D codes are transposed there too."""
    import ggcompress
    from ggcompress.codec.pack import PackOptions, pack
    from ggcompress.formats.quantize import quantize_checkpoint
    from ggcompress.io.quantized import quantized_modules

    pack(str(models["gpt2"]), tmp_path / "g.ggz", PackOptions(quant="rf8"))
    packed = ggcompress.load(str(tmp_path / "g.ggz"))
    quantize_checkpoint(str(models["gpt2"]), tmp_path / "q")
    direct = ggcompress.load(str(tmp_path / "q"))
    assert len(quantized_modules(packed)) == 8
    with torch.no_grad():  # the same codes and scales in both: identical logits
        assert torch.equal(packed(input_ids=_ids()).logits, direct(input_ids=_ids()).logits)


def test_replace_linears_swaps_conv1d(models) -> None:
    """kernels.nn.replace_linears takes a Conv1D when given its weight's transpose as [out, in] codes."""
    from ggcompress.formats import get_codec
    from ggcompress.kernels.nn import QuantLinear, replace_linears

    model = _reference_model(models["gpt2"], "gpt2")
    name = "transformer.h.0.mlp.c_fc"
    conv = model.get_submodule(name)
    codec = get_codec("rf8")
    q = codec.encode(conv.weight.detach().t().contiguous(), "channel", name=name)
    dense = codec.decode(q, name=name)  # [out, in] fp32: what QuantLinear computes with
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    want = x @ dense.t() + conv.bias.detach()
    replace_linears(model, {name: (q.codes, q.scale, codec.lut, None, "rf8")})
    swapped = model.get_submodule(name)
    assert isinstance(swapped, QuantLinear)
    with torch.no_grad():  # the same fp32 weights: only a matmul's rounding (ulps) may differ
        torch.testing.assert_close(swapped(x), want, rtol=1e-5, atol=1e-6)


def test_scheme_transposed_must_list_quantized_modules() -> None:
    from ggcompress.io.qlayout import Scheme

    good = Scheme("rf8", "channel", None, ("a", "b"), "float32", transposed=("b",)).to_dict()
    assert Scheme.from_dict(good, "x").transposed == ("b",)
    assert "transposed" not in Scheme("rf8", "channel", None, ("a",)).to_dict()  # absent when empty
    with pytest.raises(GGError, match="transposed must be a list of quantized module names"):
        Scheme.from_dict({**good, "transposed": ["c"]}, "x")


def test_train_refuses_blocks_longer_than_context(models, corpus) -> None:
    """The engine itself refuses (one line) what fit_block_size would have clamped."""
    from ggcompress.methods.train import fit_block_size, load_causal_lm, load_data, train

    model, tokenizer, _ = load_causal_lm(str(models["opt"]))
    data = load_data(str(corpus[1]), tokenizer, 256)
    refusal = (r"blocks of 256 tokens are longer than the model's context "
               r"\(128 tokens, config max_position_embeddings\)")
    with pytest.raises(GGError, match=refusal):
        train(model, data, _tcfg(steps=1))
    tcfg, note = fit_block_size(model, _tcfg(steps=1))
    assert tcfg.block_size == 128 and "block size 256" in note
    assert fit_block_size(model, _tcfg(block_size=64)) == (_tcfg(block_size=64), None)
