"""pack --quant none: bit-exact containers for every dtype (special values included), byte-plane layouts
against integer arithmetic, sizes against zlib, corruption caught, CLI flag handling."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ggcompress.cli import cli
from ggcompress.codec import lossless as L
from ggcompress.codec import pack as P
from ggcompress.errors import GGError
from ggcompress.io.checkpoint import TORCH_TO_ST, open_checkpoint


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Integer view, so comparisons are bit for bit (-0.0 vs 0.0, NaN payloads)."""
    views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(views[t.element_size()])


def gg_weights(n: int, beta: float, seed: int) -> torch.Tensor:
    """Generalized-Gaussian(β) samples, std ~0.02: |x| = Gamma(1/β)^(1/β) with a random sign."""
    rng = np.random.default_rng(seed)
    mag = rng.gamma(1.0 / beta, 1.0, n) ** (1.0 / beta)
    return torch.from_numpy(np.where(rng.random(n) < 0.5, -mag, mag) * 0.02)


def with_specials(x: torch.Tensor) -> torch.Tensor:
    """x (float) with -0.0, ±inf, NaNs with distinct payloads and subnormals written into its first slots."""
    x = x.clone()
    info = torch.finfo(x.dtype)
    x[:6] = torch.tensor([-0.0, 0.0, float("inf"), float("-inf"), info.tiny / 4, -info.tiny / 8]).to(x.dtype)
    b = bits_of(x)
    nan_bits = {torch.float32: [0x7FC00001, 0x7F800123, 0xFFC0BEEF - 2**32],
                torch.bfloat16: [0x7FC1, 0x7F81, 0xFFC3 - 2**16],
                torch.float16: [0x7E01, 0x7C05, 0xFE07 - 2**16]}[x.dtype]
    b[6:6 + len(nan_bits)] = torch.tensor(nan_bits, dtype=b.dtype)
    return x


def folder(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    return path


@pytest.fixture
def every_dtype(tmp_path: Path) -> Path:
    g = gg_weights(3 * L.CHUNK + 78, 0.8, 0)  # several chunks per plane, a short last one
    gen = torch.Generator().manual_seed(1)
    return folder(tmp_path / "m", {
        "f32.weight": with_specials(g.to(torch.float32)).reshape(-1, 7),
        "bf16.weight": with_specials(g.to(torch.bfloat16)),
        "f16.weight": with_specials(g.to(torch.float16)),
        "f64.bias": g[:1000].clone(),
        "f8a": (g[:5000] * 50).to(torch.float8_e4m3fn),
        "f8b": (g[:5000] * 50).to(torch.float8_e5m2),
        "ids": torch.arange(4096, dtype=torch.int64) * 3 - 7,
        "i32": torch.randint(-2**31, 2**31 - 1, (999,), dtype=torch.int32, generator=gen),
        "i16": torch.randint(-300, 300, (999,), dtype=torch.int16, generator=gen),
        "i8": torch.randint(-128, 127, (999,), dtype=torch.int8, generator=gen),
        "u8": torch.randint(0, 4, (999,), dtype=torch.uint8, generator=gen),
        "mask": torch.rand(999, generator=gen) < 0.1,
        "zeros": torch.zeros(3, 5, dtype=torch.bfloat16),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 4),
    })


