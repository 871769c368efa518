"""What the wire layer (`athenaq.local.api`, `athenaq.local.server`) asks of an engine.

An engine keeps queries and their results; the wire layer alone speaks Athena's JSON 1.1
and S3's replies, and turns the errors below into theirs. Two engines implement `Engine`:
DuckDB's (`athenaq.local.engine`) and the project's scripted test endpoint.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from athenaq.csvformat import Row
from athenaq.local.values import Column

STOPPED_BY_USER = "Query cancelled by user"
_S3_URI = re.compile(r"s3://([^/]+)/?(.*)", re.DOTALL)
_FIRST_WORD = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*(\w+)", re.DOTALL)
# Athena reuses the results of these statements only.
_REUSABLE = frozenset({"SELECT", "WITH", "VALUES", "EXECUTE"})
# Athena's catalog when a query names none, in the lower case Athena compares names in.
DEFAULT_CATALOG = "awsdatacatalog"


class State(StrEnum):
    QUEUED = "QUEUED"  # accepted, not running yet
    RUNNING = "RUNNING"  # running; its result is being written
    SUCCEEDED = "SUCCEEDED"  # finished; its result is complete
    FAILED = "FAILED"  # refused or failed by the engine, or its result could not be written
    CANCELLED = "CANCELLED"  # stopped by StopQueryExecution or by the engine's shutdown


ACTIVE = frozenset({State.QUEUED, State.RUNNING})


class InvalidRequest(Exception):
    """The request cannot be served as asked (Athena's InvalidRequestException)."""


class QueryNotFound(InvalidRequest):
    def __init__(self, query_id: str) -> None:
        super().__init__(f"QueryExecution {query_id} was not found")


class TooManyQueries(Exception):
    """Too many queries are queued or running (Athena's TooManyRequestsException)."""


class Unavailable(Exception):
    """The engine cannot serve this now, e.g. it has stopped (Athena's 500)."""


class NoSuchKey(Exception):
    """No S3 object at this key (S3's 404 NoSuchKey)."""


class AccessDenied(Exception):
    """The S3 object is not readable (S3's 403 AccessDenied)."""


@dataclass(frozen=True)
class Failure:
    """Athena's AthenaError of a FAILED query."""

    category: int  # 1 system, 2 user
    error_type: int
    message: str


@dataclass(frozen=True)
class Execution:
    """What the engine says of one query at one moment."""

    id: str
    sql: str
    statement_type: str
    database: str | None
    catalog: str | None
    workgroup: str
    # The result's S3 URI, `<OutputLocation><id>.csv`; for a reused result, the earlier
    # execution's.
    output_location: str
    state: State
    reason: str | None
    failure: Failure | None
    submitted_at: float  # seconds since the epoch
    completed_at: float | None
    queue_ms: int
    engine_ms: int
    total_ms: int
    scanned_bytes: int
    parameters: tuple[str, ...] | None = None  # ExecutionParameters, as given
    reuse_minutes: int | None = None  # ResultReuseByAgeConfiguration, when enabled
    reused: bool = False  # it answered with an earlier execution's result


@dataclass(frozen=True)
class ResultPage:
    columns: tuple[Column, ...]
    rows: list[Row]  # the header row first on the first page
    next_position: int | None  # where the next page starts (in the engine's terms); None: end


class ResultObject(ABC):
    """An S3 object being served, read from its start or, when its size is known, from
    any byte (S3 Range); `close` releases it."""

    def __init__(self, size: int | None, modified: float, etag: str) -> None:
        self.size = size  # None: sent without Content-Length, whole
        self.modified = modified  # seconds since the epoch
        self.etag = etag

    @abstractmethod
    def chunks(self, first: int) -> AsyncIterator[bytes]:
        """The bytes from `first` (0 unless the size is known) to the end, in chunks."""

    async def close(self) -> None:  # noqa: B027
        """Release what reading held open."""


class Engine(ABC):
    """Queries and their result objects. The methods that are not coroutines are called
    on the event loop and return at once."""

    @abstractmethod
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
        """Queue `sql`; returns its id. A repeated `token` returns the first query's id
        (InvalidRequest when the request differs). `parameters` are bound to the SQL's
        `?` (athenaq.local.parameters); with `reuse_minutes`, a repeat of a SUCCEEDED
        query that is at most that old (see `reuse_key`) answers with its result, at
        once, and runs nothing."""

    @abstractmethod
    def get(self, query_id: str) -> Execution: ...

    @abstractmethod
    def stop(self, query_id: str) -> None:
        """Cancel an active query (maybe later); a finished query stays as it is."""

    @abstractmethod
    def list_ids(
        self, workgroup: str, limit: int, before: int | None = None
    ) -> tuple[list[str], int | None]:
        """Up to `limit` ids of `workgroup`, newest first, from position `before` (None:
        the newest); also the position of the next page (None at the end)."""

    @abstractmethod
    async def results(self, query_id: str, position: int, limit: int) -> ResultPage:
        """Up to `limit` rows of a SUCCEEDED query's result, from `position` (0, or a
        `next_position`); the header row is the first row at 0."""

    @abstractmethod
    async def open_object(self, bucket: str, key: str) -> ResultObject:
        """The object at `s3://bucket/key`; NoSuchKey or AccessDenied."""

    async def admit(self, operation: str, query_id: str | None) -> None:  # noqa: B027
        """Called before each request is served: `operation` is an Athena operation's
        name, GetObject or HeadObject. A scripted engine may delay or refuse here."""

    async def started(self, query_id: str) -> None:  # noqa: B027
        """Called after a start made (or found again) `query_id`, before it is answered:
        a scripted engine may hold the answer here, as a network may lose it."""

    @abstractmethod
    async def close(self) -> None:
        """Stop: cancel or let go of what is left."""


def first_word(sql: str) -> str:
    """The SQL's first word in upper case, past spaces and comments."""
    found = _FIRST_WORD.match(sql)
    return found[1].upper() if found else ""


def reuse_key(
    sql: str,
    parameters: Sequence[str] | None,
    database: str | None,
    catalog: str | None,
    workgroup: str,
    result_uri: str,
) -> tuple[Any, ...] | None:
    """What makes two executions the same for Athena's result reuse: the SQL text and
    its parameters, the database and catalog, the workgroup and the folder of the
    result object (`result_uri`'s); None for a statement whose result Athena never
    reuses (only SELECT and EXECUTE)."""
    if first_word(sql) not in _REUSABLE:
        return None
    return (
        sql,
        tuple(parameters or ()),
        database,
        (catalog or DEFAULT_CATALOG).lower(),
        workgroup,
        result_uri.rpartition("/")[0],
    )


def unknown_catalog(catalog: str) -> Failure:
    """How Athena fails a query whose QueryExecutionContext names a catalog it lacks."""
    return Failure(2, 1100, f"CATALOG_NOT_FOUND: Catalog '{catalog}' does not exist")


def result_location(output_location: str, query_id: str) -> tuple[str, str]:
    """The bucket and key of a query's result object, `<OutputLocation><id>.csv`."""
    found = _S3_URI.fullmatch(output_location)
    if found is None:
        raise InvalidRequest(f"OutputLocation is not an s3:// URI: {output_location}")
    bucket, prefix = found[1], found[2]
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, f"{prefix}{query_id}.csv"


def check_succeeded(state: State) -> None:
    """GetQueryResults' refusal of a query that has not SUCCEEDED."""
    if state in ACTIVE:
        raise InvalidRequest(f"Query has not yet finished. Current state: {state}")
    if state is not State.SUCCEEDED:
        raise InvalidRequest(f"Query did not finish successfully. Final query state: {state}")


def page_of_ids(
    newest_first: Iterable[tuple[int, str]], limit: int, before: int | None
) -> tuple[list[str], int | None]:
    """`Engine.list_ids` over (position, id) pairs of one workgroup, newest first, the
    position being a query's submission order."""
    ids: list[str] = []
    for position, query_id in newest_first:
        if before is not None and position >= before:
            continue
        if len(ids) == limit:
            return ids, position + 1
        ids.append(query_id)
    return ids, None
