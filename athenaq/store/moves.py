"""Several queries' moves written in one transaction (`Store.transitions`): the
statements, run on the driver's connection (driver.py).

One UPDATE sets every query of the batch, each row under its own compare-and-set guard
(its id and version as read: every write of the state moves the version), so the count
of rows it matched says whether every guard held. The values differ from row to row:
each column is a CASE on the id. A batch writes the columns of an execution's outcome
(OUTCOME_COLUMNS) on every row, a move that does not set one keeping the value its
record has: the row has it still when its guard holds, as every write of these columns
moves the version. The UPDATE and the read of the versions are made for batches of 2,
4, 8, 16 and 32 moves, each at its first use, so the driver compiles each once; a batch
of another size repeats its last move up to the next of them. The history's INSERT is
made for each size (a few rows of plain values, quick to compile).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Update, and_, bindparam, case, insert, or_, select
from sqlalchemy.sql.expression import Insert, Select

from athenaq.states import EXECUTION_FIELDS, QueryRecord, QueryState
from athenaq.store.deliveries import Callback
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import queries, query_transitions

# Moves per batch: a row binds a few values per column, well under the bound values a
# statement may have (SQLite's 32,766).
MAX_MOVES = 32
# What a batch may set besides the state: how an execution ended (Athena's times and
# statistics, the stored result's) and why. Not its id, its admission, its cancel or
# retention's mark: those are written alone.
OUTCOME_COLUMNS = (
    "state_reason",
    *(
        name
        for name in EXECUTION_FIELDS
        if name
        not in ("admitted_at", "athena_execution_id", "cancel_requested_at", "results_expired_at")
    ),
)
_HISTORY_COLUMNS = ("query_id", "from_state", "to_state", "reason", "at", "caused_by")


@dataclass(frozen=True, slots=True)
class Move:
    """One query's move: the query as read (its guard), the state it moves to, why, the
    columns it sets (in a batch, of OUTCOME_COLUMNS), and the webhook delivery it makes."""

    current: QueryRecord
    to_state: QueryState
    reason: str | None
    changes: Mapping[str, Any]
    callback: Callback | None = None


def check(moves: Sequence[Move]) -> None:
    """ValueError unless `moves` make one batch: 1 to MAX_MOVES queries, each once,
    setting only OUTCOME_COLUMNS."""
    if not 1 <= len(moves) <= MAX_MOVES:
        raise ValueError(f"a batch of {len(moves)} moves; 1 to {MAX_MOVES} are written at once")
    if len({move.current.id for move in moves}) != len(moves):
        raise ValueError("a query moved twice in one batch")
    other = {name for move in moves for name in move.changes} - set(OUTCOME_COLUMNS)
    if other:
        raise ValueError(f"not a column a batch writes: {sorted(other)}")


async def update(conn: DriverConnection, moves: Sequence[Move], now: datetime) -> bool:
    """Set every move's row, each under its guard; whether every guard held (if not, the
    rows whose guard held are set all the same: the caller rolls back)."""
    params: dict[str, Any] = {"now": now}
    for k, move in enumerate(_padded(moves)):
        current = move.current
        params[f"i{k}"] = current.id
        params[f"n{k}"] = current.version
        params[f"v{k}_state"] = move.to_state.value
        for name in OUTCOME_COLUMNS:
            params[f"v{k}_{name}"] = move.changes.get(name, getattr(current, name))
    # A row is set once, however many times the padding names it.
    return await conn.execute(_update(_size(len(moves))), params) == len(moves)


async def standing(conn: DriverConnection, moves: Sequence[Move]) -> list[bool]:
    """Whether each move's row is still as its record was read (its state and version)."""
    padded = _padded(moves)
    ids = {f"i{k}": move.current.id for k, move in enumerate(padded)}
    rows = await conn.tuples(_versions(len(padded)), ids)
    found = {query_id: (state, version) for query_id, state, version in rows}
    return [
        found.get(move.current.id) == (move.current.state.value, move.current.version)
        for move in moves
    ]


async def add_history(
    conn: DriverConnection, moves: Sequence[Move], by: str, now: datetime
) -> None:
    """Append each move to its query's history, in one statement."""
    params: dict[str, Any] = {}
    for k, move in enumerate(moves):
        row = (move.current.id, move.current.state.value, move.to_state.value, move.reason)
        params.update(zip([f"h{k}_{c}" for c in _HISTORY_COLUMNS], (*row, now, by), strict=True))
    await conn.execute(_history(len(moves)), params)


def _size(count: int) -> int:
    """The size of the statement that writes `count` moves: a power of two, so that a few
    statements serve every batch (one of 32 rows takes SQLAlchemy about 15 ms to build
    and compile)."""
    return 1 << (count - 1).bit_length()


def _padded(moves: Sequence[Move]) -> list[Move]:
    """`moves`, the last repeated up to the size of its statement: a repeated move names
    the same row with the same guard and values."""
    return [*moves, *[moves[-1]] * (_size(len(moves)) - len(moves))]


@functools.cache
def _update(size: int) -> Update:
    ids = [bindparam(f"i{k}", type_=queries.c.id.type) for k in range(size)]

    def each_row(name: str) -> Any:
        column = queries.c[name]
        value = [bindparam(f"v{k}_{name}", type_=column.type) for k in range(size)]
        return case(*((queries.c.id == ids[k], value[k]) for k in range(size)), else_=column)

    # The version alone: every write of the state moves it, and a guard on the state too
    # would offer the optimizer a range of the state's index, locking other rows.
    guards = [
        and_(
            queries.c.id == ids[k],
            queries.c.version == bindparam(f"n{k}", type_=queries.c.version.type),
        )
        for k in range(size)
    ]
    return (
        queries.update()
        # The ids alone first: the rows are found by primary key, whatever the guards.
        .where(queries.c.id.in_(ids), or_(*guards))
        .values(
            version=queries.c.version + 1,
            updated_at=bindparam("now", type_=queries.c.updated_at.type),
            state=each_row("state"),
            **{name: each_row(name) for name in OUTCOME_COLUMNS},
        )
    )


@functools.cache
def _versions(size: int) -> Select[Any]:
    ids = [bindparam(f"i{k}", type_=queries.c.id.type) for k in range(size)]
    return select(queries.c.id, queries.c.state, queries.c.version).where(queries.c.id.in_(ids))


@functools.cache
def _history(size: int) -> Insert:
    types: Mapping[str, Any] = {name: query_transitions.c[name].type for name in _HISTORY_COLUMNS}
    rows = [
        {name: bindparam(f"h{k}_{name}", type_=types[name]) for name in _HISTORY_COLUMNS}
        for k in range(size)
    ]
    return insert(query_transitions).values(rows)
