"""Hostile inputs from issue 10, one test per case: each is refused with one GGError naming the file
(or, for the float8 checkpoint, handled correctly) — never a traceback, never a large allocation.

Files are real MiniLM weights written with the safetensors library, then edited byte by byte
(tests/hostile.py), so every case runs on a file that is genuine except for the one defect.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ggcompress.cli import cli
from ggcompress.codec import pack as P
from ggcompress.errors import GGError
from ggcompress.io import limits
from ggcompress.io.checkpoint import open_checkpoint, read_header
from ggcompress.io.qlayout import read_scheme
from ggcompress.reports.diff import compare, load_report

sys.path.insert(0, str(Path(__file__).parent))
from hostile import join_ggz, join_st, raw_bytes, real_folder, real_tensors, split_ggz, split_st  # noqa: E402


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def read_all(path: Path) -> dict[str, torch.Tensor]:
    ck = open_checkpoint(path)
    return {info.name: t for info, t in ck.iter_tensors()}


@pytest.fixture(scope="module")
def real(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_folder(minilm_dir, tmp_path_factory.mktemp("real") / "model")


@pytest.fixture(scope="module")
def packed(real: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ggz") / "model.ggz"
    P.pack(real, out)
    return out


def edited_st(real: Path, tmp_path: Path, edit) -> Path:
    """model.safetensors of ``real`` with its header passed through ``edit(header) -> header``."""
    header, data = split_st((real / "model.safetensors").read_bytes())
    out = tmp_path / "edited.safetensors"
    out.write_bytes(join_st(edit(header), data))
    return out


def refused(path: Path, *words: str) -> str:
    with pytest.raises(GGError) as exc:
        read_all(path)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


# ------------------------------------------------------------------------------ safetensors headers


def first_matrix(header: dict) -> str:
    return next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)


def test_genuine_file_reads_identically(real: Path, minilm_dir: Path) -> None:
    got = read_all(real / "model.safetensors")
    want = real_tensors(minilm_dir)
    assert list(got) == sorted(want, key=list(got).index) and set(got) == set(want)
    for name, t in want.items():
        assert torch.equal(got[name], t)


def test_negative_data_offsets(real: Path, tmp_path: Path) -> None:
    def edit(h):
        name = first_matrix(h)
        b, e = h[name]["data_offsets"]
        h[name]["data_offsets"] = [-8, e - b - 8]
        return h
    refused(edited_st(real, tmp_path, edit), "data_offsets", "outside the data section")


def test_overlapping_data_offsets(real: Path, tmp_path: Path) -> None:
    def edit(h):
        names = [k for k in h if k != "__metadata__"]
        a, b = names[0], names[1]  # make b start inside a (same size as a so the byte count matches)
        h[b] = {**h[a], "data_offsets": [h[a]["data_offsets"][0] + 4, h[a]["data_offsets"][1] + 4]}
        return h
    refused(edited_st(real, tmp_path, edit), "overlap")


def test_out_of_bounds_data_offsets(real: Path, tmp_path: Path) -> None:
    def edit(h):
        name = first_matrix(h)
        b, e = h[name]["data_offsets"]
        h[name]["data_offsets"] = [b + 10**9, e + 10**9]
        return h
    refused(edited_st(real, tmp_path, edit), "outside the data section")


def test_string_data_offsets(real: Path, tmp_path: Path) -> None:
    def edit(h):
        name = first_matrix(h)
        h[name]["data_offsets"] = [str(o) for o in h[name]["data_offsets"]]
        return h
    refused(edited_st(real, tmp_path, edit), "data_offsets", "two integers")


def test_negative_shape(real: Path, tmp_path: Path) -> None:
    def edit(h):
        name = first_matrix(h)
        r, c = h[name]["shape"]
        h[name]["shape"] = [-r, -c]  # same element count, negative dims
        return h
    refused(edited_st(real, tmp_path, edit), "shape", "non-negative")


def test_metadata_is_a_list(real: Path, tmp_path: Path) -> None:
    def edit(h):
        h["__metadata__"] = ["format", "pt"]
        return h
    refused(edited_st(real, tmp_path, edit), "__metadata__", "a list")


def test_deeply_nested_json(real: Path, tmp_path: Path) -> None:
    header, data = split_st((real / "model.safetensors").read_bytes())
    text = json.dumps(header).encode()
    deep = b'{"__metadata__": {"x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}, " + text[1:]
    path = tmp_path / "deep.safetensors"
    path.write_bytes(join_st(deep, data))
    refused(path, "nests deeper")
    shallow_but_deep = b'{"a": ' + b"[" * 100 + b"]" * 100 + b", " + text[1:]  # under the recursion limit
    path.write_bytes(join_st(shallow_but_deep, data))
    refused(path, "nests deeper")


def test_unexpected_header_types(real: Path, tmp_path: Path) -> None:
    def entry(h, **kv):
        return {**h, first_matrix(h): {**h[first_matrix(h)], **kv}}

    for edit, word in [(lambda h: [h], "not an object"),
                       (lambda h: {**h, first_matrix(h): "F32"}, "malformed header entry"),
                       (lambda h: entry(h, dtype=7), "dtype"),
                       (lambda h: entry(h, shape=[True, 2]), "shape"),
                       (lambda h: {**h, "__metadata__": {"format": 1}}, "__metadata__")]:
        header, data = split_st((real / "model.safetensors").read_bytes())
        path = tmp_path / "typed.safetensors"
        path.write_bytes(join_st(edit(header), data))
        with pytest.raises(GGError, match=word):
            read_header(path)


# ------------------------------------------------------------------------------- sharded indexes


def sharded(real: Path, tmp_path: Path, shard_name: str) -> Path:
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(real / "config.json", folder / "config.json")
    names = [k for k in split_st((real / "model.safetensors").read_bytes())[0] if k != "__metadata__"]
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, shard_name)}))
    return folder


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_index_shard_outside_folder(real: Path, tmp_path: Path, how: str) -> None:
    outside = tmp_path / "outside.safetensors"
    shutil.copy(real / "model.safetensors", outside)
    if how == "dotdot":
        folder = sharded(real, tmp_path, "../outside.safetensors")
    elif how == "absolute":
        folder = sharded(real, tmp_path, str(outside))
    else:
        folder = sharded(real, tmp_path, "model-00001-of-00001.safetensors")
        (folder / "model-00001-of-00001.safetensors").symlink_to(outside)
    with pytest.raises(GGError, match="outside|inside the index's folder") as exc:
        open_checkpoint(folder)
    assert "\n" not in str(exc.value)


def test_index_inside_folder_and_its_checks(real: Path, tmp_path: Path) -> None:
    folder = sharded(real, tmp_path, "model-00001-of-00001.safetensors")
    shutil.copy(real / "model.safetensors", folder / "model-00001-of-00001.safetensors")
    assert {k: torch.equal(v, read_all(real)[k]) for k, v in read_all(folder).items()} == \
        dict.fromkeys(read_all(real), True)
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    for bad, word in [({"weight_map": []}, "weight_map"), ({"weight_map": {"a": 3}}, "shard file name"),
                      ({**doc, "weight_map": {**doc["weight_map"], "ghost.weight": doc["weight_map"]
                                              [next(iter(doc["weight_map"]))]}}, "does not hold it")]:
        index.write_text(json.dumps(bad))
        with pytest.raises(GGError, match=word):
            open_checkpoint(folder)


# ------------------------------------------------------------------------- symlinks in model folders


def test_symlink_out_of_model_folder_refused_by_pack_and_quantize(real: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(real, folder)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (folder / "notes.txt").symlink_to(secret)
    with pytest.raises(GGError, match="symbolic link.*outside the model folder"):
        P.pack(folder, tmp_path / "out.ggz")
    assert not (tmp_path / "out.ggz").exists()
    r = run("quantize-rf8", str(folder), "-o", str(tmp_path / "q"))
    assert r.exit_code == 1 and "outside the model folder" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "q").exists()
    weights_link = tmp_path / "linked"
    weights_link.mkdir()
    (weights_link / "model.safetensors").symlink_to(real / "model.safetensors")
    with pytest.raises(GGError, match="outside the model folder"):
        open_checkpoint(weights_link)


def test_symlink_inside_model_folder_is_copied(real: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(real, folder)
    (folder / "extra").mkdir()
    (folder / "extra" / "vocab.txt").write_text("hello\nworld\n")
    (folder / "vocab.txt").symlink_to(Path("extra") / "vocab.txt")
    P.pack(folder, tmp_path / "out.ggz")
    files = dict(P.read_packed_files(tmp_path / "out.ggz"))
    assert files["vocab.txt"] == files["extra/vocab.txt"] == b"hello\nworld\n"
    P.unpack(tmp_path / "out.ggz", tmp_path / "restored")
    restored = tmp_path / "restored" / "vocab.txt"
    assert not restored.is_symlink() and restored.read_text() == "hello\nworld\n"


# ------------------------------------------------------------------------------------ .ggz headers


def edited_ggz(packed: Path, tmp_path: Path, edit) -> Path:
    version, header, data = split_ggz(packed.read_bytes())
    out = tmp_path / "edited.ggz"
    out.write_bytes(join_ggz(version, edit(header), data))
    return out


def coded_entry(header: dict, coder: str = "eg") -> dict:
    return next(t for t in header["tensors"] if t.get("coder") == coder)


def unpack_refused(path: Path, tmp_path: Path, *words: str) -> str:
    with pytest.raises(GGError) as exc:
        P.unpack(path, tmp_path / "out")
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "out").exists()
    return msg


def test_packed_real_checkpoint_roundtrips(packed: Path, real: Path) -> None:
    want = read_all(real)
    got = dict(P.read_packed(packed))
    assert list(got) == list(want)
    raw = [n for n, e in ((t["name"], t) for t in P.open_packed(packed).tensors) if e["encoding"] == "raw"]
    assert raw and all(raw_bytes(got[n]) == raw_bytes(want[n]) for n in raw)


def test_ggz_missing_key(packed: Path, tmp_path: Path) -> None:  # was KeyError
    def edit(h):
        del coded_entry(h)["symbols"]
        return h
    unpack_refused(edited_ggz(packed, tmp_path, edit), tmp_path, "symbols")
    unpack_refused(edited_ggz(packed, tmp_path, lambda h: {k: v for k, v in h.items() if k != "tensors"}),
                   tmp_path, "tensors")


def test_ggz_wrong_types(packed: Path, tmp_path: Path) -> None:  # was TypeError
    for edit, word in [(lambda h: [h], "not a JSON object"),
                       (lambda h: {**h, "tensors": {"a": 1}}, "must be lists"),
                       (lambda h: {**h, "files": [1]}, "not an object")]:
        unpack_refused(edited_ggz(packed, tmp_path, edit), tmp_path, word)

    def shape_str(h):
        coded_entry(h)["shape"] = ["48", 384]
        return h

    def offset_float(h):
        h["tensors"][0]["offset"] = 0.5
        return h

    def eg_k_str(h):
        coded_entry(h)["eg"]["k"] = "0"
        return h
    for edit, word in [(shape_str, "shape"), (offset_float, "offset"), (eg_k_str, "k")]:
        unpack_refused(edited_ggz(packed, tmp_path, edit), tmp_path, word)


def test_ggz_lane_count_zero(packed: Path, tmp_path: Path) -> None:  # was ZeroDivisionError
    def edit(h):
        coded_entry(h)["eg"]["lane"] = 0
        return h
    unpack_refused(edited_ggz(packed, tmp_path, edit), tmp_path, "lane")


def const_container(tmp_path: Path, shape: list[int]) -> Path:
    """A ~1 KB container whose one const tensor claims ``shape`` (the issue's crafted file)."""
    folder = tmp_path / "zeros"
    folder.mkdir()
    save_file({"w": torch.zeros(4, 4, dtype=torch.bfloat16)}, str(folder / "model.safetensors"))
    small = tmp_path / "small.ggz"
    P.pack(folder, small)
    version, header, data = split_ggz(small.read_bytes())
    assert header["tensors"][0]["coder"] == "const"
    header["tensors"][0]["shape"] = shape
    out = tmp_path / "crafted.ggz"
    out.write_bytes(join_ggz(version, header, data))
    assert out.stat().st_size < 1024
    return out


@pytest.mark.parametrize("shape", [[1 << 16, 1 << 16], [1 << 25, 1 << 25]])
def test_ggz_const_claiming_huge_size_does_not_allocate(tmp_path: Path, shape: list[int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV_MAX_MEMORY, raising=False)  # the default limit, as a user has it
    crafted = const_container(tmp_path, shape)
    tracemalloc.start()
    try:
        unpack_refused(crafted, tmp_path, "claims", "stored bytes")
        with pytest.raises(GGError):
            list(P.read_packed(crafted))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # a few MB of Python objects, not the 8 GiB / 2 PiB the header claims


def test_ggz_memory_limit_names_the_tensor(packed: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(limits.ENV_MAX_MEMORY, "16K")  # below decoding the 32x384 f32 key weight (2 x 48 KiB)
    msg = unpack_refused(packed, tmp_path, "GGCOMPRESS_MAX_MEMORY", "tensor 'encoder.layer.0.attention.self.")
    assert "over the limit of 16.0 KiB" in msg


def test_memory_limit_on_safetensors_reads(real: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(limits.ENV_MAX_MEMORY, "40K")
    ck = open_checkpoint(real)
    assert ck.get("embeddings.LayerNorm.bias").numel() == 384  # 1.5 KiB: under the limit
    with pytest.raises(GGError, match=r"key\.weight.*48\.0 KiB.*over the limit of 40\.0 KiB"):
        ck.get("encoder.layer.0.attention.self.key.weight")


def test_memory_limit_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limits.parse_size("8G") == 8 << 30 and limits.parse_size("512m") == 512 << 20
    assert limits.parse_size("1.5K") == 1536 and limits.parse_size("100") == 100
    assert limits.parse_size("2GiB") == 2 << 30
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(GGError, match="GGCOMPRESS_MAX_MEMORY"):
            limits.parse_size(bad)
    monkeypatch.delenv(limits.ENV_MAX_MEMORY, raising=False)
    assert limits.max_memory() == limits.physical_memory() // 2


# ------------------------------------------------------------------------------------------- diff


def test_diff_unexpected_types_and_bad_regex(tmp_path: Path) -> None:
    good = {"schema": "ggcompress.pack/1", "checkpoints": [{"source": "m", "summary": {"ratio": 4.0}}]}
    bad_docs = [
        {"schema": "ggcompress.pack/1", "checkpoints": {"source": "m"}},
        {"schema": "ggcompress.pack/1", "checkpoints": [{"source": 3, "summary": {}}]},
        {"schema": "ggcompress.pack/1", "checkpoints": [{"source": "m", "summary": [1, 2]}]},
        {"schema": "ggcompress.eval/1", "models": [{"label": "a", "metrics": [1]}]},
        {"schema": "ggcompress.eval/1", "models": [{"label": "a", "metrics": {}, "tasks": [1]}]},
        [1, 2, 3],
    ]
    (tmp_path / "good.json").write_text(json.dumps(good))
    for i, doc in enumerate(bad_docs):
        p = tmp_path / f"bad{i}.json"
        p.write_text(json.dumps(doc))
        with pytest.raises(GGError, match="malformed|schema") as exc:
            load_report(p)
        assert str(p) in str(exc.value)
        r = run("diff", str(tmp_path / "good.json"), str(p))
        assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output, r.output
    # Values of unexpected types are not metrics: skipped, compared as the rest (no TypeError).
    odd = {"schema": "ggcompress.pack/1", "checkpoints": [{"source": "m", "summary": {
        "ratio": "4", "bits_per_param": [1], "sqnr_db": True, "container_bytes": 10**400}}]}
    doc = compare(odd, odd)
    assert doc["changes"] == [] and doc["passed"]
    ev = {"schema": "ggcompress.eval/1", "models": [{"label": "a", "metrics": {"t/acc": "high", "ppl": 3.0},
                                                     "tasks": {"t": {"metrics": "x"}}}]}
    assert [c["metric"] for c in compare(ev, ev)["changes"]] == ["ppl"]
    r = run("diff", str(tmp_path / "good.json"), str(tmp_path / "good.json"), "--metric", "(")
    assert r.exit_code == 2 and "--metric" in r.output and "not a valid regular expression" in r.output


# ----------------------------------------------------------------------------------- legacy .bin


def test_malicious_legacy_bin_is_refused_in_one_line(smollm2_dir: Path, tmp_path: Path) -> None:
    from ggcompress.io.loading import load_model

    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / name, folder / name)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Payload()}))
    with pytest.raises(GGError, match="refused its legacy pickle weights file") as exc:
        load_model(folder)
    assert "\n" not in str(exc.value) and not marker.exists()
    with pytest.raises(GGError, match="refused"):  # the checkpoint reader refuses it too
        open_checkpoint(folder)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- float8


