"""The `ggcompress` command: a lazy click group; each subcommand lives in its own module here.

Subcommand modules only parse arguments, call the library and render its data. The group imports a
subcommand's module only when that subcommand runs or its own --help is asked, and the modules import
the library (and with it torch) inside their command functions, so `ggcompress --help`, `--version` and
`ggcompress SUBCOMMAND --help` stay well under a second (docs/cli.md). Option choices and the --fail-if
metric names come from the torch-free ggcompress.names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import click

from ggcompress import __version__
from ggcompress.cli._common import GATE_METRICS, Group, with_common_options

if TYPE_CHECKING:
    from ggcompress.reports.gates import MetricNames

#: name -> (module under ggcompress.cli, attribute, one-line help shown by `ggcompress --help`).
#: Add new commands here once they work end to end.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "analyze": ("analyze", "analyze", "Fit the GG shape of every tensor and report compressibility."),
    "quantize-rf8": ("quantize", "quantize_rf8", "Quantize linear weights to 8-bit codes + float32 scales."),
    "dequantize": ("dequantize", "dequantize", "Decode a quantized folder back to a plain dense checkpoint."),
    "pack": ("pack", "pack_cmd", "Quantize and entropy-code checkpoints into .ggz containers."),
    "unpack": ("pack", "unpack_cmd", "Restore the HF folder a .ggz container holds."),
    "diff": ("diff", "diff_cmd", "Compare two JSON reports metric by metric; exit 1 on a regression."),
    "eval": ("eval", "eval_cmd", "Evaluate models side by side against a baseline (lm-eval, KL)."),
    "init": ("init", "init_cmd", "Write a freshly GG-initialized HF model folder from a config."),
    "backslash": ("backslash", "backslash", "Rate-constrained fine-tuning (BackSlash) of a causal LM."),
    "deepshape": ("deepshape", "deepshape_cmd", "Reshape weight histograms to a peakier GG, then fine-tune."),
}


def _analyze_metrics() -> MetricNames:
    """The summary values an analyze report carries (--fail-if names), known before analyzing."""
    from ggcompress.names import ANALYZE_METRICS
    from ggcompress.reports.gates import MetricNames

    return MetricNames(frozenset(ANALYZE_METRICS))


def _pack_metrics() -> MetricNames:
    """The summary metrics a pack report carries (--fail-if names), known before packing."""
    from ggcompress.names import PACK_METRICS
    from ggcompress.reports.gates import MetricNames

    return MetricNames(frozenset(PACK_METRICS))


def _quantize_metrics() -> MetricNames:
    """The totals a quantize-rf8 report carries (--fail-if names), known before quantizing."""
    from ggcompress.names import QUANTIZE_METRICS
    from ggcompress.reports.gates import MetricNames

    return MetricNames(frozenset(QUANTIZE_METRICS))


def _eval_metrics() -> MetricNames:
    """eval's fixed metric names; TASK/METRIC names come from lm-eval once the tasks ran (a group names its
    subtasks), so any name of that form passes up front and is checked against the report."""
    from ggcompress.names import EVAL_FIXED_METRICS, EVAL_TASK_METRIC
    from ggcompress.reports.gates import MetricNames

    return MetricNames(frozenset(EVAL_FIXED_METRICS), EVAL_TASK_METRIC,
                       "TASK/METRIC, recovery:TASK/METRIC of the tasks run")


class LazyGroup(Group):
    """Loads a subcommand's module on first use and gives it the common options (Group.add_command)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        cmd = getattr(importlib.import_module(f"ggcompress.cli.{module}"), attr)
        self.add_command(cmd, name)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS: no module (no torch) is imported for `ggcompress --help`."""
        rows = [(name, COMMANDS[name][2]) for name in COMMANDS]
        rows += [(n, c.get_short_help_str()) for n, c in self.commands.items() if n not in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ggcompress")
@click.option("--debug", is_flag=True,
              help="Show full tracebacks instead of one error line (also after the subcommand name, or "
                   "GGCOMPRESS_DEBUG=1).")
def cli(debug: bool) -> None:
    """Make LLM checkpoints smaller and faster with generalized-Gaussian (GG) priors.

    Every subcommand also takes --quiet, --threads N, --summary and --debug. Tables and progress go to
    stderr, data (--json, --csv) to stdout. Exit codes: 0 ok, 1 bad input, a failed threshold or an I/O
    error (one `error:` line), 2 usage error (also a malformed --include regex or --fail-if), 130
    interrupted (Ctrl-C), 143 terminated (SIGTERM); partial outputs are removed on every path.
    Details: docs/cli.md, docs/reliability.md.
    """


GATE_METRICS.update({"analyze": _analyze_metrics, "pack": _pack_metrics, "quantize-rf8": _quantize_metrics,
                     "eval": _eval_metrics})


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ggcompress")


__all__ = ["COMMANDS", "LazyGroup", "cli", "main", "with_common_options"]
