"""Load a ggcompress-quantized folder as a runnable transformers model whose linear layers keep 1-byte codes.

Why not ``from_pretrained``: transformers does not know the ``ggcompress`` quant_method and would
allocate a dense weight for every layer. Here the model is built from config.json (without its
``quantization_config``) with its parameters on the meta device, so building costs no memory; each
quantized ``nn.Linear`` is replaced by a ``QuantLinear`` holding the uint8 codes and float32 scales read
from the file (a dense copy of those weights never exists); so is each transformers ``Conv1D`` (GPT-2)
whose codes were stored transposed to [out, in] (the scheme's ``transposed`` list: a Conv1D computes
``x @ W + b`` with W [in, out], the same map as a Linear with weight W.T). The remaining tensors
(embeddings, norms, biases) are assigned from the file; tied weights are re-tied. Quantized weights of
other modules (embeddings with --quantize-embeddings, norms) are decoded to dense tensors: they load
correctly but do not stay 1-byte in memory.

A folder without a ggcompress scheme loads too (all tensors dense), so ``ggcompress.load`` works on any
safetensors HF folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ggcompress.errors import GGError
from ggcompress.formats import get_codec
from ggcompress.formats.gf import is_gf
from ggcompress.io.checkpoint import Checkpoint, open_checkpoint
from ggcompress.io.layers import is_conv1d
from ggcompress.io.qlayout import (
    Scheme,
    check_tensors,
    decode_parts,
    gf_tensor,
    part_names,
    quantized_tensor,
    read_scheme,
    unstored_codes,
    weight_name,
)
from ggcompress.kernels import Backend
from ggcompress.kernels.nn import QuantLinear

#: Files a transformers tokenizer can be built from.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_quantized(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: Backend = "auto",
    tokenizer: bool = True,
) -> tuple[nn.Module, Any]:
    """(model, tokenizer or None) from a quantized (or plain) HF safetensors folder, in eval mode.

    ``dtype`` casts the dense tensors and the compute dtype (codes stay uint8, scales float32); None or
    "auto" keeps the checkpoint's own dtypes. ``backend`` picks the QuantLinear matmul path (auto: fused
    Triton kernel on CUDA, chunked torch path on the CPU). A ``.ggz`` container (``ggcompress pack``) is
    unpacked to a temporary folder first.
    """
    from ggcompress.codec.pack import is_packed, unpacked

    if is_packed(path):
        with unpacked(path) as folder:
            return load_quantized(folder, device=device, dtype=dtype, backend=backend, tokenizer=tokenizer)
    ck = open_checkpoint(path)
    if ck.root is None or ck.config is None:
        raise GGError(f"{path}: no config.json next to the weights, so the model cannot be built; pass the "
                      "model folder")
    scheme = read_scheme(ck)
    if scheme is not None:
        check_tensors(ck, scheme)
    model = _empty_model(ck)
    _fill(model, ck, scheme, backend)
    target = _dtype(dtype)
    if target is not None:
        model.to(target)
    model.to(device)
    model.eval()
    if scheme is not None:
        model.ggcompress_scheme = scheme.to_dict()
    tok = _tokenizer(ck.root) if tokenizer else None
    return model, tok


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    """The QuantLinear layers of a loaded model, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


