"""Quality of compressed checkpoints vs a baseline: lm-eval task scores plus next-token agreement.

Why: every compression step must show what it costs. ``evaluate`` runs each model (the first is the
baseline) through

1. lm-eval (``HFLM`` wrapping the in-memory model, run by ``lm_eval.evaluate``): any harness task it can
   reach, plus ggcompress's offline tasks (``ggcompress.integrations.tasks``). Recovery per metric is
   model/baseline when higher is better and baseline/model when lower is better.
2. ggcompress's own comparison over ``text`` (as llama.cpp's KL-divergence report): the text is
   tokenized once, cut into non-overlapping windows of ``window`` tokens spread evenly over it (at
   most ``max_tokens`` tokens), and every next-token distribution is compared with the baseline's:
   KL(P_base || P_model) per token in float64 from log_softmax (mean / median / p99 / max), the
   same-top-1 rate, perplexity and its ratio to the baseline's.

Memory: models are loaded one at a time. The baseline's raw next-token logits are kept in a float32
``.npy`` memmap in a temporary folder (tokens x vocab x 4 bytes, e.g. 4096 x 49152 -> 0.8 GB for
SmolLM2), deleted at the end; each later model is compared window by window against it. Storing the
logits losslessly (fp32 holds fp32/bf16/fp16 outputs exactly) and doing both log_softmax in the same
float64 code makes the baseline against itself exactly 0 KL and 100% same top-1.

The library returns the report dict (schema ``ggcompress.eval/1``, documented in docs/eval.md) and
never prints; progress goes through an optional callback.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from ggcompress import __version__
from ggcompress.errors import GGError
from ggcompress.integrations.tasks import SHIPPED, TEXT_TASKS, materialize, read_text
from ggcompress.io.context import Context, clamp, model_context
from ggcompress.io.loading import LoadedModel, load_model
from ggcompress.names import EVAL_TEXT_METRICS as TEXT_METRICS
from ggcompress.reports.gates import Gate, check_gates

SCHEMA = "ggcompress.eval/1"
#: float64 working set per comparison chunk (rows x vocab x 8 bytes x ~4 live arrays).
_CHUNK_BYTES = 64 << 20

#: progress(stage description, done, total or None when unknown)
Progress = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class EvalOptions:
    """Everything that shapes an eval run; ``tasks=None`` picks the shipped defaults."""

    tasks: tuple[str, ...] | None = None
    text: Path | None = None
    include_paths: tuple[Path, ...] = ()
    limit: float | None = None
    batch_size: int | str = 1  # or "auto": lm-eval finds the largest that fits; KL windows then use 1
    device: str = "cpu"
    dtype: str | None = None
    seed: int = 0
    max_tokens: int = 4096
    window: int = 512
    max_length: int | None = None
    gates: tuple[Gate, ...] = field(default_factory=tuple)
    # lm-eval's own options, passed through unchanged
    num_fewshot: int | None = None  # None: each task's own setting, 0 when it has none
    output_path: Path | None = None  # lm-eval's results_<date>.json (+ samples) per model, in its layout
    log_samples: bool = False  # also write lm-eval's per-sample records (needs output_path)
    model_args: str | None = None  # extra HFLM arguments "k=v,k2=v2" (not the ones that load the model)
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None

    @property
    def window_batch(self) -> int:
        """Batch size of the KL windows (``auto`` is lm-eval's; the windows then go one by one)."""
        return self.batch_size if isinstance(self.batch_size, int) else 1


def default_tasks(text: Path | None) -> tuple[str, ...]:
    """The offline tasks: cloze always, perplexity when there is a text to measure it on."""
    return ("ggc_perplexity", "ggc_cloze") if text is not None else ("ggc_cloze",)


def evaluate(models: Sequence[str], options: EvalOptions, progress: Progress | None = None) -> dict:
    """Evaluate ``models`` (the first is the baseline) and return the ``ggcompress.eval/1`` report."""
    if not models:
        raise GGError("no models given: pass the baseline first, then the models to compare with it")
    tasks = tuple(options.tasks) if options.tasks is not None else default_tasks(options.text)
    _check_options(options, tasks)
    notify = progress or (lambda stage, done, total: None)
    labels = _labels(models)
    rows: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ggcompress-eval-") as tmp:
        work = Path(tmp)
        task_manager = _task_manager(tasks, options, work) if tasks else None
        text = read_text(options.text) if options.text is not None else None
        reference: _Reference | None = None
        for i, spec in enumerate(models):
            stage = f"[{i + 1}/{len(models)}] {labels[i]}"
            seconds: dict[str, float] = {}
            t0 = time.perf_counter()
            notify(f"{stage}: loading", 0, None)
            loaded = load_model(spec, device=options.device, dtype=options.dtype)
            seconds["load"] = time.perf_counter() - t0
            context = model_context(loaded.model)
            task_scores: dict[str, dict] = {}
            if task_manager is not None:
                t0 = time.perf_counter()
                max_length = _max_length(options.max_length, context, labels[i], notes)
                task_scores = _run_tasks(loaded, task_manager, tasks, options, max_length,
                                         lambda n, s=stage: notify(f"{s}: lm-eval tokens", n, None),
                                         labels[i])
                seconds["tasks"] = time.perf_counter() - t0
            text_stats = None
            if text is not None:
                t0 = time.perf_counter()

                def tick(done: int, total: int, s: str = stage) -> None:
                    notify(f"{s}: next-token KL windows", done, total)

                if reference is None:
                    window, note = clamp(options.window, context, f"{labels[i]}: --window")
                    if note:
                        notes.append(note)
                    reference = _Reference.build(loaded, text, options, window, work, tick)
                    text_stats = reference.baseline_stats
                else:
                    text_stats = reference.compare(loaded, spec, options, context, tick)
                seconds["text"] = time.perf_counter() - t0
            rows.append({"model": str(spec), "label": labels[i], "source": loaded.source, "kind": loaded.kind,
                         "context": context.to_dict(),
                         "baseline": i == 0, "dtype": str(loaded.model.dtype).replace("torch.", ""),
                         "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
                         "seconds": {k: round(v, 3) for k, v in seconds.items()},
                         "tasks": task_scores, "text": text_stats})
            del loaded
            gc.collect()
        text_info = reference.info if reference is not None else None
        del reference  # close the logits memmap before its folder is removed (required on Windows)
        gc.collect()
    _add_recovery(rows)
    failed = False
    for row in rows:
        failures = check_gates(row["metrics"], options.gates)
        row["failed_gates"] = [{"gate": str(f.gate), "metric": f.gate.metric, "value": _num(f.value),
                                "reason": f.reason} for f in failures]
        failed = failed or bool(failures)
    return {
        "schema": SCHEMA,
        "ggcompress_version": __version__,
        "lm_eval_version": _lm_eval_version() if tasks else None,
        "config": {
            "models": [str(m) for m in models], "tasks": list(tasks),
            "text": str(options.text) if options.text is not None else None,
            "include_paths": [str(p) for p in options.include_paths], "limit": options.limit,
            "batch_size": options.batch_size, "device": options.device, "dtype": options.dtype,
            "seed": options.seed, "max_tokens": options.max_tokens, "window": options.window,
            "max_length": options.max_length, "num_fewshot": options.num_fewshot,
            "output_path": str(options.output_path) if options.output_path is not None else None,
            "log_samples": options.log_samples, "model_args": options.model_args,
            "apply_chat_template": options.apply_chat_template,
            "fewshot_as_multiturn": options.fewshot_as_multiturn,
            "system_instruction": options.system_instruction,
        },
        "baseline": str(models[0]),
        "text": text_info,
        "models": rows,
        "gates": [str(g) for g in options.gates],
        "passed": not failed,
        "notes": notes,
    }


def recovery(value: float | None, base: float | None, higher_is_better: bool | None) -> float | None:
    """Fraction of the baseline's quality kept: model/base if higher is better, else base/model.

    Equal values recover 100% (also when both are 0); otherwise None when it is undefined (no
    direction, a missing or infinite value, or a zero denominator).
    """
    if value is None or base is None or higher_is_better is None:
        return None
    if value == base:
        return 1.0
    num, den = (value, base) if higher_is_better else (base, value)
    if den == 0 or not math.isfinite(num) or not math.isfinite(den):
        return None
    return num / den


# ---------------------------------------------------------------------------------------------- setup


def _check_options(options: EvalOptions, tasks: tuple[str, ...]) -> None:
    if options.batch_size != "auto" and not (isinstance(options.batch_size, int) and options.batch_size >= 1):
        raise GGError(f"--batch-size must be a positive integer or 'auto' (got {options.batch_size!r})")
    if options.num_fewshot is not None and options.num_fewshot < 0:
        raise GGError(f"--num-fewshot must be 0 or more (got {options.num_fewshot})")
    if options.log_samples and options.output_path is None:
        raise GGError("--log-samples writes lm-eval's per-sample records under --output-path DIR: give one")
    if options.fewshot_as_multiturn and not options.apply_chat_template:
        raise GGError("--fewshot-as-multiturn needs --apply-chat-template")
    model_args(options.model_args)
    if options.limit is not None and options.limit <= 0:
        raise GGError(f"--limit must be positive (got {options.limit})")
    if options.max_tokens < 2 or options.window < 2:
        raise GGError("--max-tokens and --window must be at least 2 tokens")
    if options.text is None:
        needs = [g for g in options.gates if g.metric in TEXT_METRICS or g.metric == "recovery:ppl"]
        if needs:
            raise GGError(f"gate {needs[0]} needs --text FILE (ggcompress computes {needs[0].metric} "
                          "over it)")
        needs_text = [t for t in tasks if t in TEXT_TASKS]
        if needs_text:
            raise GGError(f"task {needs_text[0]} needs --text FILE (the text it measures perplexity on)")
    for path in options.include_paths:
        if not Path(path).is_dir():
            raise GGError(f"{path}: --include-path must be a folder of lm-eval task YAMLs")


#: HFLM arguments that load or place the model: ggcompress does that itself, from its own options.
_LOADING_ARGS = {"pretrained": "MODEL", "tokenizer": "the model folder", "device": "--device",
                 "dtype": "--dtype", "batch_size": "--batch-size", "max_batch_size": "--batch-size",
                 "parallelize": "--device", "backend": "MODEL", "revision": "MODEL", "peft": "MODEL",
                 "delta": "MODEL", "gguf_file": "MODEL", "max_length": "--max-length"}


def model_args(text: str | None) -> dict[str, Any]:
    """Parse lm-eval's ``--model_args`` string ("k=v,k2=v2", values typed as lm-eval types them)."""
    if not text:
        return {}
    from lm_eval.utils import simple_parse_args_string

    try:
        args = simple_parse_args_string(text)
    except ValueError as exc:
        raise GGError(f"--model-args {text!r}: expected k=v,k2=v2 ({exc})") from None
    for key in args:
        if key in _LOADING_ARGS:
            raise GGError(f"--model-args {key}=...: ggcompress loads the model itself; use "
                          f"{_LOADING_ARGS[key]} instead")
    return args


def _labels(models: Sequence[str]) -> list[str]:
    """Short column names: the folder/file name, made unique with #N when two collide."""
    names = [Path(str(m).rstrip("/")).name or str(m) for m in models]
    out = []
    for i, name in enumerate(names):
        out.append(name if names.count(name) == 1 else f"{name}#{i + 1}")
    return out


def _task_manager(tasks: tuple[str, ...], options: EvalOptions, work: Path) -> Any:
    """An lm-eval TaskManager that knows the shipped tasks (absolute copies), --include-path and,
    only when a requested task is not local, lm-eval's own ~15k tasks (indexing them takes seconds)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:  # pragma: no cover - the eval extra is missing
        raise GGError(f"lm-eval tasks need the eval extra (pip install 'ggcompress[eval]'): {exc}") from None
    materialize(work / "tasks", text=options.text)
    includes = [str(work / "tasks"), *(str(Path(p).resolve()) for p in options.include_paths)]
    manager = TaskManager(include_defaults=False, include_path=includes)
    if any(t not in manager.all_tasks and not Path(t).is_file() for t in tasks):
        manager = TaskManager(include_path=includes)
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        raise GGError(f"unknown task {unknown[0]!r}: not an lm-eval task, a shipped task "
                      f"({', '.join(SHIPPED)}) or a task in --include-path")
    for name in tasks:  # load each once now, so a missing dataset fails before any model is loaded
        try:
            manager.load([name])
        except Exception as exc:  # datasets/hub raise many types; all mean "cannot get the data"
            offline = any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
                          for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
            hint = (" — it needs a download while offline: run once online to cache it, or use the shipped "
                    f"offline tasks ({', '.join(SHIPPED)})") if offline else ""
            raise GGError(f"task {name}: cannot load its data ({_first_line(exc)}){hint}") from None
    return manager


# ---------------------------------------------------------------------------------------------- lm-eval


def _max_length(requested: int | None, context: Context, label: str, notes: list[str]) -> int | None:
    """lm-eval's max_length: --max-length clamped to the model's context, else the context itself."""
    if requested is None:
        return context.tokens
    length, note = clamp(requested, context, f"{label}: --max-length")
    if note:
        notes.append(note)
    return length


def _run_tasks(loaded: LoadedModel, manager: Any, tasks: tuple[str, ...], options: EvalOptions,
               max_length: int | None, tick: Callable[[int], None], label: str = "model"
               ) -> dict[str, dict]:
    """One lm-eval run on the in-memory model -> {task: {"samples", "metrics": {name: {...}}}}.

    Does what ``simple_evaluate`` does for a pre-built model (seeds, zero-shot default, few-shot seed)
    and then calls ``lm_eval.evaluate``: ``simple_evaluate`` adds per call a ``git describe`` that
    prints "fatal: not a git repository" outside a repo and ~1 s of torch environment collection.
    """
    with contextlib.redirect_stdout(sys.stderr):  # lm-eval print()s (batch size detection): keep stdout data
        return _run_tasks_inner(loaded, manager, tasks, options, max_length, tick, label)


def _run_tasks_inner(loaded: LoadedModel, manager: Any, tasks: tuple[str, ...], options: EvalOptions,
                     max_length: int | None, tick: Callable[[int], None], label: str) -> dict[str, dict]:
    import lm_eval
    import lm_eval.api.task
    from tqdm import tqdm

    try:
        lm = _quiet_hflm_class()(pretrained=loaded.model, tokenizer=loaded.tokenizer,
                                 batch_size=options.batch_size, max_length=max_length, tick=tick,
                                 **model_args(options.model_args))
    except TypeError as exc:
        raise GGError(f"--model-args {options.model_args!r}: lm-eval's HFLM rejects it ({exc})") from None
    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)
    task_dict = manager.load(list(tasks))
    for task in task_dict["tasks"].values():
        if options.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=options.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=options.seed)
    # lm-eval draws a tqdm bar per task while building requests and has no switch for it; the
    # caller's progress callback covers the run, so that bar is silenced for this call only.
    with mock.patch.object(lm_eval.api.task, "tqdm", functools.partial(tqdm, disable=True)):
        out = lm_eval.evaluate(lm=lm, task_dict=task_dict, limit=options.limit, bootstrap_iters=0,
                               log_samples=options.log_samples,
                               apply_chat_template=options.apply_chat_template,
                               fewshot_as_multiturn=options.fewshot_as_multiturn,
                               system_instruction=options.system_instruction)
    if out is None:  # pragma: no cover - only non-zero ranks get None
        raise GGError("lm-eval returned no results")
    if options.output_path is not None:
        _save_lm_eval_results(dict(out), options, label, lm)
    directions = out.get("higher_is_better", {})
    samples = out.get("n-samples", {})
    scores: dict[str, dict] = {}
    for task, row in out["results"].items():
        metrics = {}
        for key, value in row.items():
            if key == "alias" or "," not in key or "_stderr," in key:
                continue
            name, _, filt = key.partition(",")
            shown = name if filt in ("none", "") else f"{name},{filt}"
            metrics[shown] = {"value": _num(value), "stderr": _num(row.get(f"{name}_stderr,{filt}")),
                              "higher_is_better": directions.get(task, {}).get(name)}
        n = samples.get(task, {}).get("effective")
        scores[task] = {"samples": int(n) if n is not None else None, "metrics": metrics}
    return scores


def _save_lm_eval_results(out: dict, options: EvalOptions, label: str, lm: Any) -> None:
    """lm-eval's own result files (``EvaluationTracker``): <output_path>/<label>/results_<date>.json."""
    from lm_eval.loggers import EvaluationTracker

    samples = out.pop("samples", None)
    tracker = EvaluationTracker(output_path=str(options.output_path))
    template = lm.chat_template(options.apply_chat_template) if options.apply_chat_template else None
    tracker.general_config_tracker.log_experiment_args(
        model_source="ggcompress", model_args=f"pretrained={label}",
        system_instruction=options.system_instruction, chat_template=template,
        fewshot_as_multiturn=options.fewshot_as_multiturn)
    seeds = {k: options.seed for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")}
    out["config"] = {"model": "ggcompress", "model_args": options.model_args,
                     "batch_size": options.batch_size, "limit": options.limit, **seeds}
    tracker.save_results_aggregated(results=out, samples=samples if options.log_samples else None)
    if options.log_samples and samples:
        for task_name in out.get("configs", {}):
            if task_name in samples:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    # The tracker logs and swallows write errors; a run whose results were asked for must not end silently.
    folder = Path(options.output_path) / tracker.general_config_tracker.model_name_sanitized
    if not list(folder.glob(f"results_{tracker.date_id}.json")):
        raise GGError(f"{folder}: lm-eval could not write its results there (check the folder is writable)")


def _quiet_hflm_class() -> type:
    """HFLM that reports progress through a callback instead of a tqdm bar per batch."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def __init__(self, *args: Any, tick: Callable[[int], None] | None = None, **kwargs: Any) -> None:
            self._tick = tick
            self._tokens = 0
            super().__init__(*args, **kwargs)

        def _model_call(self, inps: torch.Tensor, attn_mask: Any = None, labels: Any = None) -> torch.Tensor:
            logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            self._tokens += int(inps.numel())
            if self._tick is not None:
                self._tick(self._tokens)
            return logits

        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def _loglikelihood_tokens(self, requests: Any, disable_tqdm: bool = False,
                                  override_bs: Any = None) -> Any:
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().generate_until(requests, disable_tqdm=True)

        def get_model_info(self) -> dict:  # the stock one asks the hub for a sha of an in-memory model
            return {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                    "model_dtype": str(self._model.dtype)}

    return QuietHFLM


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:  # pragma: no cover
        return None


# ---------------------------------------------------------------------------------------------- text


def text_windows(tokenizer: Any, text: str, *, max_tokens: int, window: int) -> torch.Tensor:
    """Token ids as (n_windows, window): non-overlapping windows spread evenly over the whole text.

    Spreading (rather than taking the first ``max_tokens``) makes a capped run sample every part of
    the text. A text shorter than one window gives a single window of all its tokens.
    """
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < 2:
        raise GGError("the text has fewer than 2 tokens: nothing to predict")
    window = min(window, max_tokens, len(ids))
    available = len(ids) // window
    n = max(1, min(available, max_tokens // window))
    starts = np.unique(np.linspace(0, available - 1, n).round().astype(np.int64)) * window
    return torch.tensor([ids[s:s + window] for s in starts], dtype=torch.long)  # (n, W)


def next_token_logits(model: Any, windows: torch.Tensor, batch_size: int):
    """Yield (first window index, float32 logits (b, W-1, V)) predicting tokens 1..W-1 of each window."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1]  # (b, W-1, V)
            yield start, logits.float().cpu()


def compare_logits(base: torch.Tensor, model: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token comparison of two (T, V) logit blocks, in float64 from log_softmax.

    Returns kl = KL(P_base || P_model), nll_base / nll_model of ``targets`` (T,), and same_top1 (T,)
    bool. Processed in row chunks so the float64 working set stays ~64 MB whatever the vocabulary.
    Vocabulary entries the baseline gives probability 0 contribute 0 to the KL.
    """
    rows = max(1, _CHUNK_BYTES // (8 * 4 * base.shape[-1]))
    parts: dict[str, list[torch.Tensor]] = {"kl": [], "nll_base": [], "nll_model": [], "same_top1": []}
    for r in range(0, base.shape[0], rows):
        b, m, t = base[r:r + rows], model[r:r + rows], targets[r:r + rows, None]
        lb = torch.log_softmax(b.double(), dim=-1)
        lm = torch.log_softmax(m.double(), dim=-1)
        terms = lb.exp() * (lb - lm)
        parts["kl"].append(torch.where(torch.isneginf(lb), 0.0, terms).sum(-1))
        parts["nll_base"].append(-lb.gather(-1, t)[:, 0])
        parts["nll_model"].append(-lm.gather(-1, t)[:, 0])
        parts["same_top1"].append(b.argmax(-1) == m.argmax(-1))
    return {k: torch.cat(v) for k, v in parts.items()}


def summarize(kl: np.ndarray, nll_base: np.ndarray, nll_model: np.ndarray, same_top1: np.ndarray) -> dict:
    """Report numbers over all scored tokens (percentiles use numpy's linear interpolation)."""
    ppl_base, ppl = _exp(float(np.mean(nll_base))), _exp(float(np.mean(nll_model)))
    return {
        "tokens": int(kl.size),
        "ppl": ppl,
        "ppl_ratio": ppl / ppl_base,
        "kl_mean": float(np.mean(kl)),
        "kl_median": float(np.median(kl)),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(np.max(kl)),
        "same_top1": float(np.mean(same_top1)),
    }


class _Reference:
    """The baseline's windows and next-token logits (an on-disk float32 memmap), built once."""

    def __init__(self, windows: torch.Tensor, logits: np.ndarray, baseline_stats: dict, info: dict,
                 window: int) -> None:
        self.windows = windows  # (n, W)
        self.window = window  # the window asked of text_windows (W, unless the text is shorter)
        self.logits = logits  # (n, W-1, V) float32 memmap
        self.baseline_stats = baseline_stats
        self.info = info

    @classmethod
    def build(cls, loaded: LoadedModel, text: str, options: EvalOptions, window: int, work: Path,
              tick: Callable[[int, int], None]) -> _Reference:
        """Windows of ``window`` tokens (--window already clamped to the baseline's context) and logits."""
        windows = text_windows(loaded.tokenizer, text, max_tokens=options.max_tokens, window=window)
        n, w = windows.shape
        logits: np.ndarray | None = None
        per_token: list[dict[str, torch.Tensor]] = []
        tick(0, n)
        for start, block in next_token_logits(loaded.model, windows, options.window_batch):
            if logits is None:
                logits = np.lib.format.open_memmap(work / "baseline_logits.npy", mode="w+", dtype=np.float32,
                                                   shape=(n, w - 1, block.shape[-1]))
            logits[start:start + block.shape[0]] = block.numpy()
            for j in range(block.shape[0]):  # the baseline against itself: exactly 0 KL, by the same code
                per_token.append(compare_logits(block[j], block[j], windows[start + j, 1:]))
            tick(start + block.shape[0], n)
        assert logits is not None
        stats = summarize(*_stack(per_token))
        info = {"path": str(options.text), "windows": n, "window": w, "window_requested": options.window,
                "tokens": n * (w - 1),
                "vocab": int(logits.shape[-1]), "baseline_ppl": stats["ppl"]}
        return cls(windows, logits, stats, info, window)

    def compare(self, loaded: LoadedModel, spec: str, options: EvalOptions, context: Context,
                tick: Callable[[int, int], None]) -> dict:
        """Run ``loaded`` on the baseline's windows and compare token by token."""
        width = int(self.windows.shape[1])
        if context.tokens is not None and width > context.tokens:
            raise GGError(f"{spec}: its context is {context.tokens} tokens (config {context.source}), "
                          f"shorter than the baseline's {width}-token windows; "
                          f"pass --window {context.tokens}")
        text = read_text(options.text)
        mine = text_windows(loaded.tokenizer, text, max_tokens=options.max_tokens, window=self.window)
        if not torch.equal(mine, self.windows):
            raise GGError(f"{spec}: its tokenizer splits the text differently from the baseline's; "
                          "next-token KL needs the same tokenizer")
        n = self.windows.shape[0]
        per_token: list[dict[str, torch.Tensor]] = []
        tick(0, n)
        for start, block in next_token_logits(loaded.model, self.windows, options.window_batch):
            if block.shape[-1] != self.logits.shape[-1]:
                raise GGError(f"{spec}: its logits have {block.shape[-1]} vocabulary entries, the baseline's "
                              f"{self.logits.shape[-1]}; next-token KL needs the same vocabulary")
            for j in range(block.shape[0]):
                base = torch.from_numpy(np.asarray(self.logits[start + j]))
                per_token.append(compare_logits(base, block[j], self.windows[start + j, 1:]))
            tick(start + block.shape[0], n)
        return summarize(*_stack(per_token))


def _stack(per_token: list[dict[str, torch.Tensor]]) -> tuple[np.ndarray, ...]:
    return tuple(torch.cat([p[k] for p in per_token]).numpy()
                 for k in ("kl", "nll_base", "nll_model", "same_top1"))


# ---------------------------------------------------------------------------------------------- report


def _add_recovery(rows: list[dict]) -> None:
    """Fill each task metric's recovery vs the first row, the flat ``metrics`` map gates read, and the
    per-model ``recovery`` (worst metric) / ``recovery_mean``."""
    base = rows[0]
    for row in rows:
        flat: dict[str, float | None] = {}
        recoveries: list[float] = []
        for task, entry in row["tasks"].items():
            for name, m in entry["metrics"].items():
                b = base["tasks"].get(task, {}).get("metrics", {}).get(name, {}).get("value")
                m["recovery"] = recovery(m["value"], b, m["higher_is_better"])
                flat[f"{task}/{name}"] = m["value"]
                if m["higher_is_better"] is not None:
                    flat[f"recovery:{task}/{name}"] = m["recovery"]
                if m["recovery"] is not None:
                    recoveries.append(m["recovery"])
        if row["text"] is not None:
            stats = row["text"]
            for k in TEXT_METRICS:
                stats[k] = _num(stats[k])
                flat[k] = stats[k]
            stats["recovery"] = recovery(stats["ppl"], base["text"]["ppl"], higher_is_better=False)
            flat["recovery:ppl"] = stats["recovery"]
            if stats["recovery"] is not None:
                recoveries.append(stats["recovery"])
        row["recovery"] = min(recoveries) if recoveries else None
        row["recovery_mean"] = float(np.mean(recoveries)) if recoveries else None
        flat["recovery"] = row["recovery"]
        flat["recovery_mean"] = row["recovery_mean"]
        row["metrics"] = flat


def _exp(x: float) -> float:
    """exp that saturates to inf instead of raising (a broken model can have a huge mean NLL)."""
    return math.exp(x) if x < 709 else math.inf


def _num(x: Any) -> float | None:
    """JSON-safe number: NaN/inf and lm-eval's "N/A" stderr become None."""
    if isinstance(x, bool) or x is None:
        return None if x is None else float(x)
    if isinstance(x, (int, float, np.floating, np.integer)):
        x = float(x)
        return x if math.isfinite(x) else None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
