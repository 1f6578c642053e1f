"""pack / unpack end to end: exact restore on real models, identical re-pack, rate parity with analyze,
near-entropy rANS, corrupt / truncated / newer containers, gates and CLI errors."""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ggcompress.cli import cli
from ggcompress.codec import pack as P
from ggcompress.errors import GGError
from ggcompress.io.checkpoint import open_checkpoint
from ggcompress.stats import rate
from ggcompress.stats.analyze import AnalyzeOptions, analyze

STEP = 2.0**-8


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Integer view, so comparisons are bit for bit (-0.0 vs 0.0, NaN payloads)."""
    views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(views[t.element_size()])


def reference_restore(x: torch.Tensor, step: float) -> torch.Tensor:
    """Independent of rate.py: round half to even in float64 to an integer symbol (so -0.0 becomes +0),
    times step, rounded once to x's dtype."""
    return (torch.round(x.to(torch.float64) / step).long().to(torch.float64) * step).to(x.dtype)


def tiny_folder(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 64}))
    (path / "tokenizer.json").write_text('{"version": "1.0"}')
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    return tiny_folder(tmp_path / "tiny", {
        "a.weight": (torch.randn(96, 64, generator=g) * 0.05).to(torch.bfloat16),
        "b.weight": torch.randn(64, 80, generator=g) * 0.02,
        "norm.weight": torch.ones(64),
        "ids": torch.arange(10, dtype=torch.int64),
        "zero.weight": torch.zeros(8, 8),
    })


@pytest.fixture(scope="module")
def minilm_packed(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("packed") / "minilm.ggz"
    doc = P.pack(minilm_dir, out, P.PackOptions(quant="step:8"))
    return out, doc


# ------------------------------------------------------------------------------------ real models


def test_minilm_restores_exactly_and_repacks_to_identical_bytes(minilm_dir: Path, minilm_packed, tmp_path):
    out, doc = minilm_packed
    restored = tmp_path / "restored"
    P.unpack(out, restored)
    src, back = open_checkpoint(minilm_dir), open_checkpoint(restored)
    assert [t.name for t in src.tensors] == [t.name for t in back.tensors]
    coded = 0
    for (info, x), (_, y) in zip(src.iter_tensors(), back.iter_tensors(), strict=True):
        assert y.dtype == x.dtype and y.shape == x.shape
        if x.is_floating_point() and x.ndim >= 2:
            coded += 1
            assert torch.equal(bits_of(y), bits_of(reference_restore(x, STEP))), info.name
        else:
            assert torch.equal(bits_of(y), bits_of(x)), info.name
    assert coded == doc["checkpoints"][0]["summary"]["coded_tensors"] == 40
    for f in ("config.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"):
        assert (restored / f).read_bytes() == (minilm_dir / f).read_bytes()
    assert back.metadata == src.metadata
    again = tmp_path / "again.ggz"
    P.pack(restored, again, P.PackOptions(quant="step:8"))
    assert again.read_bytes() == out.read_bytes()


def test_eg_bits_equal_analyze_and_a_textbook_count(minilm_dir: Path, minilm_packed) -> None:
    _, doc = minilm_packed
    rows = {r["name"]: r for r in doc["checkpoints"][0]["tensors"]}
    names = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.3.intermediate.dense.weight",
             "embeddings.word_embeddings.weight"]
    rep = analyze([str(minilm_dir)], AnalyzeOptions(step=STEP, eg_k=0, fit="moments",
                                                    include="|".join(map(re.escape, names))))
    for t in rep["checkpoints"][0]["tensors"]:
        row = rows[t["name"]]
        assert row["payload_bits"] == row["eg_bits"]  # the eg coder writes exactly the measure
        assert math.isclose(t["eg_bits"] * t["numel"], row["payload_bits"], rel_tol=1e-12), t["name"]
    # Textbook: rank by count (ties: smaller |q|, negative first), 2·floor(log2(r + 1)) + 1 bits at k = 0.
    x = open_checkpoint(minilm_dir).get(names[0])
    q = torch.round(x.double() / STEP).long().reshape(-1).tolist()
    counts = Counter(q)
    order = sorted(counts, key=lambda s: (-counts[s], abs(s), s > 0))
    bits = sum(counts[s] * (2 * int(math.log2(r + 1)) + 1) for r, s in enumerate(order))
    assert rows[names[0]]["payload_bits"] == bits


