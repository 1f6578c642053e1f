"""transformers integration: ``AutoModelForCausalLM.from_pretrained`` on a ggcompress-quantized folder.

Why: a quantized folder is an HF folder, so people hand it to ``from_pretrained`` first. Without this
module transformers does not know the ``ggcompress`` quant_method and warns "we will skip the
quantization"; the layout-2 codes (a leading axis of 1, docs/quantize-rf8.md) then fail its shape check,
so it refuses the folder instead of reading codes as weights (layout-1 folders, written before, would load
as garbage there). Registering a quantizer with
transformers' documented extension point (``register_quantization_config`` / ``register_quantizer``)
makes it build the same model as ``ggcompress.load``: every quantized ``nn.Linear`` (and transposed
Conv1D) becomes a ``QuantLinear`` holding the 1-byte codes, other quantized weights (embeddings, norms)
are decoded to dense tensors by the shared LUT decode rule.

How it plugs in (transformers has no plugin entry point, so it must be imported once):
- ``import ggcompress`` arms a post-import hook, so the quantizer is registered the moment transformers'
  quantizer registry is imported (before it, if transformers is already imported). ``import ggcompress``
  itself stays light: it never imports torch or transformers.
- ``register()`` here does the same explicitly and is idempotent.

Loading happens in two steps inside ``from_pretrained``: before the weights are read, each quantized
module gets stand-in tensors with the stored shapes and dtypes of its parts (``qlayout.stored_specs``:
uint8 codes, float scales, and a GF format's table and shape), so transformers copies the file's tensors
unchanged (no float cast of the codes); after loading, they become QuantLinear layers (or decoded
weights) and tied weights are re-tied. The format is read from the folder's scheme (per module for
``auto``), so every format the project writes (RF8, FP8, INT8, GF-3..8, auto) loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ggcompress.errors import GGError
from ggcompress.io.layers import is_conv1d
from ggcompress.io.qlayout import QUANT_METHOD, Scheme, decode_parts, part_names, stored_specs, weight_name
from ggcompress.io.quantized import quant_linear


class GGCompressConfig(QuantizationConfigMixin):
    """The folder's ``quantization_config`` (a ggcompress ``Scheme``) as transformers sees it.

    Construction validates it with ``Scheme.from_dict`` (format, version, granularity, module list), so a
    damaged or newer-format config fails in ``from_pretrained`` with one clear line.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._raw = dict(kwargs)
        self.quant_method = QUANT_METHOD
        self.scheme = Scheme.from_dict({**kwargs, "quant_method": QUANT_METHOD}, "quantization_config")

    def to_dict(self) -> dict[str, Any]:
        """The dict it was read from, so ``model.config`` saves the same ``quantization_config``."""
        return {**self._raw, "quant_method": QUANT_METHOD}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __iter__(self):
        yield from self.to_dict().items()


@dataclass
class _Pending:
    """A module whose weight is being loaded as codes + scale, resolved after loading."""

    checkpoint_name: str  # module name in the checkpoint (errors name it)
    linear: bool  # True: becomes a QuantLinear; False: its weight is decoded in place
    dtype: torch.dtype  # dtype the model built the dense weight in (decoded weights get it)


