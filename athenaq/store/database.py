"""Opening the database a config URL names, and how a write transaction runs on it.

The config keeps the URL its users know (`mysql://...`, `sqlite:///file.db`); SQLAlchemy
gets the async driver's form of it (`mysql+asyncmy://`, `sqlite+aiosqlite://`).

Connections are in autocommit mode, with the rollback SQLAlchemy sends when a connection
goes back to the pool skipped: a read is one statement and one round trip, and on SQLite
it takes no lock. A write transaction says BEGIN itself (`begin_statement`), and on SQLite
it is BEGIN IMMEDIATE, which takes the file's write lock before the first read: the
compare-and-set cannot interleave with another process's, and a writer waiting for the
lock waits (busy timeout) instead of failing on a stale snapshot. WAL lets readers go on
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import URL, Connection, Dialect, Engine, NullPool, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# How long switching a new file to WAL may wait for another process doing the same.
SQLITE_BUSY_TIMEOUT_SECONDS = 10.0
# Below MySQL's and MariaDB's default wait_timeout (8 hours), so the pool replaces an idle
# connection before the server drops it; cheaper than a ping at every checkout.
MYSQL_RECYCLE_SECONDS = 3600
# Creating the database at start, before any request: a server slow to accept may.
MYSQL_CONNECT_TIMEOUT_SECONDS = 10
# A store call's deadline when none is given (database.timeout_seconds' default).
DEFAULT_CALL_TIMEOUT_SECONDS = 1.5

_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def sqlite_path(url: str) -> Path:
    """The file of `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`."""
    parts = urlsplit(url)
    path = unquote(parts.path)[1:]
    if parts.netloc or not path:
        raise ValueError(
            f"{url!r} names no SQLite file: sqlite:///relative/path.db or"
            " sqlite:////absolute/path.db"
        )
    return Path(path)


def mysql_url(url: str, *, database: bool = True) -> URL:
    """The asyncmy form of `mysql://user:password@host:port/database` (the server alone
    when `database` is false)."""
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/")) or "athenaq"
    if not _DATABASE_NAME.match(name):
        raise ValueError(f"database name {name!r} is not [A-Za-z0-9_]")
    return URL.create(
        "mysql+asyncmy",
        username=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        database=name if database else None,
        query={"charset": "utf8mb4"},
    )


async def open_engine(
    url: str, pool_size: int, call_timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS
) -> AsyncEngine:
    """The engine for `url`, its first connection made (so a bad URL or an unreachable
    server fails here), the database or the file created when missing.

    MySQL/MariaDB: a pool of `pool_size` connections. SQLite: one connection, in WAL mode,
    shared by the process's coroutines in turn. A connection's making, a wait for a free
    one and, on SQLite, a wait for another process's write lock (the busy timeout) give up
    after `call_timeout` seconds, a store call's deadline: a lock held longer surfaces as an
    error rather than a hung request."""
    scheme = urlsplit(url).scheme
    if scheme == "mysql":
        await _create_mysql_database(url)
        engine = create_async_engine(
            mysql_url(url),
            isolation_level="AUTOCOMMIT",
            skip_autocommit_rollback=True,
            pool_size=pool_size,
            max_overflow=0,
            pool_recycle=MYSQL_RECYCLE_SECONDS,
            pool_timeout=call_timeout,
            connect_args={"connect_timeout": call_timeout},
        )
    elif scheme == "sqlite":
        path = sqlite_path(url)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        # One connection has one transaction at a time: coroutines take turns at the pool,
        # and reads never see another coroutine's uncommitted writes.
        engine = create_async_engine(
            URL.create("sqlite+aiosqlite", database=str(path)),
            isolation_level="AUTOCOMMIT",
            skip_autocommit_rollback=True,
            pool_size=1,
            max_overflow=0,
            pool_timeout=call_timeout,
            connect_args={"timeout": call_timeout},
        )
    else:
        raise ValueError(f"not a mysql:// or sqlite:// URL: {url!r}")
    try:
        async with engine.connect() as conn:
            if scheme == "sqlite":
                await _use_wal(conn)
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def _create_mysql_database(url: str) -> None:
    server = create_async_engine(
        mysql_url(url, database=False),
        poolclass=NullPool,
        connect_args={"connect_timeout": MYSQL_CONNECT_TIMEOUT_SECONDS},
    )
    name = mysql_url(url).database
    try:
        async with server.connect() as conn:
            # Asked first: IF NOT EXISTS on a database that exists leaves a note the driver
            # logs as a warning at every start. IF NOT EXISTS still settles a race.
            if not await conn.scalar(
                text("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :name"),
                {"name": name},
            ):
                await conn.execute(
                    text(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
                )
    finally:
        await server.dispose()


async def _use_wal(conn: AsyncConnection) -> None:
    # The mode is kept in the file, so every process opening it agrees. Two connections
    # switching a new file at once get SQLITE_BUSY at once, without the busy timeout (the
    # lock upgrade could deadlock), so the loser tries again until the timeout's length.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            await conn.exec_driver_sql("PRAGMA journal_mode = WAL")
            return
        except OperationalError as exc:
            code = getattr(exc.orig, "sqlite_errorcode", None)
            if code != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.01)


def begin_statement(dialect: Dialect) -> str:
    """What opens a write transaction: BEGIN IMMEDIATE on SQLite (see above)."""
    return "BEGIN IMMEDIATE" if dialect.name == "sqlite" else "BEGIN"


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements commit together when the block ends, or not at all.
    Synchronous: it runs inside the greenlet of a schema change (see schema.py); the
    store's own writes run on the driver (queries.py `DriverPool`)."""
    with engine.connect() as conn:
        conn.exec_driver_sql(begin_statement(conn.dialect))
        try:
            yield conn
        except BaseException:
            try:
                conn.exec_driver_sql("ROLLBACK")
            except Exception:
                # A cancelled or broken connection may not take the rollback: it is closed
                # rather than pooled, and the server undoes what it had not committed.
                conn.invalidate()
            raise
        conn.exec_driver_sql("COMMIT")
