"""`python -m ggcompress` and the `ggcompress` console script."""

from __future__ import annotations

import signal
import sys


def run() -> None:
    """Start the CLI; Ctrl-C or SIGTERM while it is still importing (torch takes seconds) exits 130/143
    with one line instead of an import traceback."""

    def _term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, _term)
    try:
        from ggcompress.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("\nerror: interrupted (Ctrl-C) while starting\n")
        raise SystemExit(128 + signal.SIGINT) from None
    signal.signal(signal.SIGTERM, previous)
    main()


if __name__ == "__main__":
    run()
