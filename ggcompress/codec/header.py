"""Validation of a `.ggz` header (docs/format.md §2-§5) before any tensor is decoded.

Why a module of its own: a container is input a user may have been sent, and every number in its
header turns into an index, a loop bound or an allocation in the decoder. ``validate_header`` checks
each key the reader uses — types, ranges, sections inside the data section and inside their tensor's
bytes — and bounds what a tensor may claim by the bytes that hold it and by the memory limit
(``io/limits``). After it, decoding only meets corruption the checksums catch. Keys it does not know
are ignored, as the format asks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ggcompress.errors import GGError
from ggcompress.io.checkpoint import DTYPES, FLOAT_DTYPES, MAX_DIMS
from ggcompress.io.limits import check_alloc, format_bytes, is_int, valid_shape
from ggcompress.stats.rate import MAX_K

#: Encodings and coders this reader decodes (docs/format.md §4-§5).
ENCODINGS = ("raw", "step", "codes", "lossless", "trellis")
#: Format version that introduced per-row steps (a ``row_steps`` section in a step entry).
ROW_STEPS_VERSION = 3
#: Format version that introduced trellis-coded tensors (encoding ``trellis``, pack --trellis).
TRELLIS_VERSION = 4
#: Format version that introduced split rANS sections in lossless tensors (kind 3, docs/format.md §4).
LOSSLESS_SPLIT_VERSION = 5
#: Contexts of a trellis entry's coded groups: the indices whose state uses quantizer Q0, and Q1; or all
#: of them in one stream.
TRELLIS_CONTEXTS = ("q0", "q1", "all")
CODERS = ("const", "eg", "rans")
#: Largest exp-Golomb lane the writer makes is 4096 symbols; anything past this is not a lane size.
MAX_LANE = 1 << 16
#: A ``const`` or ``rans`` tensor holds less than a bit per value, so its size is bounded by a ratio
#: instead: at most MAX_EXPANSION times its stored bytes, or MIN_PLAUSIBLE bytes whatever it stores. A
#: genuine constant tensor over 1 GiB, or rANS under 0.002 bits/value on one, does not occur in a model.
MAX_EXPANSION = 4096
MIN_PLAUSIBLE = 1 << 30
_U32 = (1 << 32) - 1


def validate_header(path: Path, header: Any, version: int, data_length: int) -> None:
    """Raise GGError (naming ``path`` and the tensor/file) unless the header is well formed."""
    if not isinstance(header, dict):
        raise GGError(f"{path}: malformed container header (not a JSON object)")
    if header.get("format", "ggcompress.ggz") != "ggcompress.ggz":
        raise GGError(f"{path}: header format {header.get('format')!r} is not ggcompress.ggz")
    if not is_int(header.get("format_version")) or header["format_version"] != version:
        raise GGError(f"{path}: header format_version {header.get('format_version')!r} disagrees with the "
                      f"preamble's {version} — corrupt container")
    meta = header.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise GGError(f"{path}: header metadata must be an object")
    files, tensors = header.get("files"), header.get("tensors")
    if not isinstance(files, list) or not isinstance(tensors, list):
        raise GGError(f"{path}: malformed container header (files and tensors must be lists)")
    spans: list[tuple[int, int, str]] = []
    for i, entry in enumerate(files):
        what = f"file {entry.get('path')!r}" if isinstance(entry, dict) else f"file #{i}"
        spans.append(_span(path, entry, what, data_length))
    names: set[str] = set()
    for i, entry in enumerate(tensors):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise GGError(f"{path}: tensor #{i} has no name — malformed container header")
        if name in names:
            raise GGError(f"{path}: tensor {name!r} appears twice — malformed container header")
        names.add(name)
        spans.append(_span(path, entry, f"tensor {name!r}", data_length))
        _tensor(path, header, entry, f"tensor {name!r}")
    spans.sort()
    for (_, e0, w0), (b1, _, w1) in zip(spans, spans[1:], strict=False):
        if b1 < e0:
            raise GGError(f"{path}: {w0} and {w1} overlap in the data section — corrupt container")


def _span(path: Path, entry: Any, what: str, data_length: int) -> tuple[int, int, str]:
    """(begin, end, what) of an entry's byte range, checked to lie inside the data section."""
    if not isinstance(entry, dict):
        raise GGError(f"{path}: {what}: header entry is not an object")
    offset, length = _uint(path, entry, "offset", what), _uint(path, entry, "length", what)
    crc = _uint(path, entry, "crc32", what)
    if crc > _U32:
        raise GGError(f"{path}: {what}: crc32 {crc} is not a 32-bit value")
    if offset + length > data_length:
        raise GGError(f"{path}: {what} lies outside the data section — corrupt container")
    return offset, offset + length, what


