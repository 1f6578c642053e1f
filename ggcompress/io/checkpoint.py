"""Checkpoint I/O: find the weights behind a path, read them one tensor at a time, write atomically.

Every command reads through `open_checkpoint` and writes through `CheckpointWriter`, so the
safety rules (never unpickle, never touch an input, atomic output, --force) live in one place.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ggcompress.errors import GGError, as_os_error, describe_os_error
from ggcompress.io.limits import check_alloc, inside, is_int, loads_json, read_json_object, valid_shape

#: Notes for the user (stale temp files removed...); the CLI prints them on stderr as `note: ...`.
log = logging.getLogger("ggcompress")

#: safetensors dtype strings <-> torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
}
TORCH_TO_ST = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
#: Files that hold weights; everything else in a model folder (config, tokenizer...) is carried along.
WEIGHT_SUFFIXES = PICKLE_SUFFIXES | {".safetensors", ".gguf", ".ggz", ".onnx", ".h5", ".msgpack", ".ot"}
WEIGHT_NAMES = re.compile(r".*\.(safetensors|bin)\.index\.json$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Largest safetensors header read (the safetensors library's own limit is 100 MB).
MAX_HEADER_BYTES = 100 * 2**20
#: Most dimensions a tensor may declare (torch's own limit is 64).
MAX_DIMS = 64
#: What a safetensors dtype string looks like (unknown ones are listed but cannot be read).
_DTYPE_FORM = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string, e.g. "BF16"
    file: Path
    offset: int = -1  # absolute byte offset of the data in a safetensors file (-1: not safetensors)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize if self.dtype in DTYPES else 0


@dataclass
class Checkpoint:
    """A set of safetensors files read lazily; `root` is the folder holding config/tokenizer files."""

    source: str
    files: list[Path]
    tensors: list[TensorInfo]
    root: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any] | None:
        """config.json of the model folder, if there is one."""
        if self.root is None or not (self.root / "config.json").is_file():
            return None
        path = self.root / "config.json"
        inside(path, self.root, "config.json")
        return read_json_object(path)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def info(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise GGError(f"{self.source}: no tensor named {name!r}")

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (memory-mapped; only this tensor's bytes are touched)."""
        return next(iter(self.iter_tensors([name])))[1]

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        """Yield (info, tensor) one at a time, in checkpoint order; each file is opened once."""
        wanted = None if names is None else set(names)
        infos = [t for t in self.tensors if wanted is None or t.name in wanted]
        by_file: dict[Path, list[TensorInfo]] = {}
        for t in infos:
            by_file.setdefault(t.file, []).append(t)
        for path, group in by_file.items():
            if path.suffix in PICKLE_SUFFIXES:
                state = _torch_load_safe(path)
                for t in group:
                    yield t, state[t.name]
                del state
                continue
            try:
                with open(path, "rb") as f:
                    for t in group:
                        yield t, _read_tensor(f, t)
            except OSError as e:
                raise GGError(f"{path}: cannot read tensor data ({_short(e)})") from None


# ----------------------------------------------------------------------------------------------
# Opening


def open_checkpoint(spec: str | os.PathLike[str]) -> Checkpoint:
    """Resolve a file, sharded index, HF folder or hub id into a lazily-read Checkpoint."""
    spec_s = str(spec)
    path = Path(spec_s).expanduser()
    if path.is_dir():
        return _open_folder(path, spec_s)
    if path.is_file():
        return _open_file(path, spec_s)
    if not path.exists() and HUB_ID.match(spec_s) and not spec_s.startswith((".", "/")):
        return _open_folder(_hub_snapshot(spec_s), spec_s)
    raise GGError(f"{spec_s}: no such file or folder")


def _open_file(path: Path, source: str) -> Checkpoint:
    if path.name.endswith(".index.json"):
        return _open_index(path, source)
    suffix = path.suffix.lower()
    if suffix == ".gguf":  # llama.cpp's format: tensors dequantized one at a time, HF names
        from ggcompress.io.gguf import open_gguf

        return open_gguf(path, source)
    if suffix in PICKLE_SUFFIXES:
        return _open_pickle(path, source, path.parent)
    if suffix != ".safetensors":
        # A safetensors file without the usual suffix still works: sniff its header.
        if not _looks_like_safetensors(path):
            raise GGError(
                f"{path}: not a checkpoint ggcompress can read (expected .safetensors, a "
                "model.safetensors.index.json, an HF model folder or a hub id)"
            )
    tensors, meta = read_header(path)
    root = path.parent if (path.parent / "config.json").is_file() else None
    return Checkpoint(source, [path], tensors, root, meta)


