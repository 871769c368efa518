"""What clients ask of their queries: submit, refresh and cancel.

Each reads the query through the caller's eyes (another owner's query is not found),
decides, and changes its state only through the machine, the one writer, under the
machine's per-query lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from loguru import logger

from athenaq.athena import Athena, AthenaCallError, Execution
from athenaq.cachekey import cache_key
from athenaq.clock import utcnow
from athenaq.config import host_key
from athenaq.errors import (
    IdempotencyKeyReused,
    QueryCancelled,
    QueryFinished,
    QueryRunning,
    ServiceUnavailable,
    ValidationFailed,
)
from athenaq.identity import Caller
from athenaq.lookup import Lookup
from athenaq.machine import RACE_RETRIES, Machine
from athenaq.policy import Policy
from athenaq.results import ResultFiles
from athenaq.states import (
    DEFAULT_CATALOG,
    EXECUTION_FIELDS,
    IDEMPOTENCY_HOURS,
    NO_OPTIONS,
    Event,
    FirstAnswer,
    Idempotency,
    QueryRecord,
    QueryState,
    SubmitOptions,
)
from athenaq.store import Store
from athenaq.store.idempotent import IdempotencyKeyTaken, KeyVanished

Q = QueryState
# A SQL text longer than this has its cache key made on a worker thread: tokenizing takes
# about a millisecond at this size (a second at Athena's limit), unless the text was seen
# lately (cachekey.MEMO_SIZE).
INLINE_CACHE_KEY_CHARS = 1_000


class Outcome(StrEnum):
    """What a submit's answer is."""

    #: a new QUEUED query (202)
    CREATED = "created"
    #: the owner's SUCCEEDED query with the same cache key, results young enough (200)
    CACHED = "cached"
    #: the owner's QUEUED or RUNNING query with the same cache key (202)
    JOINED = "joined"

    @property
    def status(self) -> int:
        return 200 if self is Outcome.CACHED else 202


@dataclasses.dataclass(frozen=True)
class Submitted:
    """A submit's answer: the query, how it came, and whether it is the first answer of
    the request's Idempotency-Key again (then nothing else was done)."""

    record: QueryRecord
    outcome: Outcome
    replayed: bool = False

    @property
    def started(self) -> bool:
        """Whether this submit made the query, which is to be sent to Athena."""
        return self.outcome is Outcome.CREATED and not self.replayed


