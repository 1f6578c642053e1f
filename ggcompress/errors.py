"""The one exception type the CLI turns into a single clear error line (exit 1), and its relatives."""

from __future__ import annotations

import errno
import os
import re


class GGError(Exception):
    """A user-facing error: bad input, a broken threshold, a missing dependency.

    The message must name the file/tensor and say what is wrong; the CLI prints it as one line.
    """


class Terminated(BaseException):
    """SIGTERM arrived. Raised from the CLI's signal handler so every writer's abort path runs (exit 143).

    A BaseException, like KeyboardInterrupt, so that `except Exception` in library code cannot swallow it.
    """


#: What an OSError means for the user and what to do about it, by errno.
_OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device — free some space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded — free some space or write somewhere else",
    errno.EROFS: "read-only file system — choose a writable path",
    errno.EACCES: "permission denied — check its permissions or choose another path",
    errno.EPERM: "operation not permitted — check its permissions or choose another path",
    errno.EISDIR: "is a folder where a file was expected — give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder — fix the path",
    errno.ENAMETOOLONG: "name too long for the file system — choose a shorter name",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "folder is not empty",
    errno.EMFILE: "too many open files — raise `ulimit -n`",
    errno.ENFILE: "too many open files on the system",
    errno.EIO: "input/output error from the device — check the disk",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EXDEV: "cannot move across file systems",
    errno.EFBIG: "file too large for the file system",
    errno.ENXIO: "no such device",
}


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def as_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, or the `(os error N)` a Rust/C library (safetensors,
    tokenizers) put in its message when the disk was full or read-only; None for anything else."""
    if isinstance(exc, OSError):
        return exc
    m = _RUST_OS_ERROR.search(str(exc)) if isinstance(exc, Exception) else None
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code))


def describe_os_error(exc: OSError, path: str | os.PathLike[str] | None = None, doing: str = "") -> str:
    """One line for an OSError: the path (given, or the one the OS names), what happened, what to do."""
    where = path if path is not None else exc.filename
    what = _OS_HINTS.get(exc.errno or -1) or (exc.strerror or str(exc) or type(exc).__name__)
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG) and path is not None and exc.filename:
        what += f" ({exc.filename})"
    elif exc.filename2 is not None:
        what += f" ({exc.filename} → {exc.filename2})"
    doing = f"cannot {doing}: " if doing else ""
    return f"{where}: {doing}{what}" if where is not None else f"{doing}{what}"


def check_patterns(include: str | None, exclude: str | None) -> None:
    """Validate --include / --exclude regular expressions up front, with the flag in the message."""
    import re

    for flag, pattern in (("--include", include), ("--exclude", exclude)):
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise GGError(f"{flag} {pattern!r}: not a valid regular expression ({e})") from None


def nothing_selected(source: object, names: list[str], include: str | None, exclude: str | None,
                     what: str = "tensor") -> GGError:
    """The error for an --include/--exclude pair that selects nothing: an empty report would look like
    success. Names a few of the candidates so the pattern can be fixed."""
    given = (("--include", include), ("--exclude", exclude))
    flags = " ".join(f"{flag} {pattern!r}" for flag, pattern in given if pattern is not None)
    sample = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return GGError(f"{source}: {flags} selects none of its {len(names)} eligible {what}s"
                   + (f" (e.g. {sample})" if names else "")
                   + " — patterns match names with re.search; check them against those names")
