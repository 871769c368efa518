"""DuckDB result columns and values in Athena's terms: type names and text forms."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

# DuckDB type names (as str() of a cursor description's type) with an Athena
# counterpart; every other type is reported as varchar, in a readable text form.
_ATHENA_TYPES = {
    "BOOLEAN": "boolean",
    "TINYINT": "tinyint",
    "SMALLINT": "smallint",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "HUGEINT": "decimal",
    "FLOAT": "float",
    "DOUBLE": "double",
    "VARCHAR": "varchar",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
    "BLOB": "varbinary",
}
_PRECISION = {
    "tinyint": (3, 0),
    "smallint": (5, 0),
    "integer": (10, 0),
    "bigint": (19, 0),
    "float": (17, 0),
    "double": (17, 0),
    "varchar": (2147483647, 0),
    "string": (2147483647, 0),
    "timestamp": (3, 0),
}
_CASE_SENSITIVE = frozenset({"varchar", "char", "string"})
_DECIMAL = re.compile(r"DECIMAL\((\d+),\s*(\d+)\)")
_HUGEINT_DIGITS = 38  # the most Athena reports; a HUGEINT may hold one digit more


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # Athena's name for it
    precision: int
    scale: int

    @property
    def case_sensitive(self) -> bool:
        return self.type in _CASE_SENSITIVE


def athena_column(name: str, athena_type: str) -> Column:
    """A column of `athena_type`, with the precision Athena reports for it."""
    precision, scale = _PRECISION.get(athena_type, (0, 0))
    return Column(name, athena_type, precision, scale)


def column(name: str, duckdb_type: object) -> Column:
    """The Athena column for an entry of a DuckDB cursor's `description`."""
    type_name = str(duckdb_type)
    if (decimal := _DECIMAL.fullmatch(type_name)) is not None:
        return Column(name, "decimal", int(decimal[1]), int(decimal[2]))
    if type_name == "HUGEINT":
        return Column(name, "decimal", _HUGEINT_DIGITS, 0)
    return athena_column(name, _ATHENA_TYPES.get(type_name, "varchar"))


def text(value: Any) -> str:
    """`value`, as DuckDB's Python client returns it, in Athena's text form."""
    return _TEXT_OF.get(type(value), _other)(value)


def _float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _timestamp(value: datetime) -> str:
    millis = f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond // 1000:03d}"
    zone = value.tzname()
    return millis if zone is None else f"{millis} {zone}"


def _nested(value: Any) -> str:
    return "null" if value is None else text(value)


def _list(value: list[Any] | tuple[Any, ...]) -> str:
    return "[" + ", ".join(_nested(v) for v in value) + "]"


def _dict(value: dict[Any, Any]) -> str:
    # Athena prints maps and rows (structs) as {key=value, ...}.
    return "{" + ", ".join(f"{_nested(k)}={_nested(v)}" for k, v in value.items()) + "}"


def _other(value: Any) -> str:
    # Subclasses of the types below (and types DuckDB adds later) land here.
    for kind, convert in _TEXT_OF.items():
        if isinstance(value, kind):
            return convert(value)
    return str(value)


_TEXT_OF: dict[type, Callable[[Any], str]] = {
    str: str,
    bool: lambda v: "true" if v else "false",
    int: str,
    float: _float,
    Decimal: lambda v: format(v, "f"),
    datetime: _timestamp,
    date: date.isoformat,
    bytes: lambda v: v.hex(" "),
    list: _list,
    tuple: _list,
    dict: _dict,
}
