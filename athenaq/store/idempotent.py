"""Idempotency keys: each owner's Idempotency-Key and the answer its first request got. The
statements run inside a store operation, on the driver (driver.py).

A key is claimed by inserting its row, on its primary key (owner, idempotency_key): of
requests that insert one key at once, in any processes, one inserts it and the others
find it there. With a new query the row is inserted in the query's own transaction,
first, so the query and its key are stored together or not at all; on MySQL/MariaDB a
second insert of the key waits for that transaction to end (and finds the row, or,
when the first rolled back, inserts it). The loser reads the row under the shared lock
its failed insert holds, which sees it however old the transaction's snapshot.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import asyncmy.errors
from sqlalchemy import bindparam, delete, insert, select

from athenaq.states import FirstAnswer, Idempotency
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import idempotency_keys

# MySQL's error for a duplicate key; SQLite's extended codes for a primary key or a
# unique constraint.
_MYSQL_DUPLICATE_KEY = 1062
_SQLITE_DUPLICATE = frozenset(
    {sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE}
)

k = idempotency_keys.c
_INSERT = insert(idempotency_keys)
_FIND = select(k.query_id, k.status_code, k.request_hash, k.created_at).where(
    k.owner == bindparam("owner"), k.idempotency_key == bindparam("key")
)
# A locking read sees the latest committed row, whatever the transaction's snapshot; a
# shared one takes no more than the failed insert holds (an exclusive one, asked for by
# two losers at once, would deadlock them). SQLite's write transaction is the lock there.
_FIND_LOCKED = _FIND.with_for_update(read=True)
_FORGET = delete(idempotency_keys).where(
    k.owner == bindparam("owner"),
    k.idempotency_key == bindparam("key"),
    k.created_at <= bindparam("expired_at"),
)
# The purge, a batch at a time from the oldest, down the index on created_at.
_NTH_OLDEST = select(k.created_at).order_by(k.created_at).offset(bindparam("skip")).limit(1)
_PURGE = delete(idempotency_keys).where(k.created_at <= bindparam("through"))


class IdempotencyKeyTaken(Exception):
    """The key was taken by an earlier request (or one at the same time): its answer."""

    def __init__(self, first: FirstAnswer) -> None:
        super().__init__(f"the key answered query {first.query_id} first")
        self.first = first


class KeyVanished(Exception):
    """The key's row was there to refuse the insert and gone when read (expired, purged):
    try again."""


def is_duplicate(exc: BaseException) -> bool:
    """Whether the driver's `exc` is a duplicate primary or unique key."""
    if isinstance(exc, asyncmy.errors.IntegrityError):
        return bool(exc.args) and exc.args[0] == _MYSQL_DUPLICATE_KEY
    if isinstance(exc, sqlite3.IntegrityError):
        return getattr(exc, "sqlite_errorcode", None) in _SQLITE_DUPLICATE
    return False


def _first(row: dict[str, Any]) -> FirstAnswer:
    return FirstAnswer(
        query_id=row["query_id"],
        status_code=row["status_code"],
        request_hash=row["request_hash"],
        created_at=row["created_at"],
    )


async def find(conn: DriverConnection, owner: str, key: str) -> FirstAnswer | None:
    """The first answer of `owner`'s `key`, expired or not; None when there is none."""
    row = await conn.first(_FIND, {"owner": owner, "key": key})
    return _first(row) if row is not None else None


async def claim(
    conn: DriverConnection,
    owner: str,
    idempotency: Idempotency,
    query_id: str,
    status_code: int,
    now: datetime,
) -> FirstAnswer | None:
    """Store `query_id` and `status_code` as the first answer of `owner`'s key. None when
    stored; the answer stored first when the key was taken (expired or not: the caller
    decides). KeyVanished when that answer is gone by the time it is read."""
    try:
        await conn.execute(
            _INSERT,
            {
                "owner": owner,
                "idempotency_key": idempotency.key,
                "request_hash": idempotency.request_hash,
                "query_id": query_id,
                "status_code": status_code,
                "created_at": now,
            },
        )
    except Exception as exc:
        if not is_duplicate(exc):
            raise
        # In a transaction, the statement alone failed: the transaction goes on.
        row = await conn.first(_FIND_LOCKED, {"owner": owner, "key": idempotency.key})
        if row is None:
            raise KeyVanished(idempotency.key) from None
        return _first(row)
    return None


async def forget_expired(
    conn: DriverConnection, owner: str, key: str, expired_at: datetime
) -> None:
    """Delete `owner`'s `key` if it was made at or before `expired_at`."""
    await conn.execute(_FORGET, {"owner": owner, "key": key, "expired_at": expired_at})


async def purge(conn: DriverConnection, expired_at: datetime, batch: int) -> int:
    """Delete about `batch` of the oldest keys made at or before `expired_at` (more when
    several share the batch's last time); how many."""
    nth = await conn.scalar(_NTH_OLDEST, {"skip": batch - 1})
    through = expired_at if nth is None else min(nth, expired_at)
    return await conn.execute(_PURGE, {"through": through})