def _open_folder(path: Path, source: str) -> Checkpoint:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index_name).is_file():
            ck = _open_index(path / index_name, source)
            ck.root = path
            return ck
    st = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    for p in st:
        inside(p, path, "weights file")
    if st:
        tensors: list[TensorInfo] = []
        meta: dict[str, str] = {}
        for f in st:
            t, m = read_header(f)
            tensors.extend(t)
            meta = meta or m
        _check_unique(tensors, source)
        return Checkpoint(source, st, tensors, path, meta)
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if len(pickles) == 1:
        inside(pickles[0], path, "weights file")
        return _open_pickle(pickles[0], source, path)
    raise GGError(f"{source}: folder holds no weights (no *.safetensors, no model.safetensors.index.json)")


def _open_index(index: Path, source: str) -> Checkpoint:
    weight_map = read_index(index)
    by_shard: dict[str, list[str]] = {}
    for tensor, file in weight_map.items():
        by_shard.setdefault(file, []).append(tensor)
    files = list(by_shard)
    tensors: list[TensorInfo] = []
    meta: dict[str, str] = {}
    for name in files:
        shard = index.parent / name
        if shard.suffix in PICKLE_SUFFIXES:
            t = _open_pickle(shard, source, index.parent).tensors
        else:
            t, m = read_header(shard)
            meta = meta or m
        held = {info.name for info in t}
        for tensor in by_shard[name]:
            if tensor not in held:
                raise GGError(f"{index}: lists tensor {tensor!r} in shard {name}, which does not hold it")
        tensors.extend(t)
    _check_unique(tensors, source)
    return Checkpoint(source, [index.parent / f for f in files], tensors, index.parent, meta)


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded-checkpoint index, validated: tensor name -> shard file name.

    Shard names must be plain relative names of existing files that stay inside the index's folder
    (no absolute paths, no ``..``, no symbolic link leading out).
    """
    try:
        text = index.read_bytes()
    except OSError as e:
        raise GGError(f"{index}: cannot read ({_short(e)})") from None
    doc = loads_json(text, str(index), "sharded-checkpoint index")
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise GGError(f"{index}: not a valid sharded-checkpoint index (needs a non-empty "
                      "\"weight_map\" object)")
    checked: set[str] = set()
    for tensor, name in weight_map.items():
        if not isinstance(name, str):
            raise GGError(f"{index}: weight_map entry for {tensor!r} must be a shard file name, found "
                          f"{_clip(name)}")
        if name in checked:
            continue
        rel = Path(name)
        if not name or "\0" in name or rel.is_absolute() or ".." in rel.parts or name.startswith("~"):
            raise GGError(f"{index}: shard {name!r} is not a file name inside the index's folder — "
                          "refusing it")
        shard = index.parent / rel
        if not shard.is_file():
            raise GGError(f"{index}: shard {name} is missing")
        inside(shard, index.parent, "shard")
        checked.add(name)
    return weight_map


def _open_pickle(path: Path, source: str, root: Path) -> Checkpoint:
    """Read a torch pickle with weights_only=True: tensors and plain containers, no code execution."""
    state = _torch_load_safe(path)
    tensors = [
        TensorInfo(k, tuple(v.shape), TORCH_TO_ST.get(v.dtype, str(v.dtype)), path) for k, v in state.items()
    ]
    del state
    return Checkpoint(source, [path], tensors, root if (root / "config.json").is_file() else None, {})


def _torch_load_safe(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise GGError(
            f"{path}: refused — not loadable as plain tensors with weights_only=True ({_short(e)}); "
            "ggcompress never unpickles arbitrary objects: convert it to safetensors first"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise GGError(f"{path}: not a state dict of tensors")
    return obj


def _read_tensor(f: Any, t: TensorInfo) -> torch.Tensor:
    """Read exactly one tensor's bytes (plain read, no mmap: memory stays at one tensor)."""
    if t.dtype not in DTYPES:
        raise GGError(f"{t.file}: tensor {t.name!r} has unsupported dtype {t.dtype}")
    dtype = DTYPES[t.dtype]
    if t.nbytes == 0:
        return torch.empty(t.shape, dtype=dtype)
    check_alloc(t.nbytes, f"{t.file}: tensor {t.name!r}")
    buf = bytearray(t.nbytes)
    f.seek(t.offset)
    if f.readinto(buf) != t.nbytes:
        raise GGError(f"{t.file}: truncated while reading tensor {t.name!r}")
    return torch.frombuffer(buf, dtype=dtype).reshape(t.shape)


