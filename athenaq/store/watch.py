"""The long-poll watcher's reads, run inside a store operation on the driver's
connection (queries.py `Store.states_of`, `Store.records_of`; driver.py): the state and
run of many queries by id, at every look; the whole rows of those that finished.

Each statement reads its ids by primary key. The driver renders no IN list at each
execution, so a statement names a fixed number of ids: the ids of a chunk are padded up
to the next of a few sizes with one of them (an id named twice matches its row once),
and only those few statements are ever compiled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import BindParameter, bindparam, select

from athenaq.states import QueryState
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import queries

# The ids one statement names, its largest size: well under SQLite's limit of bound values.
CHUNK = 500
SIZES = (1, 8, 64, CHUNK)


class Progress(NamedTuple):
    """Where a query is: its state, and its run (one more at each refresh)."""

    state: QueryState
    run: int


def _ids(size: int) -> list[BindParameter[str]]:
    return [bindparam(f"id{n}") for n in range(size)]


_PROGRESS = {
    size: select(queries.c.id, queries.c.state, queries.c.run).where(queries.c.id.in_(_ids(size)))
    for size in SIZES
}
_WHOLE = {size: select(queries).where(queries.c.id.in_(_ids(size))) for size in SIZES}


def statements_for(count: int) -> int:
    """How many statements `progress` or `rows` runs for `count` ids."""
    return -(-count // CHUNK)


def _chunks(ids: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Each chunk of `ids` as the size of its statement and its bound values."""
    chunks = []
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        size = next(size for size in SIZES if size >= len(chunk))
        chunks.append((size, {f"id{n}": chunk[min(n, len(chunk) - 1)] for n in range(size)}))
    return chunks


async def progress(conn: DriverConnection, ids: Sequence[str]) -> dict[str, Progress]:
    """The state and run of each query of `ids` that exists."""
    found: dict[str, Progress] = {}
    for size, params in _chunks(ids):
        for query_id, state, run in await conn.tuples(_PROGRESS[size], params):
            found[query_id] = Progress(QueryState(state), run)
    return found


async def rows(conn: DriverConnection, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The whole row of each query of `ids` that exists."""
    found: list[dict[str, Any]] = []
    for size, params in _chunks(ids):
        found += await conn.all(_WHOLE[size], params)
    return found
