"""Trellis-coded (dependent) quantization: the search against brute force, the decoder against a sequential
reference of the state machine, the gain at equal SQNR, pack --trellis round trips and hostile containers."""

from __future__ import annotations

import itertools
import json
import math
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ggcompress.cli import cli
from ggcompress.codec import pack as P
from ggcompress.codec import trellis as T

# The trellises written out independently of the module's tables: next state by parity, and whether a
# state uses Q1 (VVC's 4-state dependent quantization; the 8-state TCQ of NNCodec, Q1 in odd states).
REF = {4: ({0: (0, 2), 1: (2, 0), 2: (1, 3), 3: (3, 1)}, lambda s: s >= 2),
       8: ({0: (0, 2), 1: (7, 5), 2: (1, 3), 3: (6, 4), 4: (2, 0), 5: (5, 7), 6: (3, 1), 7: (4, 6)},
           lambda s: s % 2 == 1)}


def ref_level(k: int, q1: bool) -> int:
    if not q1:
        return 2 * k
    return 2 * k - (k > 0) + (k < 0)


def ref_restore(k: np.ndarray, lane: int, states: int) -> np.ndarray:
    """Level of each index (units of Δ), one symbol at a time, the state reset at each lane start."""
    nxt, uses_q1 = REF[states]
    out = np.empty(k.size, dtype=np.int64)
    state = 0
    for i, v in enumerate(k.tolist()):
        if i % lane == 0:
            state = 0
        out[i] = ref_level(v, uses_q1(state))
        state = nxt[state][v & 1]
    return out


def laplace(n: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).laplace(0, scale, n)).to(torch.float32)


@pytest.mark.parametrize("states", [4, 8])
def test_search_is_the_minimum_distortion_path_at_lambda_zero(states: int) -> None:
    """With λ = 0 the Viterbi search must find the least squared error over every index sequence."""
    lane, count = 5, 30
    nxt_ref, uses_q1 = REF[states]
    rng = np.random.default_rng(0)
    x = rng.uniform(-4, 4, size=(count, lane))
    ks = np.arange(-5, 6)
    seqs = np.array(list(itertools.product(ks, repeat=lane)))  # 11^5 sequences
    levels = np.empty(seqs.shape, dtype=np.int64)
    state = np.zeros(len(seqs), dtype=np.int64)
    nxt = np.array([nxt_ref[s] for s in range(states)])
    q1 = np.array([uses_q1(s) for s in range(states)])
    for t in range(lane):
        k = seqs[:, t]
        levels[:, t] = np.where(q1[state], 2 * k - np.sign(k), 2 * k)
        state = nxt[state, k & 1]
    got = T.trellis_indices(torch.from_numpy(x.reshape(-1)), 1.0, lam=0.0, lane=lane, states=states).numpy()
    restored = ref_restore(got, lane, states).reshape(count, lane)
    for i in range(count):
        best = ((x[i] - levels) ** 2).sum(1).min()
        assert ((x[i] - restored[i]) ** 2).sum() == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("states", [4, 8])
def test_decoder_follows_the_state_machine_across_lanes(states: int) -> None:
    k = torch.from_numpy(np.random.default_rng(1).integers(-9, 10, size=1000))
    for lane in (1, 7, 128):
        got = T.restore(k, 0.25, k.numel(), lane, states)
        assert torch.equal(got, torch.from_numpy(ref_restore(k.numpy(), lane, states)).double() * 0.25)
        streams = T.from_indices(k, lane, states).context_streams()
        assert torch.equal(T.walk_contexts(streams, None, 1, 1000, lane, states).indices(), k)


def entropy(s: torch.Tensor) -> float:
    if s.numel() == 0:
        return 0.0
    _, c = torch.unique(s, return_counts=True)
    p = c.double() / c.sum()
    return float(-(c.double() * torch.log2(p)).sum())


