"""GGUF in and out: read a ``.gguf`` file as a Checkpoint, write one from a (quantized) HF folder.

Why here: llama.cpp users hold their models as GGUF. Reading: every command that opens checkpoints
(analyze, quantize-rf8, pack...) gets a ``.gguf`` file as a ``GGUFCheckpoint`` whose tensors carry the
Hugging Face names and layout (GGUF -> HF names from transformers' map built on the gguf package's
``TensorNameMap``; llama's Q/K rows un-permuted by transformers' tensor processor), dequantized to
float32 one tensor at a time by the gguf package's reference code (``gguf.quants.dequantize``). The file
is validated like every reader: each tensor's data must lie inside the file.

Its metadata (architecture, hyper-parameters, the tokenizer, the chat template) is what llama.cpp needs
to run the model and has no place in an HF folder, so outputs built from a GGUF keep it verbatim, with
its GGUF value types, in ``gguf_metadata.json``; ``write_gguf`` puts it back, so a GGUF that went through
quantize-rf8 / pack comes back out of ``dequantize --to gguf`` with the same metadata and tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from ggcompress.errors import GGError
from ggcompress.io.checkpoint import Checkpoint, TensorInfo, check_output_path

METADATA_FILE = "gguf_metadata.json"
METADATA_SCHEMA = "ggcompress.gguf-metadata/1"
#: GGUF keys that describe the file itself, not the model: recomputed by the writer.
_FILE_KEYS = ("GGUF.", "general.file_type", "general.quantization_version", "split.")
#: --dtype of write_gguf -> GGML type of matrices (1-D tensors are always F32, as llama.cpp expects).
GGUF_DTYPES = ("f32", "f16", "bf16")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGError("reading and writing GGUF needs the gguf package (pip install 'ggcompress[eval]')") \
            from None
    return gguf


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class GGUFCheckpoint(Checkpoint):
    """A ``.gguf`` file: tensors under their HF names, dequantized to float32 when read."""

    hf_config: dict[str, Any] = field(default_factory=dict)
    reader: Any = None  # gguf.GGUFReader (memory-mapped)
    gguf_names: dict[str, str] = field(default_factory=dict)  # HF name -> GGUF tensor name
    processor: Any = None  # transformers' TensorProcessor for the architecture
    _support: Any = field(default=None, init=False, repr=False)  # TemporaryDirectory behind ``root``

    @property  # type: ignore[override]
    def root(self) -> Path:
        """A folder with the support files an HF folder would have: config.json, the tokenizer files and
        ``gguf_metadata.json``, built on first use (the tokenizer takes seconds), removed with this object.

        Every writer that carries support files along (quantize-rf8, pack, dequantize) thus keeps them.
        """
        if self._support is None:
            support = tempfile.TemporaryDirectory(prefix="ggcompress-gguf-")
            try:
                folder = Path(support.name)
                self.write_support_files(folder)
                (folder / "config.json").write_text(json.dumps(self.hf_config, indent=2) + "\n")
            except BaseException:
                support.cleanup()
                raise
            self._support = support
        return Path(self._support.name)

    @root.setter
    def root(self, value: Any) -> None:  # the dataclass __init__ assigns it; a GGUF has no folder
        pass

    @property
    def config(self) -> dict[str, Any] | None:
        """The HF config.json transformers derives from the GGUF metadata."""
        return dict(self.hf_config)

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        gguf = _gguf()
        wanted = None if names is None else set(names)
        by_name = {t.name: t for t in self.reader.tensors}
        for info in self.tensors:
            if wanted is not None and info.name not in wanted:
                continue
            raw = by_name[self.gguf_names[info.name]]
            try:
                w = gguf.quants.dequantize(raw.data, raw.tensor_type)
            except (NotImplementedError, ValueError, KeyError) as exc:  # gguf raises these for types it lacks
                raise GGError(f"{info.file}: tensor {raw.name} of type {raw.tensor_type.name} cannot be "
                              f"dequantized by the gguf package ({exc})") from None
            w = self.processor.process(weights=w, name=raw.name).weights
            yield info, torch.from_numpy(np.array(w, dtype=np.float32)).reshape(info.shape)  # a copy

    def metadata_fields(self) -> list[dict[str, Any]]:
        """The GGUF key/value metadata with their GGUF types (``gguf_metadata.json``'s ``fields``)."""
        return metadata_fields(self.reader)

    def write_support_files(self, folder: Path) -> None:
        """The tokenizer files and ``gguf_metadata.json`` (config.json is written by ``root``)."""
        path = Path(self.files[0])
        with _shared_reader(self.reader):
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise GGError(f"{path}: transformers cannot build its tokenizer ({exc})") from None
        tok.save_pretrained(folder)
        doc = {"schema": METADATA_SCHEMA, "source": path.name, "fields": self.metadata_fields()}
        (folder / METADATA_FILE).write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _shared_reader(reader: Any) -> Iterator[None]:
    """Let transformers' GGUF code reuse an open reader (parsing a 49k-token vocabulary takes seconds)."""
    with mock.patch("gguf.GGUFReader", lambda *args, **kwargs: reader):
        yield


def open_gguf(path: Path, source: str) -> GGUFCheckpoint:
    """Open and validate a ``.gguf`` file; reads metadata and tensor headers only."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise GGError(f"{path}: not a readable GGUF file, truncated or damaged "
                      f"({str(exc).splitlines()[0][:200]})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise GGError(f"{path}: tensor {t.name} ends at byte {end} but the file has {size} bytes "
                          "(truncated download?)")
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    parsed = _parsed(reader, path)
    config = parsed["config"]
    arch = str(metadata_value(reader, "general.architecture"))
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config)
    to_hf = _hf_names(config, processor, path)
    tensors, gguf_names = [], {}
    for t in reader.tensors:
        name = to_hf.get(t.name, t.name)  # a tensor transformers does not map keeps its GGUF name
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors.append(TensorInfo(name, shape, "F32", path))
        gguf_names[name] = t.name
    return GGUFCheckpoint(source, [path], tensors, None, {"format": "gguf", "architecture": arch},
                          hf_config=config, reader=reader, gguf_names=gguf_names, processor=processor)


def _parsed(reader: Any, path: Path) -> dict[str, Any]:
    """transformers' reading of the GGUF metadata: HF config + causal-LM architecture."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        with _shared_reader(reader):
            parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    except (ValueError, KeyError, NotImplementedError, ImportError) as exc:  # transformers' refusals
        raise GGError(f"{path}: transformers cannot map this GGUF to a Hugging Face model "
                      f"({str(exc).splitlines()[0][:200]})") from None
    config = {k: v for k, v in parsed["config"].items() if not k.startswith("_")}
    cls = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
    if cls:
        config["architectures"] = [cls if isinstance(cls, str) else cls[0]]
    return {**parsed, "config": config}


#: transformers model_type -> gguf architecture name, where they differ (as transformers maps them).
_GGUF_ARCH = {"cohere": "command-r", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe",
              "gemma3_text": "gemma3", "gemma4_text": "gemma4", "umt5": "t5", "minimax_m2": "minimax-m2",
              "gpt_oss": "gpt-oss"}


def _hf_names(config: dict[str, Any], processor: Any, path: Path) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name, from the model's own parameter list (meta device).

    The same rule as transformers' ``get_gguf_hf_weights_map`` (the gguf package's ``TensorNameMap``
    applied to every parameter name, also without its leading module prefixes), with the map built once
    instead of once per submodule (18 s -> 0.05 s on SmolLM2).
    """
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    cfg.pop("architectures", None)
    arch_name = _GGUF_ARCH.get(model_type, model_type)
    arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch_name), None)
    if arch is None:
        raise GGError(f"{path}: the gguf package has no tensor names for architecture {arch_name!r}")
    try:
        hf_config = AutoConfig.for_model(model_type, **cfg)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError) as exc:
        raise GGError(f"{path}: transformers cannot build its {model_type} model "
                      f"({str(exc).splitlines()[0][:200]})") from None
    name_map = get_tensor_name_map(arch, hf_config.num_hidden_layers)
    out: dict[str, str] = {}
    for key in model.state_dict():
        name = processor.preprocess_name(key)
        base, suffix = name, ""
        if name.endswith((".weight", ".bias")):
            base, _, last = name.rpartition(".")
            suffix = "." + last
        parts = base.split(".")
        for i in range(len(parts)):  # the full name, then without each leading module prefix
            g = name_map.get_name(".".join(parts[i:]))
            if g is not None:
                out.setdefault(g + suffix, key)
                break
    return out


def metadata_value(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def metadata_fields(reader: Any) -> list[dict[str, Any]]:
    """Every model key/value of the file (not the file-level ones), with its GGUF value type(s)."""
    gguf = _gguf()
    out = []
    for key, f in reader.fields.items():
        if key.startswith(_FILE_KEYS):
            continue
        vtype = gguf.GGUFValueType(f.types[0])
        sub = gguf.GGUFValueType(f.types[-1]).name if vtype == gguf.GGUFValueType.ARRAY else None
        out.append({"key": key, "type": vtype.name, "sub_type": sub, "value": f.contents()})
    return out


def read_metadata(folder: Path | None, like: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    """GGUF metadata for ``write_gguf``: from ``like`` (a .gguf or gguf_metadata.json) or the folder's."""
    if like is not None:
        p = Path(like)
        if p.suffix.lower() == ".gguf":
            gguf = _gguf()
            try:
                return metadata_fields(gguf.GGUFReader(p))
            except (ValueError, OSError, IndexError, KeyError) as exc:
                raise GGError(f"{p}: not a readable GGUF file ({exc})") from None
        source = p
    elif folder is not None and (folder / METADATA_FILE).is_file():
        source = folder / METADATA_FILE
    else:
        raise GGError(f"{folder}: no {METADATA_FILE} (it is kept when the folder was made from a GGUF); "
                      "give --gguf-metadata ORIGINAL.gguf to take the metadata and tokenizer from there")
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GGError(f"{source}: unreadable ({exc})") from None
    if not (isinstance(doc, dict) and doc.get("schema") == METADATA_SCHEMA
            and isinstance(doc.get("fields"), list)):
        raise GGError(f"{source}: not a {METADATA_SCHEMA} document")
    return doc["fields"]


