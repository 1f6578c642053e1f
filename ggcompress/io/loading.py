"""Turn a checkpoint path or hub id into an in-memory transformers causal LM + tokenizer.

Why one function: every quality measurement (``ggcompress eval``, later gates in other commands)
needs a runnable model, whatever format ggcompress wrote. ``load_model`` finds out what the path
holds (``detect_kind``) and hands it to the loader for that kind (``LOADERS``), so a new checkpoint
format plugs in here as one detection rule plus one loader, and every caller gets it for free.

Kinds handled now:
- ``hf``: an HF model folder (config.json + safetensors + tokenizer files), local or a hub id
  (resolved through ``huggingface_hub``, honouring ``HF_HUB_OFFLINE`` and the local cache).
- ``gguf``: a ``.gguf`` file, dequantized by transformers (needs the ``gguf`` package).
- ``ggcompress``: an HF folder written by ``ggcompress quantize-rf8`` (quant_method "ggcompress"); its
  linear layers keep their 1-byte codes in memory (``ggcompress.io.quantized.load_quantized``).
- ``ggz``: a ``.ggz`` container (``ggcompress pack``), unpacked to a temporary folder and loaded as
  the kind of folder it holds.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggcompress.errors import GGError
from ggcompress.io.checkpoint import HUB_ID, _hub_snapshot
from ggcompress.io.limits import inside, read_json_object
from ggcompress.names import LOAD_DTYPES as DTYPES

#: Files any transformers tokenizer is built from; a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tiktoken.model")


@dataclass
class LoadedModel:
    """A model ready to run: ``model`` is in eval mode on the requested device."""

    model: Any  # transformers.PreTrainedModel (causal LM)
    tokenizer: Any  # transformers tokenizer
    source: str  # the local file or folder actually read (a hub id resolves to its cache snapshot)
    kind: str  # a key of LOADERS


def load_model(path: str | Path, *, device: str = "cpu", dtype: str | None = None) -> LoadedModel:
    """Load ``path`` (HF folder, ``.gguf`` file or hub id) as a causal LM + tokenizer on ``device``.

    ``dtype`` is one of ``DTYPES``; ``None`` means float32 on CPU (bf16 matmuls are slow or inexact on
    many CPUs) and the checkpoint's own dtype elsewhere. Raises GGError with one clear line when the
    path is missing, is not a causal LM, or has no tokenizer.
    """
    try:
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the eval extra is missing
        raise GGError(f"loading models needs the eval extra (pip install 'ggcompress[eval]'): {exc}") \
            from None
    local = resolve(path)
    if local.is_dir():
        for p in local.rglob("*"):
            if p.is_file():
                inside(p, local, "model file")  # transformers reads them: none may lead out of the folder
    kind = detect_kind(local)
    torch_dtype = _torch_dtype(dtype, device)
    model, tokenizer = LOADERS[kind](local, torch_dtype)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise GGError(f"{path}: cannot move the model to device {device!r} ({_first_line(exc)})") from None
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(local), kind=kind)


def check_causal_lm(folder: str | Path) -> Path:
    """Refuse up front, with load_model's one-line errors, a folder that cannot run next-token prediction:
    no config.json, not a causal LM, or no tokenizer files. Reads config.json and file names only."""
    local = Path(folder).expanduser()
    if not (local / "config.json").is_file():
        raise GGError(f"{local}: no config.json, so not an HF model folder")
    _require_causal_lm(local / "config.json")
    if not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise GGError(f"{local}: no tokenizer files (expected tokenizer.json or tokenizer_config.json); "
                      "copy the base model's tokenizer into the folder")
    return local


def resolve(path: str | Path) -> Path:
    """The local file or folder behind ``path``: itself if it exists, else a hub snapshot."""
    spec = str(path)
    local = Path(spec).expanduser()
    if local.exists():
        return local
    if HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _hub_snapshot(spec)
    raise GGError(f"{spec}: no such file or folder")


def detect_kind(local: Path) -> str:
    """Which loader reads ``local``: decided from the file suffix or the folder's config.json."""
    if local.is_file():
        if local.suffix.lower() == ".gguf":
            return "gguf"
        if local.suffix.lower() == ".ggz":
            return "ggz"
        raise GGError(f"{local}: a bare weights file cannot be evaluated; pass its HF folder "
                      "(config.json + weights + tokenizer), a .gguf file or a hub id")
    config_path = local / "config.json"
    if not config_path.is_file():
        ggufs = sorted(local.glob("*.gguf"))
        hint = f" (to evaluate the GGUF inside, pass {ggufs[0]})" if ggufs else ""
        raise GGError(f"{local}: no config.json, so not an HF model folder{hint}")
    config = read_json_object(config_path)
    qconfig = config.get("quantization_config") or {}
    if not isinstance(qconfig, dict):
        raise GGError(f"{config_path}: quantization_config must be an object")
    quant = qconfig.get("quant_method")
    if quant is not None and not isinstance(quant, str):
        raise GGError(f"{config_path}: quantization_config.quant_method must be a string")
    if quant == "ggcompress":
        return "ggcompress"
    if quant is not None and quant not in _known_quant_methods():
        raise GGError(f"{config_path}: quantization_config.quant_method {quant!r} is not a format "
                      "this installation can load")
    return "hf"


