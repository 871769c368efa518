"""The hot statements run on the driver's own connection (asyncmy's or aiosqlite's),
taken from and given back to SQLAlchemy's pool, with Core statements compiled once.

For a status read, a submit's writes and a launch's: it skips SQLAlchemy's per-execution
work and its DBAPI adapter (a greenlet switch, a lock and a copy of the rows per
statement), which measured twice the driver's own time for a read by primary key, and
twice the CPU of an update. Values still go through the columns' own bind processors and
rows through their result processors, as SQLAlchemy would convert them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, cast

from sqlalchemy import Dialect, Engine, PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.util import greenlet_spawn

from athenaq.store.database import begin_statement
from athenaq.store.outage import is_disconnect

# What a statement's run gives back: the rows it changed, its first row, or every row.
_Fetch = Literal["count", "one", "all"]


class Prepared:
    """A Core statement compiled for one dialect, with its converters."""

    def __init__(
        self, statement: ClauseElement, dialect: Dialect, columns: Sequence[str] | None
    ) -> None:
        # `columns`: the columns an INSERT or an UPDATE sets, from the values given.
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=columns))
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError(f"an IN list is rendered at each execution: {compiled}")
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())
        binds = [compiled.binds[name] for name in self.names]
        self.processors = [
            bind.type.dialect_impl(dialect).bind_processor(dialect) for bind in binds
        ]
        # Values the statement carries itself (the 1 of `version + 1`).
        self.fixed = {
            name: bind.effective_value
            for name, bind in zip(self.names, binds, strict=True)
            if not bind.required
        }
        selected = list(getattr(statement, "selected_columns", ()))
        self.keys = [str(column.key) for column in selected]
        self.converters = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in selected
        ]

    def args(self, params: dict[str, Any]) -> tuple[Any, ...]:
        if self.fixed:
            params = {**self.fixed, **params}
        return tuple(
            params[name] if process is None else process(params[name])
            for name, process in zip(self.names, self.processors, strict=True)
        )

    def row(self, values: Sequence[Any] | None) -> dict[str, Any] | None:
        """A row of the SELECT as a dict by column, or None for no row."""
        if values is None:
            return None
        return {
            key: value if convert is None else convert(value)
            for key, convert, value in zip(self.keys, self.converters, values, strict=True)
        }


class DriverConnection:
    """A pooled connection used through its driver. Each Core statement is compiled at
    its first use with a given set of values (an UPDATE's SET clause depends on it) and
    kept by the pool."""

    def __init__(self, connection: Any, pool: DriverPool) -> None:
        self._connection = connection
        self._pool = pool
        self.dialect = pool.dialect
        # Inside `DriverPool.transaction`: whether the block's end is to commit it.
        self.in_transaction = False

    async def execute(self, statement: ClauseElement | str, params: dict[str, Any]) -> int:
        """Run a statement; the rows it changed (matched, on MySQL: SQLAlchemy connects
        with the FOUND_ROWS flag)."""
        sql, args = self._bound(statement, params)
        return int(await self._run(sql, args, "count"))

    async def first(
        self, statement: ClauseElement, params: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The first row of a SELECT as a dict by column, or None."""
        prepared = self._pool.prepared(statement, params)
        return prepared.row(await self._run(prepared.sql, prepared.args(params), "one"))

    async def all(self, statement: ClauseElement, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every row of a SELECT, each as a dict by column."""
        prepared = self._pool.prepared(statement, params)
        found = await self._run(prepared.sql, prepared.args(params), "all")
        return [row for row in map(prepared.row, found) if row is not None]

    async def tuples(
        self, statement: ClauseElement, params: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Every row of a SELECT as the driver gives it, for a SELECT of columns whose
        values need no conversion (strings, integers): thousands of rows at the cost of
        reading them, without a dict per row."""
        prepared = self._pool.prepared(statement, params)
        if any(convert is not None for convert in prepared.converters):
            raise ValueError(f"values to convert: {prepared.sql}")
        return list(await self._run(prepared.sql, prepared.args(params), "all"))

    async def rollback(self) -> None:
        """Undo the statements of the transaction so far and end it: the end of its block
        commits nothing, and the connection is pooled again as it is."""
        await self._run("ROLLBACK", (), "count")
        self.in_transaction = False

    async def _run(self, sql: str, args: tuple[Any, ...], fetch: _Fetch) -> Any:
        if self._pool.on_statement is not None:
            self._pool.on_statement(sql)
        if self._pool.sqlite:
            async with self._connection.execute(sql, args) as cursor:
                return await _fetched(cursor, fetch)
        async with self._connection.cursor() as cursor:
            await cursor.execute(sql, args)
            return await _fetched(cursor, fetch)

    async def scalar(self, statement: ClauseElement, params: dict[str, Any]) -> Any:
        """The first column of the first row, or None."""
        row = await self.first(statement, params)
        return None if row is None else next(iter(row.values()))

    def _bound(
        self, statement: ClauseElement | str, params: dict[str, Any]
    ) -> tuple[str, tuple[Any, ...]]:
        if isinstance(statement, str):
            return statement, ()
        prepared = self._pool.prepared(statement, params)
        return prepared.sql, prepared.args(params)


class DriverPool:
    """Connections checked out of an engine's pool for `DriverConnection`s, checked back
    in when the block ends.

    The checkout takes one greenlet switch, the check-in none: a healthy connection in
    autocommit mode is pooled as it is (no rollback is sent), so nothing in it awaits.
    A block that fails (an error, a cancel) may leave a statement half done and the
    connection in a state nobody knows: it is closed rather than pooled, as SQLAlchemy
    itself would, and the server undoes what was not committed. A connection found gone
    (the server restarted, the network cut it) marks the pool's others as gone too, as
    SQLAlchemy does: each is replaced at its next checkout rather than failing a request
    of its own."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.dialect = engine.dialect
        self.sqlite = engine.dialect.driver == "aiosqlite"
        self._begin = begin_statement(engine.dialect)
        self._prepared: dict[tuple[ClauseElement, frozenset[str]], Prepared] = {}
        # The threads of SQLite connections closed while a statement may still run in
        # them (waiting for a lock): they end with it, and `wait_closed` waits for them.
        self._closing: list[threading.Thread] = []
        # Called with the SQL of each statement run on a connection of this pool, before
        # it runs (a test counts what a store operation sends with it).
        self.on_statement: Callable[[str], None] | None = None

    def prepared(self, statement: ClauseElement, params: dict[str, Any]) -> Prepared:
        key = (statement, frozenset(params))
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = Prepared(statement, self.dialect, sorted(params))
            self._prepared[key] = prepared
        return prepared

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[DriverConnection]:
        if self._engine.pool.checkedin():  # type: ignore[attr-defined]
            # An idle connection is taken without waiting for anything: nothing to cut.
            connection = await greenlet_spawn(self._engine.raw_connection)
        else:
            connection = await self._checkout_when_free()
        try:
            yield DriverConnection(connection.driver_connection, self)
        except BaseException as exc:
            self._discard(connection, exc)
            raise
        connection.close()

    async def _checkout_when_free(self) -> PoolProxiedConnection:
        """A checkout that waits for a connection, or makes one: cut by the store's
        deadline, it goes on by itself and gives back what it got. Cut mid-connect, the
        drivers drop the connection they were making without closing it (aiosqlite's
        thread opens the file all the same), and a connection taken from the pool after
        the deadline would never return to it. (A task of its own costs a tenth of a
        status read's CPU: the path of an idle connection does without.)"""
        checkout = asyncio.ensure_future(greenlet_spawn(self._engine.raw_connection))
        try:
            return await asyncio.shield(checkout)
        except asyncio.CancelledError:
            checkout.add_done_callback(_give_back)
            raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[DriverConnection]:
        """A connection whose statements commit together when the block ends, or not at
        all (see `database.begin_statement` for SQLite's lock): a block that fails leaves
        them to the server to undo, and one that calls `rollback` commits nothing."""
        async with self.connect() as conn:
            await conn.execute(self._begin, {})
            conn.in_transaction = True
            yield conn
            if conn.in_transaction:
                await conn.execute("COMMIT", {})
                conn.in_transaction = False

    def _discard(self, connection: PoolProxiedConnection, exc: BaseException) -> None:
        # Outside a greenlet SQLAlchemy closes the connection at once, without the polite
        # goodbye it would await inside one: a connection cut by the store's deadline
        # (a silent server, an SQLite statement still waiting for a lock in its thread)
        # would hold the request past the deadline for it.
        if self.sqlite:
            self._closing = [thread for thread in self._closing if thread.is_alive()]
            if connection.driver_connection is not None:
                self._closing.append(connection.driver_connection._thread)
        if is_disconnect(exc):
            # SQLAlchemy's own call on a disconnect: every connection made up to now is
            # replaced at its next checkout, this one at once.
            self._engine.pool._invalidate(connection, exc)
        else:
            connection.invalidate()
        connection.close()

    async def wait_closed(self) -> None:
        """Wait for the threads of the SQLite connections closed in a statement to end
        (within the busy timeout): a thread that outlived the event loop would fail to
        hand it the statement's outcome."""
        for thread in self._closing:
            await asyncio.to_thread(thread.join)
        self._closing.clear()


async def _fetched(cursor: Any, fetch: _Fetch) -> Any:
    if fetch == "count":
        return cursor.rowcount
    if fetch == "one":
        return await cursor.fetchone()
    return await cursor.fetchall()


def _give_back(checkout: asyncio.Future[PoolProxiedConnection]) -> None:
    """Return to the pool the connection of a checkout nobody waits for any more."""
    if checkout.cancelled() or checkout.exception() is not None:
        return  # the store is out of reach: nothing was made (the error is no news)
    checkout.result().close()
