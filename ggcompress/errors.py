"""The one exception type the CLI turns into a single clear error line (exit 1)."""


class GGError(Exception):
    """A user-facing error: bad input, a broken threshold, a missing dependency.

    The message must name the file/tensor and say what is wrong; the CLI prints it as one line.
    """


def check_patterns(include: str | None, exclude: str | None) -> None:
    """Validate --include / --exclude regular expressions up front, with the flag in the message."""
    import re

    for flag, pattern in (("--include", include), ("--exclude", exclude)):
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise GGError(f"{flag} {pattern!r}: not a valid regular expression ({e})") from None