# ---------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Planned:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]  # HF order (numpy order of the data written)
    ggml_type: Any


def write_gguf(
    tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]],
    shapes: list[tuple[str, tuple[int, ...]]],
    config: dict[str, Any],
    fields: list[dict[str, Any]],
    out: str | os.PathLike[str],
    *,
    dtype: str = "f32",
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> dict[str, Any]:
    """Write a GGUF file from dense HF tensors (``tensors()`` yields them in ``shapes`` order).

    Names go HF -> GGUF with the same map the reader uses; llama's Q/K rows are permuted back to
    llama.cpp's layout. Streams: tensor infos first, then one tensor's data at a time. Atomic.
    """
    gguf = _gguf()
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        LlamaTensorProcessor,
        TensorProcessor,
    )

    if dtype not in GGUF_DTYPES:
        raise GGError(f"unknown GGUF dtype {dtype!r}: choose from {', '.join(GGUF_DTYPES)}")
    keys = {f["key"]: f for f in fields}
    arch_field = keys.get("general.architecture")
    if arch_field is None:
        raise GGError("the GGUF metadata has no general.architecture")
    arch = str(arch_field["value"])
    processor_cls = TENSOR_PROCESSORS.get(arch, TensorProcessor)
    if processor_cls not in (TensorProcessor, LlamaTensorProcessor):
        raise GGError(f"writing GGUF for architecture {arch!r} is not supported (its tensors need a "
                      "conversion ggcompress does not invert); supported: llama layout, plain-named models")
    to_gguf = {hf: g for g, hf in _hf_names(config, processor_cls(config=config), Path(str(out))).items()}
    mat_type = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                "bf16": gguf.GGMLQuantizationType.BF16}[dtype]
    plan = []
    for name, shape in shapes:
        g = to_gguf.get(name)
        if g is None:
            if name in to_gguf.values() or "." not in name:  # already a GGUF name (read from a GGUF)
                g = name
            else:
                raise GGError(f"tensor {name} has no GGUF name for architecture {arch!r}")
        plan.append(_Planned(name, g, tuple(shape),
                             mat_type if len(shape) >= 2 else gguf.GGMLQuantizationType.F32))
    out_path = Path(out).expanduser().absolute()
    check_output_path(out_path, inputs, force=force)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        for f in fields:
            if f["key"] == "general.architecture":
                continue  # GGUFWriter writes it from ``arch``
            vtype = gguf.GGUFValueType[f["type"]]
            sub = gguf.GGUFValueType[f["sub_type"]] if f.get("sub_type") else None
            writer.add_key_value(f["key"], f["value"], vtype, sub_type=sub)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
        for p in plan:
            itemsize = 2 if p.ggml_type != gguf.GGMLQuantizationType.F32 else 4
            n = int(np.prod(p.shape)) if p.shape else 1
            writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(np.float32), n * itemsize,
                                   raw_dtype=p.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        by_name = {p.hf_name: p for p in plan}
        written = 0
        for name, t in tensors():
            p = by_name[name]
            w = t.detach().to(torch.float32).numpy().reshape(p.shape)
            qk = ".attn_q." in p.gguf_name or ".attn_k." in p.gguf_name
            if processor_cls is LlamaTensorProcessor and qk:
                heads = config["num_attention_heads"]
                kv = heads if ".attn_q." in p.gguf_name else config.get("num_key_value_heads", heads)
                w = _permute(w, heads, kv)
            writer.write_tensor_data(_encode(gguf, w, p.ggml_type))
            written += 1
        writer.close()
        if written != len(plan):
            raise GGError(f"{out_path}: {len(plan) - written} tensors were not written")
        if out_path.exists() and not force:
            raise GGError(f"{out_path}: already exists (use --force to replace it)")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"output": str(out_path), "architecture": arch, "tensors": len(plan), "dtype": dtype,
            "metadata_keys": len(fields), "bytes": out_path.stat().st_size}


def _permute(w: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf ``permute`` (the inverse of transformers' reverse permute)."""
    heads = n_kv if n_kv != n_head else n_head
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _encode(gguf: Any, w: np.ndarray, ggml_type: Any) -> np.ndarray:
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(w, dtype=np.float32)
    if ggml_type == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(w.astype(np.float16))
    bits = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(torch.bfloat16).view(torch.int16)
    return bits.numpy().view(np.uint16).reshape(w.shape)  # round-to-nearest-even bf16, as torch does


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
