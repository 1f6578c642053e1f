"""GG initialization: draw weight matrices from a generalized Gaussian with Kaiming/LeCun variance.

For each weight matrix (method.md §GG initialization)::

    α = sqrt(ξ/n · Γ(1/β)/Γ(3/β)),   W ~ GG(β, α)   ⇒   Var[W] = ξ/n   for every β

ξ = 2 is Kaiming (ReLU), ξ = 1 LeCun/Xavier-like, ξ = 2/(1+k²) for a LeakyReLU of slope k. β = 2 is
the usual normal init; β < 2 starts from the peaky, heavy-tailed shape trained LLM weights end up
with (the paper: β "aligns with trained model statistics"), so β can be taken per layer role from an
`analyze` report or from a trained reference checkpoint.

Fan (n): `mode="fan_in"` (default) uses the number of inputs of the layer, torch.nn.init's convention
(dim 1 of an nn.Linear weight [out, in], times the receptive field for convolutions; dim 0 of GPT-2's
transformers Conv1D, whose weight is [in, out]). `mode="fan_out"` uses the outputs: for nn.Linear
that is weight.shape[0], which is what the authors' reference code takes (its quirk), so
`mode="fan_out"` reproduces it. For nn.Embedding [num, dim] the fans follow the same tensor rule
(fan_in = dim), as torch.nn.init computes them.

`init_model` applies it to a whole model: Linear/Conv1D/Embedding weights from GG, norm gains 1,
biases 0, optionally only for parameter names matching a regex; tied weights are drawn once.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ggcompress.errors import GGError
from ggcompress.io.layers import is_conv1d, is_linear
from ggcompress.io.limits import loads_json
from ggcompress.names import INIT_MODES as MODES
from ggcompress.names import INIT_SAVE_DTYPES as SAVE_DTYPES
from ggcompress.stats import gg
from ggcompress.stats.roles import role_of

SCHEMA = "ggcompress.init/1"
ANALYZE_SCHEMA = "ggcompress.analyze/1"


def _check(beta: float, xi: float, mode: str) -> None:
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
        raise GGError(f"GG init: shape β must be a positive number, got {beta!r}")
    if not (isinstance(xi, int | float) and math.isfinite(xi) and xi > 0):
        raise GGError(f"GG init: gain ξ must be a positive number, got {xi!r}")
    if mode not in MODES:
        raise GGError(f"GG init: mode must be one of {', '.join(MODES)}, got {mode!r}")


def fans(tensor: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight laid out as [out, in, *kernel] (torch.nn.init's rule)."""
    if tensor.ndim < 2:
        raise GGError(f"GG init: fan needs a tensor of 2+ dimensions, got shape {tuple(tensor.shape)}")
    receptive = math.prod(tensor.shape[2:]) if tensor.ndim > 2 else 1
    return int(tensor.shape[1]) * receptive, int(tensor.shape[0]) * receptive


def gg_alpha(beta: float, xi: float, fan: int) -> float:
    """Scale α giving Var = ξ/fan: α = sqrt(ξ/fan · Γ(1/β)/Γ(3/β))."""
    return float(gg.alpha_from_std(math.sqrt(xi / fan), beta))


def gg_(
    tensor: torch.Tensor,
    shape: float = 2.0,
    xi: float = 1.0,
    mode: str = "fan_in",
    generator: torch.Generator | None = None,
    *,
    fan: int | None = None,
) -> torch.Tensor:
    """Fill `tensor` in place with GG(β=shape, α) values of variance ξ/n; returns it (torch.nn.init style).

    n is the fan chosen by `mode` (module doc), or `fan` when given (for layouts other than [out, in]).
    Values are drawn in float64 on the CPU from `generator` (seed it for reproducible weights), then cast.
    """
    _check(shape, xi, mode)
    if fan is None:
        fin, fout = fans(tensor)
        fan = fin if mode == "fan_in" else fout
    if fan <= 0:
        raise GGError(f"GG init: fan must be positive, got {fan} for shape {tuple(tensor.shape)}")
    values = gg.sample(tuple(tensor.shape), shape, gg_alpha(shape, xi, fan), generator=generator,
                       dtype=torch.float64)
    with torch.no_grad():
        tensor.copy_(values.to(device=tensor.device, dtype=tensor.dtype))
    return tensor


