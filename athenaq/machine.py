"""The query state machine: the states, the legal transitions, and the one writer of state.

Handlers (submit, cancel, refresh) and the poller (Athena's observations) change
a query only through `Machine.apply`, which checks the transition table and
writes it with a compare-and-set in the store. Transitions of one query are also
serialized in this process by a per-id lock: the lock saves work, the SQL guard
keeps several processes correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from loguru import logger

from athenaq.athena import AthenaCallError, ResultObjectUnreadable
from athenaq.clock import utcnow
from athenaq.errors import (
    IllegalTransition,
    QueryCancelled,
    QueryFailed,
    QueryFinished,
    QueryNotFound,
    QueryRunning,
    ResultsMissing,
    ServiceUnavailable,
)
from athenaq.results import MalformedResult

if TYPE_CHECKING:
    from athenaq.athena import Athena, Execution
    from athenaq.results import ResultFiles, ResultReader
    from athenaq.store import QueryRecord, Store


class QueryState(StrEnum):
    """A query's state; the names are Athena's own."""

    #: accepted; Athena has not started it, or the service has not sent it yet
    QUEUED = "QUEUED"
    #: Athena runs it, or it succeeded in Athena and its results are being stored
    RUNNING = "RUNNING"
    #: finished, and its results are stored and readable
    SUCCEEDED = "SUCCEEDED"
    #: Athena, or the service storing its results, failed it; state_reason says why
    FAILED = "FAILED"
    #: stopped on a client's request before it finished
    CANCELLED = "CANCELLED"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({QueryState.SUCCEEDED, QueryState.FAILED, QueryState.CANCELLED})


class Event(StrEnum):
    """What happened to a query."""

    #: Athena runs the query, or it succeeded there and its results are being stored
    RUN = "run"
    #: the results are stored
    SUCCEED = "succeed"
    #: Athena failed the query, or its results could not be stored
    FAIL = "fail"
    #: Athena confirmed a stop, or the query was cancelled before it was sent
    CANCEL = "cancel"
    #: a client asked for a new execution of a finished query
    REFRESH = "refresh"


Q = QueryState
TRANSITIONS: Mapping[tuple[QueryState, Event], QueryState] = {
    (Q.QUEUED, Event.RUN): Q.RUNNING,
    (Q.QUEUED, Event.SUCCEED): Q.SUCCEEDED,
    (Q.QUEUED, Event.FAIL): Q.FAILED,
    (Q.QUEUED, Event.CANCEL): Q.CANCELLED,
    (Q.RUNNING, Event.SUCCEED): Q.SUCCEEDED,
    (Q.RUNNING, Event.FAIL): Q.FAILED,
    (Q.RUNNING, Event.CANCEL): Q.CANCELLED,
    (Q.SUCCEEDED, Event.REFRESH): Q.QUEUED,
    (Q.FAILED, Event.REFRESH): Q.QUEUED,
    (Q.CANCELLED, Event.REFRESH): Q.QUEUED,
}
# Pauses (seconds) between the checks of a stop's confirmation before a cancel answers 202.
STOP_CONFIRM_DELAYS = (0.0, 0.05, 0.1, 0.2, 0.4)
# How often an operation re-reads and tries again when another process changed the query.
RACE_RETRIES = 5
LEGAL_MOVES = frozenset((source, target) for (source, _), target in TRANSITIONS.items())


def next_state(state: QueryState, event: Event) -> QueryState:
    """The state `event` leads to from `state`; IllegalTransition when the table has no move."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state.value, event.value) from None


# Results metadata a refresh clears, so nothing of the old execution survives it.
_EXECUTION_COLUMNS: dict[str, Any] = {
    "athena_execution_id": None,
    "cancel_requested_at": None,
    "started_at": None,
    "completed_at": None,
    "results_at": None,
    "row_count": None,
    "results_source": None,
    "data_scanned_bytes": None,
    "engine_execution_ms": None,
    "queue_ms": None,
    "total_execution_ms": None,
}


def _statistics(execution: Execution) -> dict[str, Any]:
    return {
        "completed_at": execution.completed_at,
        "data_scanned_bytes": execution.data_scanned_bytes,
        "engine_execution_ms": execution.engine_execution_ms,
        "queue_ms": execution.queue_ms,
        "total_execution_ms": execution.total_execution_ms,
    }


