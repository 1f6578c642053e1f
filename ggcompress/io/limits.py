"""Bounds on what a file may make ggcompress do: memory it allocates, JSON nesting, paths it reads.

Why one module: every reader (safetensors headers and indexes, .ggz containers, reports, configs)
takes sizes, nesting and file names from bytes a user may not control. Each reader validates its
format next to its parser, and asks here before allocating a buffer whose size a file declared,
before trusting JSON, and before opening a path a file named. The limit is one number:

- ``GGCOMPRESS_MAX_MEMORY`` (bytes; suffixes K, M, G, T in powers of 1024, e.g. ``8G``): the largest
  single buffer a file may make ggcompress allocate. Default: half the machine's physical memory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ggcompress.errors import GGError

ENV_MAX_MEMORY = "GGCOMPRESS_MAX_MEMORY"
#: Deepest JSON nesting any file ggcompress reads may have (real headers and configs nest < 10 deep).
MAX_JSON_DEPTH = 64
_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5G', '1048576' -> bytes (K/M/G/T are powers of 1024)."""
    m = _SIZE.match(str(text))
    if not m:
        raise GGError(f"{ENV_MAX_MEMORY}={text!r}: expected a byte count such as 8G, 512M or 1048576")
    value = int(float(m.group(1)) * _SUFFIX[m.group(2).upper()])
    if value <= 0:
        raise GGError(f"{ENV_MAX_MEMORY}={text!r}: must be positive")
    return value


def physical_memory() -> int:
    """Bytes of physical memory (a conservative 8 GiB when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def max_memory() -> int:
    """The current limit: $GGCOMPRESS_MAX_MEMORY, else half the physical memory (read on every call)."""
    text = os.environ.get(ENV_MAX_MEMORY)
    return parse_size(text) if text else physical_memory() // 2


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check_alloc(nbytes: int, what: str) -> int:
    """Refuse (GGError) a buffer of ``nbytes`` that a file asked for when it exceeds the limit."""
    limit = max_memory()
    if nbytes > limit:
        raise GGError(f"{what}: needs {format_bytes(nbytes)} of memory, over the limit of "
                      f"{format_bytes(limit)} (raise {ENV_MAX_MEMORY}, e.g. {ENV_MAX_MEMORY}=64G, "
                      "if the file is genuine)")
    return nbytes


def loads_json(text: str | bytes, where: str, what: str = "JSON") -> Any:
    """json.loads with bounded nesting; any malformed input becomes one GGError naming ``where``."""
    try:
        doc = json.loads(text)
    except RecursionError:
        raise GGError(f"{where}: {what} nests deeper than {MAX_JSON_DEPTH} levels — malformed") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise GGError(f"{where}: not valid {what} ({str(exc).splitlines()[0][:200]})") from None
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise GGError(f"{where}: {what} nests deeper than {MAX_JSON_DEPTH} levels — malformed")
    return doc


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold one object (config.json and the like), read with bounded nesting."""
    try:
        text = path.read_bytes()
    except OSError as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise GGError(f"{path}: cannot read ({why})") from None
    doc = loads_json(text, str(path))
    if not isinstance(doc, dict):
        kind = "a list" if isinstance(doc, list) else type(doc).__name__
        raise GGError(f"{path}: expected a JSON object, found {kind}")
    return doc


def json_depth(doc: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion, whatever the input)."""
    deepest = 0
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((v, depth + 1) for v in value)
    return deepest


def is_int(value: Any) -> bool:
    """A JSON integer (bool is not an integer here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def valid_shape(shape: Any, max_dims: int = 64) -> bool:
    """A JSON list of at most ``max_dims`` non-negative integers that torch can represent (the product
    of the non-zero dimensions below 2^63, as torch's int64 sizes need)."""
    if not isinstance(shape, list) or len(shape) > max_dims or not all(is_int(d) and d >= 0 for d in shape):
        return False
    n = 1
    for d in shape:
        n *= d or 1
    return n < 1 << 63


def confinement_root(folder: Path) -> Path:
    """The folder a model folder's files may resolve into: itself, or for a Hugging Face cache
    snapshot (``models--org--name/snapshots/REV``, whose files link to ``../../blobs``) the
    repository's cache folder."""
    resolved = folder.resolve()
    parent = resolved.parent
    if parent.name == "snapshots" and parent.parent.name.startswith(("models--", "datasets--")):
        return parent.parent
    return resolved


def inside(path: Path, folder: Path, what: str) -> Path:
    """``path`` resolved; GGError when it (or a symlink on the way) leads out of ``folder``."""
    root = confinement_root(folder)
    target = path.resolve()
    if not target.is_relative_to(root):
        link = " (a symbolic link)" if path.is_symlink() else ""
        raise GGError(f"{path}{link}: {what} resolves to {target}, outside the model folder {folder} — "
                      "refusing to read it; copy the file into the folder instead")
    return target
