"""Helpers for the hostile-input tests (test_validation, test_fuzz): small real checkpoints cut from
the MiniLM fixture, and byte-level access to safetensors and .ggz files so tests can rewrite them.

The files are written with the safetensors library (independent of ggcompress's reader) and the .ggz
preamble is packed here from docs/format.md §1, so a header can be edited and re-checksummed.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

#: Real MiniLM tensors (some cut to fewer rows to keep files small) and the dtypes they are stored in.
REAL_TENSORS = {
    "embeddings.LayerNorm.bias": (None, torch.float32),
    "embeddings.LayerNorm.weight": (None, torch.float32),
    "embeddings.position_ids": (None, None),
    "embeddings.token_type_embeddings.weight": (None, torch.bfloat16),
    "encoder.layer.0.attention.self.query.weight": (48, torch.bfloat16),
    "encoder.layer.0.attention.self.key.weight": (32, torch.float32),
}
PREAMBLE = struct.Struct("<8sIIQQ")


def real_tensors(minilm_dir: Path) -> dict[str, torch.Tensor]:
    """A handful of real MiniLM weights (rows cut, some cast to bf16), read with safetensors."""
    out = {}
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        for name, (rows, dtype) in REAL_TENSORS.items():
            t = f.get_tensor(name)
            t = t[:rows] if rows else t
            out[name] = (t.to(dtype) if dtype else t).contiguous()
    return out


def real_folder(minilm_dir: Path, dst: Path) -> Path:
    """A small HF-style folder: model.safetensors of real weights + config.json + tokenizer_config.json."""
    dst.mkdir(parents=True, exist_ok=True)
    save_file(real_tensors(minilm_dir), str(dst / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer_config.json"):
        (dst / name).write_bytes((minilm_dir / name).read_bytes())
    return dst


def split_st(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join_st(header: Any, data: bytes) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text)) + text + data


def split_ggz(blob: bytes) -> tuple[int, dict[str, Any], bytes]:
    magic, version, crc, hlen, dlen = PREAMBLE.unpack(blob[:PREAMBLE.size])
    start = PREAMBLE.size + hlen
    return version, json.loads(blob[PREAMBLE.size:start]), blob[start:]


def join_ggz(version: int, header: Any, data: bytes) -> bytes:
    """A container with this header (any JSON value, or raw bytes) and a correct header checksum."""
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return PREAMBLE.pack(b"\x89GGZ\r\n\x1a\n", version, zlib.crc32(text), len(text), len(data)) + text + data


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def edited_ggz(path: Path, header: dict[str, Any], edit: Any, version: int, data: bytes) -> Path:
    """Write a container at ``path`` from a copy of ``header`` changed by ``edit`` (header CRC recomputed)."""
    h = json.loads(json.dumps(header))
    edit(h)
    path.write_bytes(join_ggz(version, h, data))
    return path


def unpack_error(path: Path, out: Path) -> str:
    """The one line `ggcompress unpack` prints for a bad container: exit 1, `error: `, no traceback,
    nothing written at ``out``."""
    from click.testing import CliRunner

    from ggcompress.cli import cli

    r = CliRunner().invoke(cli, ["unpack", str(path), "-o", str(out)])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output and not out.exists()
    return lines[0]