def test_rans_is_near_entropy_and_restores_the_same_values(minilm_dir: Path, minilm_packed, tmp_path):
    eg_out, _ = minilm_packed
    out = tmp_path / "rans.ggz"
    doc = P.pack(minilm_dir, out, P.PackOptions(quant="step:8", coder="rans", include=r"layer\.[01]\."))
    rows = [r for r in doc["checkpoints"][0]["tensors"] if r["encoding"] != "raw"]
    assert len(rows) == 12 and all(r["coder"] == "rans" for r in rows)
    for r in rows:
        # rANS with 24-bit weights: < 0.2% above the empirical entropy plus two 32-bit words.
        assert r["payload_bits"] <= r["entropy_bits"] * 1.002 + 64, r["name"]
        assert r["payload_bits"] >= r["entropy_bits"] * (1 - 1e-9) - 1
        assert r["bits_per_param"] * r["numel"] == pytest.approx(r["payload_bits"] + r["table_bits"])
    s = doc["checkpoints"][0]["summary"]
    assert 0 < s["overhead_vs_entropy"] < 0.02 and s["coded_bits_per_param"] < s["eg_bits_per_param"]
    eg = dict(P.read_packed(eg_out, [r["name"] for r in rows]))
    for name, t in P.read_packed(out, [r["name"] for r in rows]):
        assert torch.equal(bits_of(t), bits_of(eg[name]))


