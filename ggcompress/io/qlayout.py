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
- the scheme (``Scheme``) sits in config.json ``quantization_config`` (with ``ggcompress_version``) and,
  as a compact sorted JSON string, in every shard's safetensors ``__metadata__["quantization_config"]``
  (without the version, so output bytes depend only on the input and the settings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from ggcompress import __version__
from ggcompress.errors import GGError
from ggcompress.formats import QuantizedTensor, get_codec, parse_granularity
from ggcompress.formats.base import matrix_shape, validate
from ggcompress.formats.rf8 import RF8_VERSION
from ggcompress.io.checkpoint import Checkpoint
from ggcompress.io.limits import is_int, loads_json

QUANT_METHOD = "ggcompress"
#: ``X.weight`` holds the codes, ``X.weight`` + SCALE_SUFFIX the float32 scales.
SCALE_SUFFIX = "_scale"
#: safetensors ``__metadata__`` key holding the scheme as a JSON string (values must be strings).
METADATA_KEY = "quantization_config"
#: Version of each format's decode table. RF8's is docs/rf8.md's; the OCP FP8 and two's-complement INT8
#: tables are fixed by their standards, so they stay 1.
FORMAT_VERSIONS = {"rf8": RF8_VERSION, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1}
#: Largest block size a quantization_config may declare (2^24 columns; real ones are 32..4096).
MAX_BLOCK = 1 << 24


@dataclass(frozen=True)
class Scheme:
    """How every quantized weight of one checkpoint is stored (one format and granularity for all)."""

    format: str  # canonical codec name: rf8 | fp8_e4m3 | fp8_e5m2 | int8
    granularity: str  # tensor | channel | block
    block_size: int | None
    modules: tuple[str, ...]  # module names whose ``.weight`` is quantized, in checkpoint order
    source_dtype: str | None = None  # torch dtype name of the weights before quantization, e.g. "bfloat16"
    format_version: int = 0  # 0: the current version of ``format``
    transposed: tuple[str, ...] = ()  # modules whose source weight was [in, out]; codes are its transpose

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
            fmt = get_codec(fmt_name).name
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
        return cls(fmt, gran.kind, gran.block_size, tuple(modules), source_dtype or None, version,
                   tuple(transposed))


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
    return s.format, s.format_version, s.granularity, s.block_size, s.modules, s.transposed


def check_tensors(ck: Checkpoint, scheme: Scheme) -> None:
    """Every listed module has U8 codes and an F32 scale of the right shapes (checked from headers only)."""
    infos = {t.name: t for t in ck.tensors}
    gran = parse_granularity(scheme.granularity_spec)
    for module in scheme.modules:
        codes, scale = infos.get(weight_name(module)), infos.get(scale_name(module))
        if codes is None or scale is None:
            missing = weight_name(module) if codes is None else scale_name(module)
            raise GGError(f"{ck.source}: quantized module {module!r} has no tensor {missing}")
        if codes.dtype != "U8":
            raise GGError(f"{codes.file}: tensor {codes.name} should hold U8 codes, found {codes.dtype}")
        if scale.dtype != "F32":
            raise GGError(f"{scale.file}: tensor {scale.name} should be F32 scales, found {scale.dtype}")
        rows, cols = matrix_shape(codes.shape)
        expected = gran.scale_shape(rows, cols)
        if tuple(scale.shape) != expected:
            raise GGError(f"{scale.file}: tensor {scale.name} has shape {list(scale.shape)}, expected "
                          f"{list(expected)} for {scheme.granularity_spec} codes of shape "
                          f"{list(codes.shape)}")


def quantized_tensor(codes: torch.Tensor, scale: torch.Tensor, scheme: Scheme, name: str) -> QuantizedTensor:
    """Codes (the weight's shape) + scale read from a file, as a validated QuantizedTensor."""
    q = QuantizedTensor(codes.reshape(matrix_shape(tuple(codes.shape))), scale, scheme.format,
                        scheme.granularity, scheme.block_size, tuple(codes.shape))
    validate(q, name)
    return q


def decode(codes: torch.Tensor, scale: torch.Tensor, scheme: Scheme, name: str,
           dtype: torch.dtype = torch.float32, module: str | None = None) -> torch.Tensor:
    """The dense weight in ``dtype``: ``lut[code] * scale`` in float32, rounded once.

    It has the codes' shape, or the source's [in, out] when ``module`` is listed in ``scheme.transposed``.
    """
    q = quantized_tensor(codes, scale, scheme, name)
    dense = get_codec(scheme.format).decode(q, dtype=dtype, name=name)
    return dense.t().contiguous() if module is not None and module in scheme.transposed else dense
