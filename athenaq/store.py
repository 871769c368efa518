"""The metadata store: every query and its transition history, in MySQL/MariaDB or SQLite.

All SQL of the service lives here. State changes are compare-and-set on
(state, version), so two server processes sharing the database cannot both win
the same transition.

The statements are written once, with `?` placeholders. What the two databases
do differently (DDL, placeholder style, how a write transaction begins, how rows
come back and how datetimes are kept) lives in a private backend per database,
chosen by the URL's scheme.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiosqlite
import asyncmy
import asyncmy.errors
from asyncmy.cursors import DictCursor

from athenaq.clock import utcnow
from athenaq.states import QueryRecord, QueryState, Transition

MYSQL_SCHEMA = (
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
        results_source VARCHAR(8) NULL,
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

# Columns added after the first release, with their DDL per database: `create_schema`
# adds them to an older database's table.
MYSQL_ADDED_COLUMNS = {"results_source": "VARCHAR(8) NULL AFTER row_count"}
ER_DUP_FIELDNAME = 1060
SQLITE_ADDED_COLUMNS = {"results_source": "TEXT"}

# Datetimes are ISO 8601 text of one width (see _sqlite_params), so they sort as they compare.
SQLITE_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS queries (
        id TEXT NOT NULL PRIMARY KEY,
        query_text TEXT NOT NULL,
        database_name TEXT NOT NULL,
        workgroup TEXT NOT NULL,
        state TEXT NOT NULL,
        state_reason TEXT,
        athena_execution_id TEXT,
        run INTEGER NOT NULL DEFAULT 1,
        cancel_requested_at TEXT,
        submitted_at TEXT NOT NULL,
        started_at TEXT,
        completed_at TEXT,
        results_at TEXT,
        row_count INTEGER,
        results_source TEXT,
        data_scanned_bytes INTEGER,
        engine_execution_ms INTEGER,
        queue_ms INTEGER,
        total_execution_ms INTEGER,
        version INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS queries_state ON queries (state)",
    """
    CREATE TABLE IF NOT EXISTS query_transitions (
        seq INTEGER PRIMARY KEY,
        query_id TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        reason TEXT,
        at TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS query_transitions_query ON query_transitions (query_id, seq)",
)

# Long enough to wait out another process's write transaction (milliseconds), short enough
# that a lock nobody releases surfaces as an error rather than a hung request.
SQLITE_BUSY_TIMEOUT_SECONDS = 10.0

# The columns SQLite keeps as text and the store hands back as naive UTC datetimes.
_DATETIME_COLUMNS = frozenset(
    {
        "cancel_requested_at",
        "submitted_at",
        "started_at",
        "completed_at",
        "results_at",
        "updated_at",
        "at",
    }
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
        "results_source",
        "data_scanned_bytes",
        "engine_execution_ms",
        "queue_ms",
        "total_execution_ms",
    }
)


def _record(row: dict[str, Any]) -> QueryRecord:
    return QueryRecord(**{**row, "state": QueryState(row["state"])})


def _check_columns(changes: dict[str, Any]) -> None:
    unknown = set(changes) - MUTABLE_COLUMNS
    if unknown:
        raise ValueError(f"not a mutable column: {sorted(unknown)}")


# Runs one statement of a transaction and answers how many rows it changed.
_Execute = Callable[[str, Sequence[Any]], Awaitable[int]]


async def _compare_and_set(
    execute: _Execute, current: QueryRecord, columns: dict[str, Any], now: datetime
) -> bool:
    # The guard that keeps processes correct: the row changes only if nobody else changed
    # it since `current` was read, and the affected-row count says whether it did.
    changed = await execute(
        "UPDATE queries SET version = version + 1, updated_at = ?"
        + "".join(f", {column} = ?" for column in columns)
        + " WHERE id = ? AND state = ? AND version = ?",
        (now, *columns.values(), current.id, current.state.value, current.version),
    )
    return changed == 1


class _Backend(Protocol):
    """What differs between the databases; every statement reaches it with `?` placeholders."""

    def transaction(self) -> AbstractAsyncContextManager[_Execute]:
        """An executor whose statements commit together when the block ends, or not at all."""

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """The rows of a query, as dicts by column name, datetimes as naive UTC datetimes."""

    async def create_schema(self) -> None:
        """Create the tables when missing, also when other processes do it at the same time."""

    async def close(self) -> None:
        """Wait for the statements in flight and release the connections."""