class Commands:
    """Submits, refreshes and cancels, as the handlers ask them."""

    def __init__(
        self,
        machine: Machine,
        store: Store,
        athena: Athena,
        results: ResultFiles,
        lookup: Lookup,
        policy: Policy,
        *,
        database: str,
        workgroup: str,
        catalog: str = DEFAULT_CATALOG,
        callback_hosts: tuple[str, ...] = (),
        cancel_wait: float,
    ) -> None:
        self.machine = machine
        self.store = store
        self.athena = athena
        self.results = results
        self.lookup = lookup
        self.policy = policy
        # Where a submitted query runs in Athena unless it says otherwise (athena.database,
        # athena.workgroup and athena.catalog).
        self.database = database
        self.workgroup = workgroup
        self.catalog = catalog
        # The hosts a callback_url may name (webhooks.allowed_hosts).
        self.callback_hosts = callback_hosts
        # How long a cancel waits for Athena to take and confirm its stop
        # (athena.cancel_wait_seconds).
        self.cancel_wait = cancel_wait

    async def submit(
        self,
        sql: str,
        caller: Caller,
        options: SubmitOptions = NO_OPTIONS,
        *,
        max_age_seconds: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Submitted:
        """Record a new QUEUED query of `caller` (the launcher sends it to Athena), with its
        cache key; or answer with a query that is there already, starting nothing:

        - with `idempotency`, the query the owner's Idempotency-Key answered first within
          IDEMPOTENCY_HOURS, as it is now (IdempotencyKeyReused when that request was
          another); otherwise the key is stored with this answer;
        - with `max_age_seconds`, the owner's SUCCEEDED query with the same cache key whose
          results are younger than that (CACHED), else one of its QUEUED or RUNNING ones
          (JOINED). A cached or joined answer passes the same checks as a new query.

        The query runs in the database, workgroup and catalog `options` name, the config's
        where they name none. ValidationFailed for a callback_url whose host
        webhooks.allowed_hosts lacks; the policy's refusals (Forbidden for a database or
        workgroup outside the key's)."""
        if idempotency is not None:
            first = await self.store.first_answer(caller.name, idempotency.key)
            replay = await self._replay(caller, idempotency, first)
            if replay is not None:
                return replay
        self._check_callback(options.callback_url)
        database = options.database or self.database
        workgroup = options.workgroup or self.workgroup
        catalog = options.catalog or self.catalog
        await self.policy.admit(caller, sql, database, workgroup)
        options = dataclasses.replace(
            options,
            database=database,
            workgroup=workgroup,
            catalog=catalog,
            cache_key=await _cache_key(sql, options.parameters, database, workgroup, catalog),
        )
        for _ in range(RACE_RETRIES):
            try:
                return await self._answer(sql, caller, options, max_age_seconds, idempotency)
            except IdempotencyKeyTaken as taken:
                # Another request with the key came first, now or within its hours.
                assert idempotency is not None
                replay = await self._replay(caller, idempotency, taken.first)
                if replay is not None:
                    return replay
                # Taken long ago: expired, and this request's to take.
                await self.store.forget_expired_key(caller.name, idempotency.key, _expired_at())
            except KeyVanished:
                pass  # expired and forgotten under this request: try again
        raise ServiceUnavailable("the Idempotency-Key kept changing; send the request again")

    async def _answer(
        self,
        sql: str,
        caller: Caller,
        options: SubmitOptions,
        max_age_seconds: int | None,
        idempotency: Idempotency | None,
    ) -> Submitted:
        if max_age_seconds is not None and options.cache_key is not None:
            fresh_since = utcnow() - timedelta(seconds=max_age_seconds)
            found = await self.store.cached(caller.name, options.cache_key, fresh_since)
            if found is not None:
                outcome = Outcome.CACHED if found.state == Q.SUCCEEDED else Outcome.JOINED
                if idempotency is not None:
                    first = await self.store.remember(
                        caller.name, idempotency, found.id, outcome.status
                    )
                    if first is not None:
                        raise IdempotencyKeyTaken(first)
                return Submitted(found, outcome)
        record = await self.machine.create(
            sql,
            options.database or self.database,
            options.workgroup or self.workgroup,
            caller,
            options,
            idempotency,
        )
        return Submitted(record, Outcome.CREATED)

    def _check_callback(self, url: str | None) -> None:
        if url is None:
            return
        if not self.callback_hosts:
            raise ValidationFailed(
                "callback_url: webhooks are off here (webhooks.allowed_hosts is empty)"
            )
        host = host_key(urlsplit(url).hostname or "")
        if host not in self.callback_hosts:
            raise ValidationFailed(
                f"callback_url: the host {host!r} is not in webhooks.allowed_hosts"
            )

    async def _replay(
        self, caller: Caller, idempotency: Idempotency, first: FirstAnswer | None
    ) -> Submitted | None:
        """The key's first answer again, with its query as it is now; None when the key
        is new or expired."""
        if first is None or first.expired(utcnow()):
            return None
        if first.request_hash != idempotency.request_hash:
            raise IdempotencyKeyReused(
                f"the Idempotency-Key was sent with another request in the last"
                f" {IDEMPOTENCY_HOURS} hours; use a new key for a new request"
            )
        record = await self.lookup.get(first.query_id, caller)
        if first.status_code == Outcome.CACHED.status:
            outcome = Outcome.CACHED
        # A new query's key is stored in its transaction, made at its submit time; a
        # joined query was submitted before the key.
        elif record.submitted_at == first.created_at:
            outcome = Outcome.CREATED
        else:
            outcome = Outcome.JOINED
        return Submitted(record, outcome, replayed=True)

    async def refresh(self, query_id: str, caller: Caller) -> QueryRecord:
        """Put a finished query of `caller`'s back to QUEUED for a new Athena execution.

        The state leaves SUCCEEDED before the old result file is removed, so no
        reader is ever handed the old results as the new ones."""
        async with self.machine.lock(query_id):
            current = await self.lookup.get(query_id, caller)
            if not current.is_finished:
                raise QueryRunning(current.id, current.state.value)
            await self.policy.admit(
                caller, current.query_text, current.database_name, current.workgroup
            )
            now = utcnow()
            changes = {
                **dict.fromkeys(EXECUTION_FIELDS),
                "run": current.run + 1,
                "lease_holder": self.machine.lease.holder,
                "lease_expires_at": self.machine.lease.expires(now),
                # The new run has timeout_seconds from now.
                "timeout_at": (
                    now + timedelta(seconds=current.timeout_seconds)
                    if current.timeout_seconds is not None
                    else None
                ),
            }
            refreshed = await self.machine.apply(
                current,
                Event.REFRESH,
                by=caller.name,
                reason="refresh",
                changes=changes,
                running_limit=caller.max_running,
            )
            if refreshed is None:
                # Another process refreshed it first: it is QUEUED or further now.
                latest = await self.lookup.get(query_id)
                raise QueryRunning(latest.id, latest.state.value)
            await self.results.delete(query_id, current.athena_execution_id)
        return refreshed

    async def cancel(self, query_id: str, caller: Caller) -> tuple[QueryRecord, bool]:
        """Stop an unfinished query of `caller`'s in Athena.

        Returns the record and whether the query is CANCELLED now (Athena confirmed the
        stop). When Athena has not confirmed it within `cancel_wait` seconds, out of reach
        or only slow, the poller finishes the cancel. A query that finished in Athena first
        keeps its outcome: QueryFinished.

        The wait for Athena ends `cancel_wait` seconds after the cancel came, also when
        the cancel first waited for the query's lock (another cancel of it in flight): a
        cancel sent twice at once is answered within about that time, not twice it."""
        deadline = asyncio.get_running_loop().time() + self.cancel_wait
        async with self.machine.lock(query_id):
            for _ in range(RACE_RETRIES):
                current = await self.lookup.get(query_id, caller)
                _raise_if_finished(current)
                if current.athena_execution_id is None:
                    cancelled = await self.machine.apply(
                        current,
                        Event.CANCEL,
                        by=caller.name,
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
                    return await self._stop(
                        query_id, current.athena_execution_id, caller.name, deadline
                    )
        raise ServiceUnavailable(f"query {query_id} kept changing; try the cancel again")

    async def _stop(
        self, query_id: str, execution_id: str, by: str, deadline: float
    ) -> tuple[QueryRecord, bool]:
        execution = await self._stop_within(query_id, execution_id, deadline)
        if execution is not None and execution.state in (Q.SUCCEEDED, Q.FAILED):
            raise QueryFinished(
                query_id, execution.state, "it finished in Athena before the stop arrived"
            )
        confirmed = execution is not None and execution.state == Q.CANCELLED
        for _ in range(RACE_RETRIES):
            current = await self.lookup.get(query_id)
            if current.state == Q.CANCELLED:
                return current, True  # the poller recorded Athena's CANCELLED first
            _raise_if_finished(current)
            if not confirmed:
                return current, False
            cancelled = await self.machine.apply(
                current,
                Event.CANCEL,
                by=by,
                reason="cancelled by client",
                changes=execution.statistics if execution else {},
            )
            if cancelled is not None:
                return cancelled, True
        raise ServiceUnavailable(f"query {query_id} kept changing; try the cancel again")

    async def _stop_within(
        self, query_id: str, execution_id: str, deadline: float
    ) -> Execution | None:
        """Send Athena the stop and ask what became of the execution, until `deadline`
        (the event loop's time): Athena's latest answer, or None when it did not take the
        stop by then for a passing reason (out of reach, throttled, slow). The cancel is
        recorded either way (`cancel_requested_at`), and the poller sends the stop again
        until Athena reports the execution ended."""
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    await self.athena.stop(execution_id)
                except AthenaCallError as exc:
                    if not exc.is_client_error:
                        raise
                    # Athena refused the stop: the execution is finished there; ask what
                    # it became.
                return await self.athena.settled(execution_id)
        except (AthenaCallError, TimeoutError) as exc:
            logger.info(
                "Athena did not take the stop in time; the poller sends it again",
                query_id=query_id,
                athena_query_execution_id=execution_id,
                seconds=self.cancel_wait,
                error=str(exc) or type(exc).__name__,
            )
            return None


def _raise_if_finished(record: QueryRecord) -> None:
    if record.state == Q.CANCELLED:
        raise QueryCancelled(record.id)
    if record.state.is_finished:
        raise QueryFinished(record.id, record.state.value)


def _expired_at() -> datetime:
    """Idempotency keys made at or before this have expired."""
    return utcnow() - timedelta(hours=IDEMPOTENCY_HOURS)


async def _cache_key(
    sql: str, parameters: tuple[str, ...] | None, database: str, workgroup: str, catalog: str
) -> str:
    make = functools.partial(
        cache_key,
        sql,
        parameters=parameters,
        database=database,
        workgroup=workgroup,
        catalog=catalog,
    )
    if len(sql) <= INLINE_CACHE_KEY_CHARS:
        return make()
    return await asyncio.to_thread(make)
