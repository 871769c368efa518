"""What the command line shows: progress and notes on stderr, tables and JSON on stdout.

On a terminal, progress is one line that updates in place (rich's Live, refreshed four
times a second, so the elapsed time runs on between answers) and goes away at the end;
elsewhere (a log, a pipe), a line at each change of state and one at the end, so logs
stay readable.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from athenaq.client import Column, Status


class _Line:
    """A renderable that rich asks for its text at each refresh."""

    def __init__(self, text: Callable[[], str]) -> None:
        self.text = text

    def __rich__(self) -> Text:
        return Text(self.text())


class Display:
    """Where a client command writes: `out` (stdout) and `err` (stderr, progress and
    notes, none of them when `quiet`)."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False)

    def note(self, text: str) -> None:
        """A line for people on stderr, unless quiet."""
        if not self.quiet:
            self.err.print(f"athenaq: {escape(text)}")

    def error(self, text: str) -> None:
        """An error on stderr, quiet or not."""
        self.err.print(f"athenaq: {escape(text)}")

    @contextlib.contextmanager
    def _live(self, text: Callable[[], str]) -> Iterator[None]:
        if self.quiet or not self.err.is_terminal:
            yield
            return
        with Live(_Line(text), console=self.err, refresh_per_second=4, transient=True):
            yield

    @contextlib.contextmanager
    def waiting(
        self, query_id: str, state: str | None = None
    ) -> Iterator[Callable[[Status], None]]:
        """Progress while a query is waited for: its state, the time waited and the data
        scanned; the block gets the function to call with each status. `state`: the one
        already said (a log line shows each new one)."""
        started = time.monotonic()
        seen: list[Status] = []

        def line() -> str:
            now = seen[-1]["state"] if seen else state or "..."
            scanned = _scanned(seen[-1]) if seen else ""
            return f"{query_id} {now}, {time.monotonic() - started:.1f} s{scanned}"

        def update(status: Status) -> None:
            changed = status["state"] != (seen[-1]["state"] if seen else state)
            seen.append(status)
            if changed and not self.err.is_terminal:
                self.note(line())

        with self._live(line):
            yield update

    @contextlib.contextmanager
    def downloading(self, name: str) -> Iterator[Callable[[int], None]]:
        """Progress while a download streams: bytes so far and their rate; a last line
        with both at the end. The block gets the function to call with the bytes."""
        started = time.monotonic()
        received = [0]

        def line() -> str:
            seconds = max(time.monotonic() - started, 1e-6)
            rate = decimal(int(received[0] / seconds))
            return f"{name}: {decimal(received[0])} in {seconds:.1f} s ({rate}/s)"

        def update(count: int) -> None:
            received[0] = count

        with self._live(line):
            yield update
        self.note(line())

    def table(self, columns: Sequence[Column], rows: Sequence[Sequence[str | None]]) -> None:
        """Rows as a table on stdout; SQL NULL shown as a dim NULL, apart from ''."""
        table = Table(*(column["name"] for column in columns), show_lines=False)
        for row in rows:
            table.add_row(*(Text("NULL", style="dim") if cell is None else Text(cell)
                            for cell in row))  # fmt: skip
        self.out.print(table)

    def document(self, document: Any) -> None:
        """A JSON document on stdout."""
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")

    def records(self, records: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
        """Records as a table of `fields` on a terminal, else one JSON object a line
        (every field)."""
        if not self.out.is_terminal:
            for record in records:
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        table = Table(*fields)
        for record in records:
            table.add_row(*(_cell(record.get(name)) for name in fields))
        self.out.print(table)


def _scanned(status: Status) -> str:
    scanned = (status.get("statistics") or {}).get("data_scanned_bytes")
    return "" if scanned is None else f", {decimal(scanned)} scanned"


def _cell(value: Any) -> Text:
    if value is None:
        return Text("")
    text = value if isinstance(value, str) else json.dumps(value)
    # One line a record: a query's SQL is cut at its first line break.
    first, _, rest = text.partition("\n")
    return Text(first + (" ..." if rest else ""))
