"""`ggcompress diff`: compare two JSON reports of the same kind; exit 1 when a metric regressed."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ggcompress.cli._common import emit_json, table_console
from ggcompress.errors import GGError
from ggcompress.reports.diff import check_metric_pattern, compare, load_report, parse_tolerance

_STYLE = {"regression": "red", "improved": "green", "within tolerance": "yellow", "missing": "red",
          "added": "cyan", "changed": "", "same": "dim"}


def _metric_regex(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A bad --metric regex is a usage error (exit 2), caught before any report is read."""
    try:
        check_metric_pattern(value)
    except GGError as exc:
        raise click.BadParameter(str(exc).removeprefix("--metric ")) from None
    return value


@click.command("diff")
@click.argument("old", metavar="OLD.json")
@click.argument("new", metavar="NEW.json")
@click.option("--tolerance", default="1%", show_default=True, metavar="X%|X",
              help="How far a metric may move the wrong way: a percentage of the old value, or an absolute "
                   "amount.")
@click.option("--metric", "metrics", metavar="REGEX", callback=_metric_regex,
              help="Only compare metrics whose name matches.")
@click.option("--all", "show_all", is_flag=True, help="Also list metrics that did not move.")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
def diff_cmd(old: str, new: str, tolerance: str, metrics: str | None, show_all: bool, as_json: bool) -> None:
    """Compare two reports (analyze, quantize-rf8, pack or eval --json output) metric by metric.

    Knows which metrics are better higher (ratio, SQNR, accuracy, recovery) or lower (bits/param, KL,
    perplexity, errors); a metric that moves the wrong way by more than --tolerance, or disappears,
    is a regression and makes the command exit 1. Timings never count.

    Example: `ggcompress diff baseline/pack.json pack.json --tolerance 0.5%`.
    """
    doc = compare(load_report(old), load_report(new), parse_tolerance(tolerance), metrics)
    if as_json:
        emit_json(doc)
    else:
        out = table_console()
        render_diff(doc, out, show_all=show_all)
    if not doc["passed"]:
        raise SystemExit(1)


def render_diff(doc: dict[str, Any], out: Console, *, show_all: bool = False) -> None:
    """What moved, as a table, then one verdict line."""
    shown = [c for c in doc["changes"] if show_all or c["status"] != "same"]
    table = Table(title=escape(f"{doc['kind']} — old vs new (tolerance {doc['tolerance']})"),
                  title_justify="left")
    for col, justify in (("row", "left"), ("metric", "left"), ("old", "right"), ("new", "right"),
                         ("change", "right"), ("better", "left"), ("status", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for c in shown:
        better = {"higher_is_better": "↑", "lower_is_better": "↓"}.get(c["direction"] or "", "")
        style = _STYLE.get(c["status"], "")
        status = f"[{style}]{c['status']}[/{style}]" if style else c["status"]
        table.add_row(escape(str(c["row"])), escape(c["metric"]), _fmt(c["old"]), _fmt(c["new"]),
                      _change(c), better, status)
    if shown:
        out.print(table)
    verdict = (f"{doc['regressions']} regression(s), {doc['improvements']} improvement(s), "
               f"{sum(c['status'] != 'same' for c in doc['changes'])} of {len(doc['changes'])} metrics moved")
    out.print(("[red]FAIL[/red] " if doc["regressions"] else "[green]ok[/green] ") + verdict, soft_wrap=True)


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int) or (abs(v) >= 1e5 and float(v).is_integer()):
        return f"{int(v):,}"
    return f"{v:.6g}"


def _change(c: dict[str, Any]) -> str:
    if c["delta"] is None:
        return ""
    rel = f" ({100 * c['relative']:+.2f}%)" if c["relative"] is not None else ""
    return f"{c['delta']:+.4g}{rel}"
