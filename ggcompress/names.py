"""Option values and report metric names the library defines, in a module that imports nothing.

Why here and not next to the code that uses them: those modules import torch at the top, and the CLI needs
these names before any work — for `--help` (click choices) and for refusing an unknown `--fail-if` metric
up front. One definition each; the library modules re-export them under their own names (``MODES``,
``SAVE_DTYPES``, ``SHARDS``, ``DTYPES``, ``GATE_METRICS``, ``TEXT_METRICS`` ...).
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------ option values

#: methods.init: the fan n of Var[W] = ξ/n (fan_out = nn.Linear weight.shape[0]).
INIT_MODES = ("fan_in", "fan_out")
#: methods.init: dtypes init_checkpoint saves.
INIT_SAVE_DTYPES = ("float32", "bfloat16", "float16")
#: methods.backslash: the rate term added to the loss, or applied as a shrink after each optimizer step.
BACKSLASH_MODES = ("loss", "decoupled")
#: methods.backslash: one ν per tensor, or one over all selected weights.
BACKSLASH_SHAPES = ("tensor", "global")
#: methods.deepshape: fit and remap per tensor, or over all selected weights at once.
DEEPSHAPE_SCOPES = ("tensor", "global")
#: methods.backslash / methods.deepshape: dtype of the saved weights (auto: the input's).
TRAIN_SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")
#: methods.distributed: how training runs under torchrun.
SHARDS = ("ddp", "fsdp")
#: io.loading: dtype a model is loaded in.
LOAD_DTYPES = ("auto", "float32", "bfloat16", "float16")

# ----------------------------------------------------------------------------- metric names (--fail-if)

#: stats.analyze: every numeric value of a checkpoint's ``summary``, plus the aliases analyze's --fail-if
#: adds (bits_per_param = eg_bits, ratio = ratio_eg).
ANALYZE_METRICS = ("tensors", "params", "fitted_tensors", "fitted_params", "beta", "kurtosis", "entropy_bits",
                   "eg_bits", "zero_fraction", "matrices", "gg_best_share", "bytes", "rated_params",
                   "rated_bytes", "coded_bytes_eg", "coded_bytes_entropy", "ratio_eg", "ratio_entropy",
                   "bits_per_param", "ratio")
#: codec.pack: every numeric summary metric a pack report can carry.
PACK_METRICS = ("tensors", "params", "coded_tensors", "coded_params", "raw_tensors", "raw_bytes", "files",
                "file_bytes", "source_bytes", "container_bytes", "ratio", "ratio_bf16", "bits_per_param",
                "coded_bits_per_param", "payload_bits_per_param", "table_bits_per_param",
                "entropy_bits_per_param", "eg_bits_per_param", "overhead_vs_entropy", "sqnr_db", "seconds",
                "mb_per_s", "mean_rel_err", "max_rel_err", "flushed_frac", "kl_mean")
#: formats.quantize: every numeric value of a checkpoint's ``totals``, plus the alias ``bits_per_param``
#: (= bits_per_weight) that quantize-rf8's --fail-if adds.
QUANTIZE_METRICS = ("tensors", "quantized_tensors", "params", "quantized_params", "bytes_before",
                    "bytes_after", "ratio", "quantized_bytes_before", "quantized_bytes_after",
                    "quantized_ratio", "bits_per_weight", "sqnr_db", "mean_rel_err", "max_rel_err",
                    "flushed_frac", "bits_per_param")
#: integrations.evaluation: metrics ggcompress computes itself over --text; all but ppl are relative to
#: the baseline already.
EVAL_TEXT_METRICS = ("ppl", "ppl_ratio", "kl_mean", "kl_median", "kl_p99", "kl_max", "same_top1")
#: integrations.evaluation: per-model summary metrics: worst and mean recovery over every metric that has a
#: direction.
EVAL_SUMMARY_METRICS = ("recovery", "recovery_mean")
#: integrations.evaluation: every eval metric name known before the run. The rest have the form
#: ``TASK/METRIC`` or ``recovery:TASK/METRIC``: lm-eval names them (a group expands into its subtasks), so
#: they are known only after the tasks ran.
EVAL_FIXED_METRICS = (*EVAL_TEXT_METRICS, "recovery:ppl", *EVAL_SUMMARY_METRICS)
#: integrations.evaluation: the form of the task metric names (a regular expression, whole name).
EVAL_TASK_METRIC = r"(recovery:)?[^/]+/.+"