def test_pack_float8_checkpoint(minilm_dir: Path, tmp_path: Path) -> None:
    src = real_tensors(minilm_dir)
    tensors = {"e4m3": src["encoder.layer.0.attention.self.query.weight"].to(torch.float8_e4m3fn),
               "e5m2": src["encoder.layer.0.attention.self.key.weight"].to(torch.float8_e5m2),
               "dense": src["encoder.layer.0.attention.self.key.weight"]}
    folder = tmp_path / "f8"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    report = P.pack(folder, tmp_path / "f8.ggz")
    rows = {r["name"]: r for r in report["checkpoints"][0]["tensors"]}
    assert rows["e4m3"]["encoding"] == rows["e5m2"]["encoding"] == "raw"  # already 8-bit: stored as is
    assert rows["dense"]["encoding"] == "step"
    got = dict(P.read_packed(tmp_path / "f8.ggz"))
    for name in ("e4m3", "e5m2"):
        assert got[name].dtype == tensors[name].dtype and raw_bytes(got[name]) == raw_bytes(tensors[name])
    P.unpack(tmp_path / "f8.ggz", tmp_path / "f8-restored")
    restored = read_all(tmp_path / "f8-restored")
    assert raw_bytes(restored["e4m3"]) == raw_bytes(tensors["e4m3"])
    # Forced step quantization of float8 values restores them in a wider dtype, checked in float64.
    assert P._restored_dtype(torch.tensor([1, 3, 1000]), 2.0**-8, torch.float8_e4m3fn) != torch.float8_e4m3fn