# ---------------------------------------------------------------------------------------------- building


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create every nn.Parameter on the meta device (buffers such as rotary tables stay real).

    Parameters are what the checkpoint provides; buffers computed in ``__init__`` (rotary inv_freq,
    position ids) are not always in the file, so they must be built for real.
    """
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _empty_model(ck: Checkpoint) -> nn.Module:
    """The transformers model of config.json (architectures[0], else AutoModel) with meta parameters."""
    import transformers
    from transformers import AutoConfig, AutoModel

    config_dict = {k: v for k, v in (ck.config or {}).items() if k != "quantization_config"}
    where = ck.root / "config.json" if ck.root else ck.source
    model_type = config_dict.pop("model_type", None)
    if not model_type:
        raise GGError(f"{where}: no model_type, so transformers cannot build the model")
    try:
        config = AutoConfig.for_model(model_type, **config_dict)
    except (ValueError, KeyError, TypeError) as exc:
        raise GGError(f"{where}: transformers cannot read this config ({_first_line(exc)})") from None
    archs = config_dict.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    try:
        with _parameters_on_meta():
            if cls is not None:
                return cls._from_config(config)
            return AutoModel.from_config(config)
    except (ValueError, KeyError, TypeError, ImportError, AttributeError) as exc:
        raise GGError(f"{where}: transformers cannot build {archs[0] if archs else model_type} "
                      f"({_first_line(exc)})") from None


def _key_mapper(model: nn.Module):
    """Map checkpoint names to the model's: the base-model prefix may be present on one side only, and
    transformers renames some keys on load (its conversion mapping, e.g. GPT-NeoX's embed_out -> lm_head)."""
    own = set(model.state_dict(keep_vars=True))
    prefix = getattr(model, "base_model_prefix", "") or ""
    renamings = _renamings(model)

    def with_prefix(key: str) -> str | None:
        if key in own:
            return key
        if prefix and f"{prefix}.{key}" in own:
            return f"{prefix}.{key}"
        if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in own:
            return key[len(prefix) + 1:]
        return None

    def to_model(key: str) -> str:
        found = with_prefix(key)
        if found is not None:
            return found
        for rename in renamings:
            renamed, matched = rename.rename_source_key(key)
            if matched is not None and (found := with_prefix(renamed)) is not None:
                return found
        return key

    return to_model


def _renamings(model: nn.Module) -> list[Any]:
    """transformers' plain key renamings for this model (merging converters are not replayed here)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming

        transforms = get_model_conversion_mapping(model)
    except (ImportError, AttributeError, TypeError, ValueError):  # older/newer transformers: prefixes only
        return []
    return [t for t in transforms if isinstance(t, WeightRenaming)]


def transposed_weights(ck: Checkpoint) -> set[str]:
    """Checkpoint names of the weights stored [in, out] (transformers ``Conv1D``), found from config.json.

    The model is built on the meta device (no memory). Without a config, or when transformers cannot build
    it, the answer is empty: such weights are then quantized as stored and load as dense tensors.
    """
    if ck.config is None or not ck.config.get("model_type"):
        return set()
    try:
        model = _empty_model(ck)
    except GGError:
        return set()
    conv = {name for name, module in model.named_modules() if is_conv1d(module)}
    if not conv:
        return set()
    to_model = _key_mapper(model)
    return {t.name for t in ck.tensors
            if t.name.endswith(".weight") and to_model(t.name).removesuffix(".weight") in conv}


def _fill(model: nn.Module, ck: Checkpoint, scheme: Scheme | None, backend: Backend) -> None:
    """Swap quantized Linears for QuantLinear, assign the other tensors, re-tie, insist nothing is missing."""
    to_model = _key_mapper(model)
    role_of: dict[str, tuple[str, str]] = {}  # stored tensor name -> (module, role)
    for m in scheme.modules if scheme is not None else ():
        for role, name in part_names(scheme, m).items():
            role_of[name] = (m, role)
    dense: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, tuple[torch.Tensor, Path]]] = {}
    for info, t in ck.iter_tensors():  # codes stay uint8: nothing here is ever decoded for a Linear
        hit = role_of.get(info.name)
        if hit is None:
            dense[to_model(info.name)] = t
        else:
            parts.setdefault(hit[0], {})[hit[1]] = (t, info.file)
    if scheme is not None:
        top = scheme
        decoded = getattr(torch, top.source_dtype) if top.source_dtype else torch.float32
        for module, part in parts.items():
            scheme = top.for_module(module)
            file = part["codes"][1]
            tensors = {role: t for role, (t, _) in part.items()}
            target = to_model(weight_name(module)).removesuffix(".weight")
            where = f"{file}: {weight_name(module)}"
            sub = _submodule(model, target)
            transposed = module in scheme.transposed
            if isinstance(sub, nn.Linear) and transposed:
                raise GGError(f"{where}: quantization_config lists it as transposed ([in, out] in the "
                              "source), but the model's layer is an nn.Linear")
            if isinstance(sub, nn.Linear) or (transposed and sub is not None and is_conv1d(sub)):
                linear = isinstance(sub, nn.Linear)
                expected = (sub.out_features, sub.in_features) if linear else (sub.nf, sub.nx)
                bias = None
                if sub.bias is not None:
                    bias = dense.pop(f"{target}.bias", None)
                    if bias is None:
                        raise GGError(f"{ck.source}: weights missing from the checkpoint: {target}.bias")
                layer = quant_linear(tensors, scheme, where, expected, bias)
                layer.backend = backend
                _set_submodule(model, target, layer)
            else:  # embeddings, norms, Conv1D stored as-is: no 1-byte module for them, so they load dense
                dense[f"{target}.weight"] = decode_parts(tensors, scheme, where, dtype=decoded, module=module)
    model.load_state_dict(dense, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise GGError(f"{ck.source}: weights missing from the checkpoint: {', '.join(missing[:3])}{more}")


def quant_linear(tensors: dict[str, torch.Tensor], scheme: Scheme, where: str, expected: tuple[int, int],
                 bias: torch.Tensor | None) -> QuantLinear:
    """A QuantLinear from one module's stored tensors (``part_names`` roles; ``scheme`` is the module's
    own): the codes stay 1-byte (GF: k-bit packed, its table the first 2^k LUT entries), validated first."""
    packing: dict[str, int] = {}
    if is_gf(scheme.format):
        g = gf_tensor(tensors, scheme, where)  # validates (unpacks once to check the codes)
        shape = tuple(g.codes.shape)
        codes, scale, lut = unstored_codes(tensors["codes"], scheme, where), g.scale, g.lut256()
        packing = {"bits": g.bits, "in_features": g.codes.shape[1]}
        del g
    else:
        q = quantized_tensor(tensors["codes"], tensors["scale"], scheme, where)
        shape, codes, scale, lut = tuple(q.codes.shape), q.codes, q.scale, get_codec(scheme.format).lut
    if shape != tuple(expected):
        raise GGError(f"{where}: codes have shape {list(shape)}, the model's layer needs {list(expected)} "
                      "([out, in])")
    return QuantLinear.from_quantized(codes, scale, lut, scheme.block_size, bias=bias, fmt=scheme.format,
                                      name=where, **packing)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _set_submodule(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise GGError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    return value


def _tokenizer(root: Path) -> Any:
    if not any((root / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(root)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GGError(f"{root}: cannot load its tokenizer ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
