"""`diff`: compare two reports of the same kind and say which metrics regressed, for CI baselines.

Why a table of directions: whether a change is a regression depends on the metric (a higher ratio is
better, higher bits/param worse, β neither), and the reports only hold numbers. Each known report kind
(analyze/1, quantize/1, pack/1, eval/1) names its rows (checkpoints or models) and which of their
metrics are higher-is-better (+1), lower-is-better (-1) or informational (0). eval reports carry the
direction of every lm-eval metric themselves. Timings are informational: they are not reproducible.

A metric regresses when it moves in its bad direction by more than the tolerance (relative ``X%`` of
the old value, or an absolute amount), or disappears. The library returns the ``ggcompress.diff/1``
document and never prints.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggcompress import __version__
from ggcompress.errors import GGError
from ggcompress.io.limits import loads_json

SCHEMA = "ggcompress.diff/1"

_ANALYZE = {"eg_bits": -1, "entropy_bits": -1, "coded_bytes_eg": -1, "coded_bytes_entropy": -1,
            "ratio_eg": 1, "ratio_entropy": 1}
_QUANTIZE = {"sqnr_db": 1, "mean_rel_err": -1, "max_rel_err": -1, "flushed_frac": -1, "bytes_after": -1,
             "ratio": 1, "quantized_bytes_after": -1, "quantized_ratio": 1, "bits_per_weight": -1}
_PACK = {"container_bytes": -1, "ratio": 1, "ratio_bf16": 1, "bits_per_param": -1, "coded_bits_per_param": -1,
         "payload_bits_per_param": -1, "table_bits_per_param": -1, "entropy_bits_per_param": -1,
         "eg_bits_per_param": -1, "overhead_vs_entropy": -1, "sqnr_db": 1, "mean_rel_err": -1,
         "max_rel_err": -1, "flushed_frac": -1, "kl_mean": -1}
_EVAL_TEXT = {"ppl": -1, "ppl_ratio": -1, "kl_mean": -1, "kl_median": -1, "kl_p99": -1, "kl_max": -1,
              "same_top1": 1}
KINDS = ("ggcompress.analyze/1", "ggcompress.quantize/1", "ggcompress.pack/1", "ggcompress.eval/1")
#: Metrics never counted as regressions (wall-clock time varies run to run).
_TIMING = {"seconds", "mb_per_s"}


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move the wrong way before it is a regression."""

    relative: float = 0.0  # fraction of |old|
    absolute: float = 0.0

    def allows(self, old: float, new: float, direction: int) -> bool:
        worse = (old - new) if direction > 0 else (new - old)
        return worse <= max(self.relative * abs(old), self.absolute)

    def __str__(self) -> str:
        return f"{self.relative * 100:g}%" if self.relative or not self.absolute else f"{self.absolute:g}"


def parse_tolerance(text: str) -> Tolerance:
    """'1%' (relative to the old value) or '0.05' (absolute)."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            value = float(t[:-1]) / 100
            if value >= 0 and math.isfinite(value):
                return Tolerance(relative=value)
        else:
            value = float(t)
            if value >= 0 and math.isfinite(value):
                return Tolerance(absolute=value)
    except ValueError:
        pass
    raise GGError(f"tolerance {text!r}: expected a percentage such as 1% or an absolute amount such as 0.05")


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A report written with --json (one JSON document)."""
    p = Path(path).expanduser()
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise GGError(f"{p}: cannot read ({exc.strerror or exc})") from None
    doc = loads_json(text, str(p), "JSON report")
    if not isinstance(doc, dict) or doc.get("schema") not in KINDS:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise GGError(f"{p}: schema {found!r} is not a report diff compares ({', '.join(KINDS)})")
    try:
        rows(doc)
    except GGError as exc:
        raise GGError(f"{p}: {exc}") from None
    return doc


def check_metric_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """The --metric regex compiled, or GGError naming it."""
    if pattern is None or pattern == "":
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise GGError(f"--metric {pattern!r}: not a valid regular expression ({exc})") from None


def rows(doc: dict[str, Any]) -> list[tuple[str, dict[str, tuple[float | None, int]]]]:
    """(label, {metric: (value, direction)}) for each checkpoint or model of a report."""
    kind = doc.get("schema")
    if kind == "ggcompress.eval/1":
        models = _list(doc, "models", kind)
        return [(_label(m, "label", kind), _eval_metrics(m, kind)) for m in models]
    if kind not in _ROW_KEYS:
        raise GGError(f"schema {kind!r} is not a report diff compares ({', '.join(KINDS)})")
    key, table = _ROW_KEYS[kind]
    return [(_label(c, "source", kind), _numbers(_dict(c, key, kind), table))
            for c in _list(doc, "checkpoints", kind)]


_ROW_KEYS = {"ggcompress.analyze/1": ("summary", _ANALYZE), "ggcompress.quantize/1": ("totals", _QUANTIZE),
             "ggcompress.pack/1": ("summary", _PACK)}


