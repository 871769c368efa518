"""The read side: a query as stored, and its stored results, for the handlers. It writes
nothing; the machine is the only writer."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from athenaq.admission import WAITING_REASON, waits_for_slot
from athenaq.errors import (
    QueryCancelled,
    QueryFailed,
    QueryNotFound,
    QueryRunning,
    ResultsExpired,
    ResultsMissing,
)
from athenaq.identity import Caller
from athenaq.results import ResultFiles, ResultReader
from athenaq.states import QueryRecord, QueryState
from athenaq.store import Store

# A refresh can land between reading a query's state and opening its result files; the
# read then starts over this many times before it answers 410.
READ_ATTEMPTS = 3


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackProgress:
    """Where a run's webhook delivery stands: its URL, when it was delivered, the attempts
    begun and the latest one's error (`gave up...` once given up)."""

    url: str
    delivered_at: datetime | None
    attempts: int
    last_error: str | None


class Lookup:
    """Reads queries and their results; every miss is the error a client should see."""

    def __init__(self, store: Store, results: ResultFiles) -> None:
        self.store = store
        self.results = results

    async def get(self, query_id: str, caller: Caller | None = None) -> QueryRecord:
        """The query as stored now; QueryNotFound when there is none, or when `caller` is
        given and neither owns it nor sees all (another owner's query is not there for
        it, so its id reveals nothing)."""
        record = await self.store.get(query_id)
        if record is None or (caller is not None and not caller.owns(record.owner)):
            raise QueryNotFound(query_id)
        return record

    async def status(self, query_id: str, caller: Caller) -> QueryRecord:
        """The query as `get` gives it; one waiting for an Athena slot says so in its
        `state_reason`, with its place in the fair order of admission, counted now."""
        return await self.described(await self.get(query_id, caller))

    async def described(self, record: QueryRecord) -> QueryRecord:
        """`record`, as read, as `status` gives it."""
        if waits_for_slot(record):
            ahead = await self.store.places_ahead(record)
            record = dataclasses.replace(record, state_reason=WAITING_REASON.format(ahead=ahead))
        return record

    async def callback(self, record: QueryRecord) -> CallbackProgress | None:
        """The webhook delivery of the query's current run as `record` has it (what its
        status shows as `callback`); None without a callback_url. A run not finished yet
        has had no attempt."""
        if record.callback_url is None:
            return None
        delivery = await self.store.delivery(record.id, record.run)
        if delivery is None:
            return CallbackProgress(record.callback_url, None, 0, None)
        return CallbackProgress(
            delivery.url, delivery.delivered_at, delivery.attempts, delivery.last_error
        )

    async def open_results(self, query_id: str, caller: Caller) -> tuple[QueryRecord, ResultReader]:
        """A SUCCEEDED query's stored results, opened (the caller closes the reader);
        the state's error otherwise, ResultsExpired once retention removed them.

        Once open, the files stay readable to the end of the reader, whoever removes
        them meanwhile (a refresh, retention)."""
        record = await self.get(query_id, caller)
        for _ in range(READ_ATTEMPTS):
            if record.state == QueryState.CANCELLED:
                raise QueryCancelled(query_id)
            if record.state == QueryState.FAILED:
                raise QueryFailed(query_id, record.state_reason)
            if record.state != QueryState.SUCCEEDED or record.athena_execution_id is None:
                raise QueryRunning(record.id, record.state.value)
            if record.results_expired_at is not None:
                raise ResultsExpired(query_id)
            try:
                return record, await self.results.open(query_id, record.athena_execution_id)
            except FileNotFoundError:
                # Refreshed, or its results expired, between reading the state and opening
                # the files: the query now says which. Retention marks the results removed
                # before it removes them, and moves no version.
                latest = await self.get(query_id)
                if latest.version == record.version and latest.results_expired_at is None:
                    break
                record = latest
        raise ResultsMissing(query_id)