@pytest.mark.parametrize("s", [5, 7, 10])
def test_fewer_bits_than_rounding_at_equal_sqnr(s: int) -> None:
    """Entropy of the two context streams as pack codes them against rounding's, both computed here in
    float64 from the symbols: against the rounding curve (quarter steps, interpolated at the trellis's
    SQNR) at least 0.1 bit/weight is saved from ~1.6 bits up (a 4-state trellis's granular gain is ~0.15
    bit); from ~3.5 bits up the SQNR also stays within 0.3 dB of rounding at the step it replaces."""
    x = laplace(200_000, 2)
    xd = x.double()
    sig = float((xd**2).sum())
    curve = []
    for quarter in range(4 * 2, 4 * 13):
        step = 2.0 ** (-quarter / 4)
        q = torch.round(xd / step)
        curve.append((10 * math.log10(sig / float(((q * step - xd) ** 2).sum())), entropy(q) / x.numel()))
    curve.sort()
    delta = 2.0**-s * T.STEP_FACTOR
    k = T.trellis_indices(x, delta)
    y = T.restore(k, delta, k.numel())
    sqnr = 10 * math.log10(sig / float(((y - xd) ** 2).sum()))
    bits = sum(entropy(c) for c in T.from_indices(k).context_streams()) / x.numel()
    at = float(np.interp(sqnr, [c[0] for c in curve], [c[1] for c in curve]))
    assert bits < at - 0.1
    if s >= 7:
        u = torch.round(xd / 2.0**-s) * 2.0**-s
        assert abs(sqnr - 10 * math.log10(sig / float(((u - xd) ** 2).sum()))) < 0.3


