"""Timeouts: a query still QUEUED or RUNNING when its deadline passes (`timeout_at`,
`timeout_seconds` after its submit or refresh) is stopped in Athena and ends FAILED,
`timed out after N s`, by `timeout`. The process that holds the query's lease acts on
it, at its poller's ticks, so within about one interval of the deadline:

- A query not sent to Athena (waiting for a slot, or given one and its start not taken
  yet) FAILS at once, through the machine, without a call to Athena. The poller hands
  it to the launcher no more, and the launcher sends no query past its deadline.
- One that Athena reports QUEUED or RUNNING is sent StopQueryExecution, as a task of
  its own. Athena's CANCELLED that follows, seen by that task or by any process's poll,
  ends it FAILED (Machine.observe). A stop that Athena does not take (out of reach,
  throttled) or has not carried out yet is sent again at a later tick, while Athena
  still reports the execution QUEUED or RUNNING: one interval after the first, then
  twice as long each time, up to a minute. Until Athena confirms it the query stays
  RUNNING, as it is in Athena: athenaq never says an execution ended that may still run
  and cost.
- The results win a race with the stop. An execution Athena reports SUCCEEDED, before
  the stop or instead of carrying it out (a stop that reaches a finished execution
  changes nothing), has its results stored and ends SUCCEEDED, after its deadline; one
  whose results are being stored, or tried again, is never stopped. So a timeout never
  leaves a half-written result, nor fails a query whose results Athena has.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable

from loguru import logger

from athenaq.athena import Athena, AthenaCallError, Brief, Execution
from athenaq.clock import utcnow
from athenaq.machine import RACE_RETRIES, Machine
from athenaq.states import QueryRecord, QueryState
from athenaq.tasks import TaskRegistry

Q = QueryState
# The kind of background task that times a query out: fails an unsent one, or sends
# Athena the stop of a running one and asks what became of it (see TaskRegistry).
TIME_OUT = "time-out"
# A stop sent again waits one interval, then twice as long each time, up to this, give
# or take STOP_RETRY_JITTER: an endpoint that answers status calls but refuses stops is
# not hammered.
MAX_STOP_RETRY_SECONDS = 60.0
STOP_RETRY_JITTER = 0.1


class Timeouts:
    """Times out the queries a poller holds: called from each of its ticks."""

    def __init__(
        self,
        athena: Athena,
        machine: Machine,
        tasks: TaskRegistry,
        *,
        interval_seconds: float,
        call_deadline: float,
    ) -> None:
        self.athena = athena
        self.machine = machine
        self.tasks = tasks
        self.interval_seconds = interval_seconds
        # The longest a stop, and the wait for its confirmation, may take: a stop cut
        # short is sent again later.
        self.call_deadline = call_deadline
        # Executions past their deadline that Athena still runs: the latest wait between
        # their stops (seconds, before jitter), and when (time.monotonic()) the next is due.
        self._stops: dict[str, tuple[float, float]] = {}

    def sweep(self, held: Iterable[QueryRecord]) -> set[str]:
        """Time out the held queries past their deadline that were never sent to Athena,
        each as a task of its own; returns their ids: the launcher must not send them."""
        now = utcnow()
        unsent = {r.id for r in held if r.athena_execution_id is None and r.timed_out(now)}
        for query_id in unsent:
            self.tasks.spawn(TIME_OUT, query_id, self._fail_unsent(query_id))
        return unsent

    def stop_due(self, observed: Iterable[tuple[QueryRecord, Execution | Brief]]) -> None:
        """Given the tick's answers from Athena, each with the query as held (those of
        the queries with a deadline will do), send the stop of each one past its deadline
        that Athena still reports QUEUED or RUNNING, as a task of its own, when it is due."""
        now_utc, now = utcnow(), time.monotonic()
        running = {
            execution.execution_id: record
            for record, execution in observed
            if execution.state in (Q.QUEUED, Q.RUNNING) and record.timed_out(now_utc)
        }
        # Stopped, finished, refreshed or handed over: nothing more to send.
        for execution_id in self._stops.keys() - running.keys():
            del self._stops[execution_id]
        for execution_id, record in running.items():
            wait, due = self._stops.get(execution_id, (0.0, now))
            if due > now or self.tasks.running(TIME_OUT, record.id):
                continue
            wait = min(wait * 2, MAX_STOP_RETRY_SECONDS) if wait else self.interval_seconds
            jittered = wait * random.uniform(1 - STOP_RETRY_JITTER, 1 + STOP_RETRY_JITTER)
            self._stops[execution_id] = (wait, now + jittered)
            self.tasks.spawn(TIME_OUT, record.id, self._stop(record, execution_id))

    async def _fail_unsent(self, query_id: str) -> None:
        async with self.machine.lock(query_id):
            for _ in range(RACE_RETRIES):
                current = await self.machine.store.get(query_id)
                if (
                    current is None
                    or current.is_finished
                    or current.athena_execution_id is not None
                    or not current.timed_out(utcnow())
                ):
                    return  # finished, sent (its stop comes at a tick), or refreshed
                if await self.machine.time_out(current, {"completed_at": utcnow()}):
                    return

    async def _stop(self, record: QueryRecord, execution_id: str) -> None:
        fields = {"query_id": record.id, "athena_query_execution_id": execution_id}
        logger.info(
            "the query is past its timeout; stopping it in Athena",
            timeout_seconds=record.timeout_seconds,
            **fields,
        )
        try:
            async with asyncio.timeout(self.call_deadline):
                await self.athena.stop(execution_id, single_attempt=True)
        except TimeoutError:
            logger.warning("a timeout's stop got no answer; it is sent again later", **fields)
            return
        except AthenaCallError as exc:
            if not exc.is_client_error:
                return  # logged by the call; the stop is sent again later
            # Refused: the execution has finished in Athena; ask what it became.
        try:
            async with asyncio.timeout(self.call_deadline):
                execution = await self.athena.settled(execution_id)
        except TimeoutError:
            return  # the next tick's poll tells
        # SUCCEEDED is left to the poll, which stores the results.
        if execution is not None and execution.state in (Q.CANCELLED, Q.FAILED):
            await self.machine.observe(record.id, execution)