def read_header(path: Path) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without reading tensor data.

    Everything a header declares is checked before it is trusted: an object of tensor entries, each
    with a known-form dtype string, a shape of non-negative integers and two integer data_offsets
    with 0 <= begin <= end <= the data section, of exactly shape x itemsize bytes, no two tensors
    overlapping; ``__metadata__`` a string-to-string object; nesting bounded.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise GGError(f"{path}: empty or truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise GGError(f"{path}: truncated or not a safetensors file (header claims {n} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise GGError(f"{path}: cannot read ({_short(e)})") from None
    header = loads_json(raw, str(path), "safetensors header")
    if not isinstance(header, dict):
        raise GGError(f"{path}: not a valid safetensors file (header is not an object)")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise GGError(f"{path}: __metadata__ must be an object of strings (found {_kind(meta)})")
    data_len = size - 8 - n
    spans: list[tuple[int, int, TensorInfo]] = []
    for name, h in header.items():
        spans.append(_header_entry(path, name, h, n, data_len))
    spans.sort(key=lambda s: (s[0], s[1]))
    for (b0, e0, t0), (b1, e1, t1) in zip(spans, spans[1:], strict=False):
        if b1 < e0:
            raise GGError(f"{path}: tensors {t0.name!r} (bytes {b0}..{e0}) and {t1.name!r} "
                          f"(bytes {b1}..{e1}) overlap — corrupt or crafted file")
    return [t for _, _, t in spans], dict(meta)


def _header_entry(path: Path, name: str, h: Any, n: int, data_len: int) -> tuple[int, int, TensorInfo]:
    """One tensor entry of a safetensors header, type- and range-checked."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(h, dict) or not {"dtype", "shape", "data_offsets"} <= set(h):
        raise GGError(f"{where}: malformed header entry (needs dtype, shape and data_offsets)")
    dtype, shape, offsets = h["dtype"], h["shape"], h["data_offsets"]
    if not isinstance(dtype, str) or not _DTYPE_FORM.match(dtype):
        raise GGError(f"{where}: dtype {dtype!r} is not a safetensors dtype")
    if not valid_shape(shape, MAX_DIMS):
        raise GGError(f"{where}: shape {_clip(shape)} must be a list of at most {MAX_DIMS} non-negative "
                      "integers (numel < 2^63)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)):
        raise GGError(f"{where}: data_offsets {_clip(offsets)} must be two integers [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise GGError(f"{where}: data_offsets [{begin}, {end}] lie outside the data section of {data_len} "
                      "bytes — truncated, corrupt or crafted file")
    info = TensorInfo(name, tuple(shape), dtype, path, 8 + n + begin)
    if dtype in DTYPES and end - begin != info.nbytes:
        raise GGError(f"{where}: has {end - begin} data bytes, expected {info.nbytes} for shape "
                      f"{list(shape)} {dtype}")
    return begin, end, info


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else type(value).__name__


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _looks_like_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and head[8:9] == b"{"
    except OSError:
        return False


def _check_unique(tensors: list[TensorInfo], source: str) -> None:
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise GGError(f"{source}: tensor {t.name!r} appears in more than one shard")
        seen.add(t.name)


def _hub_snapshot(repo_id: str) -> Path:
    """Download (or find in the local cache) the weights and support files of a hub model."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=[
                    "*.safetensors",
                    "*.safetensors.index.json",
                    "*.json",
                    "*.txt",
                    "*.model",
                    "*.jinja",
                    "*.tiktoken",
                ],
                local_files_only=offline,
            )
        )
    except Exception as e:
        why = "not in the local cache and HF_HUB_OFFLINE is set" if offline else _short(e)
        raise GGError(f"{repo_id}: cannot get it from the Hugging Face hub ({why})") from None


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


