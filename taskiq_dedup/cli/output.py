"""Printing a command's result: a ``rich`` table on a terminal, plain text otherwise, or JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TextIO


@dataclass
class Table:
    """Rows of text under named columns."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Result:
    """What a command found: ``data`` for ``--json``, tables and lines for people."""

    data: Any
    tables: list[Table] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    status: int = 0


def _plain(table: Table, out: TextIO) -> None:
    widths = [
        max([len(column), *(len(row[i]) for row in table.rows)])
        for i, column in enumerate(table.columns)
    ]
    out.write(f"{table.title}\n")
    for row in [table.columns, *table.rows]:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        out.write("\n")


def _rich(tables: list[Table], out: TextIO) -> None:
    # Imported here: every ``taskiq`` command loads this plugin to list it.
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table as RichTable  # noqa: PLC0415

    console = Console(file=out)
    for table in tables:
        shown = RichTable(title=table.title, title_justify="left")
        for column in table.columns:
            shown.add_column(column, overflow="fold")  # ids are copied from here: never cut
        for row in table.rows:
            shown.add_row(*row)
        console.print(shown)


def emit(result: Result, *, as_json: bool, out: TextIO | None = None) -> None:
    """Write ``result`` to ``out`` (stdout): JSON, a rich table on a terminal, else plain text."""
    stream = out or sys.stdout
    if as_json:
        json.dump(result.data, stream, indent=2, sort_keys=True, default=str)
        stream.write("\n")
        return
    if stream.isatty():
        _rich(result.tables, stream)
    else:
        for table in result.tables:
            _plain(table, stream)
    for line in result.lines:
        stream.write(line + "\n")