class KeyedLock:
    """An asyncio lock per key, dropped when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Machine:
    """Drives queries through their states; the only writer of `state`."""

    def __init__(
        self,
        store: Store,
        athena: Athena,
        results: ResultFiles,
        *,
        database: str,
        workgroup: str,
        retry_after: float,
    ) -> None:
        self.store = store
        self.athena = athena
        self.results = results
        self.database = database
        self.workgroup = workgroup
        self.retry_after = retry_after
        self.lock = KeyedLock()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the single writer --------------------------------------------------------------

    async def apply(
        self,
        current: QueryRecord,
        event: Event,
        *,
        reason: str | None = None,
        changes: Mapping[str, Any] | None = None,
    ) -> QueryRecord | None:
        """Apply `event` to the query as last read (`current`).

        Raises IllegalTransition when the table forbids the move. Returns the new
        record, or None when another writer changed the query since it was read
        (the compare-and-set lost): the caller re-reads and decides again."""
        target = next_state(current.state, event)
        columns = dict(changes or {})
        columns["state_reason"] = reason if target in (Q.FAILED, Q.CANCELLED) else None
        if not await self.store.transition(current, target, reason, columns):
            logger.info(
                "transition lost a race",
                query_id=current.id,
                event=event.value,
                state=current.state.value,
            )
            return None
        logger.info(
            "state changed",
            query_id=current.id,
            athena_query_execution_id=columns.get(
                "athena_execution_id", current.athena_execution_id
            ),
            from_state=current.state.value,
            state=target.value,
            event=event.value,
            reason=reason,
        )
        return dataclasses.replace(current, state=target, version=current.version + 1, **columns)

    # -- what clients ask -------------------------------------------------------------

    async def get(self, query_id: str) -> QueryRecord:
        record = await self.store.get(query_id)
        if record is None:
            raise QueryNotFound(query_id)
        return record

    async def read_results(self, query_id: str) -> tuple[QueryRecord, ResultReader]:
        """A SUCCEEDED query's stored results, opened (the caller closes the reader);
        the state's error otherwise."""
        record = await self.get(query_id)
        for _ in range(3):
            if record.state == Q.CANCELLED:
                raise QueryCancelled(query_id)
            if record.state == Q.FAILED:
                raise QueryFailed(query_id, record.state_reason)
            if record.state != Q.SUCCEEDED or record.athena_execution_id is None:
                raise self.running_error(record)
            try:
                return record, await self.results.open(query_id, record.athena_execution_id)
            except FileNotFoundError:
                # Refreshed between reading the state and the file: the state now says why.
                latest = await self.get(query_id)
                if latest.version == record.version:
                    break
                record = latest
        raise ResultsMissing(query_id)

    async def submit(self, sql: str) -> QueryRecord:
        """Record a new QUEUED query and send it to Athena in the background."""
        record = await self.store.create(
            str(uuid.uuid4()), sql, self.database, self.workgroup, reason="submitted"
        )
        logger.info("state changed", query_id=record.id, state=record.state.value, event="submit")
        self.spawn(self.launch(record.id))
        return record

    async def refresh(self, query_id: str) -> QueryRecord:
        """Put a finished query back to QUEUED for a new Athena execution.

        The state leaves SUCCEEDED before the old result file is removed, so no
        reader is ever handed the old results as the new ones."""
        async with self.lock(query_id):
            current = await self.get(query_id)
            if not current.is_finished:
                raise self.running_error(current)
            changes = {**_EXECUTION_COLUMNS, "run": current.run + 1}
            refreshed = await self.apply(current, Event.REFRESH, reason="refresh", changes=changes)
            if refreshed is None:
                # Another process refreshed it first: it is QUEUED or further now.
                raise self.running_error(await self.get(query_id))
            await self.results.delete(query_id, current.athena_execution_id)
        self.spawn(self.launch(query_id))
        return refreshed

    async def cancel(self, query_id: str) -> tuple[QueryRecord, bool]:
        """Stop an unfinished query in Athena.

        Returns the record and whether the query is CANCELLED now (Athena confirmed the
        stop). When Athena has not confirmed yet the poller finishes the cancel. A query
        that finished in Athena first keeps its outcome: QueryFinished."""
        async with self.lock(query_id):
            for _ in range(RACE_RETRIES):
                current = await self.get(query_id)
                _raise_if_finished(current)
                if current.athena_execution_id is None:
                    cancelled = await self.apply(
                        current,
                        Event.CANCEL,
                        reason="cancelled before it was sent to Athena",
                        changes={"completed_at": utcnow()},
                    )
                    if cancelled is not None:
                        return cancelled, True
                # Marked before the stop, so whichever process polls Athena's CANCELLED
                # first knows the client asked for it.
                elif current.cancel_requested_at is not None or await self.store.update(
                    current, {"cancel_requested_at": utcnow()}
                ):
                    return await self._stop(query_id, current.athena_execution_id)
        raise ServiceUnavailable(f"query {query_id} kept changing; try the cancel again")

    async def _stop(self, query_id: str, execution_id: str) -> tuple[QueryRecord, bool]:
        try:
            await self.athena.stop(execution_id)
        except AthenaCallError as exc:
            if not exc.is_client_error:
                raise ServiceUnavailable("Athena did not take the stop; try again") from exc
            # Athena refused the stop: the execution is finished there; ask what it became.
        execution = await self._settled(execution_id)
        if execution is not None and execution.state in (Q.SUCCEEDED, Q.FAILED):
            raise QueryFinished(
                query_id, execution.state, "it finished in Athena before the stop arrived"
            )
        confirmed = execution is not None and execution.state == Q.CANCELLED
        for _ in range(RACE_RETRIES):
            current = await self.get(query_id)
            if current.state == Q.CANCELLED:
                return current, True  # the poller recorded Athena's CANCELLED first
            _raise_if_finished(current)
            if not confirmed:
                return current, False
            cancelled = await self.apply(
                current,
                Event.CANCEL,
                reason="cancelled by client",
                changes=_statistics(execution) if execution else {},
            )
            if cancelled is not None:
                return cancelled, True
        raise ServiceUnavailable(f"query {query_id} kept changing; try the cancel again")

    async def _settled(self, execution_id: str) -> Execution | None:
        """Athena's view of a just-stopped execution, asked a few times over a short while:
        Athena confirms a stop within moments, and a client would rather hear 200 than 202."""
        execution = None
        for delay in STOP_CONFIRM_DELAYS:
            await asyncio.sleep(delay)
            try:
                execution = await self.athena.get(execution_id)
            except AthenaCallError:
                continue
            if execution.state not in (Q.QUEUED, Q.RUNNING):
                break
        return execution

    def running_error(self, record: QueryRecord) -> QueryRunning:
        return QueryRunning(record.id, record.state.value, self.retry_after)

    # -- what the poller reports ------------------------------------------------------

    async def launch(self, query_id: str) -> None:
        """Send a QUEUED query that has no Athena execution yet to Athena.

        A throttled or failed call leaves it QUEUED for the poller to try again;
        Athena refusing the query itself fails it."""
        async with self.lock(query_id):
            current = await self.store.get(query_id)
            if current is None or current.state != Q.QUEUED or current.athena_execution_id:
                return
            token = f"athenaq-{current.id}-{current.run}"
            try:
                execution_id = await self.athena.start(
                    current.query_text, current.database_name, current.workgroup, token
                )
            except AthenaCallError as exc:
                if exc.is_client_error:
                    await self.apply(
                        current,
                        Event.FAIL,
                        reason=f"Athena refused the query: {exc}",
                        changes={"completed_at": utcnow()},
                    )
                    return
                # Throttled, or Athena out of reach (no credentials, no network): the
                # poller tries again at its next tick, and the status says why meanwhile.
                waiting = f"not sent to Athena yet, trying again: {exc}"
                if current.state_reason != waiting:
                    await self.store.update(current, {"state_reason": waiting})
                return
            sent = {"athena_execution_id": execution_id, "state_reason": None}
            if await self.store.update(current, sent):
                logger.info(
                    "sent to Athena", query_id=query_id, athena_query_execution_id=execution_id
                )
                return
        latest = await self.store.get(query_id)
        if latest is None or latest.athena_execution_id != execution_id:
            # Another process sent it too, or it was cancelled meanwhile: stop the orphan.
            logger.warning(
                "stopping an execution nobody tracks",
                query_id=query_id,
                athena_query_execution_id=execution_id,
            )
            with contextlib.suppress(AthenaCallError):
                await self.athena.stop(execution_id)

    async def observe(self, query_id: str, execution: Execution) -> bool:
        """Feed Athena's view of the query's current execution into the machine.

        Returns True when Athena says SUCCEEDED and the results must be stored."""
        async with self.lock(query_id):
            current = await self.store.get(query_id)
            if (
                current is None
                or current.is_finished
                or current.athena_execution_id != execution.execution_id
            ):
                return False  # a stale observation: refreshed or finished meanwhile
            if execution.state in (Q.RUNNING, Q.SUCCEEDED) and current.state == Q.QUEUED:
                current = await self.apply(
                    current,
                    Event.RUN,
                    reason=f"Athena reports {execution.state}",
                    changes={"started_at": utcnow()},
                )
                if current is None:
                    return False
            if execution.state == Q.SUCCEEDED:
                return True
            if execution.state == Q.FAILED:
                await self.apply(
                    current,
                    Event.FAIL,
                    reason=execution.reason or "failed in Athena",
                    changes=_statistics(execution),
                )
            elif execution.state == Q.CANCELLED:
                reason = (
                    "cancelled by client"
                    if current.cancel_requested_at
                    else "cancelled in Athena, outside athenaq"
                )
                await self.apply(
                    current, Event.CANCEL, reason=reason, changes=_statistics(execution)
                )
            return False

    async def execution_lost(self, query_id: str, execution_id: str, message: str) -> None:
        """Athena no longer knows the execution (expired history): the query cannot finish."""
        async with self.lock(query_id):
            current = await self.store.get(query_id)
            if current and not current.is_finished and current.athena_execution_id == execution_id:
                await self.apply(
                    current,
                    Event.FAIL,
                    reason=f"Athena does not know the execution: {message}",
                    changes={"completed_at": utcnow()},
                )

    async def store_results(self, query_id: str, execution: Execution) -> None:
        """Download a SUCCEEDED execution's results, then (and only then) set SUCCEEDED.

        The results come from the result object in S3 when it can be read, from
        GetQueryResults otherwise; `results_source` records which. The download holds no
        lock: cancels, refreshes and other queries go on meanwhile."""
        execution_id = execution.execution_id
        try:
            row_count, source = await self._write_results(query_id, execution)
        except (AthenaCallError, OSError) as exc:
            if isinstance(exc, AthenaCallError) and not exc.is_client_error:
                raise  # throttled or unavailable: the next poll tries again
            async with self.lock(query_id):
                current = await self.store.get(query_id)
                if (
                    current
                    and current.state == Q.RUNNING
                    and current.athena_execution_id == execution_id
                ):
                    await self.apply(
                        current,
                        Event.FAIL,
                        reason=f"results could not be stored: {exc}",
                        changes=_statistics(execution),
                    )
            return
        changes = {
            **_statistics(execution),
            "results_at": utcnow(),
            "row_count": row_count,
            "results_source": source,
        }
        async with self.lock(query_id):
            for _ in range(RACE_RETRIES):
                current = await self.store.get(query_id)
                if not (
                    current
                    and current.state == Q.RUNNING
                    and current.athena_execution_id == execution_id
                ):
                    break
                # A lost compare-and-set means another writer touched the row (a cancel
                # request, another process's download): read again and retry.
                if await self.apply(
                    current, Event.SUCCEED, reason="results stored", changes=changes
                ):
                    return
            stored_elsewhere = (
                current is not None
                and current.state == Q.SUCCEEDED
                and current.athena_execution_id == execution_id
            )
            if not stored_elsewhere:
                # Cancelled or refreshed while downloading: this file belongs to nobody.
                await self.results.delete(query_id, execution_id)

    async def _write_results(self, query_id: str, execution: Execution) -> tuple[int, str]:
        """Write the execution's result file; returns the row count and the source used.

        The S3 object is the fast way: it already is the stored form, so its bytes are
        copied. When it cannot be used, even after some of it was written (an object cut
        off shows only at its end), the write starts over from GetQueryResults. A result
        file is renamed into place only once complete, so the file served never mixes
        the two sources."""
        execution_id = execution.execution_id
        started = time.monotonic()
        try:
            rows = await self._copy_object(query_id, execution)
            source = "s3"
        except ResultObjectUnreadable as exc:
            logger.warning(
                "result object unreadable; reading the results through GetQueryResults",
                query_id=query_id,
                athena_query_execution_id=execution_id,
                location=exc.location,
                error_code=exc.code,
                error=exc.message,
            )
            rows = await self.results.write(
                query_id, execution_id, self.athena.result_pages(execution_id)
            )
            source = "api"
        logger.info(
            "results stored",
            query_id=query_id,
            athena_query_execution_id=execution_id,
            row_count=rows,
            results_source=source,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return rows, source

    async def _copy_object(self, query_id: str, execution: Execution) -> int:
        """Store the result object's bytes; ResultObjectUnreadable if they cannot be used."""
        columns, labels = await self.athena.result_columns(execution.execution_id)
        chunks = self.athena.object_chunks(execution)
        try:
            return await self.results.copy_csv(
                query_id, execution.execution_id, columns, labels, chunks
            )
        except MalformedResult as exc:
            location = execution.output_location or ""
            raise ResultObjectUnreadable(location, "MalformedObject", str(exc)) from exc

    # -- background work --------------------------------------------------------------

    def spawn(self, work: Awaitable[None]) -> None:
        """Run `work` in the background; `drain` waits for it at shutdown."""

        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("background work failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for background writes in flight (launches, cancels) to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _raise_if_finished(record: QueryRecord) -> None:
    if record.state == Q.CANCELLED:
        raise QueryCancelled(record.id)
    if record.state.is_finished:
        raise QueryFinished(record.id, record.state.value)