# --------------------------------------------------------------------------------- quantization_config


@pytest.fixture(scope="module")
def rf8(real: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint

    out = tmp_path_factory.mktemp("rf8") / "q"
    quantize_checkpoint(real, out, QuantizeConfig(quantize_embeddings=True))
    return out


@pytest.mark.parametrize("edit,word", [
    ({"format_version": True}, "format version"),
    ({"format_version": "1"}, "format version"),
    ({"format": ["rf8"]}, "format"),
    ({"granularity": ["channel"]}, "granularity"),
    ({"granularity": "block", "block_size": -64}, "block_size"),
    ({"granularity": "block", "block_size": "64"}, "block_size"),
    ({"granularity": "block", "block_size": 1 << 40}, "block_size"),
    ({"modules": "encoder"}, "modules"),
    ({"modules": [1]}, "modules"),
    ({"source_dtype": "os"}, "source_dtype"),
    ({"source_dtype": "Tensor"}, "source_dtype"),
    ({"source_dtype": 16}, "source_dtype"),
])
def test_quantization_config_types_and_ranges(rf8: Path, tmp_path: Path, edit: dict, word: str) -> None:
    folder = tmp_path / "q"
    shutil.copytree(rf8, folder)
    config = json.loads((folder / "config.json").read_text())
    assert read_scheme(open_checkpoint(folder)) is not None
    config["quantization_config"].update(edit)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GGError, match=word) as exc:
        read_scheme(open_checkpoint(folder))
    assert "config.json" in str(exc.value)


