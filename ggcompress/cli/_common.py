"""Shared CLI plumbing: error lines, exit codes, stdin path lists, machine/human output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

import click
from rich.console import Console

from ggcompress.errors import GGError

#: People's output goes to stderr so stdout stays clean for --json / --csv pipelines.
console = Console(stderr=True)


def stdout_console() -> Console:
    """Console for tables on stdout; wide when redirected so reports in files are not folded."""
    c = Console()
    return c if c.is_terminal else Console(width=200)


class UserError(click.ClickException):
    """A GGError on its way out: one line on stderr, exit 1 (usage errors keep click's exit 2)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Group(click.Group):
    """Click group that turns library errors into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GGError as e:
            if ctx.params.get("debug"):
                raise
            raise UserError(str(e)) from None
        except BrokenPipeError:  # `ggcompress ... | head` is fine
            sys.stderr.close()
            ctx.exit(0)


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Expand `-` into the paths read from stdin, one per line (for `ls | ggcompress ... -`)."""
    out: list[str] = []
    for item in inputs:
        if item == "-":
            out.extend(line.strip() for line in sys.stdin.read().splitlines() if line.strip())
        else:
            out.append(item)
    if not out:
        raise GGError("no input checkpoints given (pass paths, or `-` to read them from stdin)")
    return out


def emit_json(doc: Any) -> None:
    """Write one JSON document to stdout (NaN/Inf are not JSON: callers map them to null)."""
    click.echo(json.dumps(doc, indent=2, allow_nan=False))
