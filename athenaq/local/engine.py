"""The local engine's queries: real SQL on DuckDB, Athena's states, Athena's result files.

Each query runs on a thread of a bounded pool, on its own cursor of one shared
in-memory DuckDB database (a table one query creates is there for the next), so the
event loop never waits on SQL. Worker threads and the event loop share the query
records under one lock, held only for bookkeeping, never while SQL runs.

A query's result is written as Athena writes it, `<OutputLocation><id>.csv`, under
the data folder (`s3://bucket/prefix/` -> `<data_dir>/bucket/prefix/`), where the S3
side of the server serves it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from loguru import logger

from athenaq.csvformat import CsvParser, Row, format_row
from athenaq.local.base import (
    DEFAULT_CATALOG,
    STOPPED_BY_USER,
    Engine,
    Execution,
    Failure,
    InvalidRequest,
    NoSuchKey,
    QueryNotFound,
    ResultObject,
    ResultPage,
    State,
    TooManyQueries,
    Unavailable,
    check_succeeded,
    first_word,
    page_of_ids,
    result_location,
    reuse_key,
    unknown_catalog,
)
from athenaq.local.parameters import ParameterError, values
from athenaq.local.values import Column, column, text

try:
    import duckdb
except ImportError as exc:  # DuckDB is the optional extra, not a dependency of the service
    raise ImportError("the local Athena engine needs DuckDB: pip install 'athenaq[local]'") from exc

FETCH_ROWS = 4096
READ_BYTES = 64 * 1024
CHUNK_BYTES = 256 * 1024  # of a result object, per read when S3 GetObject serves it
# DuckDB forgets an interrupt that comes before its statement has started, so a stop
# repeats the interrupt at this pace until the worker has let go of the query.
INTERRUPT_REPEAT_SECONDS = 0.02
USER_ERROR = 2  # AthenaError.ErrorCategory: 1 system, 2 user
SYSTEM_ERROR = 1
SQL_ERROR_TYPE = 1100  # AthenaError.ErrorType: the user's SQL is invalid or failed
WRITE_ERROR_TYPE = 401  # AthenaError.ErrorType: the result could not be written
INTERNAL_ERROR_TYPE = 100  # AthenaError.ErrorType: internal service error
STOPPED_BY_SHUTDOWN = "Query cancelled: the local engine stopped"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_DDL = frozenset({"CREATE", "DROP", "ALTER"})
_UTILITY = frozenset({"SHOW", "DESCRIBE", "EXPLAIN", "SET", "RESET", "USE", "PRAGMA"})


@dataclass
class _Query:
    """One query's record; every field is read and written under the engine's lock."""

    id: str
    seq: int  # submission order, for listing
    sql: str
    statement_type: str
    database: str | None
    catalog: str | None
    workgroup: str
    output_location: str
    path: Path
    submitted_at: float
    submitted: float  # time.monotonic(), as are started and finished
    state: State = State.QUEUED
    started: float | None = None
    finished: float | None = None
    reason: str | None = None
    failure: Failure | None = None
    columns: tuple[Column, ...] = ()
    result_bytes: int = 0
    cursor: Any = None  # the DuckDB cursor while RUNNING
    stop_requested: bool = False
    parameters: tuple[str, ...] | None = None
    reuse_minutes: int | None = None
    # The request as a repeated ClientRequestToken must repeat it.
    request: tuple[Any, ...] = ()
    # What an execution that would reuse this one's result must share (None: nothing can).
    reuse_key: tuple[Any, ...] | None = None
    reused: bool = False  # answered with an earlier query's result file, run nothing

    def snapshot(self, now: float) -> Execution:
        end = self.finished if self.finished is not None else now
        started = self.started if self.started is not None else end
        # Whole milliseconds, as Athena gives them, that add up: the queue and the run
        # make the total, and the completion is the submission plus the total, so the
        # start a client takes from them (submission plus queue) is never after it.
        queue_ms, total_ms = _ms(started - self.submitted), _ms(end - self.submitted)
        return Execution(
            id=self.id,
            sql=self.sql,
            statement_type=self.statement_type,
            database=self.database,
            catalog=self.catalog,
            workgroup=self.workgroup,
            output_location=self.output_location,
            state=self.state,
            reason=self.reason,
            failure=self.failure,
            submitted_at=self.submitted_at,
            completed_at=None if self.finished is None else self.submitted_at + total_ms / 1000,
            queue_ms=queue_ms,
            engine_ms=total_ms - queue_ms,
            total_ms=total_ms,
            # Nothing is scanned from S3 here: the size of the result file stands in
            # (nothing for a reused result, as in Athena).
            scanned_bytes=0 if self.reused else self.result_bytes,
            parameters=self.parameters,
            reuse_minutes=self.reuse_minutes,
            reused=self.reused,
        )


@dataclass(frozen=True)
class _Outcome:
    state: State
    reason: str | None = None
    failure: Failure | None = None
    columns: tuple[Column, ...] = ()
    temp: Path | None = None  # the complete result under its temporary name


class _Stopped(Exception):
    """The worker saw a stop between two batches of rows."""


class QueryEngine(Engine):
    """Queries on DuckDB and their result files; SQL runs on `workers` threads. Every
    file under the data folder is an S3 object. `close` cancels what is left."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        max_running: int,
        workers: int,
        default_output_location: str | None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.max_running = max_running
        self.default_output_location = default_output_location
        self._db = duckdb.connect(":memory:")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="athenaq-local")
        self._lock = threading.Lock()
        self._queries: dict[str, _Query] = {}  # in submission order
        self._active: set[str] = set()  # QUEUED or RUNNING
        self._tokens: dict[str, str] = {}  # ClientRequestToken -> query id
        self._interrupters: set[asyncio.Task[None]] = set()
        self._closed = False

    def object_path(self, bucket: str, key: str) -> Path:
        """The file behind `s3://bucket/key`; ValueError when no file can be."""
        parts = key.split("/")
        if not _BUCKET.fullmatch(bucket) or not key or {".", ".."} & set(parts):
            raise ValueError(f"no local object can be s3://{bucket}/{key}")
        return self.data_dir.joinpath(bucket, *parts)

    def submit(
        self,
        sql: str,
        *,
        database: str | None = None,
        catalog: str | None = None,
        workgroup: str = "primary",
        output_location: str | None = None,
        token: str | None = None,
        parameters: Sequence[str] | None = None,
        reuse_minutes: int | None = None,
    ) -> str:
        """Queue `sql`; returns its id. A repeated `token` returns the first query's id.
        With `reuse_minutes`, a repeat of a query that SUCCEEDED at most that long ago
        is SUCCEEDED at once with that query's result file, and runs nothing."""
        query_id = str(uuid.uuid4())
        result_uri, path = self._result_location(output_location, query_id)
        parameters = None if parameters is None else tuple(parameters)
        request = (sql, parameters, database, catalog, workgroup, reuse_minutes)
        key = reuse_key(sql, parameters, database, catalog, workgroup, result_uri)
        with self._lock:
            if self._closed:
                raise Unavailable("the local engine has stopped")
            if token is not None and token in self._tokens:
                earlier = self._queries[self._tokens[token]]
                if earlier.request != request:
                    raise InvalidRequest("Idempotent parameters do not match")
                return earlier.id
            now = time.monotonic()
            reusable = None
            if key is not None and reuse_minutes is not None:
                reusable = self._reusable(key, now - reuse_minutes * 60)
            if reusable is None and len(self._active) >= self.max_running:
                raise TooManyQueries(f"{len(self._active)} queries are queued or running")
            query = _Query(
                id=query_id,
                seq=len(self._queries),
                sql=sql,
                statement_type=_statement_type(sql),
                database=database,
                catalog=catalog,
                workgroup=workgroup,
                output_location=result_uri,
                path=path,
                submitted_at=time.time(),
                submitted=now,
                parameters=parameters,
                reuse_minutes=reuse_minutes,
                request=request,
                reuse_key=key,
            )
            self._queries[query_id] = query
            if token is not None:
                self._tokens[token] = query_id
            if reusable is not None:
                # Athena points the new execution at the earlier one's result object.
                query.output_location, query.path = reusable.output_location, reusable.path
                query.columns, query.result_bytes = reusable.columns, reusable.result_bytes
                query.state, query.started, query.finished = State.SUCCEEDED, now, now
                query.reused = True
                return query_id
            self._active.add(query_id)
            self._pool.submit(self._run, query)
        return query_id

    def _reusable(self, key: tuple[Any, ...], since: float) -> _Query | None:
        """The newest query that ran and SUCCEEDED with this reuse key at `since` or later
        (monotonic), with the lock held."""
        for query in reversed(self._queries.values()):
            if (
                query.reuse_key == key
                and query.state is State.SUCCEEDED
                and not query.reused
                and query.finished is not None
                and query.finished >= since
            ):
                return query
        return None

    def get(self, query_id: str) -> Execution:
        with self._lock:
            return self._query(query_id).snapshot(time.monotonic())

    def stop(self, query_id: str) -> None:
        """Cancel a QUEUED query at once; interrupt a RUNNING one, which turns CANCELLED
        when its worker lets go of it. A finished query stays as it is, as in Athena."""
        with self._lock:
            query = self._query(query_id)
            if query.state is State.QUEUED:
                self._finish(query, _Outcome(State.CANCELLED, STOPPED_BY_USER))
            elif query.state is State.RUNNING and not query.stop_requested:
                query.stop_requested = True
                self._keep_interrupting(query)

    def list_ids(
        self, workgroup: str, limit: int, before: int | None = None
    ) -> tuple[list[str], int | None]:
        """Up to `limit` ids of `workgroup`, newest first, submitted before position
        `before`; also the position to pass for the next page (None at the end)."""
        with self._lock:
            queries = reversed(self._queries.values())
            ids = ((q.seq, q.id) for q in queries if q.workgroup == workgroup)
            return page_of_ids(ids, limit, before)

    async def results(self, query_id: str, position: int, limit: int) -> ResultPage:
        """`Engine.results`: `position` is a byte offset in the result file."""
        with self._lock:
            query = self._query(query_id)
            check_succeeded(query.state)
            path, columns, size = query.path, query.columns, query.result_bytes
        if not 0 <= position <= size:
            raise InvalidRequest("Invalid NextToken")
        try:
            rows, next_offset = await asyncio.to_thread(_read_rows, path, position, limit, size)
        except FileNotFoundError:
            raise InvalidRequest(f"The result file of {query_id} is gone") from None
        except ValueError as exc:  # an offset inside a row, or a file altered meanwhile
            raise InvalidRequest(f"Cannot read the result at this NextToken: {exc}") from None
        return ResultPage(columns, rows, next_offset)

    async def open_object(self, bucket: str, key: str) -> ResultObject:
        try:
            path = self.object_path(bucket, key)
            source = await asyncio.to_thread(path.open, "rb")
        except (ValueError, OSError):  # no such file, a folder, or a key no file can be
            raise NoSuchKey(key) from None
        return _ObjectFile(source)

    async def close(self) -> None:
        """Cancel queued queries, interrupt running ones and wait for the workers."""
        with self._lock:
            self._closed = True
            for query_id in list(self._active):
                query = self._queries[query_id]
                if query.state is State.QUEUED:
                    self._finish(query, _Outcome(State.CANCELLED, STOPPED_BY_SHUTDOWN))
                elif not query.stop_requested:
                    query.stop_requested = True
                    self._keep_interrupting(query)
        await asyncio.to_thread(self._pool.shutdown)
        await asyncio.gather(*self._interrupters)
        self._db.close()

    def _query(self, query_id: str) -> _Query:
        query = self._queries.get(query_id)
        if query is None:
            raise QueryNotFound(query_id)
        return query

    def _result_location(self, output_location: str | None, query_id: str) -> tuple[str, Path]:
        location = output_location or self.default_output_location
        if location is None:
            raise InvalidRequest(
                "ResultConfiguration.OutputLocation is required: "
                "the local engine was given no default output location"
            )
        bucket, key = result_location(location, query_id)
        try:
            return f"s3://{bucket}/{key}", self.object_path(bucket, key)
        except ValueError as exc:
            raise InvalidRequest(f"Invalid OutputLocation {location}: {exc}") from None

    def _finish(self, query: _Query, outcome: _Outcome) -> _Outcome:
        """Record `outcome`, with the lock held (on a worker thread or the event loop).
        A reader sees SUCCEEDED only once the result file has its final name."""
        if outcome.state is State.SUCCEEDED and outcome.temp is not None:
            try:
                size = outcome.temp.stat().st_size
                os.replace(outcome.temp, query.path)
            except OSError as exc:
                message = f"Cannot write the result to {query.output_location}: {exc}"
                failure = Failure(SYSTEM_ERROR, WRITE_ERROR_TYPE, message)
                outcome = _Outcome(State.FAILED, message, failure, temp=outcome.temp)
            else:
                query.columns, query.result_bytes = outcome.columns, size
        query.state, query.reason, query.failure = outcome.state, outcome.reason, outcome.failure
        query.finished, query.cursor = time.monotonic(), None
        self._active.discard(query.id)
        return outcome

    def _keep_interrupting(self, query: _Query) -> None:
        """Interrupt a RUNNING query's SQL until its worker lets go of it; called with
        the lock held, on the event loop."""
        task = asyncio.get_running_loop().create_task(self._interrupt_until_finished(query))
        self._interrupters.add(task)
        task.add_done_callback(self._interrupters.discard)

    async def _interrupt_until_finished(self, query: _Query) -> None:
        while True:
            with self._lock:
                if query.cursor is None:
                    return
                query.cursor.interrupt()
            await asyncio.sleep(INTERRUPT_REPEAT_SECONDS)

    # On worker threads.

    def _run(self, query: _Query) -> None:
        with self._lock:
            if query.state is not State.QUEUED:
                return  # stopped while it waited for a thread
            cursor = self._db.cursor()
            query.state, query.started, query.cursor = State.RUNNING, time.monotonic(), cursor
        try:
            outcome = self._execute(query, cursor)
        except Exception as exc:  # a worker must never leave its query RUNNING for ever
            logger.exception("local query crashed", athena_query_execution_id=query.id)
            failure = Failure(SYSTEM_ERROR, INTERNAL_ERROR_TYPE, repr(exc))
            outcome = _Outcome(State.FAILED, failure.message, failure)
        with self._lock:
            if outcome.state is State.SUCCEEDED and query.stop_requested:
                # The stop came while the query was RUNNING: it wins over a late success.
                outcome = replace(outcome, state=State.CANCELLED, reason=_stop_reason(self._closed))
            outcome = self._finish(query, outcome)
        if outcome.temp is not None and outcome.state is not State.SUCCEEDED:
            outcome.temp.unlink(missing_ok=True)
        cursor.close()

    def _execute(self, query: _Query, cursor: Any) -> _Outcome:
        try:
            bound = values(query.sql, query.parameters)
        except ParameterError as exc:
            message = str(exc)
            return _Outcome(State.FAILED, message, Failure(USER_ERROR, SQL_ERROR_TYPE, message))
        try:
            if not _use_catalog(cursor, query.catalog):
                failure = unknown_catalog(query.catalog or "")
                return _Outcome(State.FAILED, failure.message, failure)
            # The values are bound to the placeholders, never pasted into the SQL.
            cursor.execute(query.sql, bound or None)
            columns = tuple(column(name, kind) for name, kind, *_ in cursor.description or ())
            temp = self._write_result(query, cursor, columns)
        except (duckdb.InterruptException, _Stopped):
            return _Outcome(State.CANCELLED, _stop_reason(self._closed))
        except duckdb.Error as exc:
            message = str(exc)
            return _Outcome(State.FAILED, message, Failure(USER_ERROR, SQL_ERROR_TYPE, message))
        except OSError as exc:
            message = f"Cannot write the result to {query.output_location}: {exc}"
            return _Outcome(State.FAILED, message, Failure(SYSTEM_ERROR, WRITE_ERROR_TYPE, message))
        return _Outcome(State.SUCCEEDED, columns=columns, temp=temp)

    def _write_result(self, query: _Query, cursor: Any, columns: tuple[Column, ...]) -> Path:
        """Write the result, streaming, under a temporary name in the final folder."""
        query.path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=f".{query.id}.", suffix=".partial", dir=query.path.parent
        )
        try:
            with open(handle, "w", encoding="utf-8", newline="") as out:
                if columns:  # a statement without a result (some DDL) writes an empty file
                    out.write(format_row([c.name for c in columns]))
                    while batch := cursor.fetchmany(FETCH_ROWS):
                        # Read without the lock: a stale False costs one more batch.
                        if query.stop_requested:
                            raise _Stopped
                        out.write(
                            "".join(
                                format_row([None if v is None else text(v) for v in row])
                                for row in batch
                            )
                        )
        except BaseException:
            os.unlink(name)
            raise
        return Path(name)


