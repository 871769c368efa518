"""Storing a SUCCEEDED execution's results: the result files first, then (and only then)
the query SUCCEEDED, through the machine, the one writer of state.

Results that cannot be written (a full or unwritable disk) keep the query RUNNING with a
state_reason that says why and since when; they are tried again until
`results.store_retry_minutes` has passed since the first failure, then the query FAILS.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

from loguru import logger

from athenaq.athena import AthenaCallError, Execution
from athenaq.clock import isoformat, utcnow
from athenaq.identity import POLLER
from athenaq.ingest import Ingest
from athenaq.machine import RACE_RETRIES, Machine, Step, tracks
from athenaq.results import ResultFiles
from athenaq.states import Event, QueryRecord, QueryState
from athenaq.store import Store
from athenaq.store.moves import MAX_MOVES
from athenaq.tasks import Batches

Q = QueryState

# The state_reason of a RUNNING query whose results could not be written. It carries the
# time of the first failure, so every process, and a restarted one, counts the retries'
# deadline from that failure (see _failing_since).
# The reason of the move to SUCCEEDED.
STORED_REASON = "results stored"
STORE_RETRY_REASON = "results could not be stored since {since}, trying again: {error}"
_STORE_RETRY_SINCE = re.compile(r"^results could not be stored since (\S+), trying again: ")


class ResultsStorer:
    """Stores the results of the executions Athena reports SUCCEEDED (the poller's
    downloads), and moves their queries on."""

    def __init__(
        self,
        machine: Machine,
        store: Store,
        results: ResultFiles,
        ingest: Ingest,
        *,
        store_retry: timedelta,
    ) -> None:
        self.machine = machine
        self.store = store
        self.results = results
        self.ingest = ingest
        # How long results that cannot be written are tried again before the query fails.
        self.store_retry = store_retry
        # Queries whose results are stored move to SUCCEEDED in batches: those stored
        # while a batch is written are written together next, in one transaction.
        self._succeeded = Batches(self._succeed_all, MAX_MOVES)

    async def store_results(
        self,
        query_id: str,
        execution: Execution,
        known: QueryRecord | None = None,
        large: AbstractAsyncContextManager[object] | None = None,
        written: Callable[[], object] | None = None,
    ) -> bool:
        """Store a SUCCEEDED execution's results, then (and only then) set SUCCEEDED.

        `known` is the query as `observe` left it: SUCCEEDED is tried on it without a
        read, in a batch with the other queries whose results were stored meanwhile, and
        a lost compare-and-set reads the query again. `large` bounds the downloads of
        results their first page does not hold (Ingest.store); `written` is called once
        the result files are in place.

        The ingest holds no lock: cancels, refreshes and other queries go on meanwhile.
        Returns False when the results could not be written (a full or unwritable disk):
        the query stays RUNNING, its state_reason says why, and the caller tries again
        later, until `store_retry` has passed since the first failure; then it is FAILED.
        Raises AthenaCallError when Athena could not give them for a passing reason
        (throttled, out of reach): the next poll tries again."""
        execution_id = execution.execution_id
        try:
            stored = await self.ingest.store(query_id, execution, large)
        except OSError as exc:
            # Athena's transport errors arrive as AthenaCallError: an OSError here is the
            # results folder's (full, over quota, read-only, gone, refused), which an
            # operator can heal; the same execution's results are then read again.
            return await self._store_failed(query_id, execution, exc)
        except AthenaCallError as exc:
            if not exc.is_client_error:
                raise
            async with self.machine.lock(query_id):
                if current := await self.machine.tracking(query_id, execution_id):
                    reason = f"results could not be stored: {exc}"
                    await self.machine.apply(
                        current, Event.FAIL, by=POLLER, reason=reason, changes=execution.statistics
                    )
            return True
        if written is not None:
            written()
        changes = {
            **execution.statistics,
            "results_at": utcnow(),
            "row_count": stored.row_count,
            "results_source": stored.source,
        }
        # The move's `state changed` line is the one line of the stored result.
        log = {
            "row_count": stored.row_count,
            "results_source": stored.source,
            "store_duration_ms": round(stored.seconds * 1000, 1),
        }
        if known is not None and tracks(known, execution_id):
            step = Step(known, Event.SUCCEED, STORED_REASON, changes, log)
            if await self._succeeded(step):
                return True
        async with self.machine.lock(query_id):
            # A lost compare-and-set means another writer touched the row (a cancel
            # request, another process's ingest): read again and retry.
            for _ in range(RACE_RETRIES):
                current = await self.machine.tracking(query_id, execution_id)
                if current is None:
                    break
                if await self.machine.apply(
                    current,
                    Event.SUCCEED,
                    by=POLLER,
                    reason=STORED_REASON,
                    changes=changes,
                    log=log,
                ):
                    return True
            latest = await self.store.get(query_id)
            if not (
                latest
                and latest.state == Q.SUCCEEDED
                and latest.athena_execution_id == execution_id
            ):
                # Cancelled or refreshed while storing: this result belongs to nobody.
                await self.results.delete(query_id, execution_id)
        return True

    async def _succeed_all(self, steps: list[Step]) -> list[QueryRecord | None]:
        return await self.machine.apply_all(steps, by=POLLER)

    async def _store_failed(self, query_id: str, execution: Execution, error: OSError) -> bool:
        """Note that the results could not be written, keeping the time of the first
        failure; FAIL the query once `store_retry` has passed since then. False while
        it is to be tried again."""
        fields = {"query_id": query_id, "athena_query_execution_id": execution.execution_id}
        async with self.machine.lock(query_id):
            for _ in range(RACE_RETRIES):
                current = await self.machine.tracking(query_id, execution.execution_id)
                if current is None:
                    return True  # cancelled or refreshed meanwhile: nothing to store
                now = utcnow()
                since = _failing_since(current.state_reason) or now
                if now - since >= self.store_retry:
                    reason = f"results could not be stored since {isoformat(since)}: {error}"
                    if await self.machine.apply(
                        current, Event.FAIL, by=POLLER, reason=reason, changes=execution.statistics
                    ):
                        return True
                    continue
                reason = STORE_RETRY_REASON.format(since=isoformat(since), error=error)
                if reason == current.state_reason or await self.store.update(
                    current, {"state_reason": reason}
                ):
                    logger.warning(
                        "results could not be stored; trying again",
                        since=isoformat(since),
                        error=str(error),
                        **fields,
                    )
                    return False
        logger.warning("the query kept changing; its results are tried again", **fields)
        return False


def _failing_since(reason: str | None) -> datetime | None:
    """When the results of a RUNNING query were first found unwritable, as its
    state_reason (STORE_RETRY_REASON) says; None when they were not."""
    found = _STORE_RETRY_SINCE.match(reason or "")
    if found is None:
        return None
    try:
        return datetime.fromisoformat(found[1]).astimezone(UTC).replace(tzinfo=None)
    except ValueError:
        return None
