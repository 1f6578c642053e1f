"""Property-based fuzzing of every format ggcompress reads (issue 10, item 5).

Real files (MiniLM weights cut small, written with the safetensors library; .ggz containers packed from
them with exp-Golomb, rANS and RF8 codes; a two-shard index) are mutated — raw bytes anywhere, or one
JSON field replaced by a value of another type, a boundary number, a shifted offset, a deleted key —
and read back. Every mutation must either load data identical to what the file holds or raise GGError:
never another exception, never an allocation over GGCOMPRESS_MAX_MEMORY (set low here, measured with
tracemalloc, which sees numpy and Python buffers).

"Identical" is checked against an independent reader where one exists (the safetensors library), and
otherwise byte for byte against the original tensor stored at the same place (.ggz sections are
addressed by offset, so a tensor renamed or reshaped by a mutation must still hold its original bytes).

CI runs a fixed, derandomized sample (< 1 min on 2 cores); benchmarks/fuzz_long.py runs many more.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from ggcompress.codec import pack as P
from ggcompress.errors import GGError
from ggcompress.io import limits
from ggcompress.io.checkpoint import open_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from hostile import join_ggz, join_st, raw_bytes, real_folder, real_tensors, split_ggz, split_st  # noqa: E402

#: Examples per test: the CI share by default; GGCOMPRESS_FUZZ_EXAMPLES for long runs.
EXAMPLES = int(os.environ.get("GGCOMPRESS_FUZZ_EXAMPLES", "0"))
LIMIT = 8 << 20  # GGCOMPRESS_MAX_MEMORY during the fuzz run: 8 MiB, ~30x the largest tensor here


def fuzz_settings(ci_examples: int) -> settings:
    return settings(max_examples=EXAMPLES or ci_examples, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)


@pytest.fixture(scope="module", autouse=True)
def _low_memory_limit():
    old = os.environ.get(limits.ENV_MAX_MEMORY)
    os.environ[limits.ENV_MAX_MEMORY] = str(LIMIT)
    yield
    if old is None:
        os.environ.pop(limits.ENV_MAX_MEMORY, None)
    else:
        os.environ[limits.ENV_MAX_MEMORY] = old


def within_limit(fn: Callable[[], Any]) -> Any:
    """fn() under tracemalloc; asserts its peak stayed under the limit. GGError passes through."""
    tracemalloc.start()
    try:
        return fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < LIMIT * 2, f"peak {peak} bytes"  # limit per buffer; decode holds ~2 at once


# --------------------------------------------------------------------------------------- mutations


def leaf_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) into a JSON document, containers included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += leaf_paths(v, (*prefix, k))
    elif isinstance(doc, list) and len(doc) <= 64:  # long lists (module names...): their first items
        for i, v in enumerate(doc[:8]):
            out += leaf_paths(v, (*prefix, i))
    return out


BOUNDARY = [0, 1, -1, 2, 7, 8, 255, 256, 2**16, 2**24, 2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63,
            2**64, -(2**63), 10**30]
json_values = st.recursive(
    st.none() | st.booleans() | st.sampled_from(BOUNDARY) | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["F32", "BF16", "U8", "F8_E4M3", "eg", "rans", "const", "raw", "step", "codes",
                       "../x", "/etc/passwd", "", "NaN"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


@st.composite
def json_mutation(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with one field replaced, shifted, deleted or duplicated (a deep copy)."""
    doc = json.loads(json.dumps(doc))
    paths = leaf_paths(doc)
    path = draw(st.sampled_from(paths[1:] or paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1] if path else None
    if key is None:
        return draw(json_values)
    old = parent[key]
    action = draw(st.sampled_from(["replace", "shift", "delete", "duplicate"]))
    if action == "shift" and isinstance(old, int) and not isinstance(old, bool):
        parent[key] = old + draw(st.sampled_from([-8, -1, 1, 8, 4096, -(old + 1), old, 2**40]))
    elif action == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif action == "duplicate" and isinstance(parent, list):
        parent.append(json.loads(json.dumps(old)))
    elif action == "duplicate" and isinstance(parent, dict):
        parent[f"{key}~"] = json.loads(json.dumps(old))
    else:
        parent[key] = draw(json_values)
    return doc


@st.composite
def byte_mutation(draw: st.DrawFn, blob: bytes, hot: int) -> bytes:
    """Overwrite, insert, delete or truncate bytes; positions favour the first ``hot`` bytes."""
    b = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        span = draw(st.sampled_from([hot, hot, len(b)]))
        pos = draw(st.integers(0, max(min(span, len(b)) - 1, 0)))
        action = draw(st.sampled_from(["set", "set", "flip", "insert", "delete", "truncate"]))
        if action == "set":
            b[pos:pos + 1] = bytes([draw(st.integers(0, 255))])
        elif action == "flip":
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del b[pos:pos + draw(st.integers(1, 8))]
        else:
            del b[pos:]
            break
    return bytes(b)


def outcome(exc: GGError) -> str:
    """A coarse label of a refusal for hypothesis's statistics (--hypothesis-show-statistics)."""
    text = str(exc)
    for word in ("checksum", "outside", "overlap", "nests", "memory", "plausible", "truncated", "malformed",
                 "shape", "dtype", "data_offsets", "not valid", "missing", "does not hold"):
        if word in text:
            return f"GGError: {word}"
    return "GGError: other"


# ----------------------------------------------------------------------------------------- fixtures


class Work(dict):
    """The fuzz fixtures (a dict); a short repr keeps hypothesis's failure reports readable."""

    def __repr__(self) -> str:
        return "<fuzz fixtures>"


@pytest.fixture(scope="module")
def work(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Work:
    root = tmp_path_factory.mktemp("fuzz")
    folder = real_folder(minilm_dir, root / "model")
    tensors = real_tensors(minilm_dir)
    out = Work(root=root, folder=folder, tensors=tensors, st=(folder / "model.safetensors").read_bytes())
    containers = {}
    P.pack(folder, root / "eg.ggz")
    P.pack(folder, root / "rans.ggz", P.PackOptions(coder="rans", quant="step:6"))
    P.pack(folder, root / "rf8.ggz", P.PackOptions(quant="rf8"))
    P.pack(folder, root / "lossless.ggz", P.PackOptions(quant="none"))  # format version 2
    P.pack(folder, root / "steps.ggz", P.PackOptions(coder="rans", target_sqnr_db=30.0))  # per-tensor steps
    P.pack(folder, root / "rows.ggz", P.PackOptions(target_sqnr_db=30.0, step_granularity="row"))  # version 3
    assert any("groups" in t for t in P.open_packed(root / "rows.ggz").tensors)
    P.pack(folder, root / "trellis.ggz", P.PackOptions(coder="rans", quant="step:6", trellis=True))  # v4
    assert any(t["encoding"] == "trellis" for t in P.open_packed(root / "trellis.ggz").tensors)
    for name in ("eg", "rans", "rf8", "lossless", "steps", "rows", "trellis"):
        blob = (root / f"{name}.ggz").read_bytes()
        containers[name] = (blob, by_offset(root / f"{name}.ggz"))
    out["ggz"] = containers
    # A two-shard checkpoint with its index, a shard outside the folder and a link leading to it.
    shards = root / "sharded"
    shards.mkdir()
    names = list(tensors)
    half = {n: tensors[n] for n in names[:3]}, {n: tensors[n] for n in names[3:]}
    for i, part in enumerate(half):
        save_file(part, str(shards / f"model-0000{i + 1}-of-00002.safetensors"))
    shutil.copy(shards / "model-00001-of-00002.safetensors", root / "outside.safetensors")
    (shards / "escape.safetensors").symlink_to(root / "outside.safetensors")
    weight_map = {n: f"model-0000{1 + (n not in half[0])}-of-00002.safetensors" for n in names}
    out["index"] = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    out["shards"] = shards
    return out


def by_offset(path: Path) -> dict[int, bytes]:
    """Original bytes of every decoded tensor and carried file, keyed by its data-section offset."""
    packed = P.open_packed(path)
    out = {e["offset"]: raw_bytes(t) for e, (_, t) in zip(packed.tensors, P.read_packed(path), strict=True)}
    out.update({e["offset"]: data for e, (_, data) in zip(packed.files, P.read_packed_files(path),
                                                             strict=True)})
    return out


# ----------------------------------------------------------------------------------- safetensors


def check_safetensors(path: Path) -> None:
    """Read every tensor; on success compare with the safetensors library (or the bytes at the offsets)."""
    def read() -> dict[str, torch.Tensor] | None:
        try:
            ck = open_checkpoint(path)
            return {info.name: t for info, t in ck.iter_tensors()}
        except GGError as exc:
            event(outcome(exc))
            return None

    got = within_limit(read)
    blob = path.read_bytes()
    try:
        with safe_open(str(path), "pt") as f:
            ref = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception:  # noqa: BLE001 - the reference refusing is a valid outcome here
        ref = None
    if got is None:
        return
    event("loaded")
    if ref is not None:
        assert set(got) == set(ref)
        for k, t in ref.items():
            assert got[k].dtype == t.dtype and got[k].shape == t.shape and raw_bytes(got[k]) == raw_bytes(t)
        return
    header, data = split_st(blob)  # ours accepted what the library refuses (e.g. a gap): check bytes
    for name, t in got.items():
        b, e = header[name]["data_offsets"]
        assert 0 <= b <= e <= len(data) and raw_bytes(t) == data[b:e]


@given(data=st.data())
@fuzz_settings(150)
def test_fuzz_safetensors_header_fields(work: dict[str, Any], data: st.DataObject) -> None:
    header, body = split_st(work["st"])
    mutated = data.draw(json_mutation(header))
    path = work["root"] / "st-fields.safetensors"
    path.write_bytes(join_st(mutated, body))
    check_safetensors(path)


@given(data=st.data())
@fuzz_settings(150)
def test_fuzz_safetensors_bytes(work: dict[str, Any], data: st.DataObject) -> None:
    (n,) = struct.unpack("<Q", work["st"][:8])
    path = work["root"] / "st-bytes.safetensors"
    path.write_bytes(data.draw(byte_mutation(work["st"], 8 + n)))
    check_safetensors(path)


# ----------------------------------------------------------------------------------------- indexes


@given(data=st.data())
@fuzz_settings(100)
def test_fuzz_index(work: dict[str, Any], data: st.DataObject) -> None:
    folder = work["shards"]
    targeted = st.sampled_from(["../outside.safetensors", str(work["root"] / "outside.safetensors"),
                                "escape.safetensors", "sub/../model-00001-of-00002.safetensors", "", ".",
                                "model-00001-of-00002.safetensors\x00", "~/x.safetensors",
                                "model-00003-of-00002.safetensors"])
    doc = work["index"]
    if data.draw(st.booleans()):
        doc = json.loads(json.dumps(doc))
        doc["weight_map"][data.draw(st.sampled_from(sorted(doc["weight_map"])))] = data.draw(targeted)
    else:
        doc = data.draw(json_mutation(doc))
    (folder / "model.safetensors.index.json").write_text(json.dumps(doc))

    def read() -> tuple[list[Path], dict[str, torch.Tensor]] | None:
        try:
            ck = open_checkpoint(folder)
            return ck.files, {info.name: t for info, t in ck.iter_tensors()}
        except GGError as exc:
            event(outcome(exc))
            return None

    got = within_limit(read)
    if got is None:
        return
    event("loaded")
    files, tensors = got
    assert all(f.resolve().is_relative_to(folder.resolve()) for f in files)  # never read outside
    for name, t in tensors.items():
        assert raw_bytes(t) == raw_bytes(work["tensors"][name]) and t.dtype == work["tensors"][name].dtype


# ------------------------------------------------------------------------------------------- .ggz


def check_ggz(path: Path, original: dict[int, bytes]) -> None:
    """Decode every tensor and file; on success each must hold the original bytes stored at its offset."""
    def read() -> tuple[dict[str, Any], list[bytes], list[bytes]] | None:
        try:
            packed = P.open_packed(path)
            tensors = [raw_bytes(t) for _, t in P.read_packed(path)]
            files = [data for _, data in P.read_packed_files(path)]
            return packed.header, tensors, files
        except GGError as exc:
            event(outcome(exc))
            return None

    got = within_limit(read)
    if got is None:
        return
    event("loaded")
    header, tensors, files = got
    for entry, blob in zip(header["tensors"], tensors, strict=True):
        assert original.get(entry["offset"]) == blob, entry
    for entry, blob in zip(header["files"], files, strict=True):
        assert original.get(entry["offset"]) == blob, entry


@pytest.mark.parametrize("kind", ["eg", "rans", "rf8", "lossless", "steps", "rows", "trellis"])
@given(data=st.data())
@fuzz_settings(120)
def test_fuzz_ggz_header_fields(work: dict[str, Any], kind: str, data: st.DataObject) -> None:
    blob, original = work["ggz"][kind]
    version, header, body = split_ggz(blob)
    mutated = data.draw(json_mutation(header))
    path = work["root"] / f"fields-{kind}.ggz"
    path.write_bytes(join_ggz(version, mutated, body))  # checksum recomputed: the fields are what is tested
    check_ggz(path, original)


@pytest.mark.parametrize("kind", ["eg", "rans", "lossless", "rows", "trellis"])
@given(data=st.data())
@fuzz_settings(100)
def test_fuzz_ggz_bytes(work: dict[str, Any], kind: str, data: st.DataObject) -> None:
    blob, original = work["ggz"][kind]
    hlen = struct.unpack("<Q", blob[16:24])[0]
    path = work["root"] / f"bytes-{kind}.ggz"
    path.write_bytes(data.draw(byte_mutation(blob, 32 + hlen)))
    check_ggz(path, original)


@given(data=st.data())
@fuzz_settings(60)
def test_fuzz_ggz_data_with_matching_checksums(work: dict[str, Any], data: st.DataObject) -> None:
    """Corrupt coded bytes *and* fix the section checksum, so the decoders themselves meet the damage."""
    import zlib

    blob, original = work["ggz"][data.draw(st.sampled_from(["eg", "rans", "rows", "trellis"]))]
    version, header, body = split_ggz(blob)
    coded = [t for t in header["tensors"] if t["encoding"] != "raw" and t["length"]]
    entry = data.draw(st.sampled_from(coded))
    section = bytearray(body[entry["offset"]:entry["offset"] + entry["length"]])
    for _ in range(data.draw(st.integers(1, 3))):
        section[data.draw(st.integers(0, len(section) - 1))] = data.draw(st.integers(0, 255))
    entry["crc32"] = zlib.crc32(section)
    body = body[:entry["offset"]] + bytes(section) + body[entry["offset"] + entry["length"]:]
    path = work["root"] / "coded.ggz"
    path.write_bytes(join_ggz(version, header, body))
    check_ggz(path, original)  # the decoded-values checksum must still catch any change
