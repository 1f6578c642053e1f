"""Export quantized weights in the compressed-tensors layout that vLLM and SGLang serve natively.

Why: ggcompress's own layout (uint8 codes + ``_scale``) needs ggcompress to run. For the formats that
serving stacks already have kernels for, the same codes can be written in the ``compressed-tensors``
layout instead, so the folder runs in vLLM / SGLang / transformers with no ggcompress at all:

- ``fp8_e4m3`` -> ``float-quantized``: ``X.weight`` as F8_E4M3 (the same bytes as our codes, OCP
  ``float8_e4m3fn``) + ``X.weight_scale`` (F32); weight-only scheme (vLLM: FP8 W8A16 Marlin kernel for
  tensor/channel scales).
- ``int8`` -> ``pack-quantized``: the int8 codes packed 4 per int32 in ``X.weight_packed`` +
  ``X.weight_shape`` + ``X.weight_scale``; weight-only symmetric scheme (vLLM: WNA16 kernels).
- 4-bit integer: ggcompress has no 4-bit format yet, so there is nothing to export.
- RF8 and E5M2 have no kernel in those servers: refused with a clear message.

The layout is produced by the ``compressed-tensors`` package itself, not by a hand copy of its schema:
each weight is decoded from our codes (``lut[code] * scale``, exact for these tables) and handed with our
scales to the package's own compressor, which re-derives the same codes; the ``quantization_config`` is
the package's ``QuantizationConfig`` model. Tests load the folder back with the package's decompressor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ggcompress.errors import GGError
from ggcompress.formats import QuantizedTensor, get_codec, parse_granularity

LAYOUTS = ("ggcompress", "compressed-tensors")
#: our format -> (compressed-tensors QuantizationType, compression format)
FORMATS = {"fp8_e4m3": ("float", "float-quantized"), "int8": ("int", "pack-quantized")}


def _ct():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise GGError("--layout compressed-tensors needs the compressed-tensors package "
                      "(pip install 'ggcompress[export]')") from None
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    return BaseCompressor, QuantizationArgs, QuantizationConfig, QuantizationScheme


def check_settings(fmt: str, granularity: str, *, quantize_embeddings: bool, quantize_norms: bool) -> None:
    """Refuse, before any work, what the compressed-tensors layout cannot carry."""
    name = get_codec(fmt).name
    if name not in FORMATS:
        raise GGError(f"--layout compressed-tensors: format {name} has no compressed-tensors kernel in vLLM/"
                      "SGLang; use --format e4m3 or --format int8 (or the ggcompress layout)")
    if quantize_embeddings or quantize_norms:
        raise GGError("--layout compressed-tensors quantizes Linear layers only: drop --quantize-embeddings "
                      "and --quantize-norms")
    parse_granularity(granularity)
    _ct()


@dataclass(frozen=True)
class Export:
    """The compressed-tensors scheme of one checkpoint (one format and granularity for all its Linears)."""

    format: str
    granularity: str  # tensor | channel | block:N (written as the GROUP strategy)
    ignore: tuple[str, ...]  # Linear modules left dense

    def _args(self):
        _, QuantizationArgs, _, _ = _ct()
        gran = parse_granularity(self.granularity)
        kind, _ = FORMATS[self.format]
        strategy = {"tensor": "tensor", "channel": "channel", "block": "group"}[gran.kind]
        return QuantizationArgs(num_bits=8, type=kind, symmetric=True, dynamic=False, strategy=strategy,
                                group_size=gran.block_size)

    def _scheme(self):
        _, _, _, QuantizationScheme = _ct()
        return QuantizationScheme(targets=["Linear"], weights=self._args())

    def tensors(self, module: str, q: QuantizedTensor, name: str) -> dict[str, torch.Tensor]:
        """The compressed-tensors tensors of one quantized Linear weight (``module.weight...``)."""
        BaseCompressor, _, _, _ = _ct()
        if len(q.shape) != 2:
            raise GGError(f"{name}: compressed-tensors stores 2-D Linear weights, not shape {list(q.shape)}")
        codec = get_codec(q.format)
        w = codec.decode(q, dtype=torch.float32, name=name)  # lut[code] * scale: exact for E4M3 and INT8
        scale = q.scale.reshape(1) if q.granularity == "tensor" else q.scale
        compressor = BaseCompressor.get_value_from_registry(FORMATS[self.format][1])
        out = compressor.compress({"weight": w, "weight_scale": scale}, self._scheme())
        return {f"{module}.{k}": v.contiguous() for k, v in out.items()}

    def quantization_config(self) -> dict[str, Any]:
        """config.json ``quantization_config``, as ``ModelCompressor.update_config`` writes it."""
        import compressed_tensors

        _, _, QuantizationConfig, _ = _ct()
        config = QuantizationConfig(config_groups={"group_0": self._scheme()}, ignore=list(self.ignore),
                                    format=FORMATS[self.format][1], quantization_status="compressed")
        return {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors",
                "sparsity_config": {}, "transform_config": {},
                **config.model_dump(exclude={"quant_method"}, mode="json")}


def linear_modules(config: dict[str, Any], where: str) -> tuple[list[str], str]:
    """(names of the ``nn.Linear`` modules, base-model prefix) of the model config.json describes.

    The model is built on the meta device: no memory, no weights read.
    """
    from torch import nn
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg = {k: v for k, v in config.items() if k != "quantization_config"}
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise GGError(f"{where}: config.json has no model_type; the compressed-tensors layout needs the "
                      "model's module tree")
    try:
        hf_config = AutoConfig.for_model(model_type, **cfg)
        with torch.device("meta"):
            try:
                model = AutoModelForCausalLM.from_config(hf_config)
            except ValueError:
                model = AutoModel.from_config(hf_config)
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        raise GGError(f"{where}: transformers cannot build this model ({str(exc).splitlines()[0][:200]})") \
            from None
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    return names, getattr(model, "base_model_prefix", "") or ""


def plan_export(config: dict[str, Any] | None, quantized: list[str], fmt: str, granularity: str,
                where: str) -> Export:
    """Check every quantized module is an nn.Linear of the model; the other Linears are ``ignore``d."""
    if config is None:
        raise GGError(f"{where}: no config.json, so the compressed-tensors layout (which names the model's "
                      "Linear layers) cannot be written; pass the model folder")
    linears, prefix = linear_modules(config, where)
    known = set(linears)
    chosen = set()
    for module in quantized:
        name = module if module in known or not prefix else f"{prefix}.{module}"
        if name not in known:
            raise GGError(f"{where}: {module} is not an nn.Linear of this model; compressed-tensors stores "
                          "Linear weights only (exclude it with --exclude)")
        chosen.add(name)
    return Export(get_codec(fmt).name, parse_granularity(granularity).spec,
                  tuple(n for n in linears if n not in chosen))
