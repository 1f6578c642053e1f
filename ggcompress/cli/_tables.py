"""Tables that fit the screen: names shortened from the middle, optional columns dropped as width shrinks.

Why here and not in each command: every table is printed through the CLI's stderr console
(`FittingConsole`), which fits any rich Table to its width before printing, so a command module only
builds its table. Rich would otherwise squeeze every column until numbers read `…`.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: Width of tables when stderr is not a terminal and $COLUMNS is unset (log files, CI): wide enough
#: for every column, so logs keep all the numbers.
LOG_WIDTH = 160

#: Columns dropped first when a table is too wide, in this order (header text). Columns not listed
#: are never dropped; the name column (the first) is shortened instead.
OPTIONAL_COLUMNS = (
    # analyze (per tensor / per role)
    "verdict", "KS GG", "α", "kurt", "best fit", "dtype", "zeros", "GG best", "role",
    # quantize-rf8
    "mean rel err", "max rel err", "before", "after", "flushed", "quantized before → after",
    "checkpoint before → after", "decode",
    # pack
    "tables", "payload", "eg ref", "entropy", "over entropy", "distinct", "coder", "time", "MB/s",
    "stored b/p", "vs bf16",
    # diff
    "better", "row",
    # backslash / deepshape
    "ν", "EG best", "zero@q", "sparsity", "entropy bits/param",
    # shared
    "shape",
)

#: The name column is never shortened below this many characters (short labels such as eval's metric
#: names stay whole; a wider table folds its other cells instead).
MIN_NAME = 20

#: Names are shortened to this many characters before any column is dropped.
NAME_BEFORE_DROPPING = 28


def shorten_middle(text: str, width: int) -> str:
    """Shorten a tensor name from the middle, keeping what tells tensors apart: the layer index and the
    end. `encoder.layer.0.attention.output.LayerNorm.weight` -> `…layer.0.…LayerNorm.weight`; names
    without a numeric part lose their middle characters (`model.emb…tokens.weight`)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    parts = text.split(".")
    index = next((i for i, p in enumerate(parts) if p.isdigit() and i < len(parts) - 1), None)
    if index is not None:
        rest = ".".join(parts[index + 1:])
        whole = ".".join(parts[:index + 1]) + "."
        near = "…" + ".".join(parts[max(index - 1, 0):index + 1]) + "."  # `layer.0.` without its prefix
        for head in (whole, near):
            if width - len(head) >= len(rest):
                return head + rest
        for need in (16, 8):  # the whole prefix if it leaves a readable end, else just `…layer.0.`
            for head in (whole, near):
                room = width - len(head) - 1
                if room >= min(need, len(rest)):
                    return head + "…" + rest[len(rest) - room:]
    tail = (width - 1) * 3 // 5  # the end (layer kind) tells more than the prefix
    head = width - 1 - tail
    return text[:head] + "…" + text[len(text) - tail:]


def natural_width(table: Table, console: Console) -> int:
    """Width the table takes with every cell on one line."""
    options = console.options.update(width=10_000, max_width=10_000)
    return Measurement.get(console, options, table).maximum


def _cell_text(cell: Any) -> str | None:
    if isinstance(cell, str):
        return cell
    if isinstance(cell, Text):
        return cell.plain
    return None


def fit_table(table: Table, width: int, console: Console) -> Table:
    """Shorten the first column's names from the middle and drop OPTIONAL_COLUMNS (in order) until the
    table fits `width`; columns keep their numbers whole (no wrapping) while they can."""
    if natural_width(table, console) <= width or not table.columns:
        return table
    name = table.columns[0]
    originals = [_cell_text(c) for c in name._cells]
    longest = max((len(t) for t in originals if t is not None), default=0)

    def shorten(limit: int) -> None:
        name._cells = [shorten_middle(t, limit) if t is not None else c
                       for t, c in zip(originals, name._cells, strict=True)]

    # 1. names down to a reasonable width
    limit = longest
    while limit > NAME_BEFORE_DROPPING and natural_width(table, console) > width:
        limit -= 2
        shorten(limit)
    # 2. optional columns, least useful first
    for header in OPTIONAL_COLUMNS:
        if natural_width(table, console) <= width:
            break
        for col in list(table.columns[1:]):
            if str(col.header) == header:
                at = table.columns.index(col)
                follower = table.columns[at + 1] if at + 1 < len(table.columns) else None
                table.columns.remove(col)
                if "→" in header and follower is not None and str(follower.header) == "ratio":
                    table.columns.remove(follower)  # `before → after` and its ratio go together
    # 3. names back up into what dropping columns freed, or down to the minimum
    while limit < longest:
        shorten(limit + 1)
        if natural_width(table, console) > width:
            shorten(limit)
            break
        limit += 1
    while limit > MIN_NAME and natural_width(table, console) > width:
        limit -= 1
        shorten(limit)
    # 4. what still does not fit folds (rich wraps cells; numbers never turn into `…`)
    for col in table.columns:
        col.overflow = "fold"
    return table


class FittingConsole(Console):
    """A rich Console that fits every Table it prints to its width (see fit_table).

    Width: the terminal's; when not a terminal, $COLUMNS (read at each print) or LOG_WIDTH.
    """

    def __init__(self, *args: Any, width: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, width=width, **kwargs)
        self._width = width  # rich freezes $COLUMNS at construction; we read it at each print

    @property
    def size(self) -> ConsoleDimensions:  # type: ignore[override]
        if self._width is None and not self.is_terminal:
            cols = os.environ.get("COLUMNS", "").strip()
            return ConsoleDimensions(int(cols) if cols.isdigit() and int(cols) > 0 else LOG_WIDTH, 25)
        return super().size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        width = self.width
        objects = tuple(fit_table(o, width, self) if isinstance(o, Table) else o for o in objects)
        super().print(*objects, **kwargs)