def test_quantization_config_not_an_object(rf8: Path, tmp_path: Path) -> None:
    folder = tmp_path / "q"
    shutil.copytree(rf8, folder)
    config = json.loads((folder / "config.json").read_text())
    for value in ([1], "ggcompress"):
        (folder / "config.json").write_text(json.dumps({**config, "quantization_config": value}))
        with pytest.raises(GGError, match="quantization_config"):
            read_scheme(open_checkpoint(folder))
        r = run("dequantize", str(folder), "-o", str(tmp_path / "d"))
        assert r.exit_code == 1 and "quantization_config" in r.output and "Traceback" not in r.output
    (folder / "config.json").write_text("[" * 100_000)
    with pytest.raises(GGError, match="config.json"):
        read_scheme(open_checkpoint(folder))


def test_hub_cache_snapshot_links_stay_readable(real: Path, tmp_path: Path) -> None:
    """A Hugging Face cache snapshot links every file to ../../blobs: that stays inside the repository."""
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    for i, name in enumerate(("model.safetensors", "config.json", "tokenizer_config.json")):
        shutil.copy(real / name, repo / "blobs" / f"blob{i}")
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    ck = open_checkpoint(snap)
    assert ck.config == json.loads((real / "config.json").read_text())
    assert {k: raw_bytes(v) for k, v in read_all(snap).items()} == \
        {k: raw_bytes(v) for k, v in read_all(real).items()}
    P.pack(snap, tmp_path / "snap.ggz")
    carried = sorted(dict(P.read_packed_files(tmp_path / "snap.ggz")))
    assert carried == ["config.json", "tokenizer_config.json"]
    (tmp_path / "elsewhere.txt").write_text("x")
    (snap / "notes.txt").symlink_to(tmp_path / "elsewhere.txt")  # leaves the repository: refused
    with pytest.raises(GGError, match="outside the model folder"):
        P.pack(snap, tmp_path / "snap2.ggz")


