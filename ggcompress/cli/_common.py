"""Shared CLI plumbing: the error boundary (error lines, exit codes, signals, --debug), the options every
subcommand accepts (--quiet, --threads, --summary, --debug, checked up front), stdin path lists,
machine/human output. The contract is written down in docs/cli.md."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ggcompress.errors import GGError, Terminated, as_os_error, describe_os_error

if TYPE_CHECKING:
    from ggcompress.cli._tables import FittingConsole
    from ggcompress.reports.gates import MetricNames

    #: People's output (tables, progress, notes) goes to stderr so stdout stays clean for --json / --csv.
    #: Tables printed through it are fitted to its width (docs/cli.md). Made on first use (module
    #: __getattr__): rich costs ~0.2 s to import, which `ggcompress --help` does not pay.
    console: FittingConsole

_console: FittingConsole | None = None


def table_console() -> FittingConsole:
    """The console tables go to: stderr, fitted to the terminal (or $COLUMNS; wide in logs)."""
    global _console
    if _console is None:
        from ggcompress.cli._tables import FittingConsole

        _console = FittingConsole(stderr=True)
    return _console


def __getattr__(name: str) -> Any:
    if name == "console":
        return table_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Old name: tables used to go to stdout in `analyze`; every table now goes to stderr (docs/cli.md).
stdout_console = table_console


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
        if _console is not None and _console.quiet:  # --quiet
            return
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
        super().add_command(with_common_options(cmd), name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        _install_notes()
        with _Boundary():
            return super().main(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _threads_env(args)  # before the subcommand's module imports torch
        return super().parse_args(ctx, args)

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


# ------------------------------------------------------------------------------ the common options
# Injected into every subcommand in one place (Group.add_command / the lazy group's get_command), so a
# command module only declares its own options. Each stores its value in ctx.meta; `_run_checked`
# applies them after parsing and before the command's own code runs.

#: Threads when neither --threads nor OMP_NUM_THREADS says: 1 was fastest for pack, quantize-rf8 and
#: eval on the shared 2-core machine (benchmarks/bench_threads.py, docs/benchmarks.md).
DEFAULT_THREADS = 1
THREADS_ENV = "OMP_NUM_THREADS"

_META = "ggcompress."


def default_threads() -> int:
    """OMP_NUM_THREADS when set to a positive integer, else DEFAULT_THREADS."""
    value = os.environ.get(THREADS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_THREADS


def _store(key: str) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and value is not False:
            ctx.meta[_META + key] = value
        return value

    return callback


def _common_options(cmd: click.Command) -> list[click.Option]:
    names = {p.name for p in cmd.params}
    opts = []
    if "quiet" not in names:
        opts.append(click.Option(
            ["--quiet", "-q"], is_flag=True, expose_value=False, callback=_store("quiet"),
            help="Print no progress, notes or tables on stderr (errors, and --json/--csv data on stdout, "
                 "still appear)."))
    if "threads" not in names:
        opts.append(click.Option(["--threads"], type=click.IntRange(min=1), metavar="N",
                                 expose_value=False, callback=_store("threads"),
                                 help=f"torch intra-op and inter-op threads. [default: $OMP_NUM_THREADS, "
                                      f"else {DEFAULT_THREADS}: fastest on a shared machine, docs/cli.md]"))
    if "summary_only" not in names and "summary" not in names:
        opts.append(click.Option(["--summary"], is_flag=True, expose_value=False, callback=_store("summary"),
                                 help="Only the summary (this command's table is already one; no effect)."))
    if "debug" not in names:
        opts.append(debug_option())
    return opts


def with_common_options(cmd: click.Command) -> click.Command:
    """Give `cmd` --quiet, --threads, --summary and --debug, and the up-front checks (idempotent)."""
    if getattr(cmd, "_ggcompress_common", False):
        return cmd
    cmd.params.extend(_common_options(cmd))
    callback = cmd.callback
    if callback is not None:
        def run(*args: Any, **kwargs: Any) -> Any:
            return _run_checked(callback, args, kwargs)

        run.__doc__, run.__name__ = callback.__doc__, callback.__name__
        cmd.callback = run
    cmd._ggcompress_common = True  # type: ignore[attr-defined]
    return cmd


def _run_checked(callback: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    ctx = click.get_current_context()
    check_usage(ctx)
    apply_threads(ctx.meta.get(_META + "threads") or default_threads())
    _quiet_libraries()
    quiet = bool(ctx.meta.get(_META + "quiet"))
    console = table_console()
    before = console.quiet
    console.quiet = console.quiet or quiet
    try:
        return callback(*args, **kwargs)
    finally:
        console.quiet = before


def summary_requested(ctx: click.Context | None = None) -> bool:
    """--summary given to a command that did not declare its own."""
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(_META + "summary"))


#: Parameters holding regular expressions, by parameter name, checked before any work.
REGEX_PARAMS = ("include", "exclude", "metrics")

#: Command name -> the metric names its --fail-if may use (a reports.gates.MetricNames, made on first use),
#: for the commands that know them before they run: a misspelt name is a usage error before any work.
GATE_METRICS: dict[str, Callable[[], MetricNames]] = {}


def check_usage(ctx: click.Context) -> None:
    """Usage errors (exit 2) before any work: malformed regexes, malformed or unknown --fail-if metrics."""
    from ggcompress.reports.gates import gate_from_bound, parse_gate

    for name in REGEX_PARAMS:
        value = ctx.params.get(name)
        for pattern in value if isinstance(value, tuple | list) else [value]:
            if isinstance(pattern, str):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise click.BadParameter(f"{pattern!r} is not a valid regular expression ({e})",
                                             ctx=ctx, param=_param(ctx, name)) from None
    names = GATE_METRICS.get(ctx.command.name or "")
    known = names() if names is not None else None
    for name, parse in (("fail_if", parse_gate), ("fail_under", lambda s: gate_from_bound(s, "under")),
                        ("fail_over", lambda s: gate_from_bound(s, "over"))):
        for expr in ctx.params.get(name) or ():
            try:
                gate = parse(expr)
            except GGError as e:
                raise click.BadParameter(str(e), ctx=ctx, param=_param(ctx, name)) from None
            if known is not None and gate.metric not in known:
                raise click.BadParameter(
                    f"unknown metric {gate.metric!r} in {expr!r}; known: {known.describe()}",
                    ctx=ctx, param=_param(ctx, name))


def _param(ctx: click.Context, name: str) -> click.Parameter | None:
    return next((p for p in ctx.command.params if p.name == name), None)


def _threads_env(args: list[str]) -> None:
    """--threads N anywhere on the command line sets OMP_NUM_THREADS for the OpenMP pool that torch
    creates on import (later calls to torch.set_num_threads cannot shrink some pools)."""
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else (
            args[i + 1] if arg == "--threads" and i + 1 < len(args) else None)
        if value is not None and value.isdigit() and int(value) > 0 and "torch" not in sys.modules:
            os.environ[THREADS_ENV] = value
            os.environ["MKL_NUM_THREADS"] = value
            return


def apply_threads(n: int) -> None:
    """torch intra-op and inter-op threads; inter-op can be set only once per process (first wins)."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set, or inter-op work already ran (a second command in one process)
        pass


def _quiet_libraries() -> None:
    """transformers' and datasets' tqdm bars ("Loading weights ...") would interleave with ours: off
    through the environment for libraries not imported yet, through their own switch for the others."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for module in ("transformers.utils.logging", "datasets.utils.logging"):
        if module in sys.modules:
            sys.modules[module].disable_progress_bar()