class GGCompressHfQuantizer(HfQuantizer):
    """Loads ggcompress-quantized folders (any format of ``ggcompress.formats``); cannot quantize on load."""

    requires_calibration = True  # only pre-quantized folders: ``quantize-rf8`` is how codes are made

    def __init__(self, quantization_config: GGCompressConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self._pending: dict[str, _Pending] = {}

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        top = self.quantization_config.scheme
        to_model = _module_mapper(model)
        self._pending = {}
        for name in top.modules:
            scheme = top.for_module(name)
            target = to_model(name)
            try:
                module = model.get_submodule(target)
            except AttributeError:
                raise GGError(f"quantization_config lists module {name!r}, which this "
                              f"{type(model).__name__} does not have") from None
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise GGError(f"quantization_config lists module {name!r}, which has no weight")
            transposed = name in scheme.transposed
            if transposed and not is_conv1d(module):
                raise GGError(f"quantization_config lists {name!r} as transposed ([in, out] in the source), "
                              f"but the model's layer is a {type(module).__name__}")
            # A Conv1D's codes are stored as its [out, in] transpose and serve a QuantLinear, like nn.Linear.
            shape = tuple(weight.shape)[::-1] if transposed else tuple(weight.shape)
            linear = type(module) is nn.Linear or transposed
            # Stand-in tensors with the file's shapes and dtypes (uint8 codes, float scales, int64 shape):
            # transformers copies them without a cast to the model's dtype. Parameters, not buffers, so
            # transformers can tie a quantized embedding to lm_head.
            attrs = _attrs(scheme, name)
            for role, (shape_, dtype) in stored_specs(scheme, shape).items():
                setattr(module, attrs[role], _frozen(torch.empty(shape_, dtype=dtype, device="meta")))
            self._pending[target] = _Pending(name, linear, weight.dtype)
        return model

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        top = self.quantization_config.scheme
        for target, p in self._pending.items():
            scheme = top.for_module(p.checkpoint_name)
            module = model.get_submodule(target)
            attrs = _attrs(scheme, p.checkpoint_name)
            tensors = {role: getattr(module, attr) for role, attr in attrs.items()}
            for role, t in tensors.items():
                if t.is_meta:
                    raise GGError(f"quantized module {p.checkpoint_name!r} has no tensor "
                                  f"{p.checkpoint_name}.{attrs[role]} in the folder")
            where = weight_name(p.checkpoint_name)
            tensors = {role: t.data for role, t in tensors.items()}
            if p.linear:
                layer = quant_linear(tensors, scheme, where, _codes_shape(module, scheme, p.checkpoint_name),
                                     module.bias)
                layer.train(module.training)
                parent, _, child = target.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, layer)
            else:
                dense = decode_parts(tensors, scheme, where, dtype=p.dtype)
                for attr in attrs.values():
                    if attr != "weight":
                        delattr(module, attr)
                module.weight = _frozen(dense)
        self._pending = {}
        if hasattr(model, "tie_weights"):
            model.tie_weights()  # a quantized, tied embedding was re-created above
        model.ggcompress_scheme = top.to_dict()
        return model

    def is_serializable(self) -> bool:
        # save_pretrained would write QuantLinear buffers (codes/scale/lut), not the ggcompress layout.
        return False

    @property
    def is_trainable(self) -> bool:
        return False


def _attrs(scheme: Scheme, module: str) -> dict[str, str]:
    """Role -> attribute name on the module (``weight``, ``weight_scale``, ``weight_table``, ...)."""
    return {role: name[len(module) + 1:] for role, name in part_names(scheme, module).items()}


def _codes_shape(module: nn.Module, scheme: Scheme, name: str) -> tuple[int, int]:
    """[out, in] of the layer the codes serve (a Conv1D's nf x nx, an nn.Linear's out x in)."""
    if name in scheme.transposed:
        return (module.nf, module.nx)
    return (module.out_features, module.in_features)


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _module_mapper(model: nn.Module):
    """Checkpoint module names -> the model's (the base-model prefix may be on one side only)."""
    own = {name for name, _ in model.named_modules()}
    prefix = getattr(model, "base_model_prefix", "") or ""

    def to_model(name: str) -> str:
        if name in own or not prefix:
            return name
        if f"{prefix}.{name}" in own:
            return f"{prefix}.{name}"
        if name.startswith(prefix + ".") and name[len(prefix) + 1:] in own:
            return name[len(prefix) + 1:]
        return name

    return to_model


def register() -> None:
    """Make transformers' ``from_pretrained`` load ggcompress folders (safe to call more than once)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not GGCompressConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
        register_quantization_config(QUANT_METHOD)(GGCompressConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not GGCompressHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(GGCompressHfQuantizer)


register()
