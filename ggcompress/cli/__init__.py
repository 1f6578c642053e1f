"""The `ggcompress` command: a click group; each subcommand lives in its own module here.

Subcommand modules only parse arguments, call the library and render its data.
"""

from __future__ import annotations

import click

from ggcompress import __version__
from ggcompress.cli._common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ggcompress")
@click.option("--debug", is_flag=True,
              help="Show full tracebacks instead of one error line (also after the subcommand name, or "
                   "GGCOMPRESS_DEBUG=1).")
def cli(debug: bool) -> None:
    """Make LLM checkpoints smaller and faster with generalized-Gaussian (GG) priors.

    Exit codes: 0 ok, 1 bad input, a failed threshold or an I/O error (one `error:` line), 2 usage error,
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM); partial outputs are removed on every path.
    Details: docs/reliability.md.
    """


def _register() -> None:
    # Each command owns its module; add new ones here once they work end to end.
    from ggcompress.cli import analyze, backslash, deepshape, dequantize, diff, init, pack, quantize
    from ggcompress.cli import eval as eval_cmd

    cli.add_command(analyze.analyze)
    cli.add_command(quantize.quantize_rf8)
    cli.add_command(dequantize.dequantize)
    cli.add_command(pack.pack_cmd)
    cli.add_command(pack.unpack_cmd)
    cli.add_command(diff.diff_cmd)
    cli.add_command(eval_cmd.eval_cmd)
    cli.add_command(init.init_cmd)
    cli.add_command(backslash.backslash)
    cli.add_command(deepshape.deepshape_cmd)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ggcompress")