def test_init_reads_analyze_reports_strictly(tmp_path: Path) -> None:
    from ggcompress.methods.init import shapes_from_report

    schema = "ggcompress.analyze/1"
    good = {"schema": schema, "checkpoints": [{"roles": {"attn": {"beta": 1.5, "params": 10}}}]}
    assert shapes_from_report(good) == {"attn": 1.5}
    for doc in ({"schema": schema, "checkpoints": {"a": 1}}, {"schema": schema, "checkpoints": [1]},
                {"schema": schema, "checkpoints": [{"roles": [1]}]},
                {"schema": schema, "checkpoints": [{"roles": {"attn": {"beta": 1.5, "params": "10"}}}]},
                {"schema": schema, "checkpoints": [{"roles": {"attn": "x", "mlp": {"beta": True}}}]}):
        with pytest.raises(GGError, match="analyze report"):
            shapes_from_report(doc)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(GGError, match="nests deeper"):
        shapes_from_report(deep)


# ------------------------------------------------------------------------- every case through the CLI


def crafted_cases(real: Path, packed: Path, tmp: Path) -> list[tuple[str, list[str], int]]:
    """(case, CLI arguments, expected exit code) for each hostile file of issue 10, built under ``tmp``."""
    header, data = split_st((real / "model.safetensors").read_bytes())
    name = first_matrix(header)
    cases: list[tuple[str, list[str], int]] = []

    def st_case(label: str, edit) -> None:
        h = json.loads(json.dumps(header))
        edit(h)
        path = tmp / f"{label}.safetensors"
        path.write_bytes(join_st(h, data))
        cases.append((label, ["analyze", str(path)], 1))
        cases.append((label + " (pack)", ["pack", str(path), "-o", str(tmp / f"{label}.ggz")], 1))

    st_case("negative offsets", lambda h: h[name].update(data_offsets=[-8, h[name]["data_offsets"][1] - 8]))
    st_case("string offsets", lambda h: h[name].update(data_offsets=list(map(str, h[name]["data_offsets"]))))
    st_case("out-of-bounds offsets", lambda h: h[name].update(data_offsets=[10**9, 10**9 + 1]))
    other = next(k for k in header if k not in ("__metadata__", name))
    size = header[other]["data_offsets"][1] - header[other]["data_offsets"][0]
    start = header[name]["data_offsets"][0] + 2  # inside the first matrix
    st_case("overlapping offsets", lambda h: h[other].update(data_offsets=[start, start + size]))
    st_case("negative shape", lambda h: h[name].update(shape=[-d for d in h[name]["shape"]]))
    st_case("metadata list", lambda h: h.update(__metadata__=["format", "pt"]))
    deep = tmp / "deep.safetensors"
    deep.write_bytes(join_st(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", data))
    cases.append(("deep nesting", ["analyze", str(deep)], 1))
    outside = tmp / "outside.safetensors"
    shutil.copy(real / "model.safetensors", outside)
    for label, shard in (("index ../", "../outside.safetensors"), ("index absolute", str(outside)),
                         ("index symlink", "link.safetensors")):
        folder = tmp / label.replace(" ", "_").replace("/", "")
        folder.mkdir()
        if shard == "link.safetensors":
            (folder / shard).symlink_to(outside)
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {name: shard}}))
        cases.append((label, ["analyze", str(folder)], 1))
    linked = tmp / "linked"
    shutil.copytree(real, linked)
    (linked / "notes.txt").symlink_to(outside)
    cases.append(("symlink out (pack)", ["pack", str(linked), "-o", str(tmp / "linked.ggz")], 1))
    cases.append(("symlink out (quantize-rf8)", ["quantize-rf8", str(linked), "-o", str(tmp / "q")], 1))
    version, gh, gdata = split_ggz(packed.read_bytes())

    def ggz_case(label: str, edit) -> None:
        h = json.loads(json.dumps(gh))
        h = edit(h) or h
        path = tmp / f"{label}.ggz"
        path.write_bytes(join_ggz(version, h, gdata))
        cases.append((label, ["unpack", str(path), "-o", str(tmp / f"{label}-out")], 1))

    ggz_case("ggz missing key", lambda h: coded_entry(h).pop("eg"))
    ggz_case("ggz wrong type", lambda h: coded_entry(h).update(shape="48x384"))
    ggz_case("ggz lane 0", lambda h: coded_entry(h)["eg"].update(lane=0))
    for label, shape in (("ggz const 2^33 B", [1 << 16, 1 << 16]), ("ggz const 2^50 B", [1 << 25, 1 << 25])):
        sub = tmp / label.replace(" ", "_").replace("^", "")
        sub.mkdir()
        cases.append((label, ["unpack", str(const_container(sub, shape)), "-o", str(sub / "out")], 1))
    good = tmp / "good.json"
    schema = "ggcompress.pack/1"
    good.write_text(json.dumps({"schema": schema, "checkpoints": [{"source": "m", "summary": {}}]}))
    bad = tmp / "bad.json"
    bad.write_text(json.dumps({"schema": schema, "checkpoints": [{"source": 1, "summary": []}]}))
    cases.append(("diff unexpected types", ["diff", str(good), str(bad)], 1))
    cases.append(("diff bad --metric", ["diff", str(good), str(good), "--metric", "[a-"], 2))
    return cases


def test_every_case_is_one_error_line_through_the_cli(real: Path, packed: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV_MAX_MEMORY, raising=False)
    cases = crafted_cases(real, packed, tmp_path)
    tracebacks, clean = [], 0
    for label, args, code in cases:
        r = run(*args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        if r.exception is not None and not isinstance(r.exception, SystemExit) or "Traceback" in r.output:
            tracebacks.append(label)
            continue
        assert r.exit_code == code, (label, r.output)
        if code == 1:
            assert len(lines) == 1 and lines[0].startswith("error: "), (label, r.output)
        clean += 1
        out = args[args.index("-o") + 1] if "-o" in args else None
        assert out is None or not Path(out).exists(), label  # nothing left behind
    assert tracebacks == [] and clean == len(cases) == 25


def test_eval_refuses_a_model_folder_linking_out(smollm2_dir: Path, tmp_path: Path) -> None:
    from ggcompress.io.loading import load_model

    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / name, folder / name)
    (folder / "model.safetensors").symlink_to(smollm2_dir / "model.safetensors")
    with pytest.raises(GGError, match="outside the model folder"):
        load_model(folder)