# ----------------------------------------------------------------------------------------------
# Writing


def support_files(root: Path | None) -> list[Path]:
    """Non-weight files of a model folder (config, tokenizer, pooling configs...) to carry along."""
    if root is None:
        return []
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.suffix.lower() in WEIGHT_SUFFIXES or WEIGHT_NAMES.match(p.name):
            continue
        inside(p, root, "support file")  # a link may point inside the folder (copied), never out of it
        out.append(p)
    return out


class SafetensorsStreamWriter:
    """Write a safetensors file tensor by tensor, holding at most one tensor in memory.

    Data goes to a side file first (the header needs every offset), then header + data are joined.
    Output bytes depend only on the tensors, their order and the metadata.
    """

    def __init__(self, path: Path):
        self.path = path
        self._data = open(path.with_name(path.name + ".data"), "wb+")  # noqa: SIM115 - closed in finish()
        self._header: dict[str, Any] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._header:
            raise GGError(f"{self.path}: tensor {name!r} written twice")
        if tensor.dtype not in TORCH_TO_ST:
            raise GGError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
        t = tensor.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        self._data.write(memoryview(raw))
        n = t.numel() * t.element_size()
        self._header[name] = {
            "dtype": TORCH_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [self._offset, self._offset + n],
        }
        self._offset += n

    @property
    def nbytes(self) -> int:
        return self._offset

    def finish(self, metadata: dict[str, str] | None = None) -> None:
        header = dict(self._header)
        if metadata:
            header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # 8-byte alignment of the data section, as safetensors does
        with open(self.path, "wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            self._data.seek(0)
            shutil.copyfileobj(self._data, out, 16 * 2**20)
        self._data.close()
        os.unlink(self._data.name)

    def abort(self) -> None:
        try:
            self._data.close()
        except OSError:  # a full disk can fail the final flush; the file goes either way
            pass
        Path(self._data.name).unlink(missing_ok=True)


class CheckpointWriter:
    """Atomic output folder: build in a temp folder beside the target, rename on commit.

    Refuses an existing output unless `force`, and refuses any output that would overlap an input.
    Use as a context manager; an exception leaves no partial output behind.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        force: bool = False,
        inputs: Iterable[str | os.PathLike[str]] = (),
        max_shard_bytes: int = 5 * 2**30,
    ):
        self.out = Path(out).expanduser().absolute()
        self.force = force
        self.max_shard_bytes = max_shard_bytes
        check_output_path(self.out, inputs, force=force, kind="folder")
        self._made = missing_parents(self.out)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(self.out, "tmp"), dir=make_parent(self.out)))
            os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get normal permissions
        except OSError as e:
            remove_empty_folders(self._made)
            raise output_error(self.out, e) from e
        self._shards: list[Path] = []
        self._weight_map: dict[str, str] = {}
        self._writer: SafetensorsStreamWriter | None = None
        self.metadata: dict[str, str] = {}

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
            return
        self.abort()
        os_error = as_os_error(exc)
        if os_error is not None:  # name the output, not a hidden temp file
            raise output_error(self.out, os_error) from exc

    def add_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Append one tensor to the current shard (a new shard starts past max_shard_bytes)."""
        if self._writer is None or self._writer.nbytes >= self.max_shard_bytes:
            self._close_shard()
            self._writer = SafetensorsStreamWriter(self.tmp / f"shard-{len(self._shards):05d}.safetensors")
        if name in self._weight_map:
            raise GGError(f"{self.out}: tensor {name!r} written twice")
        self._writer.add(name, tensor)
        self._weight_map[name] = self._writer.path.name

    def copy_support_files(self, root: Path | None, *, skip: Iterable[str] = ()) -> None:
        """Carry config.json, tokenizer and other non-weight files of the source folder along."""
        skip_set = set(skip)
        if root is None:
            return
        for src in support_files(root):
            rel = src.relative_to(root)
            if str(rel) in skip_set:
                continue
            dst = self.tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)  # contents only: a new file's mode follows the umask, not the source's

    def write_json(self, rel: str, obj: Any) -> None:
        (self.tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.tmp / rel).write_text(json.dumps(obj, indent=2) + "\n")

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.finish(self.metadata)
            self._shards.append(self._writer.path)
            self._writer = None

    def commit(self) -> Path:
        """Name the shards as transformers expects, then move the folder into place."""
        try:
            self._close_shard()
            if len(self._shards) == 1:
                final = {self._shards[0].name: "model.safetensors"}
            else:
                total = len(self._shards)
                final = {
                    s.name: f"model-{i + 1:05d}-of-{total:05d}.safetensors"
                    for i, s in enumerate(self._shards)
                }
            for old, new in final.items():
                os.replace(self.tmp / old, self.tmp / new)
            if len(self._shards) > 1:
                size = sum((self.tmp / n).stat().st_size for n in final.values())
                self.write_json(
                    "model.safetensors.index.json",
                    {
                        "metadata": {"total_size": size},
                        "weight_map": {k: final[v] for k, v in self._weight_map.items()},
                    },
                )
            if self.out.exists():
                if not self.force:  # appeared while we worked
                    raise GGError(f"{self.out}: already exists (use --force to replace it)")
            replace_output(self.tmp, self.out)
            return self.out
        except OSError as e:
            self.abort()
            raise output_error(self.out, e) from e
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        if not self.out.exists():
            remove_empty_folders(self._made)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(
    out: Path, inputs: Iterable[str | os.PathLike[str]], *, force: bool, kind: str | None = None
) -> None:
    """Refuse outputs that exist (without force), overlap an input, or cannot be written — before any work.

    `kind` ("file" or "folder") is what the command writes: --force replaces an output of that kind
    only, never a folder by a file. Also removes temp files that killed runs of this output left.
    """
    if "\x00" in str(out):
        raise GGError(f"{str(out)!r}: the path contains a NUL byte — not a valid file name")
    out = Path(out).expanduser().absolute()
    try:
        _check_output(out, inputs, force, kind)
    except OSError as e:  # e.g. a name longer than the file system allows
        raise GGError(describe_os_error(e, out, "write")) from None
    clean_stale_temps(out)


