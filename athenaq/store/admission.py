"""Admission control's statements: which waiting queries take Athena slots, run inside
a store operation on the driver's connection (queries.py `Store.admit`,
`Store.places_ahead`; driver.py), as an admission follows most submits.

A query waits QUEUED with no `admitted_at` until an admission gives it a slot; only then
is it sent to Athena. The admitted and unfinished queries hold the slots, whichever
process admitted or polls them. One admission runs at a time across processes: it locks
the single row of `admission` first, then counts, so what it counts stays true until it
commits (on MariaDB the count is the transaction's first plain read, made after the lock
is granted, so it sees every admission committed before).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update

from athenaq.admission import Backlog, fair_order, places_ahead
from athenaq.states import QueryRecord, QueryState
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import admission, admission_turns, queries

_WAITING = and_(queries.c.state == QueryState.QUEUED.value, queries.c.admitted_at.is_(None))
# OR rather than IN: an IN list is rendered at each execution, which driver.py does not do.
_UNFINISHED = or_(
    queries.c.state == QueryState.QUEUED.value, queries.c.state == QueryState.RUNNING.value
)

_LOCK = select(admission.c.turns).where(admission.c.id == 1).with_for_update()
# The row exists from revision 0004 on; a database made from the tables at once (a fresh
# one) gets it from the first admission. Two processes making it together: one wins.
_MAKE_LOCK_ROW = {
    "sqlite": insert(admission).prefix_with("OR IGNORE"),
    "mysql": insert(admission).prefix_with("IGNORE"),
}
_COUNT_TURNS = update(admission).where(admission.c.id == 1).values(turns=bindparam("turns"))
_TURNS = select(admission_turns.c.owner, admission_turns.c.turn)
_SET_TURN = (
    update(admission_turns)
    .where(admission_turns.c.owner == bindparam("match_owner"))
    .values(turn=bindparam("turn"))
)
_INSERT_TURN = insert(admission_turns)
# Each owner's unfinished queries: admitted ones (holding slots), waiting ones, and when
# the oldest waiting one was submitted; one read of the admission index.
_BACKLOGS = (
    select(
        queries.c.owner,
        func.count(queries.c.admitted_at).label("admitted"),
        func.count(case((_WAITING, 1))).label("waiting"),
        func.min(case((_WAITING, queries.c.submitted_at))).label("oldest"),
    )
    .where(_UNFINISHED)
    .group_by(queries.c.owner)
)
_OLDEST_WAITING_OF = (
    select(queries.c.id, queries.c.lease_holder)
    .where(_WAITING, queries.c.owner == bindparam("owner"))
    .order_by(queries.c.submitted_at, queries.c.id)
    .limit(bindparam("count"))
)
# By primary key, as a claim: never a lock on a range that requests' compare-and-sets
# wait on. A query cancelled since the read is left out. No version change: an
# admission makes no compare-and-set of a request or of the poller lose.
_ADMIT = (
    update(queries)
    .where(queries.c.id == bindparam("match_id"), _WAITING)
    .values(admitted_at=bindparam("now"))
)
_WAITING_BEFORE = select(func.count()).where(
    _WAITING,
    queries.c.owner == bindparam("owner"),
    or_(
        queries.c.submitted_at < bindparam("submitted_at"),
        and_(
            queries.c.submitted_at == bindparam("submitted_at"),
            queries.c.id < bindparam("id"),
        ),
    ),
)


async def _lock(conn: DriverConnection) -> int:
    """Take the admission lock; the turns given out so far."""
    row = await conn.first(_LOCK, {})
    if row is None:
        await conn.execute(_MAKE_LOCK_ROW[conn.dialect.name], {"id": 1, "turns": 0})
        row = await conn.first(_LOCK, {})
        assert row is not None
    return int(row["turns"])


async def _backlogs(conn: DriverConnection) -> dict[str, Backlog]:
    rows = await conn.all(_BACKLOGS, {})
    # The turns order owners level with each other: read only when two of them wait.
    turns: dict[str, int] = {}
    if sum(row["waiting"] > 0 for row in rows) > 1:
        turns = {row["owner"]: row["turn"] for row in await conn.all(_TURNS, {})}
    return {
        row["owner"]: Backlog(
            int(row["admitted"]), int(row["waiting"]), row["oldest"], turns.get(row["owner"], 0)
        )
        for row in rows
    }


async def admit(conn: DriverConnection, cap: int, now: datetime) -> list[tuple[str, str | None]]:
    """Give the free slots of `cap` to waiting queries in the fair order; in a write
    transaction. Returns each admitted query's id and lease holder, in that order."""
    turns = await _lock(conn)
    backlogs = await _backlogs(conn)
    free = cap - sum(b.admitted for b in backlogs.values())
    order = fair_order(backlogs, free) if free > 0 else []
    if not order:
        return []
    picked: dict[str, deque[tuple[str, str | None]]] = {}
    for owner in dict.fromkeys(order):
        rows = await conn.all(_OLDEST_WAITING_OF, {"owner": owner, "count": order.count(owner)})
        picked[owner] = deque((row["id"], row["lease_holder"]) for row in rows)
    admitted = []
    for owner in order:
        if picked[owner]:
            query_id, holder = picked[owner].popleft()
            # A query cancelled since the read is not admitted.
            if await conn.execute(_ADMIT, {"match_id": query_id, "now": now}):
                admitted.append((query_id, holder))
    # Each owner's latest turn: the number of its last slot in this order.
    latest = {owner: turns + n for n, owner in enumerate(order, start=1)}
    for owner, turn in latest.items():
        if not await conn.execute(_SET_TURN, {"match_owner": owner, "turn": turn}):
            await conn.execute(_INSERT_TURN, {"owner": owner, "turn": turn})
    await conn.execute(_COUNT_TURNS, {"turns": turns + len(order)})
    return admitted


async def ahead(conn: DriverConnection, record: QueryRecord) -> int:
    """How many waiting queries come before `record` (a waiting one) in the fair order."""
    return (await ahead_each(conn, [record]))[record.id]


async def ahead_each(conn: DriverConnection, records: list[QueryRecord]) -> dict[str, int]:
    """`ahead` of each of `records` (waiting ones), by id, from one read of the backlogs."""
    backlogs = await _backlogs(conn)
    places = {}
    for record in records:
        params = {"owner": record.owner, "submitted_at": record.submitted_at, "id": record.id}
        rank = int(await conn.scalar(_WAITING_BEFORE, params))
        backlog = backlogs.get(record.owner)
        # Admitted since it was read: nobody is ahead of it.
        admitted = backlog is None or backlog.waiting == 0
        places[record.id] = rank if admitted else places_ahead(backlogs, record.owner, rank)
    return places
