"""`quantize-rf8` / `dequantize` / `load_quantized`: the checkpoint layout, the report's numbers, loading.

The report is checked against an independent float64 recomputation from the written file, with the RF8
table rebuilt from docs/rf8.md §1 (not from ggcompress.formats). The layout is pinned by a byte-exact
golden file. Loading is checked on tiny random Llamas built in-process against transformers' own model
on the dequantized weights; the real all-MiniLM-L6-v2 exercises the CLI end to end.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.formats import QuantizedTensor, available_formats, get_codec
from ggcompress.formats.quantize import QuantizeConfig, output_name, plan
from ggcompress.io.checkpoint import open_checkpoint
from ggcompress.io.quantized import load_quantized, quantized_modules
from ggcompress.kernels.nn import QuantLinear


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rf8_lut_from_spec() -> np.ndarray:
    """docs/rf8.md §1, in float64: (-1)^s * M[m] * 2^(E - 15), with E = 0, m = 0 the (signed) zero."""
    m_table = [0.75, 0.875, 0.9375, 1.0, 1.0625, 1.125, 1.25, 1.5]
    out = np.empty(256)
    for code in range(256):
        s, e, m = code >> 7, (code >> 3) & 15, code & 7
        mag = 0.0 if (e == 0 and m == 0) else m_table[m] * 2.0 ** (e - 15)
        out[code] = -mag if s else mag
    return out


# ---------------------------------------------------------------------------------------------- MiniLM CLI


@pytest.fixture(scope="module")
def minilm_rf8(minilm_dir, tmp_path_factory):
    """The real MiniLM quantized once through the CLI: (input, output, report, input hashes before)."""
    before = tree_hash(minilm_dir)
    out = tmp_path_factory.mktemp("q") / "minilm-rf8"
    res = run("quantize-rf8", str(minilm_dir), "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    return minilm_dir, out, json.loads(res.stdout), before


def test_output_is_an_hf_folder_with_u8_codes_and_f32_scales(minilm_rf8):
    src, out, doc, _ = minilm_rf8
    assert doc["schema"] == "ggcompress.quantize/1"
    report = doc["checkpoints"][0]
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "format", "format_version", "granularity", "block_size")} == {
        "quant_method": "ggcompress", "format": "rf8", "format_version": 1, "granularity": "channel",
        "block_size": None}
    assert qc["layout"] == 2  # codes carry a leading axis of 1: plain transformers refuses, never misreads
    assert qc["source_dtype"] == "float32" and qc["ggcompress_version"]
    # default selection: the 36 encoder Linears + the pooler; embeddings, norms, biases stay dense
    assert len(qc["modules"]) == 37 and "pooler.dense" in qc["modules"]
    assert not any("embeddings" in m for m in qc["modules"])
    original = load_file(src / "model.safetensors")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        written = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert meta["format"] == "pt"
    in_meta = {k: v for k, v in qc.items() if k != "ggcompress_version"}
    assert json.loads(meta["quantization_config"]) == in_meta
    for module in qc["modules"]:
        w = original[f"{module}.weight"]
        codes, scale = written.pop(f"{module}.weight"), written.pop(f"{module}.weight_scale")
        assert codes.dtype == torch.uint8 and codes.shape == (1, *w.shape)
        assert scale.dtype == torch.float32 and scale.shape == (w.shape[0], 1)
        mant, _ = torch.frexp(scale)
        assert bool((mant == 0.5).all())  # RF8 scales are powers of two (docs/rf8.md §2)
    for name, t in written.items():  # everything else is byte-identical
        assert torch.equal(t, original[name]), name
    assert set(written) == set(original) - {f"{m}.weight" for m in qc["modules"]}
    for name in ("tokenizer.json", "vocab.txt", "1_Pooling/config.json", "modules.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert report["written"] and report["totals"]["quantized_tensors"] == 37


def test_report_matches_independent_float64_recomputation(minilm_rf8):
    src, out, doc, _ = minilm_rf8
    report = doc["checkpoints"][0]
    lut = rf8_lut_from_spec()
    original = load_file(src / "model.safetensors")
    written = load_file(out / "model.safetensors")
    rows = {r["name"]: r for r in report["tensors"]}
    signal = noise = abs_sum = err_sum = 0.0
    for module in report["quantization_config"]["modules"]:
        name = f"{module}.weight"
        w = original[name].double().numpy()
        decoded = lut[written[name][0].numpy()] * written[name + "_scale"].double().numpy()
        err = w - decoded
        row = rows[name]
        # The same sums in float64 in another summation order: agreement to ~1e-12 relative, so 1e-6 dB
        # and 1e-9 relative error are loose yet far below any real discrepancy (one wrong code ~1e-4 dB).
        assert row["sqnr_db"] == pytest.approx(10 * math.log10((w**2).sum() / (err**2).sum()), abs=1e-6)
        assert row["mean_rel_err"] == pytest.approx(np.abs(err).sum() / np.abs(w).sum(), rel=1e-9)
        nz = w != 0
        assert row["max_rel_err"] == pytest.approx((np.abs(err[nz]) / np.abs(w[nz])).max(), rel=1e-9)
        assert row["bytes_before"] == w.size * 4 and row["bytes_after"] == w.size + 4 * w.shape[0]
        assert row["ratio"] == pytest.approx(row["bytes_before"] / row["bytes_after"])
        signal, noise = signal + (w**2).sum(), noise + (err**2).sum()
        abs_sum, err_sum = abs_sum + np.abs(w).sum(), err_sum + np.abs(err).sum()
    totals = report["totals"]
    assert totals["sqnr_db"] == pytest.approx(10 * math.log10(signal / noise), abs=1e-6)
    assert totals["mean_rel_err"] == pytest.approx(err_sum / abs_sum, rel=1e-9)
    file_before = (src / "model.safetensors").stat().st_size
    file_after = (out / "model.safetensors").stat().st_size
    # totals count tensor bytes only; the files add their headers (a few KiB)
    assert 0 < file_before - totals["bytes_before"] < 20_000
    assert 0 < file_after - totals["bytes_after"] < 20_000
    assert 27.5 < totals["sqnr_db"] < 29.5  # docs/rf8.md §5: RF8 ~28.5 dB on MiniLM at any granularity


def test_input_is_untouched(minilm_rf8):
    src, _, _, before = minilm_rf8
    assert tree_hash(src) == before


def test_dequantize_round_trip_equals_codec_decode(minilm_rf8, tmp_path):
    src, out, doc, _ = minilm_rf8
    dense = tmp_path / "dense"
    res = run("dequantize", str(out), "-o", str(dense), "--dtype", "fp32", "--json")
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)
    assert (counts["dequantized_tensors"], counts["tensors"]) == (37, 104 - 37)
    config = json.loads((dense / "config.json").read_text())
    assert "quantization_config" not in config
    assert config == {k: v for k, v in json.loads((src / "config.json").read_text()).items()}
    written, decoded = load_file(out / "model.safetensors"), load_file(dense / "model.safetensors")
    original = load_file(src / "model.safetensors")
    codec = get_codec("rf8")
    modules = doc["checkpoints"][0]["quantization_config"]["modules"]
    for module in modules:
        codes, scale = written[f"{module}.weight"][0], written[f"{module}.weight_scale"]
        q = QuantizedTensor(codes, scale, "rf8", "channel", None, tuple(codes.shape))
        assert torch.equal(decoded[f"{module}.weight"], codec.decode(q))
    assert not any(k.endswith("_scale") for k in decoded)
    for name, t in decoded.items():
        if name.removesuffix(".weight") not in modules:
            assert torch.equal(t, original[name])
    with safe_open(str(dense / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    # The loaded RF8 BERT (QuantLinear with biases) computes what transformers computes on the dense copy.
    from transformers import AutoModel, AutoTokenizer

    model, tok = load_quantized(out)
    assert len(quantized_modules(model)) == 37 and model.pooler.dense.bias is not None
    ref = AutoModel.from_pretrained(dense, dtype=torch.float32).eval()
    sentence = ["RF8 keeps two powers of two per weight."]
    enc = AutoTokenizer.from_pretrained(dense)(sentence, return_tensors="pt")
    with torch.no_grad():
        got, want = model(**enc).pooler_output, ref(**enc).pooler_output
    # fp32 on both sides, summation order only (tolerance as in the Llama test below)
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
    # a second dequantize into the same folder needs --force
    assert run("dequantize", str(out), "-o", str(dense)).exit_code == 1


def test_existing_output_is_refused_without_force(minilm_rf8, minilm_dir):
    _, out, _, _ = minilm_rf8
    stamp = tree_hash(out)
    res = run("quantize-rf8", str(minilm_dir), "-o", str(out), "--include", "layer\\.0\\.")
    assert res.exit_code == 1 and "already exists" in res.stderr and "--force" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and tree_hash(out) == stamp


def test_force_replaces_and_dry_run_writes_nothing(minilm_dir, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    res = run("quantize-rf8", str(minilm_dir), "-o", str(target), "--force",
              "--include", r"layer\.0\.attention\.self\.query")  # a pattern that selects something
    assert res.exit_code == 0, res.output
    assert not (target / "old.txt").exists() and (target / "model.safetensors").is_file()
    dry = tmp_path / "dry"
    res = run("quantize-rf8", str(minilm_dir), "-o", str(dry), "--dry-run", "--json",
              "--include", "layer\\.1\\.")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["settings"]["dry_run"] and not doc["checkpoints"][0]["written"]
    assert doc["checkpoints"][0]["totals"]["quantized_tensors"] == 6
    assert not dry.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_compare_lists_every_format_side_by_side(minilm_dir):
    res = run("quantize-rf8", str(minilm_dir), "--compare", "--granularity", "channel",
              "--include", "layer\\.2\\.")
    assert res.exit_code == 0, res.output
    for fmt in available_formats():
        assert fmt in res.stderr
    assert "dry run" in res.stderr
    res = run("quantize-rf8", str(minilm_dir), "--compare", "--json", "--include", "layer\\.2\\.")
    report = json.loads(res.stdout)["checkpoints"][0]
    compare = report["compare"]
    assert list(compare) == ["rf8", "fp8_e4m3", "fp8_e5m2", "int8"]
    assert compare["rf8"]["sqnr_db"] == report["totals"]["sqnr_db"]
    # Per-row scales on real weights: INT8 > E4M3 > RF8 > E5M2 (docs/rf8.md §5), all at the same size.
    db = {f: c["sqnr_db"] for f, c in compare.items()}
    assert db["int8"] > db["fp8_e4m3"] > db["rf8"] > db["fp8_e5m2"]
    assert len({c["bytes_after"] for c in compare.values()}) == 1
    for row in report["tensors"]:
        if row["action"] == "quantized":
            assert set(row["compare"]) == set(available_formats())


def test_selection_rules(minilm_dir):
    ck = open_checkpoint(minilm_dir)

    def chosen(**kw):
        return {d.info.name for d in plan(ck, QuantizeConfig(**kw)) if d.quantize}

    default = chosen()
    assert len(default) == 37 and all(n.endswith(".weight") for n in default)
    emb = chosen(quantize_embeddings=True) - default
    assert emb == {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                   "embeddings.token_type_embeddings.weight"}
    norms = chosen(quantize_norms=True) - default
    assert len(norms) == 13 and all("LayerNorm" in n for n in norms)
    assert chosen(include=r"attention\.self", exclude=r"\.key\.") == {
        n for n in default if "attention.self" in n and ".key." not in n}


# ---------------------------------------------------------------------------------------------- golden file

# Input: `layer.weight` = the worked example of docs/rf8.md §4 (2x9 float32) and `layer.bias` = [0.5, -1].
# Output, checked by hand: an 8-byte little-endian header length (448 = 0x1c0), the compact JSON header
# (insertion order: __metadata__, then tensors in input order, each quantized weight followed by its
# scale; padded with spaces to a multiple of 8), then the data: bias (0.5, -1.0 as float32 LE
# 0000003f 000080bf), the codes of docs/rf8.md §4 (7ff8008060007b6e6d / 78f868008001008108; layout 2
# stores them as [1, 2, 9]) and the scales 2^0, 2^-2 (0000803f 0000803e).
GOLDEN_HEADER = (
    '{"__metadata__":{"format":"pt","quantization_config":"{\\"block_size\\":null,\\"format\\":\\"rf8\\",'
    '\\"format_version\\":1,\\"granularity\\":\\"channel\\",\\"layout\\":2,\\"modules\\":[\\"layer\\"],'
    '\\"quant_method\\":\\"ggcompress\\",\\"source_dtype\\":\\"float32\\"}"},'
    '"layer.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
    '"layer.weight":{"dtype":"U8","shape":[1,2,9],"data_offsets":[8,26]},'
    '"layer.weight_scale":{"dtype":"F32","shape":[2,1],"data_offsets":[26,34]}}'
)
#: The same file as written in layout 1 (before the leading axis): still read.
LEGACY_HEADER = GOLDEN_HEADER.replace('\\"layout\\":2,', "").replace("[1,2,9]", "[2,9]")
GOLDEN_DATA = "0000003f000080bf" "7ff8008060007b6e6d" "78f868008001008108" "0000803f0000803e"
GOLDEN_SHA256 = "3924306b9bd217298cf94b5587d40a77e1c0a4bcdcb36abfad297df96a8b262e"
GOLDEN_W = [
    [1.5, -0.75, 0.0, -0.0, 0.1, 3e-6, 1.0, 0.3, 0.296875],
    [0.2, -0.2, 0.05, 1e-7, -1e-9, 0.875 * 2**-17, 0.4375 * 2**-17, -(2**-18), 1.5 * 2**-17],
]


def _golden_bytes(header: str) -> bytes:
    h = header.encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + bytes.fromhex(GOLDEN_DATA)


def _dequantizes_to_the_spec(folder: Path, tmp_path: Path) -> None:
    res = run("dequantize", str(folder), "-o", str(tmp_path / "dense"))
    assert res.exit_code == 0, res.output
    dense = load_file(tmp_path / "dense" / "model.safetensors")
    lut = rf8_lut_from_spec()
    codes = np.frombuffer(bytes.fromhex(GOLDEN_DATA)[8:26], dtype=np.uint8).reshape(2, 9)
    expect = lut[codes] * np.array([[1.0], [0.25]])
    assert np.array_equal(dense["layer.weight"].double().numpy(), expect)  # the decode is exact for RF8
    assert dense["layer.weight"].dtype == torch.float32


def test_golden_rf8_safetensors_file(tmp_path):
    src = tmp_path / "golden.safetensors"
    save_file({"layer.weight": torch.tensor(GOLDEN_W), "layer.bias": torch.tensor([0.5, -1.0])}, str(src))
    out = tmp_path / "out"
    res = run("quantize-rf8", str(src), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]  # a bare file has no config.json
    data = (out / "model.safetensors").read_bytes()
    assert struct.unpack("<Q", data[:8])[0] == 448 and data == _golden_bytes(GOLDEN_HEADER)
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256
    _dequantizes_to_the_spec(out, tmp_path)


def test_layout1_golden_file_still_reads(tmp_path):
    """Folders written before layout 2 (codes in the weight's own shape) dequantize to the same values."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(_golden_bytes(LEGACY_HEADER))
    _dequantizes_to_the_spec(folder, tmp_path)


# ------------------------------------------------------------------------------------------- several inputs


def test_several_inputs_from_stdin_get_one_subfolder_each(tmp_path):
    (tmp_path / "alpha").mkdir()
    g = torch.Generator().manual_seed(0)
    save_file({"l.weight": torch.randn(8, 16, generator=g)}, str(tmp_path / "alpha" / "model.safetensors"))
    save_file({"l.weight": torch.randn(8, 16, generator=g)}, str(tmp_path / "beta.safetensors"))
    paths = f"{tmp_path / 'alpha'}\n{tmp_path / 'beta.safetensors'}\n"
    res = run("quantize-rf8", "-", "-o", str(tmp_path / "out"), "--json", "--format", "int8", input=paths)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [Path(c["output"]).name for c in doc["checkpoints"]] == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        assert load_file(tmp_path / "out" / name / "model.safetensors")["l.weight"].dtype == torch.uint8
    assert output_name(str(tmp_path / "alpha" / "model.safetensors")) == "alpha"
    assert output_name("org/some-model") == "some-model"
    # two inputs that would land in the same subfolder: refused before anything is written
    res = run("quantize-rf8", str(tmp_path / "alpha"), str(tmp_path / "alpha" / "model.safetensors"),
              "-o", str(tmp_path / "out2"))
    assert res.exit_code == 1 and "alpha" in res.stderr and not (tmp_path / "out2").exists()


# ---------------------------------------------------------------------------------------------- bad inputs


def test_nan_tensor_is_refused_naming_file_and_tensor(tmp_path):
    w = torch.randn(4, 8)
    w[2, 3] = float("nan")
    src = tmp_path / "bad.safetensors"
    save_file({"blk.proj.weight": w}, str(src))
    res = run("quantize-rf8", str(src), "-o", str(tmp_path / "out"))
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "blk.proj.weight" in lines[0] and "bad.safetensors" in lines[0]
    assert "NaN" in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("args, needle", [
    (["--granularity", "block:x"], "block size must be an integer"),
    (["--granularity", "row"], "expected tensor, channel or block:N"),
])
def test_bad_options_are_one_line_errors(minilm_dir, tmp_path, args, needle):
    res = run("quantize-rf8", str(minilm_dir), "-o", str(tmp_path / "o"), *args)
    assert res.exit_code == 1 and needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_missing_path_and_usage_errors(tmp_path):
    res = run("quantize-rf8", str(tmp_path / "nope"), "-o", str(tmp_path / "o"))
    assert res.exit_code == 1 and "no such file or folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert run("quantize-rf8", str(tmp_path / "nope")).exit_code == 2  # no -o and nothing asked to measure
    assert run("quantize-rf8", "x", "-o", "y", "--format", "fp4").exit_code == 2
    res = run("quantize-rf8", "x", "-o", str(tmp_path / "o"), "--include", "(")  # checked before any work
    assert res.exit_code == 2 and "not a valid regular expression" in res.stderr
    assert not (tmp_path / "o").exists()
    res = run("dequantize", str(tmp_path / "nope"), "-o", str(tmp_path / "d"))
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1


def test_quantized_input_is_refused(minilm_rf8, tmp_path):
    _, out, _, _ = minilm_rf8
    res = run("quantize-rf8", str(out), "-o", str(tmp_path / "again"))
    assert res.exit_code == 1 and "already quantized" in res.stderr


# ---------------------------------------------------------------------------------------------- loading


def _tiny_llama(root: Path, *, tied: bool) -> Path:
    """A random 2-layer Llama (hidden 64) with a word-level tokenizer, saved as an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(config)
    folder = root / ("tied" if tied else "untied")
    model.save_pretrained(folder)
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, 96)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>",
                            bos_token="<unk>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    return {tied: _tiny_llama(root, tied=tied) for tied in (False, True)}


@pytest.mark.parametrize("tied, args", [
    (False, ["--granularity", "block:16", "--quantize-lm-head", "--quantize-embeddings", "--quantize-norms"]),
    (True, ["--format", "e4m3"]),
])
def test_load_quantized_equals_dense_model_on_dequantized_weights(llamas, tmp_path, tied, args):
    from transformers import LlamaForCausalLM

    src = llamas[tied]
    out, dense = tmp_path / "q", tmp_path / "dense"
    assert run("quantize-rf8", str(src), "-o", str(out), *args).exit_code == 0
    assert run("dequantize", str(out), "-o", str(dense), "--dtype", "fp32").exit_code == 0
    model, tok = load_quantized(out)
    ref = LlamaForCausalLM.from_pretrained(dense, dtype=torch.float32).eval()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    linears = {m for m in qc["modules"] if m.endswith("_proj") or m == "lm_head"}
    assert set(quantized_modules(model)) == linears
    assert ("lm_head" in linears) == (not tied)
    for name in linears:  # 1-byte codes in memory, no dense weight anywhere in the layer
        layer = model.get_submodule(name)
        assert isinstance(layer, QuantLinear) and layer.codes.dtype == torch.uint8
        assert not hasattr(layer, "weight")
        assert torch.equal(layer.dequantize_weight(), ref.get_submodule(name).weight)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = tok("w1 w5 w9 w3 w77 w12 w40", return_tensors="pt").input_ids
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids).logits
    # Same fp32 weights; only summation order and where the scale is applied differ (see test_nn.py):
    # 1e-5 of the logit range is ~80 ulps, while one wrong code or scale group moves logits far more.
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
    q_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    d_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
    assert q_bytes + sum(p.numel() * p.element_size() for p in model.parameters()) < d_bytes


def test_ggcompress_load_and_eval_read_rf8_folders(llamas, tmp_path):
    import ggcompress
    from ggcompress.io.loading import load_model

    out = tmp_path / "rf8"
    assert run("quantize-rf8", str(llamas[False]), "-o", str(out)).exit_code == 0
    model = ggcompress.load(out)
    loaded = load_model(out)
    assert loaded.kind == "ggcompress" and quantized_modules(loaded.model)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, model(ids).logits)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{(7 * i) % 95 + 1}" for i in range(300)) + "\n")
    res = run("eval", str(llamas[False]), str(out), "--tasks", "none", "--text", str(text),
              "--max-tokens", "256", "--window", "64", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["models"]
    assert rows[1]["kind"] == "ggcompress"
    assert 0 < rows[1]["text"]["kl_mean"] < 0.05  # RF8 noise on a random model: small but not zero


def test_load_errors_are_clear(tmp_path, minilm_rf8):
    save_file({"l.weight": torch.zeros(2, 2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(GGError, match="no config.json"):
        load_quantized(tmp_path / "bare.safetensors")
    _, out, _, _ = minilm_rf8
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in out.iterdir():
        if p.is_file():
            (broken / p.name).write_bytes(p.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["quantization_config"]["format_version"] = 99
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(GGError, match="format version 99"):
        load_quantized(broken)
