"""GF-k codebook formats: k-bit packing, Lloyd–Max tables, encode/decode round trips, baselines."""

import math

import pytest
import torch
from safetensors import safe_open

from ggcompress.errors import GGError
from ggcompress.formats.baselines import NF4_TABLE, baseline
from ggcompress.formats.gf import GF_BITS, GFCodec, gf_decode, gf_from_packed, lloyd_max
from ggcompress.formats.metrics import sqnr_db
from ggcompress.formats.packing import pack_codes, packed_cols, unpack_codes


def _bitstream_reference(codes: list[int], bits: int) -> bytes:
    """docs/gf.md §3 literally: code j at stream bits j*k.. (LSB first), bit i = bit i%8 of byte i//8."""
    out = bytearray(-(-len(codes) * bits // 8))
    for j, c in enumerate(codes):
        for b in range(bits):
            if (c >> b) & 1:
                i = j * bits + b
                out[i // 8] |= 1 << (i % 8)
    return bytes(out)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("cols", [1, 7, 8, 9, 33])
def test_pack_matches_bitstream_spec_and_round_trips(bits, cols):
    g = torch.Generator().manual_seed(bits * 100 + cols)
    codes = torch.randint(0, 1 << bits, (3, cols), generator=g, dtype=torch.int64).to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, packed_cols(cols, bits))
    for r in range(3):
        assert bytes(packed[r].tolist()) == _bitstream_reference(codes[r].tolist(), bits)
    assert torch.equal(unpack_codes(packed, bits, cols), codes)


def test_pack_two_nibbles_per_byte():
    codes = torch.tensor([[0x1, 0xF, 0x7]], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [[0xF1, 0x07]]


def test_pack_rejects_codes_too_wide():
    with pytest.raises(GGError, match="does not fit"):
        pack_codes(torch.tensor([[8]], dtype=torch.uint8), 3)


def test_lloyd_max_gaussian_matches_max_1960():
    # Max (1960), Table I: the 4-level minimum-MSE quantizer of N(0, 1) has outputs +-0.4528, +-1.510.
    x = torch.linspace(-8, 8, 200001, dtype=torch.float64)
    levels = lloyd_max(x, torch.exp(-x * x / 2), 4, iters=500)
    # Histogram spacing 8e-5 and 500 iterations: the levels are within 1e-3 of the table's 4 digits.
    assert levels.tolist() == pytest.approx([-1.510, -0.4528, 0.4528, 1.510], abs=1e-3)


@pytest.fixture(scope="module")
def minilm_weight(minilm_dir):
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as fh:
        key = next(k for k in fh.keys() if "intermediate.dense.weight" in k)  # noqa: SIM118
        return fh.get_tensor(key).float()


@pytest.mark.parametrize("bits", GF_BITS)
def test_gf_round_trip_per_k(bits, minilm_weight):
    w = minilm_weight[:256]
    q = GFCodec(bits).encode(w, "block:32")
    assert int(q.codes.max()) < (1 << bits) and q.scale.dtype == torch.float16
    # A reader rebuilds every value from the stored bytes alone: unpack, table[code] * float(scale).
    back = gf_from_packed(q.packed(), q.scale, q.table, bits, "block", 32, tuple(w.shape))
    assert torch.equal(back.codes, q.codes)
    dec = gf_decode(back)
    ref = q.table.double()[q.codes.long()] * q.scale.double().repeat_interleave(32, dim=1)[:, : w.shape[1]]
    # float32 decode of a float32 product of two exact values: within one float32 rounding (2^-24 rel).
    assert torch.allclose(dec.double(), ref, rtol=2**-23, atol=0)
    # Each extra bit buys about 6 dB; the weakest (3 bits) still clears 14 dB on this real tensor.
    assert sqnr_db(w, dec) > 14 + 5.5 * (bits - 3)
    # Stored size: packed codes + float16 scales + float32 table.
    n = w.numel()
    assert q.bits_per_weight == pytest.approx(bits + 16 / 32 + 32 * (1 << bits) / n)


def test_gf4_beats_nf4_and_q4_0_at_equal_bits(minilm_weight):
    w = minilm_weight
    q = GFCodec(4).encode(w, "block:32")  # 4.5 bits + table, like Q4_0 (fp16 scale per 32) and NF4@64
    gf = sqnr_db(w, gf_decode(q))
    for name in ("nf4@64", "q4_0", "int4_sym@64"):
        rt = baseline(name)(w)
        assert rt.bits_per_weight(w.numel()) <= q.bits_per_weight
        assert gf > sqnr_db(w, rt.decoded), name


def test_gf8_channel_beats_int8(minilm_weight):
    w = minilm_weight
    gf = sqnr_db(w, gf_decode(GFCodec(8).encode(w, "channel")))
    assert gf > sqnr_db(w, baseline("int8")(w).decoded) + 1.0


def test_gf_validation_names_the_tensor(minilm_weight):
    q = GFCodec(4).encode(minilm_weight[:8], "channel")
    with pytest.raises(GGError, match="layer.x: packed gf4 codes"):
        gf_from_packed(q.packed()[:, :-1], q.scale, q.table, 4, "channel", None, (8, 384), name="layer.x")
    bad = q.table.clone()
    bad[3] = math.nan
    with pytest.raises(GGError, match="NaN"):
        gf_from_packed(q.packed(), q.scale, bad, 4, "channel", None, (8, 384))


def test_baselines_sizes_and_levels(minilm_weight):
    w = minilm_weight[:64]
    n = w.numel()
    assert baseline("q4_0")(w).bits_per_weight(n) == 4.5
    assert baseline("q4_1")(w).bits_per_weight(n) == 5.0
    assert baseline("q8_0")(w).bits_per_weight(n) == 8.5
    rt = baseline("nf4@64")(w)
    assert rt.bits_per_weight(n) == 4.5
    # every NF4 value is a table level times its block's absmax
    absmax = w.reshape(64, -1, 64).abs().amax(dim=2, keepdim=True)
    z = (rt.decoded.reshape(64, -1, 64) / absmax).reshape(-1)
    table = torch.tensor(NF4_TABLE)
    assert float((z[:, None] - table[None]).abs().amin(dim=1).max()) < 1e-6


def test_quantize_gf_folder_loads_and_dequantizes(minilm_dir, tmp_path):
    from safetensors import safe_open as st_open

    from ggcompress.formats.dequantize import dequantize_checkpoint
    from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint
    from ggcompress.io.quantized import load_quantized, quantized_modules

    out = tmp_path / "q"
    cfg = QuantizeConfig(format="gf4", granularity="block:32", include=r"layer\.0\.")
    doc = quantize_checkpoint(minilm_dir, out, cfg)
    totals = doc["checkpoints"][0]["totals"]
    assert totals["quantized_tensors"] == 6 and 4.5 < totals["bits_per_weight"] < 4.6
    name = "encoder.layer.0.attention.self.query.weight"
    with st_open(str(out / "model.safetensors"), "pt") as fh:
        assert fh.get_slice(name).get_dtype() == "U8" and fh.get_slice(name).get_shape() == [1, 384, 192]
        assert fh.get_slice(name + "_scale").get_dtype() == "F16"
        assert fh.get_tensor(name + "_shape").tolist() == [384, 384]
    with st_open(str(minilm_dir / "model.safetensors"), "pt") as fh:
        w = fh.get_tensor(name)
    model, _ = load_quantized(out, tokenizer=False)
    layers = quantized_modules(model)
    assert len(layers) == 6
    layer = layers[name.removesuffix(".weight")]
    assert layer.bits == 4 and tuple(layer.codes.shape) == (384, 192)  # codes stay packed in memory
    served = layer.dequantize_weight()
    x = torch.randn(3, 384, generator=torch.Generator().manual_seed(0))
    # the packed CPU path computes x @ W.T + b with the same W (fp32 matmul: 1e-5 relative slack)
    assert torch.allclose(layer(x), x @ served.t() + layer.bias, rtol=1e-5, atol=1e-5)
    dequantize_checkpoint(out, tmp_path / "d")
    with st_open(str(tmp_path / "d" / "model.safetensors"), "pt") as fh:
        dense = fh.get_tensor(name)
    assert torch.equal(served, dense)  # the loader and dequantize rebuild the same float32 values
    assert sqnr_db(w, dense) > 20  # 4-bit on a real tensor: ~22 dB measured


def test_auto_picks_per_tensor_within_budget_and_loads(minilm_dir, tmp_path):
    from ggcompress.formats.auto import candidates, stored_bits
    from ggcompress.formats.dequantize import dequantize_checkpoint
    from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint
    from ggcompress.io.quantized import load_quantized, quantized_modules

    # exact size model: gf4 at block:32 on 384x384 = 4 + 16/32 + (64 B table + 16 B shape) / 147456 weights
    assert stored_bits("gf4", "block:32", (384, 384)) == pytest.approx(4.5 + 8 * 80 / 384**2)
    assert {c.format for c in candidates(8.1, (384, 384))} == {"gf3", "gf4", "gf5", "gf6", "gf8", "int8",
                                                                "fp8_e4m3", "rf8"}
    out = tmp_path / "q"
    cfg = QuantizeConfig(format="auto", bits=8.1, include=r"layer\.0\.(attention\.self|output)")
    doc = quantize_checkpoint(minilm_dir, out, cfg)
    rows = [t for t in doc["checkpoints"][0]["tensors"] if t["action"] == "quantized"]
    assert len(rows) == 4 and all(t["bits_per_weight"] <= 8.1 for t in rows)
    # every chosen format is one of the candidates for its shape
    for t in rows:
        assert t["format"].split()[0] in {c.format for c in candidates(8.1, tuple(t["shape"]))}
    model, _ = load_quantized(out, tokenizer=False)
    layers = quantized_modules(model)
    assert len(layers) == 4
    dequantize_checkpoint(out, tmp_path / "d")
    with safe_open(str(tmp_path / "d" / "model.safetensors"), "pt") as fh:
        for name, layer in layers.items():
            assert torch.equal(layer.dequantize_weight(), fh.get_tensor(name + ".weight"))
    with pytest.raises(GGError, match="needs --bits"):
        QuantizeConfig(format="auto").checked()


def test_zero_groups_decode_to_zero(minilm_weight):
    w = minilm_weight[:4].clone()
    w[1] = 0.0
    w[2, :32] = 0.0
    for gran in ("channel", "block:32"):
        dec = gf_decode(GFCodec(4).encode(w, gran))
        # scale 2^-24 times a level of magnitude <= 1: below 6e-8, vs weights of order 1e-2
        assert float(dec[1].abs().max()) < 6e-8
    assert float(dec[2, :32].abs().max()) < 6e-8
