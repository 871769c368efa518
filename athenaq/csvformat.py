"""Athena's CSV form of a query result, as Athena writes `<OutputLocation><id>.csv`.

The header row comes first; every value is double-quoted with `""` for an embedded
quote; NULL is an empty UNQUOTED field, so it differs from the empty string `""`;
every row ends with `\\n` and a newline inside a value stays inside the quotes.
Python's csv module cannot tell NULL from "", hence this module.

The parser works on bytes: in UTF-8 no byte of a multi-byte character equals `"`,
`,` or `\\n`, so the delimiters are found without decoding, a character split across
chunks needs no special case, and each field is decoded once, whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Row = list[str | None]

_QUOTE = ord('"')
_COMMA = ord(",")
_NEWLINE = ord("\n")
_SEPARATORS = (_COMMA, _NEWLINE)
_DELIMITER = re.compile(rb"[,\n]")


def format_row(values: Sequence[str | None]) -> str:
    """One CSV line in Athena's form, `\\n` included."""
    return ",".join("" if v is None else '"' + v.replace('"', '""') + '"' for v in values) + "\n"


class CsvParser:
    """An incremental parser of Athena's CSV form: `feed` bytes as they arrive.

    Work is linear in the input however it is chunked: the bytes of an unfinished
    field are kept, and the search for its end resumes where the last one stopped.
    """

    def __init__(self) -> None:
        # Unparsed input, starting at the first byte of the current (unfinished) field.
        self._buffer = bytearray()
        # Where the search for the end of the current field resumes, in `_buffer`.
        self._resume = 0
        self._row: Row = []

    def feed(self, chunk: bytes) -> list[Row]:
        """Add input; returns the rows completed by it (possibly none).

        Raises ValueError on malformed input (text after a closing quote, a quote in
        an unquoted field, invalid UTF-8)."""
        self._buffer += chunk
        return self._parse()

    def close(self) -> list[Row]:
        """End of input: returns the rows still pending (none, as every row ends with
        a newline); raises ValueError if the input stopped inside a row."""
        if self._buffer or self._row:
            raise ValueError("CSV input ends inside a row (truncated)")
        return []

    def _parse(self) -> list[Row]:
        buffer, row = self._buffer, self._row
        rows: list[Row] = []
        end, pos, resume = len(buffer), 0, self._resume
        while pos < end:
            first = buffer[pos]
            if first in _SEPARATORS:
                value: str | None = None  # an unquoted empty field: NULL
                stop = pos
            elif first == _QUOTE:
                closing = _closing_quote(buffer, max(pos + 1, resume))
                if closing < 0:
                    resume = -closing
                    break
                value = buffer[pos + 1 : closing].decode()
                if '"' in value:
                    value = value.replace('""', '"')
                stop = closing + 1
                if buffer[stop] not in _SEPARATORS:
                    raise ValueError(
                        f"CSV: {bytes(buffer[stop : stop + 1])!r} after a closing quote"
                    )
            else:
                found = _DELIMITER.search(buffer, max(pos, resume))
                if found is None:
                    resume = end
                    break
                stop = found.start()
                if buffer.find(b'"', pos, stop) >= 0:
                    raise ValueError("CSV: a quote inside an unquoted field")
                value = buffer[pos:stop].decode()
            row.append(value)
            if buffer[stop] == _NEWLINE:
                rows.append(row)
                row = []
            pos, resume = stop + 1, 0
        del buffer[:pos]
        self._resume = max(resume - pos, 0)
        self._row = row
        return rows


def _closing_quote(buffer: bytearray, start: int) -> int:
    """The index of the quote closing a quoted field, searching from `start` (inside
    the field). Until the byte after it has arrived a quote may be the first half of
    `""`, so then it answers minus the index to search again from (always > 0)."""
    end = len(buffer)
    while True:
        i = buffer.find(b'"', start)
        if i < 0:
            return -end
        if i + 1 == end:
            return -i
        if buffer[i + 1] != _QUOTE:
            return i
        start = i + 2
