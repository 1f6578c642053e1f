"""The on-disk layout of a ggcompress-quantized checkpoint, shared by the writer, dequantize and the loader.

Why one module: ``quantize-rf8`` writes it, ``dequantize`` and ``load_quantized`` read it back, and the
three must agree byte for byte with docs/quantize-rf8.md ("Checkpoint layout"). In short:

- a quantized weight ``X.weight`` becomes two tensors of an ordinary safetensors folder:
  ``X.weight`` (U8 codes, the weight's own shape) and ``X.weight_scale`` (F32, the scale of the codes'
  (rows, cols) matrix view: (1, 1) tensor, (rows, 1) channel, (rows, ceil(cols / N)) block:N);
- decode: ``W[r, c] = lut[code[r, c]] * scale[r or 0, c // N]`` (docs/rf8.md §2); the format name picks
  the 256-entry table;
- a weight stored [in, out] in the source (transformers ``Conv1D``: GPT-2's c_attn, c_fc, c_proj) is
  quantized as its transpose, so its codes are [out, in] like every linear layer's and its scales are
  per output channel; the scheme lists it under ``transposed`` and dequantize transposes it back;
- layout 2 (``"layout": 2`` in the scheme; written since 0.1.0's format bump) stores every codes tensor
  with a leading axis of 1 (``[1, *shape]``): the codes never have the dense weight's shape, so
  transformers without ggcompress refuses the folder (a size mismatch) instead of loading the codes as
  weights. Layout 1 (no ``layout`` key: codes in the weight's own shape) is still read;
- the scheme (``Scheme``) sits in config.json ``quantization_config`` (with ``ggcompress_version``) and,
  as a compact sorted JSON string, in every shard's safetensors ``__metadata__["quantization_config"]``
  (without the version, so output bytes depend only on the input and the settings).

GF-k formats (docs/gf.md) store each weight as four tensors: ``X.weight`` (U8 codes packed k bits per
code, (rows, ceil(cols * k / 8))), ``X.weight_scale`` (F16, signed, same shapes as above),
``X.weight_table`` (F32, 2^k levels) and ``X.weight_shape`` (I64, the weight's original shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from ggcompress import __version__
from ggcompress.errors import GGError
from ggcompress.formats import QuantizedTensor, canonical_format, get_codec, parse_granularity
from ggcompress.formats.base import matrix_shape, validate
from ggcompress.formats.gf import GF_FORMATS, GF_VERSION, GFTensor, gf_bits, gf_decode, gf_from_packed, is_gf
from ggcompress.formats.packing import packed_cols
from ggcompress.formats.rf8 import RF8_VERSION
from ggcompress.io.checkpoint import Checkpoint
from ggcompress.io.limits import is_int, loads_json

QUANT_METHOD = "ggcompress"
#: ``X.weight`` holds the codes, ``X.weight`` + SCALE_SUFFIX the float32 scales.
SCALE_SUFFIX = "_scale"
#: GF formats only: ``X.weight`` + TABLE_SUFFIX (F32 levels) and + SHAPE_SUFFIX (I64 original shape).
TABLE_SUFFIX = "_table"
SHAPE_SUFFIX = "_shape"
#: safetensors ``__metadata__`` key holding the scheme as a JSON string (values must be strings).
METADATA_KEY = "quantization_config"
#: Version of each format's decode table. RF8's is docs/rf8.md's; the OCP FP8 and two's-complement INT8
#: tables are fixed by their standards, so they stay 1.
FORMAT_VERSIONS = {"rf8": RF8_VERSION, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1,
                   **{f: GF_VERSION for f in GF_FORMATS}, "auto": 1}
#: ``format: "auto"`` (quantize-rf8 --format auto --bits B): each module has its own format and
#: granularity in ``module_formats`` ({module: "gf4 block:32"}); the top-level granularity is unused.
AUTO = "auto"
#: Tensor layout the writer uses; readers accept 1 (codes in the weight's shape) and 2 (a leading axis of 1).
LAYOUT = 2
#: Largest block size a quantization_config may declare (2^24 columns; real ones are 32..4096).
MAX_BLOCK = 1 << 24


@dataclass(frozen=True)
class Scheme:
    """How every quantized weight of one checkpoint is stored (one format and granularity for all)."""

    format: str  # canonical codec name: rf8 | fp8_e4m3 | fp8_e5m2 | int8 | gf3..gf8 | auto
    granularity: str  # tensor | channel | block
    block_size: int | None
    modules: tuple[str, ...]  # module names whose ``.weight`` is quantized, in checkpoint order
    source_dtype: str | None = None  # torch dtype name of the weights before quantization, e.g. "bfloat16"
    format_version: int = 0  # 0: the current version of ``format``
    transposed: tuple[str, ...] = ()  # modules whose source weight was [in, out]; codes are its transpose
    module_formats: tuple[tuple[str, str], ...] = ()  # auto only: (module, "format granularity")
    layout: int = LAYOUT  # 1: codes in the weight's shape; 2: codes with a leading axis of 1

    def for_module(self, module: str) -> Scheme:
        """The single-format scheme one module is stored with (itself unless the format is auto)."""
        if self.format != AUTO:
            return self
        spec = dict(self.module_formats).get(module)
        if spec is None:
            raise GGError(f"quantization_config: module {module!r} has no entry in module_formats")
        fmt, _, gran_text = spec.partition(" ")
        gran = parse_granularity(gran_text)
        return Scheme(fmt, gran.kind, gran.block_size, (module,), self.source_dtype,
                      transposed=(module,) if module in self.transposed else (), layout=self.layout)

    def __post_init__(self) -> None:
        if not self.format_version:
            object.__setattr__(self, "format_version", FORMAT_VERSIONS[self.format])

    @property
    def granularity_spec(self) -> str:
        return f"block:{self.block_size}" if self.granularity == "block" else self.granularity

    def to_dict(self, *, with_version: bool = True) -> dict[str, Any]:
        """The ``quantization_config`` object (config.json adds ``ggcompress_version``)."""
        d: dict[str, Any] = {
            "quant_method": QUANT_METHOD,
            "format": self.format,
            "format_version": self.format_version,
            "granularity": self.granularity,
            "block_size": self.block_size,
            "modules": list(self.modules),
            "source_dtype": self.source_dtype,
        }
        if self.transposed:  # only when present, so files without Conv1D keep their exact bytes
            d["transposed"] = list(self.transposed)
        if self.format == AUTO:
            d["module_formats"] = dict(self.module_formats)
        if self.layout != 1:
            d["layout"] = self.layout
        if with_version:
            d["ggcompress_version"] = __version__
        return d

    def metadata(self) -> dict[str, str]:
        """safetensors ``__metadata__``: ``format`` = pt (what transformers expects) + the scheme."""
        text = json.dumps(self.to_dict(with_version=False), sort_keys=True, separators=(",", ":"))
        return {"format": "pt", METADATA_KEY: text}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Scheme:
        """Parse and validate a ``quantization_config``; ``where`` names the file in errors."""
        if not isinstance(d, dict) or d.get("quant_method") != QUANT_METHOD:
            raise GGError(f"{where}: quantization_config is not a ggcompress scheme")
        fmt_name = d.get("format")
        if not isinstance(fmt_name, str):
            raise GGError(f"{where}: quantization_config.format must be a format name, found {fmt_name!r}")
        try:
            fmt = canonical_format(fmt_name)
        except GGError as exc:
            raise GGError(f"{where}: {exc}") from None
        version, readable = d.get("format_version"), FORMAT_VERSIONS.get(fmt)
        if not is_int(version) or readable is None or version != readable:
            raise GGError(f"{where}: {fmt} format version {version!r} is not readable by this ggcompress "
                          f"(it reads version {readable})")
        granularity, block_size = d.get("granularity"), d.get("block_size")
        if not isinstance(granularity, str) or not (block_size is None or is_int(block_size)):
            raise GGError(f"{where}: quantization_config.granularity must be a string and block_size an "
                          f"integer or null (found {granularity!r}, {block_size!r})")
        if block_size is not None and not 0 < block_size <= MAX_BLOCK:
            raise GGError(f"{where}: quantization_config.block_size {block_size} is outside 1..{MAX_BLOCK}")
        try:
            gran = parse_granularity(granularity, block_size)
        except GGError as exc:
            raise GGError(f"{where}: {exc}") from None
        modules = d.get("modules")
        if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
            raise GGError(f"{where}: quantization_config.modules must be a list of module names")
        if len(set(modules)) != len(modules):
            raise GGError(f"{where}: quantization_config.modules lists a module twice")
        source_dtype = d.get("source_dtype")
        if source_dtype is not None and not _float_dtype_name(source_dtype):
            raise GGError(f"{where}: quantization_config.source_dtype {source_dtype!r} is not a torch float "
                          "dtype name (e.g. bfloat16)")
        transposed = d.get("transposed", [])
        if not isinstance(transposed, list) or not all(isinstance(m, str) and m in modules
                                                       for m in transposed):
            raise GGError(f"{where}: quantization_config.transposed must be a list of quantized module names")
        layout = d.get("layout", 1)
        if not is_int(layout) or layout not in (1, LAYOUT):
            raise GGError(f"{where}: quantization_config.layout {layout!r} is not readable by this "
                          f"ggcompress (it reads 1 and {LAYOUT})")
        per_module: tuple[tuple[str, str], ...] = ()
        if fmt == AUTO:
            table = d.get("module_formats")
            if not isinstance(table, dict) or set(table) != set(modules):
                raise GGError(f"{where}: quantization_config.module_formats must give every module's format")
            entries = []
            for m in modules:
                spec = table[m]
                f, _, g = str(spec).partition(" ")
                try:
                    f = canonical_format(f)
                    g = parse_granularity(g).spec
                except GGError as exc:
                    raise GGError(f"{where}: module_formats[{m!r}]: {exc}") from None
                if f == AUTO:
                    raise GGError(f"{where}: module_formats[{m!r}] cannot be auto")
                entries.append((m, f"{f} {g}"))
            per_module = tuple(entries)
        return cls(fmt, gran.kind, gran.block_size, tuple(modules), source_dtype or None, version,
                   tuple(transposed), per_module, layout)


def _float_dtype_name(name: Any) -> bool:
    if not isinstance(name, str) or not name.isidentifier():
        return False
    dtype = getattr(torch, name, None)
    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


def weight_name(module: str) -> str:
    return f"{module}.weight"


def scale_name(module: str) -> str:
    return f"{module}.weight{SCALE_SUFFIX}"


def read_scheme(ck: Checkpoint) -> Scheme | None:
    """The checkpoint's scheme from config.json, else from the safetensors metadata; None if not quantized.

    When both are present they must agree (a hand-edited config.json would otherwise decode wrongly).
    """
    config = ck.config or {}
    from_config = config.get("quantization_config")
    meta_text = ck.metadata.get(METADATA_KEY)
    from_meta = None
    if meta_text is not None:
        from_meta = loads_json(meta_text, f"{ck.files[0]}: __metadata__.{METADATA_KEY}")
        if not isinstance(from_meta, dict):
            raise GGError(f"{ck.files[0]}: __metadata__.{METADATA_KEY} must be a JSON object")
    if from_config is None and from_meta is None:
        return None
    if from_config is not None and not isinstance(from_config, dict):
        where = ck.root / "config.json" if ck.root else ck.source
        raise GGError(f"{where}: quantization_config must be an object")
    if from_config is not None and from_config.get("quant_method") != QUANT_METHOD:
        raise GGError(f"{ck.source}: quantized with {from_config.get('quant_method')!r}, not by ggcompress")
    where_config = str(ck.root / "config.json") if ck.root else ck.source
    scheme = Scheme.from_dict(from_config, where_config) if from_config is not None else None
    if from_meta is not None and from_meta.get("quant_method") == QUANT_METHOD:
        meta_scheme = Scheme.from_dict(from_meta, str(ck.files[0]))
        if scheme is None:
            scheme = meta_scheme
        elif _core(scheme) != _core(meta_scheme):
            raise GGError(f"{where_config}: quantization_config disagrees with the safetensors metadata "
                          f"of {ck.files[0]}")
    return scheme


def _core(s: Scheme) -> tuple:
    return (s.format, s.format_version, s.granularity, s.block_size, s.modules, s.transposed,
            s.module_formats, s.layout)


def part_names(scheme: Scheme, module: str) -> dict[str, str]:
    """The tensors of one quantized module by role: codes, scale (and table, shape for GF formats)."""
    w = weight_name(module)
    names = {"codes": w, "scale": w + SCALE_SUFFIX}
    if is_gf(scheme.for_module(module).format):
        names.update(table=w + TABLE_SUFFIX, shape=w + SHAPE_SUFFIX)
    return names


def check_tensors(ck: Checkpoint, scheme: Scheme) -> None:
    """Every listed module has its codes, scale (table, shape) tensors with the right dtypes and shapes
    (checked from headers only; a GF weight's shape is data, so its codes are checked when read)."""
    infos = {t.name: t for t in ck.tensors}
    top = scheme
    for module in top.modules:
        scheme = top.for_module(module)
        gran = parse_granularity(scheme.granularity_spec)
        gf = is_gf(scheme.format)
        names = part_names(scheme, module)
        for name in names.values():
            if name not in infos:
                raise GGError(f"{ck.source}: quantized module {module!r} has no tensor {name}")
        codes, scale = infos[names["codes"]], infos[names["scale"]]
        if codes.dtype != "U8":
            raise GGError(f"{codes.file}: tensor {codes.name} should hold U8 codes, found {codes.dtype}")
        codes_shape = unstored_shape(tuple(codes.shape), scheme, f"{codes.file}: tensor {codes.name}")
        want = "F16" if gf else "F32"
        if scale.dtype != want:
            raise GGError(f"{scale.file}: tensor {scale.name} should be {want} scales, found {scale.dtype}")
        if gf:
            table, shape = infos[names["table"]], infos[names["shape"]]
            k = gf_bits(scheme.format)
            if table.dtype != "F32" or tuple(table.shape) != (1 << k,):
                raise GGError(f"{table.file}: tensor {table.name} should be F32 [{1 << k}], found "
                              f"{table.dtype} {list(table.shape)}")
            if shape.dtype != "I64" or len(shape.shape) != 1:
                raise GGError(f"{shape.file}: tensor {shape.name} should be a 1-D I64 shape, found "
                              f"{shape.dtype} {list(shape.shape)}")
            if len(codes_shape) != 2 or len(scale.shape) != 2 or scale.shape[0] not in (1, codes_shape[0]):
                raise GGError(f"{codes.file}: tensor {codes.name} should be 2-D packed codes with a "
                              "2-D scale")
            continue
        rows, cols = matrix_shape(codes_shape)
        expected = gran.scale_shape(rows, cols)
        if tuple(scale.shape) != expected:
            raise GGError(f"{scale.file}: tensor {scale.name} has shape {list(scale.shape)}, expected "
                          f"{list(expected)} for {scheme.granularity_spec} codes of shape "
                          f"{list(codes_shape)}")


def unstored_shape(shape: tuple[int, ...], scheme: Scheme, name: str) -> tuple[int, ...]:
    """The codes' shape without the layout's leading axis (layout 2 stores ``[1, *shape]``)."""
    if scheme.layout == 1:
        return shape
    if len(shape) < 2 or shape[0] != 1:
        raise GGError(f"{name}: layout {scheme.layout} codes need a leading axis of 1, found shape "
                      f"{list(shape)}")
    return shape[1:]


def unstored_codes(codes: torch.Tensor, scheme: Scheme, name: str) -> torch.Tensor:
    """The codes as the format defines them (a view without the layout's leading axis)."""
    return codes.reshape(unstored_shape(tuple(codes.shape), scheme, name))


def stored_codes(codes: torch.Tensor) -> torch.Tensor:
    """What the writer stores for the codes in layout ``LAYOUT``: ``[1, *shape]`` (inverse of
    ``unstored_codes``)."""
    return codes.unsqueeze(0)


def quantized_tensor(codes: torch.Tensor, scale: torch.Tensor, scheme: Scheme, name: str) -> QuantizedTensor:
    """Codes (as stored) + scale read from a file, as a validated QuantizedTensor."""
    codes = unstored_codes(codes, scheme, name)
    q = QuantizedTensor(codes.reshape(matrix_shape(tuple(codes.shape))), scale, scheme.format,
                        scheme.granularity, scheme.block_size, tuple(codes.shape))
    validate(q, name)
    return q


def gf_tensor(parts: dict[str, torch.Tensor], scheme: Scheme, name: str) -> GFTensor:
    """A validated GFTensor from a module's stored tensors (``part_names`` roles)."""
    shape_t = parts["shape"]
    if shape_t.dtype != torch.int64 or shape_t.dim() != 1 or bool((shape_t < 0).any()):
        raise GGError(f"{name}: the {SHAPE_SUFFIX} tensor must hold a non-negative int64 shape")
    shape = tuple(int(d) for d in shape_t.tolist())
    return gf_from_packed(unstored_codes(parts["codes"], scheme, name), parts["scale"], parts["table"],
                          gf_bits(scheme.format), scheme.granularity, scheme.block_size, shape, name=name)


def stored_specs(scheme: Scheme, shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of every tensor stored for one weight whose codes have ``shape`` ([out, in]), by
    role; ``scheme`` is the module's own. What a loader allocates before it reads the file."""
    rows, cols = matrix_shape(shape)
    gran = parse_granularity(scheme.granularity_spec)
    lead = (1,) if scheme.layout >= 2 else ()
    if is_gf(scheme.format):
        k = gf_bits(scheme.format)
        return {"codes": (lead + (rows, packed_cols(cols, k)), torch.uint8),
                "scale": (gran.scale_shape(rows, cols), torch.float16),
                "table": ((1 << k,), torch.float32), "shape": ((len(shape),), torch.int64)}
    return {"codes": (lead + tuple(shape), torch.uint8),
            "scale": (gran.scale_shape(rows, cols), torch.float32)}


def stored_parts(q: QuantizedTensor | GFTensor, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """What the writer stores for one quantized weight in layout ``LAYOUT``, by role (inverse of
    ``decode_parts``)."""
    if isinstance(q, GFTensor):
        return {"codes": stored_codes(q.packed()), "scale": q.scale, "table": q.table,
                "shape": torch.tensor(list(shape), dtype=torch.int64)}
    return {"codes": stored_codes(q.codes.reshape(shape)), "scale": q.scale}


def decode_parts(parts: dict[str, torch.Tensor], scheme: Scheme, name: str,
                 dtype: torch.dtype = torch.float32, module: str | None = None) -> torch.Tensor:
    """The dense weight of one module from its stored tensors, in ``dtype`` (rounded once from float32).

    ``scheme`` is the module's own (``Scheme.for_module``); a ``module`` listed in its ``transposed`` comes
    back in the source's [in, out] orientation."""
    if is_gf(scheme.format):
        dense = gf_decode(gf_tensor(parts, scheme, name), dtype=dtype, name=name)
        return dense.t().contiguous() if module is not None and module in scheme.transposed else dense
    return decode(parts["codes"], parts["scale"], scheme, name, dtype, module=module)


def decode(codes: torch.Tensor, scale: torch.Tensor, scheme: Scheme, name: str,
           dtype: torch.dtype = torch.float32, module: str | None = None) -> torch.Tensor:
    """The dense weight in ``dtype``: ``lut[code] * scale`` in float32, rounded once.

    It has the codes' shape, or the source's [in, out] when ``module`` is listed in ``scheme.transposed``.
    """
    q = quantized_tensor(codes, scale, scheme, name)
    dense = get_codec(scheme.format).decode(q, dtype=dtype, name=name)
    return dense.t().contiguous() if module is not None and module in scheme.transposed else dense
