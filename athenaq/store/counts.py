"""What GET /metrics reads of the store: how many queries are in each state, and how many
of the QUEUED ones wait for an Athena slot (not admitted, as store/admission.py counts
them). One GROUP BY, read from the index queries_admission (state, admitted_at, ...)
alone: a walk of the index, as long as the queries table, which is why /metrics reads
it at most once every few seconds (handlers/exposition.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select

from athenaq.states import QueryState
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import queries

_BY_STATE = select(
    queries.c.state,
    func.count().label("queries"),
    func.count(case((queries.c.admitted_at.is_(None), 1))).label("unadmitted"),
).group_by(queries.c.state)


@dataclass(frozen=True)
class StateCounts:
    """Queries by state (every state, 0 when none), and the QUEUED ones waiting for an
    Athena slot."""

    by_state: dict[QueryState, int]
    waiting: int


async def count_by_state(conn: DriverConnection) -> StateCounts:
    by_state = dict.fromkeys(QueryState, 0)
    waiting = 0
    for row in await conn.all(_BY_STATE, {}):
        state = QueryState(row["state"])
        by_state[state] = int(row["queries"])
        if state == QueryState.QUEUED:
            waiting = int(row["unadmitted"])
    return StateCounts(by_state, waiting)