def _load_hf(folder: Path, dtype: Any) -> tuple[Any, Any]:
    """An HF folder: check it is a causal LM before loading, then insist every weight was found."""
    from transformers import AutoModelForCausalLM

    _require_causal_lm(folder / "config.json")
    tokenizer = _load_tokenizer(folder)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met more than plain tensors
        raise GGError(f"{folder}: refused its legacy pickle weights file — it holds objects other than "
                      "plain tensors, and ggcompress never unpickles arbitrary objects; convert it to "
                      "safetensors from a trusted copy") from None
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise GGError(f"{folder}: transformers cannot load it as a causal LM ({_first_line(exc)})") from None
    _require_complete(folder, info)
    return model, tokenizer


def _load_gguf(file: Path, dtype: Any) -> tuple[Any, Any]:
    """A GGUF file: transformers dequantizes it into a dense model (slow for big files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise GGError(f"{file}: reading GGUF needs the gguf package (pip install 'ggcompress[eval]')") \
            from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        model, info = AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise GGError(f"{file}: transformers cannot load this GGUF as a causal LM "
                      f"({_first_line(exc)})") from None
    _require_complete(file, info)
    model.hf_quantizer = None  # the weights are dense now; nothing quantized is left to manage
    return model, tokenizer


def _load_ggcompress(folder: Path, dtype: Any) -> tuple[Any, Any]:
    """A ggcompress-quantized folder (RF8/FP8/INT8 codes): Linear layers become QuantLinear."""
    from ggcompress.io.quantized import load_quantized

    _require_causal_lm(folder / "config.json")
    tokenizer = _load_tokenizer(folder)
    model, _ = load_quantized(folder, dtype=dtype, tokenizer=False)
    return model, tokenizer


def _load_ggz(file: Path, dtype: Any) -> tuple[Any, Any]:
    """A packed .ggz container (ggcompress pack): unpacked to a temporary folder, loaded as that folder."""
    from ggcompress.codec.pack import unpacked

    with unpacked(file) as folder:
        try:
            return LOADERS[detect_kind(folder)](folder, dtype)
        except GGError as exc:  # name the user's container, not the temporary folder it was unpacked to
            raise GGError(str(exc).replace(str(folder), str(file))) from None


#: kind -> loader(local path, torch dtype) -> (model, tokenizer). New formats register here.
LOADERS: dict[str, Callable[[Path, Any], tuple[Any, Any]]] = {"hf": _load_hf, "gguf": _load_gguf,
                                                              "ggcompress": _load_ggcompress,
                                                              "ggz": _load_ggz}


def _require_causal_lm(config_path: Path) -> None:
    """Refuse encoders (BERT, sentence-transformers...) up front instead of loading a random LM head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = read_json_object(config_path)
    causal_classes: set[str] = set()
    for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_classes.update([names] if isinstance(names, str) else names)
    model_type = config.get("model_type", "?")
    archs = config.get("architectures") or []
    if config.get("is_encoder_decoder"):
        ok = False
    elif archs:
        ok = any(a in causal_classes for a in archs)
    else:
        ok = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not ok:
        what = ", ".join(archs) or f"model_type {model_type!r}"
        raise GGError(f"{config_path.parent}: not a causal language model ({what}): this command runs "
                      "next-token prediction, so it needs a decoder LM such as *ForCausalLM (encoders like "
                      "BERT can still be analyzed, quantized, packed and initialized)")


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise GGError(f"{folder}: no tokenizer files (expected tokenizer.json or tokenizer_config.json); "
                      "copy the base model's tokenizer into the folder")
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GGError(f"{folder}: cannot load its tokenizer ({_first_line(exc)})") from None


def _require_complete(source: Path, info: dict) -> None:
    """transformers fills missing weights with random values and only warns: that is not the model."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise GGError(f"{source}: weights missing from the checkpoint: {', '.join(missing[:3])}{more}")


def _torch_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.float32 if str(device).startswith("cpu") else "auto"
    if dtype not in DTYPES:
        raise GGError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def _known_quant_methods() -> set[str]:
    try:
        from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
    except ImportError:  # pragma: no cover - moved in a future transformers
        return set()
    return set(AUTO_QUANTIZER_MAPPING)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