def test_every_dtype_restores_bit_exactly(every_dtype: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ggz"
    doc = P.pack(every_dtype, out, P.PackOptions(quant="none", workers=2))
    source = {info.name: x for info, x in open_checkpoint(every_dtype).iter_tensors()}
    restored = dict(P.read_packed(out))
    assert list(restored) == list(source)
    for name, x in source.items():
        y = restored[name]
        assert y.dtype == x.dtype and y.shape == x.shape, name
        assert torch.equal(bits_of(y), bits_of(x)), name
    ck = doc["checkpoints"][0]
    assert ck["quantization"] == {"method": "none"}
    assert {r["encoding"] for r in ck["tensors"]} == {"lossless"}
    # The container says what an old reader needs to know: version 5, as its exponent chunks are split
    # rANS sections (without them 2, test_split_sections_need_version_5; step/codes containers stay 1).
    assert P.open_packed(out).header["format_version"] == P.LOSSLESS_SPLIT_VERSION == 5
    assert out.read_bytes()[8:12] == (5).to_bytes(4, "little")
    # unpack writes the same safetensors bytes; packing again gives the same container.
    P.unpack(out, tmp_path / "r")
    restored = (tmp_path / "r" / "model.safetensors").read_bytes()
    assert restored == (every_dtype / "model.safetensors").read_bytes()
    P.pack(tmp_path / "r", tmp_path / "again.ggz", P.PackOptions(quant="none", workers=1))
    assert (tmp_path / "again.ggz").read_bytes() == out.read_bytes()


def sections_of(blob: bytes, planes: int, n: int) -> list[tuple[int, int, int]]:
    """(kind, start, length) of each section of a lossless tensor's bytes (docs/format.md §4)."""
    count = planes * -(-n // L.CHUNK)
    d = np.frombuffer(blob[:8 * count], dtype="<u4").reshape(count, 2).astype(np.int64)
    out, at = [], 8 * count
    for kind, length in d.tolist():
        out.append((kind, at, length))
        at += length + (-length % 4)
    return out


def test_split_sections_need_version_5(every_dtype: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    """Split rANS sections: same sizes as plain rANS, version 5 only when written, refused below it."""
    import hostile

    split = tmp_path / "split.ggz"
    P.pack(every_dtype, split, P.PackOptions(quant="none", workers=1))
    with monkeypatch.context() as m:  # a writer without split sections: what version 2 holds
        m.setattr(L, "SPLIT_HEADS", ())
        plain = tmp_path / "plain.ggz"
        P.pack(every_dtype, plain, P.PackOptions(quant="none", workers=1))
    assert plain.read_bytes()[8:12] == (2).to_bytes(4, "little")
    a, b = P.open_packed(split), P.open_packed(plain)
    kinds = {L.RANS: 0, L.SPLIT: 0}
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        data = split.read_bytes()[a.data_start + ta["offset"]:][:ta["length"]]
        n = math.prod(ta["shape"])
        for kind, _, _ in sections_of(data, ta["lossless"]["planes"], n):
            kinds[kind] = kinds.get(kind, 0) + 1
        # the split changes no rate: at most a 32-bit word per section either way
        assert abs(ta["length"] - tb["length"]) <= 4 * len(sections_of(data, ta["lossless"]["planes"], n))
    # the full exponent chunks of f32 and bf16 (fp16's plane 0 holds 3 mantissa bits: too flat for a head)
    assert kinds[L.SPLIT] == 6
    # both read back bit-exactly (the version-2 one is what earlier writers made)
    for path in (split, plain):
        restored = dict(P.read_packed(path))
        for info, x in open_checkpoint(every_dtype).iter_tensors():
            assert torch.equal(bits_of(restored[info.name]), bits_of(x)), (path.name, info.name)
    # a version-4 reader refuses version 5 at the preamble; split sections in a version-4 container
    # are refused before decoding
    version, header, body = hostile.split_ggz(split.read_bytes())
    with monkeypatch.context() as m:
        m.setattr(P, "READ_VERSION", 4)
        assert "container format version 5 is newer" in hostile.unpack_error(split, tmp_path / "o1")

    def relabel(h: dict) -> None:
        h["format_version"] = 4
    v4 = hostile.edited_ggz(tmp_path / "v4.ggz", header, relabel, 4, body)
    assert "needs container format version 5" in hostile.unpack_error(v4, tmp_path / "o2")


@pytest.mark.parametrize("head", [0, 1, 255])
def test_split_section_with_a_bad_head_is_refused(head: int) -> None:
    x = gg_weights(2 * L.CHUNK, 0.8, 5).to(torch.bfloat16)
    raw = x.view(torch.uint8).numpy()
    enc = L.encode_tensor(raw, "BF16")
    found = [start for kind, start, _ in sections_of(enc.blob, 2, x.numel()) if kind == L.SPLIT]
    assert len(found) == 2
    blob = bytearray(enc.blob)
    blob[found[0] + 1] = head
    with pytest.raises(GGError, match="split rANS head"):
        L.decode_tensor(bytes(blob), {**enc.entry, "name": "x"}, x.numel())
    with pytest.raises(GGError, match="needs container format version 5"):
        L.decode_tensor(enc.blob, {**enc.entry, "name": "x"}, x.numel(), split=False)
    assert np.array_equal(L.decode_tensor(enc.blob, {**enc.entry, "name": "x"}, x.numel()), raw)


def test_step_containers_keep_version_1(every_dtype: Path, tmp_path: Path) -> None:
    # NaN weights cannot be stepped: exclude them
    P.pack(every_dtype, tmp_path / "s.ggz", P.PackOptions(quant="step:8", exclude="weight"))
    assert P.open_packed(tmp_path / "s.ggz").header["format_version"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_planes_match_integer_arithmetic(dtype: torch.dtype) -> None:
    """Plane definitions of docs/format.md, computed independently on the integer bit patterns."""
    x = with_specials(gg_weights(10_000, 1.0, 2).to(dtype))
    u = bits_of(x).numpy().astype(np.int64) & ((1 << (8 * x.element_size())) - 1)
    st = TORCH_TO_ST[dtype]
    planes = L.split_planes(x.view(torch.uint8).numpy(), L.layout_of(st), x.element_size())
    if dtype == torch.float32:
        want = [(u >> 23) & 0xFF, ((u >> 31) << 7) | ((u >> 16) & 0x7F), (u >> 8) & 0xFF, u & 0xFF]
    else:
        want = [(u >> 7) & 0xFF, ((u >> 15) << 7) | (u & 0x7F)]
    assert len(planes) == len(want)
    for p, w in zip(planes, want, strict=True):
        assert np.array_equal(p.astype(np.int64), w)
    merged = L.merge_planes(planes, L.layout_of(st), x.element_size())
    assert np.array_equal(merged, x.view(torch.uint8).numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gg_weights_beat_zlib_and_the_exponent_bound(dtype: torch.dtype) -> None:
    """Smaller than zlib -9 (an independent general-purpose reference) and within 1% of the chunk
    entropy plus tables (the model is order-0 per chunk: it cannot beat it, and tables are small)."""
    x = gg_weights(4 * L.CHUNK, 0.7, 3).to(dtype)
    raw = x.view(torch.uint8).numpy()
    enc = L.encode_tensor(raw, TORCH_TO_ST[dtype], workers=1, min_gain=0.0)
    assert len(enc.blob) < len(zlib.compress(raw.tobytes(), 9))
    assert 8 * len(enc.blob) < 1.01 * enc.entropy_bits + enc.table_bits
    assert enc.kinds["rans"] >= 4  # every exponent chunk is rANS-coded
    back = L.decode_tensor(enc.blob, {**enc.entry, "name": "x"}, x.numel(), workers=2)
    assert np.array_equal(back, raw)


def test_real_fixtures_bit_exact(minilm_dir: Path, smollm2_dir: Path, tmp_path: Path) -> None:
    # MiniLM (fp32) end to end through the container: unpack writes the identical safetensors file.
    out = tmp_path / "minilm.ggz"
    doc = P.pack(minilm_dir, out, P.PackOptions(quant="none"))
    s = doc["checkpoints"][0]["summary"]
    assert s["ratio"] > 1.2  # exponents alone save ~5.4 of 32 bits (measured 1.21x)
    P.unpack(out, tmp_path / "r")
    restored = (tmp_path / "r" / "model.safetensors").read_bytes()
    assert restored == (Path(minilm_dir) / "model.safetensors").read_bytes()
    # SmolLM2 (bf16): the largest tensors (embedding, one MLP matrix) round trip through the codec.
    ck = open_checkpoint(smollm2_dir)
    names = [n for n in ("model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight",
                         "model.norm.weight") if n in {t.name for t in ck.tensors}]
    assert len(names) == 3
    for name, x in ck.iter_tensors(names):
        raw = x.contiguous().view(torch.uint8).numpy().reshape(-1)
        enc = L.encode_tensor(raw, "BF16", workers=2)
        assert np.array_equal(L.decode_tensor(enc.blob, {**enc.entry, "name": name}, x.numel(), 2), raw)
        if x.dim() == 2:
            assert 8 * len(enc.blob) / x.numel() < 11.0  # exponent ~2.6 bits + 8 raw sign/mantissa bits


def test_corruption_is_caught(every_dtype: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ggz"
    P.pack(every_dtype, out, P.PackOptions(quant="none"))
    packed = P.open_packed(out)
    entry = next(t for t in packed.tensors if t["name"] == "f32.weight")
    blob = bytearray(out.read_bytes())
    blob[packed.data_start + entry["offset"] + entry["length"] // 3] ^= 0x10
    bad = tmp_path / "bad.ggz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(GGError, match=r"tensor 'f32.weight': checksum mismatch"):
        list(P.read_packed(bad))
    # With the section CRC fixed up (a buggy writer), decoding or the decoded-value CRC still refuses it.
    header = dict(packed.header)
    data = bytes(blob[packed.data_start:])
    entry["crc32"] = zlib.crc32(data[entry["offset"]:entry["offset"] + entry["length"]])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    version = packed.header["format_version"]
    bad.write_bytes(P.PREAMBLE.pack(P.MAGIC, version, zlib.crc32(text), len(text), len(data)) + text + data)
    with pytest.raises(GGError, match=r"f32\.weight"):
        list(P.read_packed(bad))


def test_cli_flags(every_dtype: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["pack", str(every_dtype), "-o", str(tmp_path / "a.ggz"), "--lossless", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["settings"]["quant"] == "none" and "sqnr_db" not in doc["checkpoints"][0]["summary"]
    r = runner.invoke(cli, ["pack", str(every_dtype), "-o", str(tmp_path / "b.ggz"), "--lossless",
                            "--quant", "step:8"])
    assert r.exit_code == 2 and "contradict" in r.output
    r = runner.invoke(cli, ["pack", str(every_dtype), "-o", str(tmp_path / "c.ggz"), "--quant", "none",
                            "--include", "f32"])
    assert r.exit_code == 1 and "do not apply" in r.output
    r = runner.invoke(cli, ["pack", str(every_dtype), "-o", str(tmp_path / "d.ggz"), "--quant", "none",
                            "--tensors"])
    assert r.exit_code == 0 and "lossless" in r.output
