"""Athena's CSV form: format_row, the incremental CsvParser and the RowScanner."""

from __future__ import annotations

import random
import time

import pytest

from athenaq.csvformat import CsvParser, Row, RowScanner, format_row

TRICKY_ROWS: list[Row] = [
    ["id", "text", "maybe"],
    [None, "", '""'],
    ['say "hi"', "a,b", "line1\nline2"],
    ["\n", ",", '"'],
    [',\n"', '""""', None],
    ["héllo ☃", "😀 at the end 😀", "日本語"],
    ["trailing space ", " leading", "\r\n windows"],
    [None],
    [""],
    [None, None, None],
]


def parse_in_chunks(data: bytes, size: int) -> list[Row]:
    parser = CsvParser()
    rows: list[Row] = []
    for start in range(0, len(data), size):
        rows += parser.feed(data[start : start + size])
    return rows + parser.close()


def scan_in_chunks(data: bytes, size: int) -> list[int]:
    scanner = RowScanner()
    ends: list[int] = []
    for start in range(0, len(data), size):
        ends += scanner.feed(data[start : start + size]).tolist()
    scanner.close()
    return ends


def line_ends(rows: list[Row]) -> list[int]:
    """Where each row's line ends, counted in bytes: what RowScanner must find."""
    ends, total = [], 0
    for row in rows:
        total += len(format_row(row).encode())
        ends.append(total)
    return ends


def random_rows(chance: random.Random) -> list[Row]:
    pieces = ["a", '"', '""', ",", "\n", "\r", "é", "😀", " "]
    return [
        [
            None
            if chance.random() < 0.2
            else "".join(chance.choice(pieces) for _ in range(chance.randint(0, 5)))
            for _ in range(chance.randint(1, 4))
        ]
        for _ in range(chance.randint(0, 4))
    ]


def test_format_row_is_athenas_form() -> None:
    assert format_row([None, "", 'say "hi"', "a,b", "x\ny", "é"]) == (
        ',"","say ""hi""","a,b","x\ny","é"\n'
    )
    assert format_row(["only"]) == '"only"\n'
    assert format_row([None]) == "\n"


@pytest.mark.parametrize("size", range(1, 8))
def test_round_trip_in_chunks_of_every_size(size: int) -> None:
    data = "".join(format_row(row) for row in TRICKY_ROWS).encode()
    assert parse_in_chunks(data, size) == TRICKY_ROWS


def test_round_trip_of_random_rows() -> None:
    chance = random.Random(7)
    for _ in range(300):
        rows = random_rows(chance)
        data = "".join(format_row(row) for row in rows).encode()
        assert parse_in_chunks(data, chance.randint(1, 9)) == rows


def test_null_differs_from_empty_string() -> None:
    assert parse_in_chunks(b',""\n"",\n', 3) == [[None, ""], ["", None]]


def test_utf8_character_split_across_chunks() -> None:
    data = format_row(["😀", "é"]).encode()
    parser = CsvParser()
    rows: list[Row] = []
    for i in range(len(data)):
        rows += parser.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert rows == []  # nothing until the row's newline
    assert rows == [["😀", "é"]]
    assert parser.close() == []


def test_rows_come_out_as_soon_as_complete() -> None:
    parser = CsvParser()
    assert parser.feed(b'"a","b"\n"c') == [["a", "b"]]
    assert parser.feed(b'"\n') == [["c"]]
    assert parser.close() == []


def test_ten_megabyte_cell_in_small_chunks_is_linear() -> None:
    cell = ("x" * 997 + '"\n,') * 10_000  # 10 MB with quotes, newlines and commas
    data = format_row(["before", cell, None]).encode() + format_row(["next"]).encode()
    started = time.monotonic()
    rows = parse_in_chunks(data, 1024)
    elapsed = time.monotonic() - started
    assert rows == [["before", cell, None], ["next"]]
    # A parser that rescanned or copied the cell at every chunk would go through
    # ~50 GB here.
    assert elapsed < 5, f"{elapsed:.1f}s for a 10 MB cell"


@pytest.mark.parametrize(
    "data",
    [
        b'"a","b"',  # no newline after the last field
        b'"a","b',  # inside a quoted field
        b'"a",',  # after a separator
        b'"a""',  # inside a quoted field, after an escaped quote
        b'"a"\n"b',
    ],
)
def test_truncated_input_raises(data: bytes) -> None:
    parser = CsvParser()
    parser.feed(data)
    with pytest.raises(ValueError, match="truncated"):
        parser.close()


@pytest.mark.parametrize(
    "data",
    [
        b'"a"b,"c"\n',  # text after a closing quote
        b'a"b,"c"\n',  # a quote inside an unquoted field
        b'"\xff\xfe"\n',  # not UTF-8
    ],
)
def test_malformed_input_raises(data: bytes) -> None:
    with pytest.raises(ValueError):
        CsvParser().feed(data)


def test_unquoted_text_is_read_as_text() -> None:
    # Athena quotes every value, but other writers leave numbers bare.
    assert parse_in_chunks(b'1,"x",,2.5\n', 2) == [["1", "x", None, "2.5"]]


def test_empty_input() -> None:
    assert CsvParser().close() == []


@pytest.mark.parametrize("size", [*range(1, 9), 1 << 20])
def test_scanner_finds_row_ends_in_chunks_of_every_size(size: int) -> None:
    data = "".join(format_row(row) for row in TRICKY_ROWS).encode()
    assert scan_in_chunks(data, size) == line_ends(TRICKY_ROWS)


def test_scanner_agrees_with_the_parser_on_random_rows() -> None:
    chance = random.Random(11)
    for _ in range(300):
        rows = random_rows(chance)
        data = "".join(format_row(row) for row in rows).encode()
        size = chance.randint(1, 9)
        assert scan_in_chunks(data, size) == line_ends(rows)
        assert parse_in_chunks(data, size) == rows


def test_scanner_on_a_ten_megabyte_cell() -> None:
    cell = ("x" * 997 + '"\n,') * 10_000  # 10 MB with quotes, newlines and commas
    rows: list[Row] = [["before", cell, None], ["next"]]
    data = "".join(format_row(row) for row in rows).encode()
    assert scan_in_chunks(data, 1 << 20) == line_ends(rows)


@pytest.mark.parametrize(
    "data",
    [
        b'"a","b"',  # no newline after the last field
        b'"a","b',  # inside a quoted value
        b'"a""\n',  # inside a quoted value, after an escaped quote
        b'"a"\n"b\n',  # a newline inside a value never closed
        b'"a"\n\xc3',  # half a character
    ],
)
def test_scanner_raises_on_truncated_input(data: bytes) -> None:
    scanner = RowScanner()
    scanner.feed(data)
    with pytest.raises(ValueError):
        scanner.close()


def test_scanner_raises_on_invalid_utf8_and_takes_split_characters() -> None:
    with pytest.raises(ValueError):
        RowScanner().feed(b'"\xff\xfe"\n')
    data = format_row(["😀", "é"]).encode()
    assert scan_in_chunks(data, 1) == [len(data)]


def test_scanner_on_empty_input() -> None:
    assert scan_in_chunks(b"", 5) == []