# ---------------------------------------------------------------------------------------------- models


@dataclass
class InitRecord:
    """What `init_model` did to one parameter."""

    name: str
    role: str
    shape: list[int]
    action: str  # "gg", "ones" (norm gain), "zeros" (bias / norm shift)
    beta: float | None = None
    alpha: float | None = None
    fan: int | None = None
    std: float | None = None  # target standard deviation sqrt(ξ/fan)


def _is_norm(mod: torch.nn.Module) -> bool:
    name = type(mod).__name__.lower()
    return isinstance(mod, torch.nn.LayerNorm | torch.nn.GroupNorm) or "norm" in name


def _weight_fan(mod: torch.nn.Module, w: torch.Tensor, mode: str) -> int:
    if is_conv1d(mod):  # [in, out]
        return int(w.shape[0]) if mode == "fan_in" else int(w.shape[1])
    fin, fout = fans(w)
    return fin if mode == "fan_in" else fout


def init_model(
    model: torch.nn.Module,
    shape: float = 2.0,
    xi: float = 1.0,
    mode: str = "fan_in",
    *,
    include: str | None = None,
    shape_by_role: dict[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> list[InitRecord]:
    """Re-initialize `model` in place: GG weights for Linear/Conv1D/Embedding, norm gains 1, biases 0.

    β is `shape_by_role[role]` when that role (ggcompress.stats.roles) is given there, else `shape`.
    `include` (re.search on parameter names) restricts which parameters are touched; the others keep
    their values. A weight shared by several modules (tied embedding/head) is drawn once, under the
    first name. Returns one record per parameter touched, in module order.
    """
    _check(shape, xi, mode)
    for role, b in (shape_by_role or {}).items():
        if not (isinstance(b, int | float) and math.isfinite(b) and b > 0):
            raise GGError(f"GG init: shape β for role {role!r} must be a positive number, got {b!r}")
    try:
        pattern = re.compile(include) if include else None
    except re.error as e:
        raise GGError(f"GG init: --include {include!r} is not a valid regular expression ({e})") from None
    seen: set[int] = set()
    records: list[InitRecord] = []
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        is_weight_layer = isinstance(mod, torch.nn.Embedding) or is_linear(mod)
        is_norm = not is_weight_layer and _is_norm(mod)
        if not (is_weight_layer or is_norm):
            continue
        for leaf, p in mod.named_parameters(recurse=False):
            name = prefix + leaf
            if id(p) in seen or (pattern is not None and not pattern.search(name)):
                continue
            seen.add(id(p))
            role = role_of(name, p.ndim)
            rec = InitRecord(name=name, role=role, shape=list(p.shape), action="zeros")
            with torch.no_grad():
                if leaf == "weight" and is_weight_layer:
                    fan = _weight_fan(mod, p, mode)
                    beta = float((shape_by_role or {}).get(role, shape))
                    alpha = gg_alpha(beta, xi, fan)
                    gg_(p, beta, xi, mode, generator, fan=fan)
                    rec.action, rec.beta, rec.alpha, rec.fan = "gg", beta, alpha, fan
                    rec.std = math.sqrt(xi / fan)
                elif leaf == "weight" and is_norm:
                    p.fill_(1.0)
                    rec.action = "ones"
                else:
                    p.zero_()
            records.append(rec)
    if not records:
        raise GGError("GG init: no parameters selected (no Linear/Embedding/norm parameter matches include)")
    return records


# ---------------------------------------------------------------------------------------------- β per role


def shapes_from_report(report: str | Path | dict[str, Any]) -> dict[str, float]:
    """β per layer role from an `analyze --json` document (schema ggcompress.analyze/1).

    With several checkpoints in the document, each role's β is their parameter-weighted average.
    """
    source = str(report) if not isinstance(report, dict) else "analyze report"
    if isinstance(report, dict):
        doc = report
    else:
        try:
            text = Path(report).read_bytes()
        except OSError as e:
            raise GGError(f"{report}: cannot read ({e.strerror})") from None
        doc = loads_json(text, str(report))
    if not isinstance(doc, dict) or doc.get("schema") != ANALYZE_SCHEMA:
        raise GGError(f"{source}: not an analyze report (expected schema {ANALYZE_SCHEMA!r}, "
                      "from `ggcompress analyze --json`)")
    sums: dict[str, list[float]] = {}
    checkpoints = doc.get("checkpoints") or []
    if not isinstance(checkpoints, list) or not all(isinstance(c, dict) for c in checkpoints) \
            or not all(isinstance(c.get("roles") or {}, dict) for c in checkpoints):
        raise GGError(f"{source}: malformed analyze report (checkpoints must be a list of objects with "
                      "a roles object)")
    for ck in checkpoints:
        for role, r in (ck.get("roles") or {}).items():
            if not isinstance(r, dict):
                continue
            beta, n = r.get("beta"), r.get("params") or 1
            if not (isinstance(n, int | float) and not isinstance(n, bool) and 0 < n < 2**63):
                continue
            number = isinstance(beta, int | float) and not isinstance(beta, bool)
            if number and math.isfinite(beta) and beta > 0:
                acc = sums.setdefault(role, [0.0, 0.0])
                acc[0] += beta * n
                acc[1] += n
    out = {role: s / n for role, (s, n) in sums.items() if role not in ("norm", "bias", "other")}
    if not out:
        raise GGError(f"{source}: the analyze report has no fitted β for any weight role")
    return out


def shapes_from_checkpoint(spec: str | Path, *, sample: int | None = 2**16, seed: int = 0
                           ) -> dict[str, float]:
    """β per layer role measured on a trained checkpoint (runs the analyze library on it).

    `sample` values per tensor (seeded) keep this fast on big models; the MLE fit is what analyze uses.
    """
    from ggcompress.io.checkpoint import open_checkpoint
    from ggcompress.stats.analyze import AnalyzeOptions, analyze_checkpoint

    ck = open_checkpoint(spec)
    rep = analyze_checkpoint(ck, AnalyzeOptions(sample=sample, seed=seed, fit="mle", granularity=()))
    return shapes_from_report({"schema": ANALYZE_SCHEMA, "checkpoints": [rep.to_dict()]})


def shapes_from(ref: str | Path) -> dict[str, float]:
    """β per role from REF: an analyze JSON report if it is one, else a checkpoint to analyze."""
    p = Path(ref).expanduser()
    if p.is_file() and p.suffix.lower() == ".json" and not p.name.endswith(".index.json"):
        return shapes_from_report(p)
    return shapes_from_checkpoint(ref)


def records_to_dicts(records: list[InitRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


# ---------------------------------------------------------------------------------------- a fresh checkpoint

#: Tokenizer files carried from the source folder (or fetched with a hub id's config).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")


def _config_source(spec: str) -> tuple[Path, Path | None]:
    """(config.json path, folder whose tokenizer files to copy) of a config file, folder or hub id."""
    from ggcompress.io.checkpoint import HUB_ID

    p = Path(spec).expanduser()
    if p.is_file():
        return p, p.parent
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise GGError(f"{spec}: folder has no config.json")
        return p / "config.json", p
    if HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        import os

        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
        try:
            folder = Path(snapshot_download(spec, allow_patterns=["config.json", *TOKENIZER_FILES],
                                            local_files_only=offline))
        except Exception as e:
            why = "not in the local cache and HF_HUB_OFFLINE is set" if offline else _first_line(e)
            raise GGError(f"{spec}: cannot get its config from the Hugging Face hub ({why})") from None
        if not (folder / "config.json").is_file():
            raise GGError(f"{spec}: the hub repository has no config.json")
        return folder / "config.json", folder
    raise GGError(f"{spec}: no such file or folder")


def build_model(spec: str, seed: int = 0) -> tuple[Any, Path | None]:
    """A randomly initialized transformers model (causal LM when the config has one) from a config."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg_path, folder = _config_source(spec)
    try:
        config = AutoConfig.from_pretrained(str(cfg_path))
    except Exception as e:
        raise GGError(f"{cfg_path}: not a transformers model config ({_first_line(e)})") from None
    torch.manual_seed(seed)
    import transformers

    # The class the config names (BertModel, LlamaForCausalLM...), else a causal LM, else the base model.
    named = [getattr(transformers, a, None) for a in (getattr(config, "architectures", None) or [])]
    if named and named[0] is not None and hasattr(named[0], "_from_config"):
        return named[0]._from_config(config, dtype=torch.float32), folder
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError:
        try:
            model = AutoModel.from_config(config, dtype=torch.float32)
        except ValueError as e:
            raise GGError(f"{cfg_path}: transformers cannot build a model from this config "
                          f"({_first_line(e)})") from None
    return model, folder


def init_checkpoint(
    source: str,
    out: str | Path,
    *,
    shape: float = 2.0,
    shape_from: str | None = None,
    xi: float = 1.0,
    mode: str = "fan_in",
    include: str | None = None,
    seed: int = 0,
    dtype: str = "float32",
    force: bool = False,
) -> dict[str, Any]:
    """Write a freshly GG-initialized HF model folder built from `source`'s config; returns the report.

    The folder (config, safetensors, tokenizer files of the source when it has them) is built in a
    temporary folder beside `out` and renamed into place (CheckpointWriter). Same inputs + seed give the
    same weights.
    """
    from ggcompress.io.checkpoint import CheckpointWriter, check_output_path

    _check(shape, xi, mode)
    if dtype not in SAVE_DTYPES:
        raise GGError(f"GG init: dtype must be one of {', '.join(SAVE_DTYPES)}, got {dtype!r}")
    inputs = [source] + ([shape_from] if shape_from else [])
    outp = Path(out).expanduser().absolute()

    check_output_path(outp, inputs, force=force, kind="folder")
    by_role = shapes_from(shape_from) if shape_from else None
    model, folder = build_model(source, seed)
    gen = torch.Generator().manual_seed(seed)
    records = init_model(model, shape, xi, mode, include=include, shape_by_role=by_role, generator=gen)
    model = model.to(getattr(torch, dtype))
    with CheckpointWriter(outp, force=force, inputs=inputs) as writer:
        model.save_pretrained(writer.tmp)
        copied = []
        if folder is not None:
            for name in TOKENIZER_FILES:
                if (folder / name).is_file() and not (writer.tmp / name).exists():
                    (writer.tmp / name).write_bytes((folder / name).read_bytes())
                    copied.append(name)
        report = {
            "schema": SCHEMA,
            "source": source,
            "output": str(outp),
            "architecture": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()),
            "settings": {"shape": shape, "shape_from": shape_from, "shape_by_role": by_role, "xi": xi,
                         "mode": mode, "include": include, "seed": seed, "dtype": dtype},
            "tokenizer_files": copied,
            "roles": _role_summary(records),
            "tensors": records_to_dicts(records),
        }
        (writer.tmp / "init_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _role_summary(records: list[InitRecord]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        s = out.setdefault(r.role, {"tensors": 0, "params": 0, "action": r.action, "beta": r.beta})
        s["tensors"] += 1
        s["params"] += math.prod(r.shape)
        if s["beta"] != r.beta:
            s["beta"] = None  # mixed (only with an include that splits a role)
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
