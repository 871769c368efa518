"""Athena's ExecutionParameters as the engines take them.

Athena binds the n-th value to the n-th `?` of the SQL, as `EXECUTE ... USING` does, and
reads each value as an SQL literal, which gives it its type: `'it''s'` is a varchar,
`42` an integer, `4.5` a decimal, `1e3` a double, `DATE '2026-01-01'` a date. The values
are never pasted into the SQL: `values` reads each literal into the Python value DuckDB
binds to its placeholder. Athena takes any constant expression; the engines here take
the literals below, and fail a query with anything else, as Athena fails one whose
value is not a constant (an unquoted word reads as a column) or whose `?` count differs
from the values' count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

# Strings, quoted identifiers and comments, where a `?` is no placeholder; and `?`.
_SCAN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|(\?)", re.DOTALL)
_STRING = re.compile(r"'((?:[^']|'')*)'", re.DOTALL)
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_DOUBLE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)[eE][+-]?\d+")
_TYPED = re.compile(r"(DATE|TIMESTAMP|DECIMAL)\s*'((?:[^']|'')*)'", re.IGNORECASE | re.DOTALL)
_BIGINT = 2**63


class ParameterError(Exception):
    """The query cannot run with these values; the message is Athena's kind of reason."""


def placeholders(sql: str) -> int:
    """How many `?` placeholders the SQL has, outside strings, quoted names and comments."""
    return sum(1 for found in _SCAN.finditer(sql) if found[1])


def values(sql: str, parameters: Sequence[str] | None) -> list[Any]:
    """The Python values to bind to the SQL's placeholders, in order; ParameterError when
    their count differs from the placeholders' or one is not a literal."""
    given = list(parameters or ())
    expected = placeholders(sql)
    if expected != len(given):
        raise ParameterError(
            "INVALID_PARAMETER_USAGE: Incorrect number of parameters:"
            f" expected {expected} but found {len(given)}"
        )
    return [literal(text, position) for position, text in enumerate(given, 1)]


def literal(text: str, position: int = 1) -> Any:
    """The value of one execution parameter, read as an SQL literal: a str, int,
    Decimal, float, bool, date, datetime, or None for NULL."""
    written = text.strip()
    upper = written.upper()
    if (found := _STRING.fullmatch(written)) is not None:
        return found[1].replace("''", "'")
    if upper in ("TRUE", "FALSE"):
        return upper == "TRUE"
    if upper == "NULL":
        return None
    if _INTEGER.fullmatch(written):
        number = int(written)
        if not -_BIGINT <= number < _BIGINT:
            raise ParameterError(
                f"INVALID_LITERAL: execution parameter {position}: {written} is out of the"
                " range of bigint"
            )
        return number
    if _DECIMAL.fullmatch(written):
        return Decimal(written)
    if _DOUBLE.fullmatch(written):
        return float(written)
    if (typed := _TYPED.fullmatch(written)) is not None:
        return _typed(typed[1].upper(), typed[2].replace("''", "'"), position)
    raise ParameterError(
        f"SYNTAX_ERROR: execution parameter {position} is not a literal: {written!r}"
        " (a string is written in single quotes: 'text')"
    )


def _typed(kind: str, value: str, position: int) -> Any:
    try:
        if kind == "DATE":
            return date.fromisoformat(value.strip())
        if kind == "TIMESTAMP":
            return datetime.fromisoformat(value.strip())
        number = Decimal(value.strip())
        if not number.is_finite():
            raise ValueError(value)
        return number
    except (ValueError, InvalidOperation):
        raise ParameterError(
            f"INVALID_LITERAL: execution parameter {position}: {value!r} is not a valid {kind}"
        ) from None
