"""Athena's CSV form of a query result, as Athena writes `<OutputLocation><id>.csv`.

The header row comes first; every value is double-quoted with `""` for an embedded
quote; NULL is an empty UNQUOTED field, so it differs from the empty string `""`;
every row ends with `\\n` and a newline inside a value stays inside the quotes.
Python's csv module tells NULL from "" only from 3.13 on, and athenaq runs on 3.11 and
3.12 too, hence this module.

Both readers here work on bytes: in UTF-8 no byte of a multi-byte character equals
`"`, `,` or `\\n`, so the delimiters are found without decoding and a character split
across chunks needs no special case. `CsvParser` makes rows of values, for what is
served a page at a time; `RowScanner` only finds where rows end, at a hundred times the
speed, for storing a whole result object as it is.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

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


class RowScanner:
    """Finds where the rows of Athena's CSV end, as its bytes stream by, without making
    values: `feed` answers the offset just past each row's newline.

    A newline ends a row unless it is inside a quoted value, that is unless an odd
    number of quotes precede it (an escaped quote is a pair). numpy counts the quotes
    of each line and the parity carries from line to line and from chunk to chunk:
    about 1 GB/s, where making every value in Python (CsvParser) runs at 12 MB/s.

    It checks what a cut-off or garbled object shows at that speed: valid UTF-8,
    balanced quotes, a newline at the very end. The values of each row are checked
    when they are read (CsvParser)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._inside_quotes = 0  # 1 while the bytes so far end inside a quoted value
        self._consumed = 0
        self._last_byte = 0

    def feed(self, chunk: bytes) -> npt.NDArray[np.uint64]:
        """The offsets (from the start of the input) just past each row end in `chunk`.

        Raises ValueError on invalid UTF-8."""
        if not chunk:
            return np.empty(0, dtype=np.uint64)
        self._decoder.decode(chunk)  # only to check it: UnicodeDecodeError is a ValueError
        data = np.frombuffer(chunk, dtype=np.uint8)
        newlines = np.flatnonzero(data == _NEWLINE)
        # The quotes of each line (up to and with its newline), then of the unfinished rest.
        starts = np.concatenate(([0], newlines + 1))
        if starts[-1] == len(data):
            starts = starts[:-1]
        quotes = np.add.reduceat((data == _QUOTE).view(np.uint8), starts, dtype=np.uint32)
        # Inside quotes after each line: the parity of all quotes so far.
        parity = np.bitwise_xor.accumulate(quotes & 1) ^ self._inside_quotes
        ends: npt.NDArray[np.uint64] = newlines[parity[: len(newlines)] == 0].astype(np.uint64)
        ends += self._consumed + 1
        self._inside_quotes = int(parity[-1])
        self._last_byte = chunk[-1]
        self._consumed += len(chunk)
        return ends

    def close(self) -> None:
        """End of input: raises ValueError if it stopped inside a row or a character."""
        self._decoder.decode(b"", final=True)
        if self._inside_quotes:
            raise ValueError("CSV input ends inside a quoted value (truncated)")
        if self._consumed and self._last_byte != _NEWLINE:
            raise ValueError("CSV input ends inside a row (truncated)")