class _MySQL:
    """MariaDB/MySQL through an asyncmy pool, autocommit outside explicit transactions."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, maxsize: int) -> _MySQL:
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

    @staticmethod
    def _sql(sql: str) -> str:
        # asyncmy formats parameters in with `%`; no statement here has a literal `?` or `%`.
        return sql.replace("?", "%s")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Execute]:
        async with self._pool.acquire() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:

                    async def execute(sql: str, params: Sequence[Any]) -> int:
                        changed: int = await cur.execute(self._sql(sql), params)
                        return changed

                    yield execute
                await conn.commit()
            except BaseException:
                # A cancelled or broken connection may not take the rollback either; the
                # server undoes an uncommitted transaction when the connection drops.
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn, conn.cursor(DictCursor) as cur:
            await cur.execute(self._sql(sql), params)
            rows: list[dict[str, Any]] = await cur.fetchall()
        return rows

    async def create_schema(self) -> None:
        # DDL commits on its own in MySQL; IF NOT EXISTS under the server's metadata lock is
        # what makes concurrent starts safe.
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            for statement in MYSQL_SCHEMA:
                await cur.execute(statement)
            # MariaDB has ADD COLUMN IF NOT EXISTS, MySQL does not: look first, and take a
            # duplicate column from another process starting at the same time as done.
            await cur.execute(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'queries'"
            )
            present = {row[0] for row in await cur.fetchall()}
            for column, ddl in MYSQL_ADDED_COLUMNS.items():
                if column in present:
                    continue
                try:
                    await cur.execute(f"ALTER TABLE queries ADD COLUMN {column} {ddl}")
                except asyncmy.errors.MySQLError as exc:
                    if exc.args[0] != ER_DUP_FIELDNAME:
                        raise

    async def close(self) -> None:
        self._pool.close()
        await self._pool.wait_closed()


def _sqlite_path(url: str) -> Path:
    parts = urlsplit(url)
    # The path after the third slash: sqlite:///relative.db, sqlite:////absolute.db.
    path = unquote(parts.path)[1:]
    if parts.netloc or not path:
        raise ValueError(
            f"{url!r} names no SQLite file: sqlite:///relative/path.db or"
            " sqlite:////absolute/path.db"
        )
    return Path(path)


def _sqlite_params(params: Sequence[Any]) -> list[Any]:
    # Explicit text rather than sqlite3's datetime adapter, which Python 3.12 deprecates;
    # always with microseconds, so every stored datetime has the same width and text order
    # is time order.
    return [
        value.isoformat(sep=" ", timespec="microseconds") if isinstance(value, datetime) else value
        for value in params
    ]


def _sqlite_row(row: sqlite3.Row) -> dict[str, Any]:
    return {
        column: datetime.fromisoformat(value)
        if column in _DATETIME_COLUMNS and value is not None
        else value
        for column, value in zip(row.keys(), row, strict=True)
    }


class _SQLite:
    """One SQLite file through one aiosqlite connection, possibly shared with other processes.

    The connection is in autocommit mode and every write runs in `BEGIN IMMEDIATE`, which
    takes the file's write lock before the first read: the compare-and-set then cannot be
    interleaved with another process's, and a writer waiting for the lock waits (busy
    timeout) instead of failing on a stale snapshot. WAL lets readers go on meanwhile."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        # One connection has one transaction at a time: coroutines take turns, and reads
        # never see another coroutine's uncommitted writes.
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, url: str) -> _SQLite:
        path = _sqlite_path(url)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        conn = await aiosqlite.connect(
            path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS, isolation_level=None
        )
        conn.row_factory = sqlite3.Row
        backend = cls(conn)
        try:
            await backend._use_wal()
        except BaseException:
            await conn.close()
            raise
        return backend

    async def _use_wal(self) -> None:
        # The mode is kept in the file, so every process opening it agrees. Two connections
        # switching a new file at once get SQLITE_BUSY at once, without the busy timeout (the
        # lock upgrade could deadlock), so the loser tries again until the timeout's length.
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
        while True:
            try:
                # `_execute` closes the cursor at once: a statement with unread rows would
                # keep a read lock on the file.
                await self._execute("PRAGMA journal_mode = WAL", ())
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.01)

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        async with self._conn.execute(sql, _sqlite_params(params)) as cursor:
            return cursor.rowcount

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Execute]:
        async with self._lock:
            await self._execute("BEGIN IMMEDIATE", ())
            try:
                yield self._execute
                await self._conn.commit()
            except BaseException:
                # rollback() is a no-op when nothing is open, so this also covers a failed BEGIN.
                with contextlib.suppress(Exception):
                    await self._conn.rollback()
                raise

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self._lock, self._conn.execute(sql, _sqlite_params(params)) as cursor:
            rows = await cursor.fetchall()
        return [_sqlite_row(row) for row in rows]

    async def create_schema(self) -> None:
        # One write transaction: a process starting at the same time waits for the lock and
        # then finds every table in place.
        async with self.transaction() as execute:
            for statement in SQLITE_SCHEMA:
                await execute(statement, ())
            # SQLite has no ADD COLUMN IF NOT EXISTS; the write lock held since BEGIN
            # IMMEDIATE keeps another process from adding it between the check and the add.
            async with self._conn.execute("PRAGMA table_info(queries)") as cursor:
                present = {row["name"] for row in await cursor.fetchall()}
            for column, ddl in SQLITE_ADDED_COLUMNS.items():
                if column not in present:
                    await execute(f"ALTER TABLE queries ADD COLUMN {column} {ddl}", ())

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()