def _uint(path: Path, d: dict[str, Any], key: str, what: str, top: int | None = None) -> int:
    value = d.get(key)
    if not is_int(value) or value < 0 or (top is not None and value > top):
        bound = f" in 0..{top}" if top is not None else " >= 0"
        raise GGError(f"{path}: {what}: {key} {_clip(value)} must be an integer{bound} — malformed header")
    return value


def _obj(path: Path, d: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = d.get(key)
    if not isinstance(value, dict):
        raise GGError(f"{path}: {what}: {key} must be an object — malformed header")
    return value


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _tensor(path: Path, header: dict[str, Any], entry: dict[str, Any], what: str) -> None:
    shape, dtype, encoding = entry.get("shape"), entry.get("dtype"), entry.get("encoding")
    if not valid_shape(shape, MAX_DIMS):
        raise GGError(f"{path}: {what}: shape {_clip(shape)} must be a list of non-negative integers "
                      "(numel < 2^63)")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise GGError(f"{path}: {what}: dtype {_clip(dtype)} is not one this reader knows")
    if encoding not in ENCODINGS:
        raise GGError(f"{path}: {what}: encoding {_clip(encoding)} is not one this reader knows "
                      f"({', '.join(ENCODINGS)}); a newer ggcompress may read it")
    n = math.prod(shape)
    itemsize = DTYPES[dtype].itemsize
    nbytes = n * itemsize
    length = entry["length"]
    if encoding == "raw":
        if length != nbytes:
            raise GGError(f"{path}: {what}: {length} bytes stored for shape {shape} {dtype} "
                          f"({nbytes} needed)")
        check_alloc(nbytes, f"{path}: {what}")
        return
    if encoding == "lossless":
        _lossless(path, entry, what, n, dtype, length)
        check_alloc(2 * nbytes, f"{path}: {what} (shape {shape} {dtype})")  # byte planes + merged output
        return
    if encoding == "step":
        if dtype not in FLOAT_DTYPES:
            raise GGError(f"{path}: {what}: a step-coded tensor must restore to a float dtype, not {dtype}")
        q = header.get("quantization")
        method = q.get("method") if isinstance(q, dict) else None
        step = q.get("step") if method == "step" else entry.get("step") if method == "steps" else None
        number = isinstance(step, int | float) and not isinstance(step, bool)
        if "row_steps" in entry:  # per-row steps (format version 3): one int8 S per row, checked on decode
            if header["format_version"] < ROW_STEPS_VERSION or method != "steps":
                raise GGError(f"{path}: {what} has per-row steps, which need format version "
                              f"{ROW_STEPS_VERSION} and quantization method steps — malformed header")
            if len(shape) < 2:
                raise GGError(f"{path}: {what}: per-row steps need a tensor of 2+ dims, not shape {shape}")
            _sub(path, _obj(path, entry, "row_steps", what), length, f"{what} per-row steps", shape[0])
        elif not number or not (math.isfinite(step) and step > 0):
            raise GGError(f"{path}: {what} is step-coded but has no positive finite step (quantization "
                          f"{_clip(q)}, tensor step {_clip(entry.get('step'))}) — malformed header")
    elif encoding == "trellis":
        _uint(path, entry, "decoded_crc32", what, _U32)
        extra = _trellis(path, header, entry, what, shape, length, itemsize)
        check_alloc(2 * nbytes + extra, f"{path}: {what} (shape {shape} {dtype})")
        return
    elif dtype != "U8":
        raise GGError(f"{path}: {what}: codes must restore to U8, not {dtype}")
    _uint(path, entry, "decoded_crc32", what, _U32)
    if "row_steps" in entry:
        extra = _row_groups(path, entry, what, shape, length, itemsize) + 16 * n  # int64 symbols, float64
    else:
        extra = _coded(path, entry, what, n, length, itemsize)
    check_alloc(2 * nbytes + extra, f"{path}: {what} (shape {shape} {dtype})")


def _coded(path: Path, entry: dict[str, Any], what: str, n: int, length: int, itemsize: int) -> int:
    """A symbol table and coder over n values (a tensor, or one row group); returns the decoder's
    working memory beyond the output, in bytes."""
    nbytes = n * itemsize
    sym = _obj(path, entry, "symbols", what)
    count = _uint(path, sym, "count", f"{what} symbols")
    width = _uint(path, sym, "bits", f"{what} symbols", 64)
    low = sym.get("min")
    if not is_int(low) or abs(low) >= 1 << 63:
        raise GGError(f"{path}: {what}: symbols min {_clip(low)} must be a 64-bit integer")
    if count < 1 or (width == 0) != (count == 1) or (width < 64 and count > 1 << width):
        raise GGError(f"{path}: {what}: {count} symbols cannot have {width}-bit fields — malformed header")
    _sub(path, sym, length, f"{what} symbol table", (count * width + 7) // 8)
    coder = entry.get("coder")
    if coder not in CODERS:
        raise GGError(f"{path}: {what}: coder {_clip(coder)} is not one this reader knows "
                      f"({', '.join(CODERS)})")
    extra = 0
    if coder == "const":
        if count != 1:
            raise GGError(f"{path}: {what}: a const tensor has exactly one symbol, not {count}")
        _plausible(path, what, nbytes, length)
    elif coder == "eg":
        extra = _eg(path, _obj(path, entry, "eg", what), what, n, count, length, itemsize)
    else:
        rans = _obj(path, entry, "rans", what)
        _uint(path, rans, "precision", what, 64)
        model = _obj(path, rans, "model", what)
        _uint(path, model, "k", f"{what} rANS model", MAX_K)
        _sub(path, model, length, f"{what} rANS model")
        _sub(path, rans, length, f"{what} rANS stream")
        _plausible(path, what, nbytes, length)
        extra = 4 * n  # the decoded ranks (int32)
    return extra


def _trellis(path: Path, header: dict[str, Any], entry: dict[str, Any], what: str, shape: list[int],
             length: int, itemsize: int) -> int:
    """A trellis entry (codec/trellis.py, docs/format.md §4): its parameters, its row classes if any, and
    its context groups (q0, q1 — an empty one is left out —, all, or q<quantizer>r<class>) whose counts
    add up to the lanes' padded length. Returns the decoder's working memory beyond the output."""
    n = math.prod(shape)
    q = header.get("quantization")
    if header["format_version"] < TRELLIS_VERSION or not isinstance(q, dict) or q.get("method") not in (
            "trellis", "steps"):
        raise GGError(f"{path}: {what} is trellis-coded, which needs format version {TRELLIS_VERSION} and "
                      "quantization method trellis or steps — malformed header")
    if entry["dtype"] not in FLOAT_DTYPES:
        raise GGError(f"{path}: {what}: a trellis-coded tensor must restore to a float dtype")
    spec = _obj(path, entry, "trellis", what)
    delta = spec.get("delta")
    if not (isinstance(delta, int | float) and not isinstance(delta, bool) and math.isfinite(delta)
            and delta > 0):
        raise GGError(f"{path}: {what}: trellis delta {_clip(delta)} must be a positive finite number")
    if _uint(path, spec, "lane", what, MAX_LANE) < 1 or _uint(path, spec, "states", what) not in (4, 8):
        raise GGError(f"{path}: {what}: trellis lane {spec.get('lane')} / states {spec.get('states')}: this "
                      "reader decodes lanes of 1..65536 and 4 or 8 states — malformed header")
    groups = entry.get("groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise GGError(f"{path}: {what}: a trellis entry needs a non-empty list of groups — malformed header")
    contexts = [g.get("context") for g in groups]
    allowed: tuple[str, ...] = TRELLIS_CONTEXTS
    if "rows" in entry:  # contexts by quantizer and row class, the classes in a section of a byte a row
        rows = _obj(path, entry, "rows", what)
        classes = _uint(path, rows, "classes", f"{what} row classes", 16)
        if classes < 2 or len(shape) < 2:
            raise GGError(f"{path}: {what}: row classes need 2..16 classes and a tensor of 2+ dims — "
                          "malformed header")
        _sub(path, rows, length, f"{what} row classes", shape[0])
        allowed = tuple(f"q{q}r{c}" for q in (0, 1) for c in range(classes))
    if any(c not in allowed for c in contexts) or len(set(contexts)) != len(contexts) or (
            "all" in contexts and len(contexts) > 1):
        raise GGError(f"{path}: {what}: trellis contexts {_clip(contexts)} must be q0 and/or q1, or all (or "
                      "q<quantizer>r<class> with row classes) — malformed header")
    lane = spec["lane"]
    padded = -(-n // lane) * lane
    extra, total = 0, 0
    for g in groups:
        gwhat = f"{what} context {g['context']}"
        count = _uint(path, g, "count", gwhat, padded)
        if count < 1:
            raise GGError(f"{path}: {gwhat} holds no values — malformed header")
        total += count
        coded = _counted if "table" in g else _coded
        extra = max(extra, coded(path, g, gwhat, count, length, itemsize))
    if total != padded:
        raise GGError(f"{path}: {what}: trellis contexts hold {total} values, {padded} expected (shape "
                      f"{n} in lanes of {lane}) — malformed header")
    return extra + 40 * padded  # both streams, the walked indices and states (int64), the float64 levels


def _counted(path: Path, g: dict[str, Any], what: str, n: int, length: int, itemsize: int) -> int:
    """A group coded with rANS over a dense count table (trellis groups, docs/format.md §4): the table's
    kind, symbol range and section, and the rANS stream. Returns the decoder's working memory."""
    from ggcompress.codec.coders import RANS_MAX_SYMBOLS

    table = _obj(path, g, "table", what)
    low = table.get("min")
    span = _uint(path, table, "span", f"{what} count table", RANS_MAX_SYMBOLS)
    if table.get("kind") != "counts" or not is_int(low) or abs(low) > 1 << 50 or span < 2:
        raise GGError(f"{path}: {what}: count table kind {_clip(table.get('kind'))}, min {_clip(low)}, span "
                      f"{span}: not one this reader decodes (counts, |min| ≤ 2^50, span ≥ 2) — malformed "
                      "header")
    _uint(path, table, "present", f"{what} count table", span)
    _sub(path, table, length, f"{what} count table")
    if 8 * table["length"] < span:
        raise GGError(f"{path}: {what}: a count table of {table['length']} bytes cannot hold {span} counts — "
                      "corrupt container")
    if g.get("coder") != "rans":
        raise GGError(f"{path}: {what}: a count table goes with coder rans, not {_clip(g.get('coder'))}")
    rans = _obj(path, g, "rans", what)
    _uint(path, rans, "precision", what, 64)
    _sub(path, rans, length, f"{what} rANS stream")
    _plausible(path, what, n * itemsize, length)
    return 4 * n + 16 * span


def _row_groups(path: Path, entry: dict[str, Any], what: str, shape: list[int], length: int,
                itemsize: int) -> int:
    """The row groups of a per-row-step tensor: disjoint sets of step codes whose row counts add up to
    the rows, each a coded sub-entry over its rows' values (docs/format.md §4)."""
    from ggcompress.codec.rdalloc import ROW_CODE_MAX

    groups = entry.get("groups")
    if not isinstance(groups, list) or not groups:
        raise GGError(f"{path}: {what}: per-row steps need a non-empty list of row groups — malformed header")
    rows, cols = shape[0], math.prod(shape[1:])
    total, extra = 0, 0
    seen: set[int] = set()
    for i, g in enumerate(groups):
        gwhat = f"{what} row group #{i}"
        if not isinstance(g, dict):
            raise GGError(f"{path}: {gwhat} is not an object — malformed header")
        codes = g.get("codes")
        if not isinstance(codes, list) or not codes or len(codes) > ROW_CODE_MAX + 1 or not all(
                is_int(k) and 0 <= k <= ROW_CODE_MAX for k in codes) or codes != sorted(set(codes)) \
                or seen & set(codes):
            raise GGError(f"{path}: {gwhat}: codes {_clip(codes)} must be distinct ascending step codes in "
                          f"0..{ROW_CODE_MAX}, each in one group — malformed header")
        seen |= set(codes)
        count = _uint(path, g, "rows", gwhat, rows)
        if count < 1:
            raise GGError(f"{path}: {gwhat} holds no rows — malformed header")
        total += count
        extra = max(extra, _coded(path, g, gwhat, count * cols, length, itemsize))
    if total != rows:
        raise GGError(f"{path}: {what}: row groups hold {total} rows, the shape has {rows} — malformed "
                      "header")
    return extra


def _sub(path: Path, d: dict[str, Any], length: int, what: str, exact: int | None = None) -> None:
    """A sub-section (offset, length relative to the tensor's bytes) inside the tensor's range."""
    offset, size = _uint(path, d, "offset", what), _uint(path, d, "length", what)
    if offset + size > length:
        raise GGError(f"{path}: {what} lies outside the tensor's bytes — corrupt container")
    if exact is not None and size != exact:
        raise GGError(f"{path}: {what} holds {size} bytes, {exact} expected — corrupt container")


def _eg(path: Path, eg: dict[str, Any], what: str, n: int, count: int, length: int, itemsize: int) -> int:
    """Check an exp-Golomb entry; returns the decoder's working memory beyond the output, in bytes."""
    k = _uint(path, eg, "k", what, MAX_K)
    bits = _uint(path, eg, "bits", what)
    lane = _uint(path, eg, "lane", what, MAX_LANE)
    if lane < 1:
        raise GGError(f"{path}: {what}: exp-Golomb lane size must be at least 1 — malformed header")
    _sub(path, eg, length, f"{what} exp-Golomb stream", (bits + 7) // 8)
    if n * (k + 1) > bits:  # every order-k codeword has at least k + 1 bits
        raise GGError(f"{path}: {what}: {n} values cannot fit in a {bits}-bit order-{k} exp-Golomb stream "
                      "— corrupt or crafted container")
    lanes = _obj(path, eg, "lanes", what)
    _uint(path, lanes, "min", f"{what} lanes", bits)
    lane_width = _uint(path, lanes, "bits", f"{what} lanes", 64)
    table = max(-(-n // lane) - 1, 0)
    _sub(path, lanes, length, f"{what} exp-Golomb lane table", (table * lane_width + 7) // 8)
    # The lockstep decoder's lookup table has 2^bitlen(count - 1 + 2^k) entries when codewords fit 64 bits.
    top = (count - 1 + (1 << k)).bit_length()
    lookup = (1 << top) * itemsize if 2 * top - k - 1 <= 64 else 0
    return lookup + 24 * (table + 1) + lane * 8 * itemsize


def _plausible(path: Path, what: str, nbytes: int, stored: int) -> None:
    """A payload-free coder's declared size, bounded by what a genuine checkpoint could hold."""
    bound = max(MIN_PLAUSIBLE, MAX_EXPANSION * stored)
    if nbytes > bound:
        raise GGError(f"{path}: {what} claims {format_bytes(nbytes)} from {stored} stored bytes (at most "
                      f"{format_bytes(bound)} is plausible) — corrupt or crafted container")


def _lossless(path: Path, entry: dict[str, Any], what: str, n: int, dtype: str, length: int) -> None:
    """A lossless entry's layout (codec/lossless.py): planes and chunks that fit the dtype, and a section
    directory that fits in the tensor's bytes; the sections themselves are checked while decoding."""
    from ggcompress.codec import lossless

    spec = _obj(path, entry, "lossless", what)
    chunk = _uint(path, spec, "chunk", what, 1 << 30)
    planes = _uint(path, spec, "planes", what, 64)
    layout = spec.get("layout")
    itemsize = DTYPES[dtype].itemsize
    if layout != lossless.layout_of(dtype) or chunk < 1 or planes != (
            lossless.plane_count(layout, itemsize) if n else 0):
        raise GGError(f"{path}: {what}: lossless layout {_clip(layout)} / {planes} planes / chunk {chunk} "
                      f"do not fit dtype {dtype} — malformed header")
    if n and 8 * planes * -(-n // chunk) > length:
        raise GGError(f"{path}: {what}: its {length} bytes cannot hold the section directory of "
                      f"{n} values — corrupt or crafted container")
