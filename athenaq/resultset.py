"""A query result's shape as Athena gives it: its columns, and pages of rows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class ResultPage:
    """One GetQueryResults page; `columns` is set on the first page only."""

    columns: list[Column] | None
    rows: list[list[str | None]]