class Store:
    """Queries and their transitions in MySQL/MariaDB (asyncmy) or SQLite (aiosqlite)."""

    def __init__(self, backend: _Backend) -> None:
        self._db = backend

    @classmethod
    async def connect(cls, url: str, *, maxsize: int = 10) -> Store:
        """Open the store that `url` names, creating the database when it is missing.

        `mysql://user:password@host:port/database` opens a pool of up to `maxsize`
        connections, creating the database on the server when it does not have it.
        `sqlite:///relative/path.db` or `sqlite:////absolute/path.db` opens one connection
        to the file, creating the file and its folder when missing, in WAL mode so several
        processes can share it. Raises ValueError for any other URL."""
        scheme = urlsplit(url).scheme
        if scheme == "mysql":
            return cls(await _MySQL.connect(url, maxsize))
        if scheme == "sqlite":
            return cls(await _SQLite.connect(url))
        raise ValueError(f"not a mysql:// or sqlite:// URL: {url!r}")

    async def close(self) -> None:
        """Wait for the statements in flight, then close every connection."""
        await self._db.close()

    async def create_schema(self) -> None:
        """Create the tables when missing; safe to run at every start, by several processes."""
        await self._db.create_schema()

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
            results_source=None,
            data_scanned_bytes=None,
            engine_execution_ms=None,
            queue_ms=None,
            total_execution_ms=None,
            version=0,
            updated_at=now,
        )
        async with self._db.transaction() as execute:
            await execute(
                "INSERT INTO queries (id, query_text, database_name, workgroup, state,"
                " run, submitted_at, version, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            await execute(
                "INSERT INTO query_transitions (query_id, from_state, to_state, reason, at)"
                " VALUES (?, NULL, ?, ?, ?)",
                (query_id, record.state.value, reason, now),
            )
        return record

    async def get(self, query_id: str) -> QueryRecord | None:
        """The query as stored now, or None when there is no query `query_id`."""
        rows = await self._db.fetch("SELECT * FROM queries WHERE id = ?", (query_id,))
        return _record(rows[0]) if rows else None

    async def unfinished(self) -> list[QueryRecord]:
        """Every QUEUED or RUNNING query, oldest first: what the poller must drive."""
        rows = await self._db.fetch(
            "SELECT * FROM queries WHERE state IN (?, ?) ORDER BY submitted_at",
            (QueryState.QUEUED.value, QueryState.RUNNING.value),
        )
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
        _check_columns(changes)
        now = utcnow()
        async with self._db.transaction() as execute:
            if not await _compare_and_set(
                execute, current, {"state": to_state.value, **changes}, now
            ):
                return False  # nothing written: the transaction has nothing to undo
            await execute(
                "INSERT INTO query_transitions (query_id, from_state, to_state, reason, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (current.id, current.state.value, to_state.value, reason, now),
            )
        return True

    async def update(self, current: QueryRecord, changes: dict[str, Any]) -> bool:
        """Compare-and-set columns other than the state (for instance the Athena execution
        id); False when another writer changed the row since `current` was read."""
        _check_columns(changes)
        async with self._db.transaction() as execute:
            return await _compare_and_set(execute, current, changes, utcnow())

    async def history(self, query_id: str) -> list[Transition]:
        """The query's transitions, oldest first."""
        rows = await self._db.fetch(
            "SELECT query_id, from_state, to_state, reason, at FROM query_transitions"
            " WHERE query_id = ? ORDER BY seq",
            (query_id,),
        )
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
