"""The long-poll watcher's read: the state and run of many queries by id, run inside a
store operation on the driver's connection (queries.py `Store.states_of`; driver.py).

Each statement reads its ids by primary key and no more than two narrow columns per
row. The driver renders no IN list at each execution, so a statement names a fixed
number of ids: the ids of a chunk are padded up to the next of a few sizes with one of
them (an id named twice matches its row once), and only those few statements are ever
compiled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import BindParameter, Select, bindparam, select

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


def _statement(size: int) -> Select[tuple[str, str, int]]:
    ids: list[BindParameter[str]] = [bindparam(f"id{n}") for n in range(size)]
    return select(queries.c.id, queries.c.state, queries.c.run).where(queries.c.id.in_(ids))


_BY_SIZE = {size: _statement(size) for size in SIZES}


def statements_for(count: int) -> int:
    """How many statements `progress` runs for `count` ids."""
    return -(-count // CHUNK)


async def progress(conn: DriverConnection, ids: Sequence[str]) -> dict[str, Progress]:
    """The state and run of each query of `ids` that exists, in `statements_for(len(ids))`
    statements."""
    found: dict[str, Progress] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        size = next(size for size in SIZES if size >= len(chunk))
        params = {f"id{n}": chunk[n] if n < len(chunk) else chunk[0] for n in range(size)}
        for query_id, state, run in await conn.tuples(_BY_SIZE[size], params):
            found[query_id] = Progress(QueryState(state), run)
    return found