def _list(doc: dict[str, Any], key: str, kind: str) -> list[dict[str, Any]]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise GGError(f"malformed {kind} report: {key!r} must be a list of objects")
    return value


def _dict(doc: dict[str, Any], key: str, kind: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise GGError(f"malformed {kind} report: {key!r} must be an object")
    return value


def _label(row: dict[str, Any], key: str, kind: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise GGError(f"malformed {kind} report: every row needs a string {key!r}")
    return value


def _is_number(v: Any) -> bool:
    """A JSON number diff can subtract (integers too large for a float are not metrics)."""
    if isinstance(v, bool):
        return False
    return isinstance(v, float) or (isinstance(v, int) and abs(v) < 1 << 1000)


def _numbers(values: dict[str, Any], directions: dict[str, int]) -> dict[str, tuple[float | None, int]]:
    return {k: (v, directions.get(k, 0)) for k, v in values.items() if v is None or _is_number(v)}


def _eval_metrics(model: dict[str, Any], kind: str) -> dict[str, tuple[float | None, int]]:
    out: dict[str, tuple[float | None, int]] = {}
    tasks = model.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise GGError(f"malformed {kind} report: 'tasks' must be an object")
    for name, value in _dict(model, "metrics", kind).items():
        if not (value is None or _is_number(value)):
            continue  # only numbers are compared, as for the other kinds
        if name.startswith("recovery"):
            direction = 1
        elif name in _EVAL_TEXT:
            direction = _EVAL_TEXT[name]
        else:
            task, _, metric = name.partition("/")
            hib = _get(tasks, task, "metrics", metric, "higher_is_better")
            direction = 0 if not isinstance(hib, bool) else (1 if hib else -1)
        out[name] = (value, direction)
    return out


def _get(d: Any, *keys: str) -> Any:
    """d[k1][k2]... or None when any level is missing or not an object."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def compare(old: dict[str, Any], new: dict[str, Any], tolerance: Tolerance | None = None,
            metrics: str | None = None) -> dict[str, Any]:
    """Every metric of every row, old vs new, with its status; ``regressions`` counts the bad ones.

    Rows are matched by label (checkpoint source / model label); when the labels differ but the
    counts agree (e.g. the baseline was made in another folder) they are matched in order.
    ``metrics`` restricts the comparison to metric names matching that regex.
    """
    tol = tolerance or Tolerance()
    if old.get("schema") != new.get("schema"):
        raise GGError(f"cannot compare a {old.get('schema')} report with a {new.get('schema')} report")
    pattern = check_metric_pattern(metrics)
    old_rows, new_rows = rows(old), rows(new)
    old_labels, new_labels = [r[0] for r in old_rows], [r[0] for r in new_rows]
    if sorted(old_labels) == sorted(new_labels):
        by_new = dict(new_rows)
        pairs = [(label, m, by_new[label]) for label, m in old_rows]
        matched = "label"
    elif len(old_rows) == len(new_rows):
        pairs = [(f"{o[0]} → {n[0]}" if o[0] != n[0] else o[0], o[1], n[1])
                 for o, n in zip(old_rows, new_rows, strict=True)]
        matched = "position"
    else:
        raise GGError(f"the reports cover different checkpoints/models: {old_labels} vs {new_labels}")
    changes = []
    for label, om, nm in pairs:
        for metric in list(om) + [m for m in nm if m not in om]:
            if pattern is not None and not pattern.search(metric):
                continue
            changes.append(_change(label, metric, om.get(metric), nm.get(metric), tol))
    regressions = sum(c["status"] == "regression" for c in changes)
    return {
        "schema": SCHEMA,
        "ggcompress_version": __version__,
        "kind": old["schema"],
        "tolerance": str(tol),
        "matched_by": matched,
        "changes": changes,
        "regressions": regressions,
        "improvements": sum(c["status"] == "improved" for c in changes),
        "passed": regressions == 0,
    }


_Entry = tuple[float | None, int] | None


def _change(label: str, metric: str, old: _Entry, new: _Entry, tol: Tolerance) -> dict[str, Any]:
    direction = (old or new or (None, 0))[1]
    if metric in _TIMING:
        direction = 0
    ov = old[0] if old else None
    nv = new[0] if new else None
    row = {"row": label, "metric": metric, "old": ov, "new": nv, "delta": None, "relative": None,
           "direction": {1: "higher_is_better", -1: "lower_is_better", 0: None}[direction]}
    if old is None:
        return {**row, "status": "added"}
    if new is None or (nv is None and ov is not None):
        return {**row, "status": "regression" if direction else "missing"}
    if ov is None or nv is None:
        return {**row, "status": "same" if ov == nv else "changed"}
    row["delta"] = nv - ov
    row["relative"] = (nv - ov) / abs(ov) if ov else None
    if nv == ov:
        status = "same"
    elif direction == 0:
        status = "changed"
    elif (nv - ov) * direction > 0:
        status = "improved"
    else:
        status = "within tolerance" if tol.allows(ov, nv, direction) else "regression"
    return {**row, "status": status}
