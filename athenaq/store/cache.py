"""athenaq's cache (max_age_seconds): an owner's query with the same cache key whose results
are young enough, or that is under way. The statements run inside a store operation, on
the driver (driver.py).

Both reads go down the index `queries_cache` (owner, cache_key, state, results_at): the
SUCCEEDED ones from the youngest results back to the age asked for, stopping at the first
whose results are still on disk; the QUEUED and RUNNING ones, stopping at the first not
being cancelled. Neither reads a row of another owner, key or state, however many runs a
query asked for every minute has piled up. MySQL/MariaDB is told to use the index (`FORCE
INDEX`): the owner's other indexes begin with the owner too, and the statistics of a
young table can make the planner prefer one that reads all of the owner's queries.
SQLite's planner takes it by itself, as the index with the most columns compared for
equality.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, or_, select

from athenaq.states import QueryState
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import queries

Q = QueryState


def _of_key(*conditions: Any) -> Select[Any]:
    return (
        select(queries)
        .with_hint(queries, "FORCE INDEX (queries_cache)", "mysql")
        .where(
            queries.c.owner == bindparam("owner"),
            queries.c.cache_key == bindparam("cache_key"),
            *conditions,
        )
        .limit(1)
    )


# The youngest results first; results retention removed are no answer.
FRESH = _of_key(
    queries.c.state == Q.SUCCEEDED.value,
    queries.c.results_at >= bindparam("fresh_since"),
    queries.c.results_expired_at.is_(None),
).order_by(queries.c.results_at.desc())
# OR rather than IN: driver.py renders no IN list. A query a client is cancelling would
# end CANCELLED: no query to join.
UNDER_WAY = _of_key(
    or_(queries.c.state == Q.QUEUED.value, queries.c.state == Q.RUNNING.value),
    queries.c.cancel_requested_at.is_(None),
)


async def find(
    conn: DriverConnection, owner: str, cache_key: str, fresh_since: datetime
) -> dict[str, Any] | None:
    """The row of `owner`'s SUCCEEDED query with `cache_key` whose results were stored at or
    after `fresh_since` (the youngest) and are still there; else of one of its QUEUED or
    RUNNING queries with the key; else None."""
    params = {"owner": owner, "cache_key": cache_key}
    fresh = await conn.first(FRESH, {**params, "fresh_since": fresh_since})
    if fresh is not None:
        return fresh
    return await conn.first(UNDER_WAY, params)
