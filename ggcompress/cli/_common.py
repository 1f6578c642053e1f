"""Shared CLI plumbing: the error boundary (error lines, exit codes, signals, --debug), stdin path lists,
machine/human output."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ggcompress.errors import GGError, Terminated, as_os_error, describe_os_error

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


#: Exit codes of the signals the CLI stops on: 128 + the signal number, as shells report them.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
DEBUG_ENV = "GGCOMPRESS_DEBUG"


def debug_requested(ctx: click.Context | None = None) -> bool:
    """--debug before or after the subcommand name, or GGCOMPRESS_DEBUG=1."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    return bool(ctx is not None and (ctx.meta.get("ggcompress.debug") or ctx.params.get("debug")))


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta["ggcompress.debug"] = True  # meta is shared by the whole context chain


def debug_option() -> click.Option:
    """The --debug flag every subcommand also accepts, so it works after the subcommand name too."""
    return click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show the full traceback of an error (also: GGCOMPRESS_DEBUG=1).")


def error_line(exc: BaseException) -> str:
    """The one line an expected failure prints (without the `error: ` prefix)."""
    if isinstance(exc, GGError):
        return str(exc)
    os_error = as_os_error(exc)
    if os_error is not None:
        return describe_os_error(os_error)
    if isinstance(exc, ValueError) and "null byte" in str(exc):
        return "a path contains a NUL byte — not a valid file name"
    if isinstance(exc, MemoryError):
        return "out of memory — free memory, or work on a smaller model / fewer tensors at a time"
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return (f"internal error: {type(exc).__name__}{': ' + text if text else ''}{at} — this is a bug in "
            f"ggcompress; rerun with --debug for the traceback and report it")


class _Boundary:
    """SIGTERM raises Terminated while a command runs (so writers clean up); restored afterwards."""

    def __enter__(self) -> _Boundary:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _raise_terminated(signum: int, frame: Any) -> None:
    # One is enough: a second SIGTERM must not cut the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


class _NoteHandler(logging.Handler):
    """The library's notes (stale temp files removed, ...) as `note: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {record.getMessage()}", err=True)


def _install_notes() -> None:
    log = logging.getLogger("ggcompress")
    if not any(isinstance(h, _NoteHandler) for h in log.handlers):
        log.addHandler(_NoteHandler())
        log.setLevel(logging.INFO)
        log.propagate = False


class Group(click.Group):
    """The CLI's one error boundary.

    Every expected failure becomes one line `error: ...`, exit 1; usage errors keep click's exit 2;
    Ctrl-C exits 130 and SIGTERM 143, after the writers removed their partial outputs (both arrive as
    exceptions that unwind through every writer's abort path). Unexpected exceptions are bugs: one line
    and a hint to rerun with --debug, which (or GGCOMPRESS_DEBUG=1) shows the traceback.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any(p.name == "debug" for p in cmd.params):
            cmd.params.append(debug_option())
        super().add_command(cmd, name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        _install_notes()
        with _Boundary():
            return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # `ggcompress ... | head` is fine
            _silence_stdout()
            sys.stderr.close()
            ctx.exit(0)
        except KeyboardInterrupt:
            _stop(ctx, EXIT_SIGINT, "interrupted (Ctrl-C): partial outputs were removed, existing ones kept")
        except Terminated:
            _stop(ctx, EXIT_SIGTERM, "terminated (SIGTERM): partial outputs were removed, existing ones kept")
        except Exception as e:
            if debug_requested(ctx):
                traceback.print_exc()
            raise UserError(error_line(e)) from None


def _stop(ctx: click.Context, code: int, why: str) -> None:
    if debug_requested(ctx):
        traceback.print_exc()
    try:
        click.echo(f"\nerror: {why}", err=True)
    except OSError:
        pass
    ctx.exit(code)


def _silence_stdout() -> None:
    """stdout's reader is gone: point it at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Expand `-` into the paths read from stdin, one per line (for `ls | ggcompress ... -`)."""
    out: list[str] = []
    for item in inputs:
        if item == "-":
            out.extend(line.strip() for line in sys.stdin.read().splitlines() if line.strip())
        else:
            out.append(item)
    for path in out:
        if "\x00" in path:
            raise GGError(f"{path!r}: the path contains a NUL byte — not a valid file name")
    if not out:
        raise GGError("no input checkpoints given (pass paths, or `-` to read them from stdin)")
    return out


def emit_json(doc: Any) -> None:
    """Write one JSON document to stdout (NaN/Inf are not JSON: callers map them to null)."""
    click.echo(json.dumps(doc, indent=2, allow_nan=False))