def test_row_class_contexts_round_trip() -> None:
    k = torch.from_numpy(np.random.default_rng(8).integers(-6, 7, size=3000))
    for lane, classes in ((128, 3), (7, 8), (1, 2)):
        coded = T.from_indices(k, lane)
        row_class = torch.from_numpy(np.random.default_rng(9).integers(0, classes, size=30))
        lane_cls = T.lane_classes(row_class, 3000, 100, lane)
        assert lane_cls.numel() == -(-3000 // lane)
        last = ((3000 - 1) // lane) * lane // 100  # the row of the last lane's first weight
        assert int(lane_cls[0]) == int(row_class[0]) and int(lane_cls[-1]) == int(row_class[last])
        streams = coded.context_streams(lane_cls, classes)
        back = T.walk_contexts(streams, lane_cls, classes, 3000, lane)
        assert torch.equal(back.indices(), k) and torch.equal(back.qid, coded.qid)
        with pytest.raises(ValueError):
            T.walk_contexts([streams[-1], *streams[:-1]], lane_cls, classes, 3000, lane)


def test_quantizer_streams_round_trip_and_short_streams() -> None:
    k = torch.from_numpy(np.random.default_rng(6).integers(-5, 6, size=1000))
    for lane in (1, 3, 128):
        k0, k1 = T.from_indices(k, lane).context_streams()
        assert k0.numel() + k1.numel() == -(-1000 // lane) * lane
        assert torch.equal(T.walk_contexts([k0, k1], None, 1, 1000, lane).indices(), k)
    k0, k1 = T.from_indices(k, 128).context_streams()
    with pytest.raises(ValueError, match="hold"):
        T.walk_contexts([k0[:-1], k1], None, 1, 1000, 128)
    with pytest.raises(ValueError, match="ends before"):
        T.walk_contexts([k0[:-1], torch.cat([k1, k1[:1]])], None, 1, 1000, 128)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m"
    path.mkdir()
    save_file({"a.weight": laplace(192 * 259, 3).reshape(192, 259),  # 49,728: not a multiple of the lane
               "b.weight": laplace(64 * 64, 4, 0.05).reshape(64, 64).to(torch.bfloat16),
               "a.bias": laplace(96, 5)}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("coder", ["rans", "eg"])
def test_pack_trellis_restores_the_search_and_saves_bits(model: Path, tmp_path: Path, coder: str) -> None:
    from safetensors.torch import load_file

    src = load_file(str(model / "model.safetensors"))
    doc = P.pack(model, tmp_path / "t.ggz", P.PackOptions(quant="step:7", coder=coder, trellis=True))
    got = dict(P.read_packed(tmp_path / "t.ggz"))
    delta = 2.0**-7 * T.STEP_FACTOR
    for name in ("a.weight", "b.weight"):
        x = src[name]
        want = T.restore(T.trellis_indices(x, delta), delta, x.numel()).to(x.dtype).reshape(x.shape)
        assert got[name].dtype == x.dtype and torch.equal(got[name], want)
    assert torch.equal(got["a.bias"], src["a.bias"])
    packed = P.open_packed(tmp_path / "t.ggz")
    assert packed.header["format_version"] == 4 and packed.header["quantization"]["method"] == "trellis"
    plain = P.pack(model, tmp_path / "p.ggz", P.PackOptions(quant="step:7", coder=coder))
    t, u = doc["checkpoints"][0]["summary"], plain["checkpoints"][0]["summary"]
    assert abs(t["sqnr_db"] - u["sqnr_db"]) < 0.5
    assert t["coded_bits_per_param"] < u["coded_bits_per_param"] - 0.1


def test_trellis_refuses_what_it_does_not_combine_with(model: Path, tmp_path: Path) -> None:
    for extra in (["--rdoq"], ["--bits-per-param", "4"], ["--quant", "rf8"], ["--lossless"],
                  ["--target-sqnr", "30", "--step-granularity", "row"]):
        args = ["pack", str(model), "-o", str(tmp_path / "x.ggz"), "--trellis", *extra]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code in (1, 2) and "Traceback" not in r.output, r.output
        assert "trellis" in r.output or "contradict" in r.output
        assert not (tmp_path / "x.ggz").exists()
    r = CliRunner().invoke(cli, ["pack", str(model), "-o", str(tmp_path / "y.ggz"), "--trellis", "--coder",
                                 "rans", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["checkpoints"][0]["quantization"]["method"] == "trellis"
    for extra in ([], ["--target-sqnr", "25", "--tensors"]):  # the people's view renders both modes
        args = ["pack", str(model), "-o", str(tmp_path / "z.ggz"), "--trellis", "--coder", "rans", "--force"]
        r = CliRunner().invoke(cli, args + extra)
        assert r.exit_code == 0 and "error" not in r.output, r.output
        words = " ".join(r.output.split())  # the title wraps at the table's width
        assert ("trellis at step 2^-8 (8 states)" if not extra else "trellis-coded") in words


def test_target_sqnr_with_trellis_meets_the_target_in_fewer_bits(model: Path, tmp_path: Path) -> None:
    """Steps allocated for the target; each tensor trellis-coded only while the error saved so far covers
    its excess over rounding at its step (else Δ shrunk once, else rounded): the target holds."""
    opts = P.PackOptions(target_sqnr_db=24.0, coder="rans")
    plain = P.pack(model, tmp_path / "p.ggz", opts)["checkpoints"][0]
    doc = P.pack(model, tmp_path / "t.ggz", replace(opts, trellis=True))["checkpoints"][0]
    assert doc["summary"]["sqnr_db"] >= 24.0 and plain["summary"]["sqnr_db"] >= 24.0
    assert doc["summary"]["coded_bits_per_param"] < plain["summary"]["coded_bits_per_param"] - 0.05
    assert doc["quantization"]["trellis"] >= 1
    assert P.open_packed(tmp_path / "t.ggz").header["format_version"] == 4
    got = dict(P.read_packed(tmp_path / "t.ggz"))
    from safetensors.torch import load_file

    src = load_file(str(model / "model.safetensors"))
    sig = sum(float(src[k].double().square().sum()) for k in ("a.weight", "b.weight"))
    err = sum(float((got[k].double() - src[k].double()).square().sum()) for k in ("a.weight", "b.weight"))
    assert 10 * math.log10(sig / err) == pytest.approx(doc["summary"]["sqnr_db"], abs=1e-6)


def test_rows_of_different_scales_get_row_contexts(tmp_path: Path) -> None:
    """Rows whose scales differ (as in real weights, more here) are coded in contexts by row class: fewer
    bits than without, restored exactly as the search chose, and a damaged class section is refused."""
    from hostile import split_ggz
    from safetensors.torch import load_file

    path = tmp_path / "m"
    path.mkdir()
    scale = 2.0 ** torch.arange(256).remainder(6).to(torch.float32).reshape(-1, 1) / 8
    save_file({"w.weight": laplace(256 * 384, 10).reshape(256, 384) * scale}, str(path / "model.safetensors"))
    P.pack(path, tmp_path / "t.ggz", P.PackOptions(quant="step:7", coder="rans", trellis=True))
    entry = P.open_packed(tmp_path / "t.ggz").header["tensors"][0]
    assert entry["rows"]["classes"] == 8 and entry["groups"][0]["context"].startswith("q0r")
    x = load_file(str(path / "model.safetensors"))["w.weight"]
    delta = 2.0**-7 * T.STEP_FACTOR
    want = T.restore(T.trellis_indices(x, delta), delta, x.numel()).to(x.dtype).reshape(x.shape)
    assert torch.equal(dict(P.read_packed(tmp_path / "t.ggz"))["w.weight"], want)
    _, header, body = split_ggz((tmp_path / "t.ggz").read_bytes())
    t = header["tensors"][0]
    section = bytearray(body[t["offset"]:t["offset"] + t["length"]])
    section[t["rows"]["offset"] + 3] = 8  # a class beyond the 8 declared
    data = body[:t["offset"]] + bytes(section) + body[t["offset"] + t["length"]:]

    def recrc(h):
        h["tensors"][0]["crc32"] = zlib.crc32(section)
    out = str(tmp_path / "o")
    r = CliRunner().invoke(cli, ["unpack", str(_variant(tmp_path, header, data, recrc)), "-o", out])
    assert r.exit_code == 1 and "row classes" in r.output and "Traceback" not in r.output

    def classes(h):
        h["tensors"][0]["rows"]["classes"] = 1
    r = CliRunner().invoke(cli, ["unpack", str(_variant(tmp_path, header, body, classes)), "-o", out])
    assert r.exit_code == 1 and "2..16 classes" in r.output


def _variant(tmp_path: Path, header: dict, body: bytes, edit) -> Path:
    import hostile

    return hostile.edited_ggz(tmp_path / "edited.ggz", header, edit, 4, body)


def test_count_table_round_trip_and_hostile_tables() -> None:
    from ggcompress.codec import coders

    rng = np.random.default_rng(7)
    for counts in ([0, 5, 0, 0, 1], [3], [], rng.integers(0, 10**6, 500).tolist(), [0] * 40 + [1]):
        c = np.array(counts, dtype=np.int64)
        back = coders.count_table_decode(coders.count_table_encode(c), c.size, int(c.sum()))
        assert np.array_equal(back, c)
    table = coders.count_table_encode(np.array([4, 9, 2]))
    with pytest.raises(ValueError, match="holds 15 values, its stream 16"):
        coders.count_table_decode(table, 3, 16)
    with pytest.raises(ValueError, match="more values than its stream"):
        coders.count_table_decode(table, 3, 10)
    with pytest.raises(ValueError, match="ends early|cannot hold"):
        coders.count_table_decode(table, 400, 15)
    with pytest.raises(ValueError, match="negative"):  # first difference -1 from 0: zigzag 1
        coders.count_table_decode(bytes([0b01000000]), 1, 5)


def test_trellis_containers_refused_cleanly_when_unreadable_or_corrupt(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hostile
    from hostile import split_ggz

    good = tmp_path / "good.ggz"
    P.pack(model, good, P.PackOptions(quant="step:7", coder="rans", trellis=True))
    version, header, body = split_ggz(good.read_bytes())
    assert version == 4

    def unpack_error(path: Path) -> str:
        return hostile.unpack_error(path, tmp_path / "out")

    with monkeypatch.context() as m:
        m.setattr(P, "READ_VERSION", 3)
        assert "container format version 4 is newer" in unpack_error(good)

    def variant(label: str, edit, version: int = 4, data: bytes = body) -> Path:
        return hostile.edited_ggz(tmp_path / f"{label}.ggz", header, edit, version, data)

    entry = next(i for i, t in enumerate(header["tensors"]) if t["name"] == "a.weight")
    groups = header["tensors"][entry]["groups"]
    assert [g["context"] for g in groups] == ["q0", "q1"]

    def relabel(h):
        h["format_version"] = 3
    assert "needs format version 4" in unpack_error(variant("v3", relabel, version=3))

    def miscount(h):
        h["tensors"][entry]["groups"][1]["count"] += 1
    assert "trellis contexts hold 49793 values, 49792 expected" in unpack_error(variant("miscount", miscount))

    def moved(h):  # counts still add up, but not to what the walk of the state machine takes
        g = h["tensors"][entry]["groups"]
        g[0]["count"] += 1
        g[1]["count"] -= 1
    assert "error: " in unpack_error(variant("moved", moved))

    def unknown(h):
        h["tensors"][entry]["groups"][1]["context"] = "q2"
    assert "trellis contexts" in unpack_error(variant("unknown", unknown))

    def twice(h):
        h["tensors"][entry]["groups"][1]["context"] = "q0"
    assert "must be q0 and/or q1, or all" in unpack_error(variant("twice", twice))

    def states(h):
        h["tensors"][entry]["trellis"]["states"] = 16
    assert "4 or 8 states" in unpack_error(variant("states", states))

    def other(h):  # a valid trellis, but not the one the indices were searched on
        h["tensors"][entry]["trellis"]["states"] = 4
    line = unpack_error(variant("other", other))
    assert "fail their checksum" in line or "ends before the walk" in line

    def delta(h):
        h["tensors"][entry]["trellis"]["delta"] = -1.0
    assert "positive finite" in unpack_error(variant("delta", delta))

    assert all(g["table"]["kind"] == "counts" for g in groups)  # small tensors: count tables win

    def huge(h):  # a table starting near 2^62: refused before any level is formed
        h["tensors"][entry]["groups"][0]["table"]["min"] = 1 << 62
    assert "|min| ≤ 2^50" in unpack_error(variant("huge", huge))

    def present(h):
        h["tensors"][entry]["groups"][0]["table"]["present"] -= 1
    assert "declared" in unpack_error(variant("present", present))

    def span(h):  # one count more than the table holds
        h["tensors"][entry]["groups"][0]["table"]["span"] += 1
    assert "count table" in unpack_error(variant("span", span))

    eg = tmp_path / "eg.ggz"  # exp-Golomb groups keep ranked symbol tables
    P.pack(model, eg, P.PackOptions(quant="step:7", coder="eg", trellis=True))
    _, eg_header, eg_body = split_ggz(eg.read_bytes())
    eg_entry = next(i for i, t in enumerate(eg_header["tensors"]) if t["name"] == "a.weight")

    def huge_ranked(h):
        h["tensors"][eg_entry]["groups"][0]["symbols"]["min"] = 1 << 62
    assert "out of range" in unpack_error(_variant(tmp_path, eg_header, eg_body, huge_ranked))

    t = header["tensors"][entry]
    section = bytearray(body[t["offset"]:t["offset"] + t["length"]])
    section[groups[0]["rans"]["offset"] + 3] ^= 0x40
    data = body[:t["offset"]] + bytes(section) + body[t["offset"] + t["length"]:]

    def recrc(h):
        h["tensors"][entry]["crc32"] = zlib.crc32(section)  # checksum matches: decoding must catch it
    assert "error: " in unpack_error(variant("flip", recrc, data=data))