def test_smollm2_sample_round_trip_and_load_from_ggz(smollm2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "smol.ggz"
    res = run("pack", str(smollm2_dir), "-o", str(out), "--quant", "step:2^-10", "--coder", "rans",
              "--include", r"layers\.0\.(mlp|self_attn)", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "ggcompress.pack/1" and doc["checkpoints"][0]["summary"]["coded_tensors"] == 7
    src = open_checkpoint(smollm2_dir)
    coded = {r["name"] for r in doc["checkpoints"][0]["tensors"] if r["encoding"] != "raw"}
    names = sorted(coded) + ["model.norm.weight", "model.layers.1.mlp.up_proj.weight"]
    for name, t in P.read_packed(out, names):
        x = src.get(name)
        want = reference_restore(x, 2.0**-10) if name in coded else x
        assert t.dtype == torch.bfloat16 and torch.equal(bits_of(t), bits_of(want)), name
    from ggcompress.io.loading import load_model

    loaded = load_model(out)
    assert loaded.kind == "ggz"
    w = dict(loaded.model.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    expected = reference_restore(src.get("model.layers.0.mlp.up_proj.weight"), 2.0**-10).float()
    assert torch.equal(w.detach(), expected)
    import ggcompress

    model = ggcompress.load(out)  # the library entry point reads containers too
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight.detach().float(), expected)


def test_rf8_packs_codes_and_restores_the_quantized_folder(minilm_dir: Path, tmp_path: Path) -> None:
    from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint

    include = r"layer\.0\.attention"
    out = tmp_path / "rf8.ggz"
    doc = P.pack(minilm_dir, out, P.PackOptions(quant="rf8", coder="rans", include=include))
    s = doc["checkpoints"][0]["summary"]
    assert s["coded_tensors"] == 4 and s["sqnr_db"] > 25 and s["coded_bits_per_param"] < 8
    ref = quantize_checkpoint(str(minilm_dir), tmp_path / "ref", QuantizeConfig(include=include))
    assert ref["checkpoints"][0]["totals"]["sqnr_db"] == s["sqnr_db"]
    restored = tmp_path / "restored"
    P.unpack(out, restored)
    a, b = open_checkpoint(tmp_path / "ref"), open_checkpoint(restored)
    for (info, x), (_, y) in zip(a.iter_tensors(), b.iter_tensors(), strict=True):
        assert torch.equal(bits_of(x), bits_of(y)), info.name
    assert (restored / "config.json").read_bytes() == (tmp_path / "ref/config.json").read_bytes()
    again = tmp_path / "again.ggz"
    P.pack(restored, again, P.PackOptions(coder="rans"))
    assert again.read_bytes() == out.read_bytes()
    with pytest.raises(GGError, match="already quantized"):
        P.pack(restored, tmp_path / "x.ggz", P.PackOptions(quant="step:8"))
    with pytest.raises(GGError, match="--include/--exclude"):
        P.pack(restored, tmp_path / "x.ggz", P.PackOptions(include="layer"))


# --------------------------------------------------------------------------------- small checkpoints


def test_tiny_restores_every_kind_of_tensor(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.ggz"
    doc = P.pack(tiny, out, P.PackOptions(quant="step:6", eg_k=None))
    rows = {r["name"]: r for r in doc["checkpoints"][0]["tensors"]}
    assert rows["zero.weight"]["coder"] == "const" and rows["norm.weight"]["encoding"] == "raw"
    x = open_checkpoint(tiny).get("b.weight")
    assert rows["b.weight"]["k"] == rate.SymbolHistogram(2.0**-6).update(x).best_k()
    got = dict(P.read_packed(out))
    src = open_checkpoint(tiny)
    for name in ("a.weight", "b.weight", "zero.weight"):
        assert torch.equal(bits_of(got[name]), bits_of(reference_restore(src.get(name), 2.0**-6))), name
    for name in ("norm.weight", "ids"):
        assert torch.equal(got[name], src.get(name))
    assert dict(P.read_packed_files(out)) == {"config.json": (tiny / "config.json").read_bytes(),
                                              "tokenizer.json": (tiny / "tokenizer.json").read_bytes()}


def test_non_power_of_two_step_keeps_bf16_and_repacks_identically(tmp_path: Path) -> None:
    # bf16(q·0.004) is inexact, but it is at least as close to q·0.004 as the bf16 weight it came from
    # (|x − q·step| <= step/2), so it re-quantizes to q and bf16 is kept; unpack -> pack is lossless.
    x = (torch.randn(64, 64, generator=torch.Generator().manual_seed(1)) * 2).to(torch.bfloat16)
    folder = tiny_folder(tmp_path / "m", {"w": x})
    out = tmp_path / "m.ggz"
    P.pack(folder, out, P.PackOptions(quant="step:0.004"))
    (_, t), = P.read_packed(out)
    q = torch.round(x.double() / 0.004)
    assert t.dtype == torch.bfloat16 and torch.equal(t, (q * 0.004).to(torch.bfloat16))
    assert torch.equal(torch.round(t.double() / 0.004), q)
    P.unpack(out, tmp_path / "back")
    P.pack(tmp_path / "back", tmp_path / "again.ggz", P.PackOptions(quant="step:0.004"))
    assert (tmp_path / "again.ggz").read_bytes() == out.read_bytes()


def test_symbols_that_do_not_survive_the_dtype_are_restored_wider() -> None:
    # Not reachable from bf16 weights (see above), but the container must never store a lossy restore.
    symbols = torch.arange(1000, 1100)
    assert P._restored_dtype(symbols, 0.004, torch.bfloat16) == torch.float32
    assert P._restored_dtype(symbols, 2.0**-8, torch.bfloat16) == torch.float32  # 1001 needs 10 bits
    assert P._restored_dtype(torch.arange(-256, 257), 2.0**-8, torch.bfloat16) == torch.bfloat16


def test_nan_weights_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    w = torch.zeros(16, 16)
    w[3, 4] = float("nan")
    folder = tiny_folder(tmp_path / "m", {"bad.weight": w})
    with pytest.raises(GGError, match="bad.weight"):
        P.pack(folder, tmp_path / "m.ggz")
    assert not (tmp_path / "m.ggz").exists() and list(tmp_path.glob(".m.ggz*")) == []


# ----------------------------------------------------------------------------------- corruption


def _layout(path: Path) -> tuple[dict, int]:
    packed = P.open_packed(path)
    return packed.header, packed.data_start


def _rewrite_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(P.PREAMBLE.pack(P.MAGIC, P.FORMAT_VERSION, zlib.crc32(text), len(text), len(data))
                     + text + data)


@pytest.mark.parametrize("coder", ["eg", "rans"])
def test_flipped_bytes_are_caught_naming_the_tensor(tiny: Path, tmp_path: Path, coder: str) -> None:
    out = tmp_path / "t.ggz"
    P.pack(tiny, out, P.PackOptions(coder=coder))
    header, start = _layout(out)
    entry = next(t for t in header["tensors"] if t["name"] == "b.weight")
    blob = bytearray(out.read_bytes())
    payload = entry[coder]
    pos = start + entry["offset"] + payload["offset"] + payload["length"] // 2
    blob[pos] ^= 0x04
    bad = tmp_path / "bad.ggz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(GGError, match=r"tensor 'b.weight': checksum mismatch"):
        list(P.read_packed(bad))
    # Same flip with the section checksum fixed up (as a buggy writer would): the decoded-value
    # checksum (or the lane table) still refuses it.
    data = bytes(blob[start:])
    entry["crc32"] = zlib.crc32(data[entry["offset"]:entry["offset"] + entry["length"]])
    _rewrite_header(bad, header, data)
    with pytest.raises(GGError, match=r"b\.weight"):
        dict(P.read_packed(bad))
    res = run("unpack", str(bad), "-o", str(tmp_path / "never"))
    assert res.exit_code == 1 and "b.weight" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "never").exists()


def test_header_truncation_version_and_magic_errors(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.ggz"
    P.pack(tiny, out)
    good = out.read_bytes()
    header, start = _layout(out)
    bad = tmp_path / "bad.ggz"

    bad.write_bytes(good[:40] + bytes([good[40] ^ 1]) + good[41:])
    with pytest.raises(GGError, match="header checksum mismatch"):
        P.open_packed(bad)
    last = header["tensors"][-1]
    cut = next(t for t in header["tensors"] if t["name"] == "b.weight")
    bad.write_bytes(good[:start + cut["offset"] + 10])
    with pytest.raises(GGError, match=r"truncated .*tensor 'b.weight' and \d+ more cut off"):
        P.open_packed(bad)
    bad.write_bytes(good[:start + last["offset"] + 1])
    with pytest.raises(GGError, match=f"truncated .*tensor '{last['name']}' cut off"):
        list(P.read_packed(bad))
    bad.write_bytes(good + b"\0")
    with pytest.raises(GGError, match="unexpected bytes"):
        P.open_packed(bad)
    bad.write_bytes(good[:8] + struct.pack("<I", P.READ_VERSION + 1) + good[12:])
    with pytest.raises(GGError, match=f"format version {P.READ_VERSION + 1} is newer"):
        P.open_packed(bad)
    bad.write_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(GGError, match="not a ggcompress container"):
        P.open_packed(bad)
    evil = json.loads(json.dumps(header))
    evil["files"][0]["path"] = "../escape.json"
    _rewrite_header(bad, evil, good[start:])
    with pytest.raises(GGError, match="refusing carried file name"):
        P.unpack(bad, tmp_path / "never")
    assert not (tmp_path / "never").exists() and not (tmp_path / "escape.json").exists()


# ------------------------------------------------------------------------------------------- CLI


def test_cli_gates_json_force_and_several_inputs(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.ggz"
    res = run("pack", str(tiny), "-o", str(out), "--fail-if", "ratio<1.5", "--fail-if", "sqnr_db<20")
    assert res.exit_code == 0, res.output
    res = run("pack", str(tiny), "-o", str(out))
    assert res.exit_code == 1 and "already exists" in res.stderr
    res = run("pack", str(tiny), "-o", str(out), "--force", "--json", "--fail-if", "ratio<100")
    assert res.exit_code == 1 and "FAIL" in res.stderr and "breaks ratio<100" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["passed"] is False and doc["checkpoints"][0]["failed_gates"][0]["metric"] == "ratio"
    # usage errors (exit 2) before packing: pack knows its metric names up front (docs/cli.md)
    res = run("pack", str(tiny), "-o", str(out), "--force", "--fail-if", "no_such_metric>1")
    assert res.exit_code == 2 and "unknown metric 'no_such_metric'" in res.stderr and "ratio" in res.stderr
    res = run("pack", str(tiny), "-o", str(out), "--force", "--fail-if", "ratio=3")
    assert res.exit_code == 2 and "bad gate" in res.stderr
    other = tiny_folder(tmp_path / "other", {"w.weight": torch.ones(4, 4)})
    res = run("pack", str(tiny), str(other), "-o", str(tmp_path / "many"))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["other.ggz", "tiny.ggz"]
    res = run("unpack", str(tmp_path / "many" / "other.ggz"), "-o", str(tmp_path / "o"), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["schema"] == "ggcompress.unpack/1"
    assert torch.equal(open_checkpoint(tmp_path / "o").get("w.weight"), torch.ones(4, 4))


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--quant", "step:x"], 1, "step 'x'"),
    (["--quant", "int4"], 1, "expected step:S"),
    (["--coder", "huffman"], 2, "huffman"),
    (["--eg-k", "40"], 2, "0..16"),
    (["--include", "("], 2, "not a valid regular expression"),
])
def test_cli_usage_errors(tiny: Path, tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    res = run("pack", str(tiny), "-o", str(tmp_path / "x.ggz"), *args)
    assert res.exit_code == code and needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.ggz").exists()


def test_unpack_refuses_non_containers(tiny: Path, tmp_path: Path) -> None:
    res = run("unpack", str(tiny / "model.safetensors"), "-o", str(tmp_path / "x"))
    assert res.exit_code == 1 and "not a ggcompress container" in res.stderr


# ------------------------------------------------------------------------------ spec conformance


def _spec_reader(path: Path) -> dict[str, torch.Tensor]:
    """A reader written from docs/format.md alone (eg/const/raw, step quantization), in plain Python."""
    blob = path.read_bytes()
    magic, version, crc, hlen, dlen = struct.unpack("<8sIIQQ", blob[:32])
    assert magic == b"\x89GGZ\r\n\x1a\n" and version == 1 and len(blob) == 32 + hlen + dlen
    text = blob[32:32 + hlen]
    assert zlib.crc32(text) == crc and hlen % 8 == 0
    header = json.loads(text)
    data = blob[32 + hlen:]
    step = header["quantization"]["step"]
    out = {}
    for t in header["tensors"]:
        raw = data[t["offset"]:t["offset"] + t["length"]]
        assert zlib.crc32(raw) == t["crc32"]
        dtype = {"BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64}[t["dtype"]]
        n = math.prod(t["shape"])
        if t["encoding"] == "raw":
            out[t["name"]] = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(t["shape"])
            continue
        sym = t["symbols"]
        bits = "".join(format(b, "08b") for b in raw[sym["offset"]:sym["offset"] + sym["length"]])
        w = sym["bits"]
        symbols = [sym["min"] + (int(bits[i * w:(i + 1) * w], 2) if w else 0) for i in range(sym["count"])]
        if t["coder"] == "const":
            ranks = [0] * n
        else:
            eg = t["eg"]
            k = eg["k"]
            stream = "".join(format(b, "08b") for b in raw[eg["offset"]:eg["offset"] + eg["length"]])
            ranks, p = [], 0
            for _ in range(n):
                z = stream.index("1", p) - p
                v = int(stream[p + z:p + 2 * z + k + 1], 2)
                ranks.append(v - (1 << k))
                p += 2 * z + k + 1
            assert p == eg["bits"] and set(stream[p:]) <= {"0"}
        values = (torch.tensor([float(symbols[r]) for r in ranks], dtype=torch.float64) * step).to(dtype)
        assert zlib.crc32(values.contiguous().view(torch.uint8).numpy()) == t["decoded_crc32"]
        out[t["name"]] = values.reshape(t["shape"])
    return out


def test_a_reader_written_from_the_spec_agrees(tmp_path: Path) -> None:
    i = torch.arange(64 * 32)
    w = (((i * 7919) % 81 - 40).to(torch.float64) * 2.0**-8 + 0.001 * torch.sin(i.double())).reshape(64, 32)
    folder = tiny_folder(tmp_path / "m", {"proj.weight": w.to(torch.bfloat16), "b.weight": w.float(),
                                          "proj.bias": torch.zeros(64, dtype=torch.bfloat16),
                                          "zero.weight": torch.zeros(4, 4), "ids": torch.arange(5)})
    out = tmp_path / "m.ggz"
    P.pack(folder, out, P.PackOptions(quant="step:8", eg_k=None))
    mine = _spec_reader(out)
    theirs = dict(P.read_packed(out))
    assert mine.keys() == theirs.keys()
    for name, t in theirs.items():
        assert torch.equal(bits_of(mine[name]), bits_of(t)), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("step", [2.0**-7, 2.0**-8.25, 0.004, 2.0**-30])
def test_step_ranks_equal_rounding_twice(dtype: torch.dtype, step: float) -> None:
    """_step_ranks (one rounding pass, or bf16/fp16 bit-pattern counts) gives the histogram and ranks
    that a histogram pass plus rate.quantize give (2^-30: symbol range past the dense rank table)."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(300, 700, generator=g) * torch.rand(300, 1, generator=g) * 0.1).to(dtype)
    hist, ranks = P._step_ranks(x, step, "w")
    ref = rate.SymbolHistogram(step).update(x, "w")
    assert torch.equal(hist.symbols, ref.symbols) and torch.equal(hist.counts, ref.counts)
    assert (hist.n, hist.source_bits) == (ref.n, ref.source_bits)
    by_rank = ref.symbols_by_rank()
    want = P._ranks(ref, rate.quantize(x, step), by_rank, int(ref.symbols[0]), int(ref.symbols[-1]))
    assert ranks.shape == (x.numel(),) and (ranks == want).all()
    assert torch.equal(by_rank[torch.from_numpy(ranks.astype("int64"))], rate.quantize(x, step).reshape(-1))
