"""Webhook deliveries (tables.webhook_deliveries): the statements, run on the driver's
connection inside a store operation.

A delivery is written by `enqueue` in the transaction of the move that finishes its run,
so no finished run of a query with a callback URL is ever left without one. A dispatcher
takes due deliveries with a compare-and-set on each row (`take`): the row's `attempts`,
as read, and that it is still due. Taking one counts the attempt and moves `due_at` to
the end of the taker's lease, so no other process sends it meanwhile, and one that dies
mid-delivery leaves it due again when the lease ends. Each row is taken by its primary
key, in its own statement: no range of rows is ever locked, on MariaDB as on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from athenaq.states import QueryState
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import webhook_deliveries as deliveries


@dataclass(frozen=True, slots=True)
class Callback:
    """A delivery to make: the finished state of a query's run, its body (the status object
    as JSON) and where to POST it. Written with the move to that state."""

    query_id: str
    run: int
    state: QueryState
    url: str
    body: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery as stored."""

    query_id: str
    run: int
    state: QueryState
    url: str
    body: str
    # The move's time, which webhooks.retry_hours counts from.
    created_at: datetime
    # When it is sent next; None once delivered or given up.
    due_at: datetime | None
    # Attempts begun, this one included when it was just taken.
    attempts: int
    # The process of the latest attempt.
    sender: str | None
    delivered_at: datetime | None
    last_error: str | None
    given_up_at: datetime | None


_INSERT = insert(deliveries)
_COLUMNS = [column for column in deliveries.c]
_ONE = select(*_COLUMNS).where(
    deliveries.c.query_id == bindparam("q_id"), deliveries.c.run == bindparam("q_run")
)
# The soonest due first, at most `limit`, from the index on due_at.
_DUE = (
    select(*_COLUMNS)
    .where(deliveries.c.due_at <= bindparam("now"))
    .order_by(deliveries.c.due_at)
    .limit(bindparam("limit"))
)
# Bound values are named apart from the columns: driver.py sets the columns a statement's
# values are named after.
_THIS = (
    deliveries.c.query_id == bindparam("q_id"),
    deliveries.c.run == bindparam("q_run"),
)
_TAKE = (
    update(deliveries)
    .where(
        *_THIS,
        deliveries.c.attempts == bindparam("seen"),
        deliveries.c.due_at <= bindparam("now"),
    )
    .values(
        attempts=deliveries.c.attempts + 1,
        due_at=bindparam("until"),
        sender=bindparam("me"),
    )
)
# Delivered is delivered, whoever holds the row now: at least once is kept either way.
_DELIVERED = (
    update(deliveries)
    .where(*_THIS, deliveries.c.delivered_at.is_(None))
    .values(delivered_at=bindparam("at"), due_at=None)
)
# A failure counts only for the attempt that still holds the row: one whose lease ran out
# (another process took the row over) leaves it to the newer attempt.
_FAILED = (
    update(deliveries)
    .where(*_THIS, deliveries.c.attempts == bindparam("mine"), deliveries.c.delivered_at.is_(None))
    .values(
        last_error=bindparam("error"),
        due_at=bindparam("retry_at"),
        given_up_at=bindparam("gave_up_at"),
    )
)
# An attempt cut by a shutdown: due at once, for the next process to take.
_PUT_BACK = (
    update(deliveries)
    .where(*_THIS, deliveries.c.attempts == bindparam("mine"), deliveries.c.delivered_at.is_(None))
    .values(due_at=bindparam("now"))
)


def _delivery(row: dict[str, Any]) -> Delivery:
    return Delivery(**{**row, "state": QueryState(row["state"])})


def _key(delivery: Delivery) -> dict[str, Any]:
    return {"q_id": delivery.query_id, "q_run": delivery.run}


async def enqueue(conn: DriverConnection, callbacks: Iterable[Callback], now: datetime) -> None:
    """Write a delivery, due now, for each of `callbacks`: called inside the transaction
    that moves their queries to the finished states they report."""
    for callback in callbacks:
        await conn.execute(
            _INSERT,
            {
                "query_id": callback.query_id,
                "run": callback.run,
                "state": callback.state.value,
                "url": callback.url,
                "body": callback.body,
                "created_at": now,
                "due_at": now,
                "attempts": 0,
            },
        )


async def find(conn: DriverConnection, query_id: str, run: int) -> Delivery | None:
    """The delivery of the query's run, or None when it has none (yet)."""
    row = await conn.first(_ONE, {"q_id": query_id, "q_run": run})
    return None if row is None else _delivery(row)


async def take(
    conn: DriverConnection, holder: str, now: datetime, until: datetime, limit: int
) -> list[Delivery]:
    """Take up to `limit` deliveries due at `now`, soonest first, for `holder` until
    `until`: the ones it took, each with the attempt it begins counted. A row another
    process took between the read and the take is left to it."""
    taken = []
    for row in await conn.all(_DUE, {"now": now, "limit": limit}):
        delivery = _delivery(row)
        params = {**_key(delivery), "seen": delivery.attempts, "now": now}
        if await conn.execute(_TAKE, {**params, "until": until, "me": holder}) == 1:
            taken.append(_taken(delivery, holder, until))
    return taken


def _taken(delivery: Delivery, holder: str, until: datetime) -> Delivery:
    return Delivery(
        query_id=delivery.query_id,
        run=delivery.run,
        state=delivery.state,
        url=delivery.url,
        body=delivery.body,
        created_at=delivery.created_at,
        due_at=until,
        attempts=delivery.attempts + 1,
        sender=holder,
        delivered_at=None,
        last_error=delivery.last_error,
        given_up_at=None,
    )


async def delivered(conn: DriverConnection, delivery: Delivery, at: datetime) -> bool:
    """Record the delivery made at `at`; False when it was recorded already."""
    return await conn.execute(_DELIVERED, {**_key(delivery), "at": at}) == 1


async def failed(
    conn: DriverConnection,
    delivery: Delivery,
    error: str,
    retry_at: datetime | None,
    gave_up_at: datetime | None,
) -> bool:
    """Record the failure of the attempt `delivery` (as taken) began: due again at
    `retry_at`, or given up at `gave_up_at`. False when a later attempt holds the row, or
    it was delivered meanwhile: nothing is written then."""
    params = {
        **_key(delivery),
        "mine": delivery.attempts,
        "error": error,
        "retry_at": retry_at,
        "gave_up_at": gave_up_at,
    }
    return await conn.execute(_FAILED, params) == 1


async def put_back(conn: DriverConnection, delivery: Delivery, now: datetime) -> bool:
    """Make the delivery due at `now` again, unless a later attempt holds it or it was
    delivered: the attempt `delivery` began was cut short."""
    return (
        await conn.execute(_PUT_BACK, {**_key(delivery), "mine": delivery.attempts, "now": now})
        == 1
    )
