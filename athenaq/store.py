"""The metadata store: every query and its transition history, in MySQL/MariaDB.

All SQL of the service lives here. State changes are compare-and-set on
(state, version), so two server processes sharing the database cannot both win
the same transition.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncmy
from asyncmy.cursors import DictCursor

from athenaq.clock import utcnow
from athenaq.machine import QueryState

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS queries (
        id CHAR(36) NOT NULL PRIMARY KEY,
        query_text MEDIUMTEXT NOT NULL,
        database_name VARCHAR(255) NOT NULL,
        workgroup VARCHAR(128) NOT NULL,
        state VARCHAR(16) NOT NULL,
        state_reason TEXT NULL,
        athena_execution_id VARCHAR(128) NULL,
        run INT NOT NULL DEFAULT 1,
        cancel_requested_at DATETIME(6) NULL,
        submitted_at DATETIME(6) NOT NULL,
        started_at DATETIME(6) NULL,
        completed_at DATETIME(6) NULL,
        results_at DATETIME(6) NULL,
        row_count BIGINT NULL,
        data_scanned_bytes BIGINT NULL,
        engine_execution_ms BIGINT NULL,
        queue_ms BIGINT NULL,
        total_execution_ms BIGINT NULL,
        version INT NOT NULL DEFAULT 0,
        updated_at DATETIME(6) NOT NULL,
        KEY queries_state (state)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
    """,
    """
    CREATE TABLE IF NOT EXISTS query_transitions (
        seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        query_id CHAR(36) NOT NULL,
        from_state VARCHAR(16) NULL,
        to_state VARCHAR(16) NOT NULL,
        reason TEXT NULL,
        at DATETIME(6) NOT NULL,
        KEY query_transitions_query (query_id, seq)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
    """,
)

_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

# Columns a transition or an update may set; anything else is a programming error.
MUTABLE_COLUMNS = frozenset(
    {
        "state_reason",
        "athena_execution_id",
        "run",
        "cancel_requested_at",
        "started_at",
        "completed_at",
        "results_at",
        "row_count",
        "data_scanned_bytes",
        "engine_execution_ms",
        "queue_ms",
        "total_execution_ms",
    }
)


@dataclass(frozen=True)
class QueryRecord:
    """One query as stored; `version` is the compare-and-set token."""

    id: str
    query_text: str
    database_name: str
    workgroup: str
    state: QueryState
    state_reason: str | None
    athena_execution_id: str | None
    run: int
    cancel_requested_at: datetime | None
    submitted_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    results_at: datetime | None
    row_count: int | None
    data_scanned_bytes: int | None
    engine_execution_ms: int | None
    queue_ms: int | None
    total_execution_ms: int | None
    version: int
    updated_at: datetime

    @property
    def is_finished(self) -> bool:
        return self.state.is_finished


@dataclass(frozen=True)
class Transition:
    """One row of a query's append-only history."""

    query_id: str
    from_state: QueryState | None
    to_state: QueryState
    reason: str | None
    at: datetime


def _record(row: dict[str, Any]) -> QueryRecord:
    return QueryRecord(**{**row, "state": QueryState(row["state"])})


def _check_columns(changes: dict[str, Any]) -> None:
    unknown = set(changes) - MUTABLE_COLUMNS
    if unknown:
        raise ValueError(f"not a mutable column: {sorted(unknown)}")


def _assignments(changes: dict[str, Any]) -> tuple[str, list[Any]]:
    _check_columns(changes)
    return "".join(f", {column} = %s" for column in changes), list(changes.values())


