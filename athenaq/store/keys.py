"""API keys and what each owner used: the statements, run inside a store operation
(on the driver, see driver.py: the lookup of a key and of its day's usage at each request,
and the limit checks inside a submit's or a transition's).

Lists (scopes, databases, workgroups, statements) are JSON text, the same on both
databases; null means any.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import mysql, sqlite

from athenaq.identity import ApiKey, Caller
from athenaq.states import UNFINISHED
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import api_keys, daily_usage, queries


class KeyExists(Exception):
    """A key of that name exists (or existed: a revoked key's name is never reused, so its
    queries never pass to a new key)."""


class RunningLimitReached(Exception):
    """The owner has `running` unfinished queries, its max_running."""

    def __init__(self, running: int) -> None:
        super().__init__(f"{running} unfinished queries")
        self.running = running


_BY_HASH = select(api_keys).where(api_keys.c.key_hash == bindparam("key_hash"))
_ALL = select(api_keys).order_by(api_keys.c.name)
_NAME_TAKEN = select(api_keys.c.name).where(api_keys.c.name == bindparam("name"))
_REVOKE = (
    update(api_keys)
    .where(api_keys.c.name == bindparam("match_name"), api_keys.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("revoked_at"))
)
# Taken before counting, so two submits of one key (in any processes) count in turn.
# SQLite has no row locks and needs none: its write transaction already holds the file.
_LOCK_KEY = select(api_keys.c.name).where(api_keys.c.name == bindparam("name")).with_for_update()
# OR rather than IN: an IN list is rendered at each execution, which driver.py does not do.
_UNFINISHED_OF = select(func.count()).where(
    queries.c.owner == bindparam("owner"),
    or_(*(queries.c.state == state.value for state in sorted(UNFINISHED))),
)
_USED = select(daily_usage.c.data_scanned_bytes).where(
    daily_usage.c.owner == bindparam("owner"), daily_usage.c.day == bindparam("day")
)


def _usage_upsert(dialect: str) -> Any:
    """Add to an owner's bytes of a day, making the row when it is the day's first."""
    if dialect == "sqlite":
        lite = sqlite.insert(daily_usage)
        return lite.on_conflict_do_update(
            index_elements=[daily_usage.c.owner, daily_usage.c.day],
            set_={
                "data_scanned_bytes": daily_usage.c.data_scanned_bytes
                + lite.excluded.data_scanned_bytes
            },
        )
    my = mysql.insert(daily_usage)
    return my.on_duplicate_key_update(
        data_scanned_bytes=daily_usage.c.data_scanned_bytes + my.inserted.data_scanned_bytes
    )


_UPSERTS = {name: _usage_upsert(name) for name in ("sqlite", "mysql")}


def _names(values: Iterable[str] | None) -> str | None:
    return None if values is None else json.dumps(sorted(values))


def _set(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(json.loads(text))


def _api_key(row: RowMapping | dict[str, Any]) -> ApiKey:
    caller = Caller(
        name=row["name"],
        scopes=frozenset(json.loads(row["scopes"])),
        databases=_set(row["databases"]),
        workgroups=_set(row["workgroups"]),
        statements=_set(row["statements"]),
        max_running=row["max_running"],
        daily_scan_bytes=row["daily_scan_bytes"],
    )
    return ApiKey(caller, row["key_hash"], row["created_at"], row["revoked_at"])


def insert_key(conn: Connection, caller: Caller, key_hash: str, now: datetime) -> None:
    if conn.execute(_NAME_TAKEN, {"name": caller.name}).first() is not None:
        raise KeyExists(caller.name)
    conn.execute(
        insert(api_keys),
        {
            "name": caller.name,
            "key_hash": key_hash,
            "scopes": _names(caller.scopes),
            "databases": _names(caller.databases),
            "workgroups": _names(caller.workgroups),
            "statements": _names(caller.statements),
            "max_running": caller.max_running,
            "daily_scan_bytes": caller.daily_scan_bytes,
            "created_at": now,
            "revoked_at": None,
        },
    )


async def find_key(conn: DriverConnection, key_hash: str) -> ApiKey | None:
    row = await conn.first(_BY_HASH, {"key_hash": key_hash})
    return _api_key(row) if row is not None else None


def all_keys(conn: Connection) -> list[ApiKey]:
    return [_api_key(row) for row in conn.execute(_ALL).mappings()]


def revoke_key(conn: Connection, name: str, now: datetime) -> bool:
    return conn.execute(_REVOKE, {"match_name": name, "revoked_at": now}).rowcount == 1


async def lock_owner(conn: DriverConnection, owner: str) -> None:
    """Lock `owner`'s key until the write transaction ends: the owner's submits take turns,
    across processes."""
    await conn.execute(_LOCK_KEY, {"name": owner})


async def check_running(
    conn: DriverConnection, owner: str, limit: int, *, locked: bool = False
) -> None:
    """Raise RunningLimitReached when `owner` has `limit` unfinished queries; in a write
    transaction, which the count holds until it ends (`locked`: lock_owner was called in
    it already)."""
    if not locked:
        await lock_owner(conn, owner)
    running = await conn.scalar(_UNFINISHED_OF, {"owner": owner})
    if running >= limit:
        raise RunningLimitReached(running)


async def add_usage(conn: DriverConnection, owner: str, day: str, scanned_bytes: int) -> None:
    upsert = _UPSERTS[conn.dialect.name]
    await conn.execute(upsert, {"owner": owner, "day": day, "data_scanned_bytes": scanned_bytes})


async def used(conn: DriverConnection, owner: str, day: str) -> int:
    return int(await conn.scalar(_USED, {"owner": owner, "day": day}) or 0)
