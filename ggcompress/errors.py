"""The one exception type the CLI turns into a single clear error line (exit 1)."""


class GGError(Exception):
    """A user-facing error: bad input, a broken threshold, a missing dependency.

    The message must name the file/tensor and say what is wrong; the CLI prints it as one line.
    """
