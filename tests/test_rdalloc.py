"""Rate–distortion allocation (pack --target-sqnr / --bits-per-param): curves against measured packs,
targets met, per-tensor steps restored exactly, errors."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ggcompress.cli import cli
from ggcompress.codec import pack as P
from ggcompress.codec import rdalloc
from ggcompress.errors import GGError
from ggcompress.io.checkpoint import open_checkpoint


def gg(shape: tuple[int, int], beta: float, std: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    n = shape[0] * shape[1]
    mag = rng.gamma(1 / beta, 1.0, n) ** (1 / beta)
    x = np.where(rng.random(n) < 0.5, -mag, mag)
    return torch.from_numpy(x * std / x.std()).to(torch.float32).reshape(shape)


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Tensors whose curves differ: heavy / light tails, different scales, one bf16."""
    path = tmp_path / "m"
    path.mkdir()
    save_file({
        "a.weight": gg((256, 256), 0.6, 0.02, 0),
        "b.weight": gg((256, 512), 2.0, 0.05, 1),
        "c.weight": gg((128, 256), 1.0, 0.005, 2).to(torch.bfloat16),
        "norm.weight": torch.ones(256),
    }, str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    return path


def reference_restore(x: torch.Tensor, step: float) -> torch.Tensor:
    """Independent of rate.py: round half to even in float64, times step, rounded once to x's dtype."""
    return (torch.round(x.to(torch.float64) / step) * step).to(x.dtype)


def test_curves_predict_measured_uniform_packs(mixed: Path, tmp_path: Path) -> None:
    curves = [rdalloc.measure_curve(x, i.name) for i, x in open_checkpoint(mixed).iter_tensors()
              if i.name.endswith(".weight") and len(i.shape) == 2]
    for s in (6, 9):
        doc = P.pack(mixed, tmp_path / f"u{s}.ggz", P.PackOptions(quant=f"step:{s}", coder="rans"))
        summary = doc["checkpoints"][0]["summary"]
        j = s - rdalloc.S_MIN
        bits = sum(c.bits[j] for c in curves) / sum(c.numel for c in curves)
        sqnr = 10 * np.log10(sum(c.signal for c in curves) / sum(c.noise[j] for c in curves))
        # rANS is within ~0.2% of the entropy, the table estimate within a few bytes per symbol
        assert bits == pytest.approx(summary["coded_bits_per_param"], rel=0.01)
        # re-rounding from fine symbols vs direct rounding: differences far below 0.05 dB
        assert sqnr == pytest.approx(summary["sqnr_db"], abs=0.05)


@pytest.mark.parametrize("target", [25.0, 33.3, 41.0])
def test_target_sqnr_met_with_fewer_bits_than_uniform(mixed: Path, tmp_path: Path, target: float) -> None:
    doc = P.pack(mixed, tmp_path / "rd.ggz", P.PackOptions(target_sqnr_db=target, coder="rans"))
    ck = doc["checkpoints"][0]
    s = ck["summary"]
    assert s["sqnr_db"] >= target - 0.05  # curve estimate tolerance (see the test above)
    # the cheapest single uniform step that meets the target costs at least as many bits
    for step in range(4, 17):
        u = P.pack(mixed, tmp_path / f"u{step}.ggz", P.PackOptions(quant=f"step:{step}", coder="rans"),
                   force=True)["checkpoints"][0]["summary"]
        if u["sqnr_db"] >= target:
            break
    assert s["coded_bits_per_param"] <= u["coded_bits_per_param"] * 1.002
    assert P.open_packed(tmp_path / "rd.ggz").header["format_version"] == 2
    assert ck["quantization"]["method"] == "steps"
    # every tensor restores as q · its own step, in its own dtype
    steps = {t["name"]: t["step"] for t in P.open_packed(tmp_path / "rd.ggz").tensors if "step" in t}
    assert set(steps) == {"a.weight", "b.weight", "c.weight"} == set(ck["allocation"]["steps"])
    # bf16 tensors get powers of two (exact bf16 restores), fp32 ones may get quarter octaves
    assert float(np.log2(steps["c.weight"])).is_integer()
    source = {i.name: x for i, x in open_checkpoint(mixed).iter_tensors()}
    for name, y in P.read_packed(tmp_path / "rd.ggz"):
        x = source[name]
        want = reference_restore(x, steps[name]) if name in steps else x
        assert y.dtype == x.dtype and torch.equal(y, want), name


def test_bits_budget(mixed: Path, tmp_path: Path) -> None:
    doc = P.pack(mixed, tmp_path / "b.ggz", P.PackOptions(bits_per_param=5.0, coder="rans"))
    s = doc["checkpoints"][0]["summary"]
    assert s["coded_bits_per_param"] <= 5.0 * 1.01  # estimate tolerance as above
    assert s["coded_bits_per_param"] > 4.0  # it spends the budget rather than stopping far below


def test_errors(mixed: Path, tmp_path: Path) -> None:
    with pytest.raises(GGError, match="give one"):
        P.PackOptions(target_sqnr_db=30, bits_per_param=4).checked()
    with pytest.raises(GGError, match="omit --quant"):
        P.PackOptions(quant="step:8", target_sqnr_db=30).checked()
    with pytest.raises(GGError, match="out of reach"):
        P.pack(mixed, tmp_path / "x.ggz", P.PackOptions(target_sqnr_db=400))
    runner = CliRunner()
    r = runner.invoke(cli, ["pack", str(mixed), "-o", str(tmp_path / "c.ggz"), "--target-sqnr", "30",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["checkpoints"][0]["allocation"]["target_sqnr_db"] == 30
    # a per-tensor-steps container whose entry lost its step is refused, naming the tensor
    packed = P.open_packed(tmp_path / "c.ggz")
    header = json.loads(json.dumps(packed.header))
    entry = next(t for t in header["tensors"] if t["name"] == "a.weight")
    del entry["step"]
    data = (tmp_path / "c.ggz").read_bytes()[packed.data_start:]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    (tmp_path / "bad.ggz").write_bytes(P.PREAMBLE.pack(P.MAGIC, 2, zlib.crc32(text), len(text), len(data))
                                       + text + data)
    with pytest.raises(GGError, match="a.weight"):
        list(P.read_packed(tmp_path / "bad.ggz"))


def test_one_large_tensor_does_not_force_a_whole_step() -> None:
    """All tensors share one slope (the textbook high-rate curve: +1 bit per S, error step²/12), so the
    Lagrangian alone flips them all — or the large one — at the same λ; the refinement must land the
    target within a small tensor's share instead of jumping ~6 dB."""
    s = np.arange(rdalloc.S_MIN, rdalloc.S_MAX + 1)

    def curve(name: str, n: int) -> rdalloc.Curve:
        return rdalloc.Curve(name, n, n * 4e-4, s, n * (s + 2.0), n * 4.0 ** -s.astype(float) / 12)

    curves = [curve("big", 1_000_000)] + [curve(f"small{i}", 10_000) for i in range(20)]
    total = sum(c.numel for c in curves)
    at10 = 10 * np.log10(total * 4e-4 / (total * 4.0**-10 / 12))
    a = rdalloc.allocate(curves, target_sqnr_db=at10 + 0.01)
    assert at10 + 0.01 <= a.sqnr_db < at10 + 0.2  # 0.2 dB: a few small tensors' worth, not 6 dB
    assert a.steps["big"] == 10
    b = rdalloc.allocate(curves, bits_per_param=12.0 + 0.05)  # all at S=10 cost 12.0 bits/param
    assert 12.0 < b.bits_per_param <= 12.05 and b.steps["big"] == 10


def test_target_between_steps_is_not_overshot() -> None:
    """A quarter of the parameters in one tensor, the rest in 30 small ones, all on the same slope; a
    target halfway between two whole steps needs about half of the error share refined: the result
    must land near it (within 0.5 dB: a few small tensors' worth), not a whole step above."""
    s = np.arange(rdalloc.S_MIN, rdalloc.S_MAX + 1)

    def curve(name: str, n: int) -> rdalloc.Curve:
        return rdalloc.Curve(name, n, n * 4e-4, s, n * (s + 2.0), n * 4.0 ** -s.astype(float) / 12)

    curves = [curve("embed", 300_000)] + [curve(f"layer{i}", 30_000) for i in range(30)]
    total = sum(c.numel for c in curves)
    at9 = 10 * np.log10(total * 4e-4 / (total * 4.0**-9 / 12))
    a = rdalloc.allocate(curves, target_sqnr_db=at9 + 3.0)
    assert at9 + 3.0 <= a.sqnr_db < at9 + 3.5


# ----------------------------------------------------------------------------------- per-row steps


@pytest.fixture
def rowwise(tmp_path: Path) -> Path:
    """Rows of very different scales (what per-row steps are for), bf16 and fp32, and a 3-D tensor."""
    path = tmp_path / "r"
    path.mkdir()
    scale = torch.logspace(-3, -1, 96)[:, None]
    save_file({
        "a.weight": (gg((96, 128), 1.0, 1.0, 3) * scale).to(torch.bfloat16),
        "b.weight": gg((64, 96), 0.6, 0.03, 4),
        "c.weight": gg((48, 64), 2.0, 0.01, 5).reshape(12, 4, 64).contiguous(),
        "norm.weight": torch.ones(96),
    }, str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    return path


def reference_rows(x: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """Independent float64 recomputation: each row r rounded half to even at its step 2^-(code_r / 4),
    in x's dtype."""
    out = torch.empty(x.shape, dtype=torch.float64)
    flat, dst = x.reshape(x.shape[0], -1).to(torch.float64), out.view(x.shape[0], -1)
    for r in range(x.shape[0]):
        step = 2.0 ** -(int(codes[r]) / 4)
        dst[r] = torch.round(flat[r] / step) * step
    return out.to(x.dtype)


def stored_row_steps(path: Path) -> dict[str, np.ndarray]:
    """The int8 step-code arrays read straight from the container bytes (docs/format.md §4)."""
    packed = P.open_packed(path)
    blob = path.read_bytes()
    out = {}
    for t in packed.tensors:
        if "row_steps" in t:
            at = packed.data_start + t["offset"] + t["row_steps"]["offset"]
            out[t["name"]] = np.frombuffer(blob[at:at + t["row_steps"]["length"]], dtype=np.int8)
    return out


def test_row_curves_sum_to_the_tensor_rate_and_exact_errors(rowwise: Path) -> None:
    """Summed over rows at one S, the row bits are the tensor's entropy + table (direct rounding, computed
    here with numpy); row errors are exact."""
    for info, x in open_checkpoint(rowwise).iter_tensors():
        if info.name == "norm.weight":
            continue
        rc = rdalloc.measure_row_curves(x, info.name)
        assert rc.bits.shape == rc.noise.shape == (x.shape[0], 17)
        m = x.reshape(x.shape[0], -1).to(torch.float64).numpy()
        for s in (2, 7, 12, 16):
            q = np.round(m * 2.0 ** s)
            u, c = np.unique(q, return_counts=True)
            h = -(c * np.log2(c / q.size)).sum()
            table = u.size * (max(int(u.max() - u.min()).bit_length(), 1) + rdalloc.TABLE_BITS_PER_SYMBOL)
            assert rc.bits[:, s].sum() == pytest.approx(h + table, rel=1e-9)
            assert rc.noise[:, s] == pytest.approx(((m - q * 2.0 ** -s) ** 2).sum(1), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("target", [30.0, 42.0])
def test_row_steps_meet_the_sqnr_and_restore_each_row_exactly(rowwise: Path, tmp_path: Path,
                                                              target: float) -> None:
    out = tmp_path / "rows.ggz"
    doc = P.pack(rowwise, out, P.PackOptions(target_sqnr_db=target, coder="rans", step_granularity="row"))
    ck = doc["checkpoints"][0]
    assert ck["quantization"] == {"method": "steps", "granularity": "row", "target_sqnr_db": target}
    assert P.open_packed(out).header["format_version"] == 3
    steps = stored_row_steps(out)
    assert set(steps) == {"a.weight", "b.weight", "c.weight"}
    assert len(set(steps["a.weight"].tolist())) > 1  # rows of different scales get different steps
    assert all(k % 4 == 0 for k in steps["a.weight"].tolist())  # bf16: whole octaves (exact bf16 restores)
    source = {i.name: x for i, x in open_checkpoint(rowwise).iter_tensors()}
    sig = err = 0.0
    for name, y in P.read_packed(out):
        x = source[name]
        want = reference_rows(x, steps[name]) if name in steps else x
        assert y.dtype == x.dtype and torch.equal(y, want), name
        if name in steps:
            sig += float((x.double() ** 2).sum())
            err += float(((x.double() - y.double()) ** 2).sum())
    measured = 10 * np.log10(sig / err)
    assert measured >= target  # row errors are exact, so the target holds as measured
    assert ck["summary"]["sqnr_db"] == pytest.approx(measured, abs=1e-3)
    # the S arrays (8 bits per row) are counted in the coded bits
    rows = sum(s.size for s in steps.values())
    tables = sum(t["table_bits"] for t in ck["tensors"] if t["name"] in steps)
    assert tables >= 8 * rows
    # the row curves' estimate (shared table at each S) vs the stored bits (one table for mixed S)
    predicted = ck["allocation"]["predicted_coded_bits_per_param"]
    assert ck["summary"]["coded_bits_per_param"] == pytest.approx(predicted, rel=0.06)


def test_row_steps_bits_budget_and_errors(rowwise: Path, tmp_path: Path) -> None:
    doc = P.pack(rowwise, tmp_path / "b.ggz", P.PackOptions(bits_per_param=4.0, coder="rans",
                                                             step_granularity="row"))
    s = doc["checkpoints"][0]["summary"]
    assert 3.5 < s["coded_bits_per_param"] <= 4.0 * 1.08  # one table for mixed S: the estimate is low (docs)
    with pytest.raises(GGError, match="applies to the allocation targets"):
        P.PackOptions(quant="step:8", step_granularity="row").checked()
    with pytest.raises(GGError, match="choose tensor or row"):
        P.PackOptions(target_sqnr_db=30, step_granularity="column").checked()
    with pytest.raises(GGError, match="--rdoq"):
        P.PackOptions(target_sqnr_db=30, step_granularity="row", rdoq=True).checked()


def test_allocate_rows_weights_move_steps() -> None:
    """One λ over rows: a row with 100× the weight gets a finer step than its twin."""
    x = torch.from_numpy(np.tile(np.random.default_rng(0).normal(0, 0.02, 512), (2, 1))).float()
    c = rdalloc.measure_row_curves(x, "w")
    a = rdalloc.allocate_rows([c], max_distortion=float(c.noise[:, 8].sum()) * 2,
                              weights={"w": np.array([100.0, 1.0])})
    assert a.steps["w"][0] > a.steps["w"][1]
    assert a.distortion <= float(c.noise[:, 8].sum()) * 2


def test_row_step_containers_refused_cleanly_when_unreadable_or_corrupt(rowwise: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    """An older reader (read version 2) refuses version 3; a corrupted step-code array (out of range, wrong
    length, in a version-2 container) gives one clean `error:` line."""
    import hostile
    from hostile import split_ggz

    good = tmp_path / "good.ggz"
    P.pack(rowwise, good, P.PackOptions(target_sqnr_db=35, coder="rans", step_granularity="row"))
    version, header, body = split_ggz(good.read_bytes())
    assert version == 3

    def unpack_error(path: Path) -> str:
        return hostile.unpack_error(path, tmp_path / "out")

    with monkeypatch.context() as m:  # the reader of the previous version
        m.setattr(P, "READ_VERSION", 2)
        assert "container format version 3 is newer" in unpack_error(good)

    def variant(label: str, edit, version: int = 3, data: bytes = body) -> Path:
        return hostile.edited_ggz(tmp_path / f"{label}.ggz", header, edit, version, data)

    entry = next(i for i, t in enumerate(header["tensors"]) if t["name"] == "a.weight")

    def relabel(h):
        h["format_version"] = 2
    assert "need format version 3" in unpack_error(variant("v2", relabel, version=2))

    def short(h):
        h["tensors"][entry]["row_steps"]["length"] -= 1
    assert "per-row steps holds 95 bytes, 96 expected" in unpack_error(variant("short", short))

    def flat(h):
        h["tensors"][entry]["shape"] = [96 * 128]
    assert "2+ dims" in unpack_error(variant("flat", flat))

    def overlap(h):
        groups = h["tensors"][entry]["groups"]
        groups[-1]["codes"] = groups[0]["codes"] if len(groups) > 1 else [200]
    assert "must be distinct ascending step codes" in unpack_error(variant("overlap", overlap))

    def miscount(h):
        h["tensors"][entry]["groups"][0]["rows"] += 1
    assert "row groups hold 97 rows, the shape has 96" in unpack_error(variant("miscount", miscount))

    t = header["tensors"][entry]
    for bad in (100, -3, 97):
        section = bytearray(body[t["offset"]:t["offset"] + t["length"]])
        section[t["row_steps"]["offset"] + 5] = bad & 0xFF
        data = body[:t["offset"]] + bytes(section) + body[t["offset"] + t["length"]:]

        def recrc(h, section=section):
            h["tensors"][entry]["crc32"] = zlib.crc32(section)  # checksum matches: the decoder must refuse
        assert "per-row step code outside 0..96" in unpack_error(variant(f"range{bad}", recrc, data=data))


def test_cli_step_granularity_row(rowwise: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["pack", str(rowwise), "-o", str(tmp_path / "c.ggz"), "--target-sqnr", "35",
                                 "--step-granularity", "row", "--coder", "rans", "--json"])
    assert r.exit_code == 0, r.output
    ck = json.loads(r.output)["checkpoints"][0]
    assert ck["allocation"]["granularity"] == "row" and ck["allocation"]["rows"] == 96 + 64 + 12
    assert ck["allocation"]["steps"]["a.weight"].startswith("rows 2^-")
    r = CliRunner().invoke(cli, ["pack", str(rowwise), "-o", str(tmp_path / "d.ggz"),
                                 "--step-granularity", "row"])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "allocation targets" in r.output
    assert not (tmp_path / "d.ggz").exists()


def reference_curve(x: torch.Tensor, s_max: int, per_octave: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented curve, written plainly: fine symbols v (counts c) at 2^-s_max, each step's symbols
    re-rounded from them, np.unique for the distinct ones; bits = entropy + table, error = re-rounding
    shift + the fine rounding's own error."""
    fine = 2.0**-s_max
    w = x.to(torch.float64).reshape(-1).numpy()
    v, c = np.unique(np.round(w / fine), return_counts=True)
    fine_err = float(((w - np.round(w / fine) * fine) ** 2).sum())
    c = c.astype(np.float64)
    bits, noise = [], []
    for s in np.arange(0, s_max * per_octave + 1) / per_octave:
        q = np.round(v * 2.0 ** (s - s_max))
        uq, inv = np.unique(q, return_inverse=True)
        cq = np.bincount(inv, weights=c)
        h = float(-(cq * np.log2(cq / c.sum())).sum()) if uq.size > 1 else 0.0
        width = max(int(uq.max() - uq.min()).bit_length(), 1)
        bits.append(h + uq.size * (width + rdalloc.TABLE_BITS_PER_SYMBOL))
        d = v * fine - q * 2.0 ** -float(s)
        noise.append(float((c * d * d).sum()) + fine_err)
    return np.array(bits), np.array(noise)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_curve_is_the_documented_re_rounding(dtype: torch.dtype) -> None:
    # symbols whose runs are cut at every candidate step, a tensor with a single value, and a heavy tail
    x = gg((96, 80), 0.6, 0.03, 5).to(dtype)
    for t in (x, torch.full((4, 4), 0.25, dtype=dtype), x * 40):
        per_octave = 4 if dtype == torch.float32 else 1
        c = rdalloc.measure_curve(t, "w", per_octave=per_octave)
        bits, noise = reference_curve(t, rdalloc.S_MAX, per_octave)
        np.testing.assert_array_equal(c.bits, bits)  # the same entropy and table terms, exactly
        np.testing.assert_allclose(c.noise, noise, rtol=1e-12, atol=1e-300)
        assert c.numel == t.numel()
        assert c.signal == pytest.approx(float((t.to(torch.float64) ** 2).sum()), rel=1e-12)
    if dtype != torch.float32:  # bf16/fp16 from bit-pattern counts = the same values streamed as fp32
        a, b = rdalloc.measure_curve(x, "w"), rdalloc.measure_curve(x.float(), "w")
        np.testing.assert_array_equal(a.bits, b.bits)
        np.testing.assert_allclose(a.noise, b.noise, rtol=1e-12)
        assert a.signal == pytest.approx(b.signal, rel=1e-12)
