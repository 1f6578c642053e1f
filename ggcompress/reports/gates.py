"""Threshold gates for CI: ``--fail-if 'kl_mean>0.05'`` makes a command exit 1 when a metric breaks it.

Why one small parser shared by every command: the same expression syntax everywhere (eval, analyze,
quantize, pack), checked the same way. A gate names a metric, an operator and a number; it *fails*
when ``value OP threshold`` is true. A metric missing from the values, or NaN, fails too: a gate that
silently passes because of a typo would defeat its purpose.

Forms accepted: ``METRIC>X``, ``METRIC>=X``, ``METRIC<X``, ``METRIC<=X`` (spaces allowed), and the
bound shorthands ``gate_from_bound("recovery=0.99", "under")`` == ``recovery<0.99`` and
``gate_from_bound("kl_mean=0.05", "over")`` == ``kl_mean>0.05``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ggcompress.errors import GGError

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?"
_NAME = r"(?P<metric>[^<>=\s](?:[^<>=]*[^<>=\s])?)"  # anything without <, >, = (task/metric,filter...)
_GATE = re.compile(rf"^\s*{_NAME}\s*(?P<op>>=|<=|>|<)\s*(?P<x>{_NUMBER})\s*$")
_BOUND = re.compile(rf"^\s*{_NAME}\s*=\s*(?P<x>{_NUMBER})\s*$")


@dataclass(frozen=True)
class Gate:
    """``metric op threshold``; the gate fails when that comparison is true."""

    metric: str
    op: str
    threshold: float

    def breaks(self, value: float | None) -> bool:
        """True when ``value`` fails the gate (also when it is missing or NaN)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return True
        return bool(_OPS[self.op](value, self.threshold))

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


@dataclass(frozen=True)
class GateFailure:
    """One broken gate: the value seen (None when the metric was not reported) and why."""

    gate: Gate
    value: float | None
    reason: str


@dataclass(frozen=True)
class MetricNames:
    """The metric names a command can report, known before it runs, so a typo in a gate is refused up front.

    ``fixed`` are names the command always knows; ``open_form`` (a regular expression matching the whole
    name) admits names that exist only once the run named them (eval's ``TASK/METRIC``: lm-eval tasks
    and groups name their metrics), described by ``open_hint`` in the error. Those are checked after the
    run, like any gate on a metric the report lacks.
    """

    fixed: frozenset[str]
    open_form: str | None = None
    open_hint: str = ""

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self.fixed:
            return True
        return self.open_form is not None and re.fullmatch(self.open_form, name) is not None

    def describe(self) -> str:
        """The known names, for the usage error."""
        known = ", ".join(sorted(self.fixed))
        return f"{known}, or {self.open_hint}" if self.open_hint else known


def _threshold(text: str) -> float:
    """A number; a trailing % divides by 100 so ``recovery<99%`` reads naturally."""
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def parse_gate(expr: str) -> Gate:
    """Parse ``'kl_mean>0.05'`` (also ``>=``, ``<``, ``<=``; ``99%`` means 0.99) into a Gate."""
    m = _GATE.match(expr)
    if not m:
        raise GGError(f"bad gate {expr!r}: expected METRIC>X, METRIC>=X, METRIC<X or METRIC<=X "
                      "(e.g. 'kl_mean>0.05')")
    return Gate(m["metric"], m["op"], _threshold(m["x"]))


def gate_from_bound(spec: str, side: str) -> Gate:
    """``NAME=X`` as a lower bound (``side='under'``: fail if NAME<X) or upper bound (``'over'``)."""
    m = _BOUND.match(spec)
    if not m or side not in ("under", "over"):
        raise GGError(f"bad bound {spec!r}: expected NAME=X (e.g. recovery=0.99)")
    return Gate(m["metric"], "<" if side == "under" else ">", _threshold(m["x"]))


def check_gates(values: Mapping[str, float | None], gates: Sequence[Gate]) -> list[GateFailure]:
    """The gates that ``values`` (metric name -> number) break, in the order given."""
    failures = []
    for gate in gates:
        if gate.metric not in values:
            failures.append(GateFailure(gate, None, f"{gate.metric} is not reported"))
            continue
        value = values[gate.metric]
        if gate.breaks(value):
            shown = "n/a" if value is None or math.isnan(value) else f"{value:.6g}"
            failures.append(GateFailure(gate, value, f"{gate.metric}={shown} breaks {gate}"))
    return failures
