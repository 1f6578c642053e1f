"""GGUF in and out (io/gguf.py) on the real SmolLM2-135M-Instruct Q4_1 GGUF.

References: Q4_1 blocks decoded by hand from the GGUF spec (independent of the gguf package), the
fixture folder transformers converted from the same file (names and Q/K layout), and the original file's
metadata and tensor table for the written GGUF. Opening the file costs ~10-25 s (the gguf package parses
a 49k-token vocabulary), so it is opened once; the write path works on a few layer-0 tensors.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.io.checkpoint import CheckpointWriter, open_checkpoint
from ggcompress.io.gguf import METADATA_FILE, GGUFCheckpoint
from ggcompress.io.qlayout import decode, read_scheme

gguf = pytest.importorskip("gguf")

LAYER0 = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
          "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight"]


@pytest.fixture(scope="module")
def ck(smollm2_gguf) -> GGUFCheckpoint:
    return open_checkpoint(smollm2_gguf)


def test_reads_hf_names_shapes_and_config(ck, smollm2_dir):
    assert isinstance(ck, GGUFCheckpoint) and len(ck.tensors) == 272
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        assert {t.name for t in ck.tensors} == set(f.keys())  # every tensor under its HF name
        for t in ck.tensors:
            assert list(t.shape) == f.get_slice(t.name).get_shape()
    config = ck.config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert config["num_attention_heads"] == 9 and config["num_key_value_heads"] == 3


def test_q4_1_blocks_decode_like_the_spec(ck, smollm2_gguf):
    """ggml Q4_1: blocks of 32 = fp16 d, fp16 m, 16 bytes of nibbles (low: first 16, high: last 16)."""
    raw = next(t for t in gguf.GGUFReader(smollm2_gguf).tensors if t.name == "blk.0.ffn_down.weight")
    assert raw.tensor_type == gguf.GGMLQuantizationType.Q4_1
    blocks = np.asarray(raw.data).reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = blocks[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # (blocks, 32)
    want = (d * q + m).reshape(576, 1536)  # float32 like ggml's dequantize_row_q4_1
    got = ck.get("model.layers.0.mlp.down_proj.weight")
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(want))


def test_q_and_k_are_in_transformers_layout(ck, smollm2_dir):
    """llama.cpp permutes Q/K rows for its RoPE; the reader un-permutes like transformers does."""
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        for info, w in ck.iter_tensors(LAYER0[:2]):
            # the fixture is bf16 (rounded once from these float32 values)
            assert torch.equal(w.to(torch.bfloat16), f.get_tensor(info.name)), info.name


def test_truncated_file_is_refused(smollm2_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(40 << 20))  # the header and the first tensors only
    message = r"cut\.gguf: (tensor .* ends at byte|not a readable GGUF file, truncated)"
    with pytest.raises(GGError, match=message):
        open_checkpoint(cut)


def test_gguf_behaves_like_a_model_folder(ck):
    """Its support files (config.json, tokenizer, gguf_metadata.json) appear as a folder, for writers."""
    names = sorted(p.name for p in ck.root.iterdir())
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", METADATA_FILE} <= set(names)
    assert json.loads((ck.root / "config.json").read_text()) == ck.config


def test_analyze_reads_a_gguf(smollm2_gguf):
    res = CliRunner().invoke(cli, ["analyze", str(smollm2_gguf), "--include", r"layers\.0\.mlp\.down_proj",
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    names = [t["name"] for c in doc["checkpoints"] for t in c["tensors"]]
    assert names == ["model.layers.0.mlp.down_proj.weight"]


@pytest.fixture(scope="module")
def layer0(ck, tmp_path_factory):
    """An HF folder with the layer-0 tensors of the GGUF + its config, tokenizer and GGUF metadata."""
    out = tmp_path_factory.mktemp("gguf") / "layer0"
    with CheckpointWriter(out, inputs=[ck.source]) as w:
        for info, t in ck.iter_tensors(LAYER0):
            w.add_tensor(info.name, t)
        w.copy_support_files(ck.root)  # config.json, tokenizer, gguf_metadata.json
    return out


def test_quantized_folder_round_trips_to_gguf(ck, layer0, smollm2_gguf, tmp_path):
    q, out = tmp_path / "q", tmp_path / "out.gguf"
    run = CliRunner().invoke
    assert run(cli, ["quantize-rf8", str(layer0), "-o", str(q)]).exit_code == 0
    assert (q / METADATA_FILE).is_file() and (q / "tokenizer.json").is_file()
    res = run(cli, ["dequantize", str(q), "-o", str(out), "--to", "gguf", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tensors"] == 4

    original, written = gguf.GGUFReader(smollm2_gguf), gguf.GGUFReader(out)
    # same metadata (tokenizer included) with the same GGUF types, except the file-level keys
    skip = ("GGUF.", "general.file_type", "general.quantization_version")
    fields = {k: (f.types, f.contents()) for k, f in original.fields.items() if not k.startswith(skip)}
    assert fields == {k: (f.types, f.contents()) for k, f in written.fields.items() if not k.startswith(skip)}
    assert len(fields["tokenizer.ggml.tokens"][1]) == 49152
    # same tensor names and shapes as the original file; matrices F32 (the default --dtype for F32 input)
    table = {t.name: t.shape.tolist() for t in original.tensors}
    assert {t.name: t.shape.tolist() for t in written.tensors} == {
        n: table[n] for n in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight",
                              "blk.0.attn_norm.weight")}
    assert {t.tensor_type for t in written.tensors} == {gguf.GGMLQuantizationType.F32}
    # values: the decoded RF8 weights, in llama.cpp's layout (reading back un-permutes Q/K again)
    qck = open_checkpoint(q)
    scheme = read_scheme(qck)
    qt = dict((i.name, t) for i, t in qck.iter_tensors())
    back = dict((i.name, t) for i, t in open_checkpoint(out).iter_tensors())
    for m in scheme.modules:
        assert torch.equal(back[f"{m}.weight"], decode(qt[f"{m}.weight"], qt[f"{m}.weight_scale"], scheme, m))
    assert torch.equal(back[LAYER0[3]], ck.get(LAYER0[3]))  # the norm stays as it was


def test_gguf_output_needs_metadata_and_respects_force(layer0, smollm2_gguf, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(layer0, bare)
    (bare / METADATA_FILE).unlink()
    run = CliRunner().invoke
    res = run(cli, ["dequantize", str(bare), "-o", str(tmp_path / "x.gguf"), "--to", "gguf"])
    assert res.exit_code == 1 and f"no {METADATA_FILE}" in res.output
    out = tmp_path / "y.gguf"
    res = run(cli, ["dequantize", str(bare), "-o", str(out), "--to", "gguf", "--gguf-metadata",
                    str(smollm2_gguf), "--dtype", "bf16"])
    assert res.exit_code == 0, res.output
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # 1-D stays F32
    again = run(cli, ["dequantize", str(bare), "-o", str(out), "--to", "gguf", "--gguf-metadata",
                      str(smollm2_gguf)])
    assert again.exit_code == 1 and "already exists" in again.output