def _check_output(out: Path, inputs: Iterable[str | os.PathLike[str]], force: bool, kind: str | None) -> None:
    for src in inputs:
        p = Path(src).expanduser()
        if not p.exists():
            continue
        p = p.resolve()
        o = out.resolve()
        if o == p or p.is_relative_to(o) or (p.is_dir() and o.is_relative_to(p)):
            raise GGError(
                f"{out}: output would overwrite or sit inside the input {src} — choose another path"
            )
    if out.exists() or out.is_symlink():
        if not force:
            raise GGError(f"{out}: already exists (use --force to replace it)")
        st = out.lstat()
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise GGError(f"{out}: is a device, pipe or socket, not a file or folder — --force replaces only "
                          "files and folders; choose another path")
        if kind == "file" and out.is_dir():
            raise GGError(f"{out}: is a folder; this command writes a file — give a file path "
                          "(--force never replaces a folder by a file)")
        if kind == "folder" and not out.is_dir():
            raise GGError(f"{out}: is a file; this command writes a folder — give a folder path "
                          "(--force never replaces a file by a folder)")
    check_writable(out)


def check_writable(out: Path) -> None:
    """Fail now, not after the work, when `out` cannot be created: a parent that is a file, a read-only
    or forbidden folder, a name longer than the file system allows."""
    out = Path(out).expanduser().absolute()
    base = out.parent
    missing = [out.name]
    while not base.exists():
        if base.is_symlink():
            raise GGError(f"{out}: cannot write: {base} is a broken symbolic link")
        missing.append(base.name)
        base = base.parent
    if not base.is_dir():
        raise GGError(f"{out}: cannot write: {base} is a file, not a folder — fix the path")
    if not os.access(base, os.W_OK | os.X_OK):
        err = errno.EROFS if _read_only(base) else errno.EACCES
        raise GGError(describe_os_error(OSError(err, os.strerror(err)), out, "write") + f" ({base})")
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for name in missing:
        if len(os.fsencode(name)) > name_max:
            raise GGError(f"{out}: cannot write: the name {name[:40]}… is {len(os.fsencode(name))} bytes, "
                          f"longer than the {name_max} the file system allows — choose a shorter name")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def make_parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def output_error(out: Path, exc: OSError) -> GGError:
    """A writer's OSError as one line naming the output (not its hidden temp file); nothing was kept."""
    return GGError(describe_os_error(exc, out, "write") + " — nothing was written")


