"""`quantize-rf8 --layout compressed-tensors`: the vLLM/SGLang layout, read back by compressed-tensors itself.

The reference is the ggcompress layout of the same source and settings: the compressed-tensors package's
own decompressor (run by transformers' CompressedTensorsHfQuantizer) must restore exactly the weights
``lut[code] * scale`` that ggcompress decodes, bit for bit in float32.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from test_transformers_quantizer import _tiny_llama

from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint
from ggcompress.io.checkpoint import open_checkpoint
from ggcompress.io.qlayout import decode, read_scheme

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _tiny_llama(tmp_path_factory.mktemp("llama") / "m", tied=False)


def _ggcompress_weights(folder) -> dict[str, torch.Tensor]:
    ck = open_checkpoint(folder)
    scheme = read_scheme(ck)
    t = {info.name: tensor for info, tensor in ck.iter_tensors()}
    return {m: decode(t[f"{m}.weight"], t[f"{m}.weight_scale"], scheme, m) for m in scheme.modules}


@pytest.mark.parametrize("fmt, gran", [("e4m3", "channel"), ("e4m3", "tensor"), ("int8", "channel"),
                                       ("int8", "block:16")])
def test_package_decompresses_to_the_ggcompress_weights(llama, tmp_path, fmt, gran):
    from transformers import AutoModelForCausalLM

    ours, ct = tmp_path / "ours", tmp_path / "ct"
    quantize_checkpoint(llama, ours, QuantizeConfig(format=fmt, granularity=gran))
    res = CliRunner().invoke(cli, ["quantize-rf8", str(llama), "-o", str(ct), "--format", fmt,
                                   "--granularity", gran, "--layout", "compressed-tensors"])
    assert res.exit_code == 0, res.output
    qc = json.loads((ct / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["quantization_status"] == "compressed"
    assert qc["format"] == {"e4m3": "float-quantized", "int8": "pack-quantized"}[fmt]
    assert qc["ignore"] == ["lm_head"]  # the only Linear left dense by default
    want = _ggcompress_weights(ours)
    if fmt == "e4m3":  # same bytes as our codes: float8_e4m3fn is the OCP E4M3 table
        with safe_open(str(ct / "model.safetensors"), "pt") as f, safe_open(str(ours / "model.safetensors"),
                                                                              "pt") as g:
            for m in want:
                assert torch.equal(f.get_tensor(f"{m}.weight").view(torch.uint8),
                                   g.get_tensor(f"{m}.weight")[0])  # ours: layout 2, [1, out, in]
    model = AutoModelForCausalLM.from_pretrained(ct, dtype=torch.float32)
    model.hf_quantizer.compressor.decompress_model(model)  # the package's own decompression
    for m, w in want.items():
        assert torch.equal(model.get_submodule(m).weight, w), m
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("args, needle", [
    (["--format", "rf8"], "format rf8 has no compressed-tensors kernel"),
    (["--format", "e5m2"], "format fp8_e5m2 has no compressed-tensors kernel"),
    (["--format", "int8", "--quantize-embeddings"], "Linear layers only"),
])
def test_unservable_settings_are_refused_before_work(llama, tmp_path, args, needle):
    res = CliRunner().invoke(cli, ["quantize-rf8", str(llama), "-o", str(tmp_path / "o"),
                                   "--layout", "compressed-tensors", *args])
    assert res.exit_code == 1 and needle in res.output
    assert not (tmp_path / "o").exists()


def test_conv1d_weights_are_refused_naming_the_module(tmp_path):
    """GPT-2 keeps its projections in Conv1D, which compressed-tensors does not quantize."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
                    ).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(GGError, match=r"transformer\.h\.0\.attn\.c_attn is not an nn.Linear"):
        quantize_checkpoint(tmp_path / "gpt2", tmp_path / "o",
                            QuantizeConfig(format="int8", layout="compressed-tensors"))
    assert not (tmp_path / "o").exists()
