"""transformers' own ``from_pretrained`` on ggcompress-quantized folders (the registered quantizer).

The reference is ``ggcompress.load`` on the same folder, itself checked against transformers' dense model
on the dequantized weights in test_quantize.py. Both build QuantLinear layers from the same file bytes,
so logits must be bit-identical and greedy generations equal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ggcompress
from ggcompress.errors import GGError
from ggcompress.formats import available_formats
from ggcompress.formats.gf import GF_FORMATS
from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint
from ggcompress.integrations.transformers_quantizer import GGCompressConfig, GGCompressHfQuantizer
from ggcompress.kernels.nn import QuantLinear

IDS = torch.tensor([[1, 5, 9, 3, 7, 12, 40]])


def _tiny_llama(folder: Path, *, tied: bool) -> Path:
    """A random 2-layer Llama (hidden 64) with a word-level tokenizer, saved as an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, 96)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>",
                            bos_token="<unk>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    return {tied: _tiny_llama(root / str(tied), tied=tied) for tied in (False, True)}


def _from_pretrained(folder: Path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def _same_as_ggcompress_load(folder: Path, dtype: torch.dtype) -> None:
    model = _from_pretrained(folder, dtype=dtype)
    ref = ggcompress.load(folder, dtype=dtype)
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    linears = {n for n, m in ref.named_modules() if isinstance(m, QuantLinear)}
    assert linears and linears == {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for name in linears:  # 1-byte codes kept, same bytes as ggcompress.load's
        got, want = model.get_submodule(name), ref.get_submodule(name)
        assert got.codes.dtype == torch.uint8 and torch.equal(got.codes, want.codes)
        assert torch.equal(got.scale, want.scale)
        assert torch.allclose(got.lut, want.lut, rtol=0, atol=0, equal_nan=True)  # FP8 tables hold NaN
    assert model.config.quantization_config.to_dict()["modules"] == qc["modules"]
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)
        want = ref.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=0), want)


#: Every format quantize-rf8 writes: the 8-bit codecs, GF-3..8 and per-module auto.
ALL_FORMATS = (*available_formats(), *GF_FORMATS, "auto")


def _quantize(src: Path, out: Path, fmt: str) -> Path:
    quantize_checkpoint(src, out, QuantizeConfig(format=fmt, granularity="block:16", quantize_lm_head=True,
                                                 bits=5.0 if fmt == "auto" else None))
    return out


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_loads_like_ggcompress_load(llamas, tmp_path, fmt):
    out = _quantize(llamas[False], tmp_path / fmt, fmt)
    _same_as_ggcompress_load(out, torch.float32)


def test_plain_transformers_refuses_every_format(llamas, tmp_path):
    """Without ggcompress (never imported), transformers skips the unknown quant_method; the layout-2
    codes ([1, out, in]) must then fail its shape check: a loud refusal, never codes read as weights."""
    folders = [str(_quantize(llamas[False], tmp_path / fmt, fmt)) for fmt in ALL_FORMATS]
    code = ("import sys\n"
            "from transformers import AutoModelForCausalLM\n"
            "for folder in sys.argv[1:]:\n"
            "    try:\n"
            "        AutoModelForCausalLM.from_pretrained(folder)\n"
            "    except Exception as exc:\n"
            "        print('refused', type(exc).__name__)\n"
            "    else:\n"
            "        print('LOADED', folder)\n"
            "assert 'ggcompress' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code, *folders], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n")[:-1] == ["refused RuntimeError"] * len(folders), res.stdout
    assert "size mismatch" in res.stderr.lower() or "mismatch" in res.stderr