class _ObjectFile(ResultObject):
    def __init__(self, source: IO[bytes]) -> None:
        info = os.fstat(source.fileno())
        # S3's ETag is the MD5 of the content; reading a whole object for it on every
        # request would defeat streaming, so this one changes with the file's identity.
        identity = f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}".encode()
        etag = '"' + hashlib.md5(identity, usedforsecurity=False).hexdigest() + '"'
        super().__init__(info.st_size, info.st_mtime, etag)
        self._source = source

    async def chunks(self, first: int) -> AsyncIterator[bytes]:
        await asyncio.to_thread(self._source.seek, first)
        while chunk := await asyncio.to_thread(self._source.read, CHUNK_BYTES):
            yield chunk

    async def close(self) -> None:
        await asyncio.to_thread(self._source.close)


def _read_rows(path: Path, offset: int, limit: int, size: int) -> tuple[list[Row], int | None]:
    parser = CsvParser()
    rows: list[Row] = []
    with path.open("rb") as source:
        source.seek(offset)
        while len(rows) < limit and (chunk := source.read(READ_BYTES)):
            rows += parser.feed(chunk)
        if len(rows) < limit:
            rows += parser.close()  # at the end of the file, which must end a row
    rows = rows[:limit]
    # The file is in the canonical form format_row writes, so a row formatted again
    # has exactly the length it has in the file: that gives the next row's offset.
    end = offset + sum(len(format_row(row).encode()) for row in rows)
    return rows, end if end < size else None


def _stop_reason(engine_closed: bool) -> str:
    return STOPPED_BY_SHUTDOWN if engine_closed else STOPPED_BY_USER


def _statement_type(sql: str) -> str:
    word = first_word(sql)
    return "DDL" if word in _DDL else "UTILITY" if word in _UTILITY else "DML"


def _use_catalog(cursor: Any, catalog: str | None) -> bool:
    """Resolve the query's names in `catalog`: Athena's default one is DuckDB's own
    database; another is a database attached to DuckDB under that name (compared in
    lower case, as Athena compares catalog names). False when there is none."""
    if catalog is None or catalog.lower() == DEFAULT_CATALOG:
        return True
    cursor.execute(
        "SELECT database_name FROM duckdb_databases() WHERE lower(database_name) = lower(?)",
        [catalog],
    )
    found = cursor.fetchone()
    if found is None:
        return False
    cursor.execute(f'USE "{found[0].replace(chr(34), chr(34) * 2)}"')
    return True


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)