# ---------------------------------------------------------------------------------------------- temp files

#: Kinds of hidden files the writers keep beside an output while they work: `.NAME.KIND-PID-HOST-xxxx`.
TEMP_KINDS = ("tmp", "data", "old", "rf8")
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_STEM_MAX = 100  # keep temp names well under NAME_MAX even for long output names


def _stem(name: str) -> str:
    if len(os.fsencode(name)) <= _STEM_MAX:
        return name
    return f"{name[:60]}~{zlib.crc32(os.fsencode(name)):08x}"


def temp_prefix(out: Path, kind: str) -> str:
    """mkstemp/mkdtemp prefix of a hidden temp beside `out`; the pid and host let a later run tell a
    killed run's leftovers from a live run's files."""
    return f".{_stem(Path(out).name)}.{kind}-{os.getpid()}-{_HOST}-"


_TEMP_NAME = re.compile(r"(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-")


def clean_stale_temps(out: Path) -> list[Path]:
    """Remove the temp files of earlier runs of `out` that were killed (their process is gone).

    Files of a live process, or of another machine (shared file systems), are left alone; temp files
    without a pid (older versions) are reported, not removed. Returns the paths removed.
    """
    out = Path(out).expanduser().absolute()
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    removed = []
    prefixes = [f".{_stem(out.name)}.{kind}-" for kind in TEMP_KINDS]
    for p in entries:
        prefix = next((x for x in prefixes if p.name.startswith(x)), None)
        if prefix is None:
            continue
        m = _TEMP_NAME.match(p.name[len(prefix):])
        if m is None:
            log.warning("%s: looks like a temp file of an interrupted run of an older version — remove it "
                        "if no other run is writing %s", p, out.name)
            continue
        if m["host"] != _HOST or pid_alive(int(m["pid"])):
            continue
        if prefix.endswith(".old-") and (p / "old").exists() and not (out.exists() or out.is_symlink()):
            try:  # killed between moving the previous output aside and renaming the new one in
                os.replace(p / "old", out)
                p.rmdir()
                log.warning("restored %s, which a killed run (pid %s) had moved aside", out, m["pid"])
            except OSError as e:
                log.warning("%s: holds the previous %s, which a killed run moved aside; cannot restore it "
                            "(%s) — move it back by hand", p / "old", out.name, e.strerror)
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError as e:
            log.warning("%s: cannot remove a killed run's temp file (%s)", p, e.strerror)
            continue
        log.warning("removed %s, left by a killed run (pid %s) of %s", p.name, m["pid"], out)
        removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` (on this machine) still runs; unsure counts as alive, so its files stay."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # it exists (another user's), or we cannot tell: keep its files
    return True


def replace_output(new: Path, out: Path) -> None:
    """Rename `new` to `out`. An existing `out` is first moved aside into `.NAME.old-...`, put back if
    anything (an error, a signal) stops the second rename, and deleted only once `new` is in place."""
    if not (out.exists() or out.is_symlink()):
        os.replace(new, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=temp_prefix(out, "old"), dir=out.parent))
    old = trash / "old"
    try:
        os.replace(out, old)
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(old, out)
            raise
    finally:
        if not old.exists() or out.exists():
            shutil.rmtree(trash, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> Path:
    """Write one file atomically (temp file in the same folder, then rename); --force replaces only at
    the rename, and a failure leaves neither a partial file nor a new folder behind."""
    p = Path(path).expanduser().absolute()
    check_output_path(p, (), force=force, kind="file")
    made = missing_parents(p)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p, "tmp"), dir=make_parent(p))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        remove_empty_folders(made)
        if isinstance(e, OSError):
            raise output_error(p, e) from e
        raise
    return p


def missing_parents(p: Path) -> list[Path]:
    """The folders above `p` that do not exist yet (deepest first), to remove again after a failure."""
    out = []
    q = p.parent
    while not q.exists() and q != q.parent:
        out.append(q)
        q = q.parent
    return out


def remove_empty_folders(folders: list[Path]) -> None:
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return