def test_layout1_folder_still_loads(llamas, tmp_path):
    """A folder written before layout 2 (codes in the weight's own shape, no "layout" key) loads the same."""
    out = _quantize(llamas[False], tmp_path / "v2", "rf8")
    legacy = tmp_path / "v1"
    shutil.copytree(out, legacy)
    config = json.loads((legacy / "config.json").read_text())
    qc = config["quantization_config"]
    del qc["layout"]
    (legacy / "config.json").write_text(json.dumps(config))
    tensors = load_file(legacy / "model.safetensors")
    meta = {"format": "pt", "quantization_config": json.dumps(
        {k: v for k, v in qc.items() if k != "ggcompress_version"}, sort_keys=True, separators=(",", ":"))}
    save_file({k: v[0] if k.removesuffix(".weight") in qc["modules"] else v for k, v in tensors.items()},
              str(legacy / "model.safetensors"), metadata=meta)
    assert load_file(legacy / "model.safetensors")["model.layers.0.mlp.up_proj.weight"].shape == (96, 64)
    _same_as_ggcompress_load(legacy, torch.float32)
    with torch.no_grad():
        assert torch.equal(_from_pretrained(legacy)(IDS).logits, _from_pretrained(out)(IDS).logits)


def test_dense_decoded_weights_and_tied_embeddings(llamas, tmp_path):
    """Quantized embeddings and norms decode to dense weights; the tied lm_head follows the embedding."""
    out = tmp_path / "tied"
    quantize_checkpoint(llamas[True], out, QuantizeConfig(format="rf8", granularity="channel",
                                                          quantize_embeddings=True, quantize_norms=True))
    model = _from_pretrained(out, dtype=torch.bfloat16)
    ref = ggcompress.load(out, dtype=torch.bfloat16)
    emb = model.model.embed_tokens.weight
    assert emb.dtype == torch.bfloat16 and torch.equal(emb, ref.model.embed_tokens.weight)
    assert model.lm_head.weight is emb
    assert torch.equal(model.model.norm.weight, ref.model.norm.weight)
    # Logits are compared in float32: ggcompress.load(dtype=bf16) also casts the rotary inv_freq buffer to
    # bf16, which transformers keeps in float32, so bf16 logits differ for a reason outside this module.
    _same_as_ggcompress_load(out, torch.float32)


def test_damaged_scheme_and_quantize_on_load_are_refused(llamas, tmp_path):
    out = tmp_path / "q"
    quantize_checkpoint(llamas[False], out, QuantizeConfig(format="int8"))
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["format_version"] = 99
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(GGError, match="format version 99"):
        _from_pretrained(out)
    qc = GGCompressConfig(**{**config["quantization_config"], "format_version": 1})
    with pytest.raises(ValueError, match="pre-quantized"):
        _from_pretrained(llamas[False], quantization_config=qc)


def test_saving_the_loaded_model_is_refused(llamas, tmp_path):
    """save_pretrained would write QuantLinear buffers, not the ggcompress layout: transformers refuses."""
    out = tmp_path / "q"
    quantize_checkpoint(llamas[False], out, QuantizeConfig(format="fp8_e4m3"))
    model = _from_pretrained(out)
    assert isinstance(model.hf_quantizer, GGCompressHfQuantizer)
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "again")


def test_import_ggcompress_registers_without_importing_torch():
    code = ("import sys, ggcompress; assert 'torch' not in sys.modules; "
            "import transformers.quantizers.auto as a; "
            "print(a.AUTO_QUANTIZER_MAPPING['ggcompress'].__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "GGCompressHfQuantizer"


def test_gpt2_conv1d_becomes_quantlinear(tmp_path):
    """GPT-2's Conv1D (weight stored [in, out]) is quantized as its [out, in] transpose (scheme
    'transposed'): from_pretrained builds the same QuantLinear layers as ggcompress.load."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=32)
                    ).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "q"
    quantize_checkpoint(tmp_path / "gpt2", out, QuantizeConfig(format="int8"))
    modules = json.loads((out / "config.json").read_text())["quantization_config"]["modules"]
    assert "transformer.h.0.attn.c_attn" in modules
    model = _from_pretrained(out, dtype=torch.float32)
    ref = ggcompress.load(out, dtype=torch.float32)
    transposed = json.loads((out / "config.json").read_text())["quantization_config"]["transposed"]
    assert "transformer.h.0.attn.c_attn" in transposed
    for m in modules:
        got, want = model.get_submodule(m), ref.get_submodule(m)
        assert type(got) is type(want) is QuantLinear, m
        assert torch.equal(got.codes, want.codes) and torch.equal(got.scale, want.scale), m
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)