class Store:
    """Queries and their transitions in MySQL/MariaDB through an asyncmy pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, *, maxsize: int = 10) -> Store:
        """Open a pool for `mysql://user:password@host:port/database`, creating the
        database when the server does not have it yet."""
        parts = urlsplit(url)
        server: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "charset": "utf8mb4",
            "connect_timeout": 10,
        }
        database = unquote(parts.path.lstrip("/")) or "athenaq"
        if not _DATABASE_NAME.match(database):
            raise ValueError(f"database name {database!r} is not [A-Za-z0-9_]")
        admin = await asyncmy.connect(**server)
        try:
            async with admin.cursor() as cur:
                await cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"
                )
        finally:
            await admin.ensure_closed()
        pool = await asyncmy.create_pool(
            **server, db=database, autocommit=True, minsize=1, maxsize=maxsize
        )
        return cls(pool)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """A cursor whose statements commit together, or not at all."""
        async with self._pool.acquire() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    yield cur
                await conn.commit()
            except BaseException:
                # A cancelled or broken connection may not take the rollback either; the
                # server undoes an uncommitted transaction when the connection drops.
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise

    async def close(self) -> None:
        self._pool.close()
        await self._pool.wait_closed()

    async def create_schema(self) -> None:
        """Create the tables when missing; safe to run at every start, by several processes."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            for statement in SCHEMA:
                await cur.execute(statement)

    async def create(
        self, query_id: str, sql: str, database: str, workgroup: str, reason: str
    ) -> QueryRecord:
        """Store a new QUEUED query and the first row of its history, atomically."""
        now = utcnow()
        record = QueryRecord(
            id=query_id,
            query_text=sql,
            database_name=database,
            workgroup=workgroup,
            state=QueryState.QUEUED,
            state_reason=None,
            athena_execution_id=None,
            run=1,
            cancel_requested_at=None,
            submitted_at=now,
            started_at=None,
            completed_at=None,
            results_at=None,
            row_count=None,
            data_scanned_bytes=None,
            engine_execution_ms=None,
            queue_ms=None,
            total_execution_ms=None,
            version=0,
            updated_at=now,
        )
        async with self._transaction() as cur:
            await cur.execute(
                "INSERT INTO queries (id, query_text, database_name, workgroup, state,"
                " run, submitted_at, version, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    query_id,
                    sql,
                    database,
                    workgroup,
                    record.state.value,
                    record.run,
                    now,
                    record.version,
                    now,
                ),
            )
            await cur.execute(
                "INSERT INTO query_transitions (query_id, from_state, to_state, reason, at)"
                " VALUES (%s, NULL, %s, %s, %s)",
                (query_id, record.state.value, reason, now),
            )
        return record

    async def get(self, query_id: str) -> QueryRecord | None:
        async with self._pool.acquire() as conn, conn.cursor(DictCursor) as cur:
            await cur.execute("SELECT * FROM queries WHERE id = %s", (query_id,))
            row = await cur.fetchone()
        return _record(row) if row else None

    async def unfinished(self) -> list[QueryRecord]:
        """Every QUEUED or RUNNING query, oldest first: what the poller must drive."""
        async with self._pool.acquire() as conn, conn.cursor(DictCursor) as cur:
            await cur.execute(
                "SELECT * FROM queries WHERE state IN (%s, %s) ORDER BY submitted_at",
                (QueryState.QUEUED.value, QueryState.RUNNING.value),
            )
            rows = await cur.fetchall()
        return [_record(row) for row in rows]

    async def transition(
        self,
        current: QueryRecord,
        to_state: QueryState,
        reason: str | None,
        changes: dict[str, Any],
    ) -> bool:
        """Compare-and-set `current` to `to_state`, appending to the history in the same
        transaction. False when another writer changed the row since `current` was read."""
        assignments, values = _assignments(changes)
        now = utcnow()
        async with self._transaction() as cur:
            updated = await cur.execute(
                "UPDATE queries SET state = %s, version = version + 1, updated_at = %s"
                + assignments
                + " WHERE id = %s AND state = %s AND version = %s",
                (
                    to_state.value,
                    now,
                    *values,
                    current.id,
                    current.state.value,
                    current.version,
                ),
            )
            if updated != 1:
                return False  # nothing written: the transaction has nothing to undo
            await cur.execute(
                "INSERT INTO query_transitions (query_id, from_state, to_state, reason, at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (current.id, current.state.value, to_state.value, reason, now),
            )
        return True

    async def update(self, current: QueryRecord, changes: dict[str, Any]) -> bool:
        """Compare-and-set columns other than the state (for instance the Athena execution
        id); False when another writer changed the row since `current` was read."""
        assignments, values = _assignments(changes)
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            updated: int = await cur.execute(
                "UPDATE queries SET version = version + 1, updated_at = %s"
                + assignments
                + " WHERE id = %s AND state = %s AND version = %s",
                (utcnow(), *values, current.id, current.state.value, current.version),
            )
        return updated == 1

    async def history(self, query_id: str) -> list[Transition]:
        """The query's transitions, oldest first."""
        async with self._pool.acquire() as conn, conn.cursor(DictCursor) as cur:
            await cur.execute(
                "SELECT query_id, from_state, to_state, reason, at FROM query_transitions"
                " WHERE query_id = %s ORDER BY seq",
                (query_id,),
            )
            rows = await cur.fetchall()
        return [
            Transition(
                query_id=row["query_id"],
                from_state=QueryState(row["from_state"]) if row["from_state"] else None,
                to_state=QueryState(row["to_state"]),
                reason=row["reason"],
                at=row["at"],
            )
            for row in rows
        ]
