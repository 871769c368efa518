"""The launcher: sends QUEUED queries to Athena, each start as a background task.

A submit or a refresh asks for a start at once; the poller asks again at each tick for
every QUEUED query that has no Athena execution yet (a throttled start, a restart, a
start another process never made). The registry keeps one start per query at a time.
"""

from __future__ import annotations

import contextlib

from loguru import logger

from athenaq.athena import Athena, AthenaCallError
from athenaq.clock import utcnow
from athenaq.identity import POLLER
from athenaq.machine import Machine
from athenaq.states import Event, QueryRecord, QueryState
from athenaq.store import Store
from athenaq.tasks import TaskRegistry

# The kind of background task that sends a query to Athena (see TaskRegistry).
LAUNCH = "launch"


class Launcher:
    """Starts queries in Athena and records their execution ids."""

    def __init__(self, store: Store, athena: Athena, machine: Machine, tasks: TaskRegistry) -> None:
        self.store = store
        self.athena = athena
        self.machine = machine
        self.tasks = tasks

    def launch_soon(self, query_id: str, written: QueryRecord | None = None) -> None:
        """Send the query to Athena in the background, unless a start is under way.

        `written` is the record as the caller has just written it (a submit, a refresh):
        the start needs no read of it then. A stale one costs nothing worse than a lost
        compare-and-set, and the start's token keeps Athena from running it twice."""
        self.tasks.spawn(LAUNCH, query_id, self.launch(query_id, written))

    async def wait(self) -> None:
        """Wait for the starts in flight: an execution started but not recorded would run
        untracked."""
        await self.tasks.wait(LAUNCH)

    async def launch(self, query_id: str, written: QueryRecord | None = None) -> None:
        """Send a QUEUED query that has no Athena execution yet to Athena.

        A throttled or failed call leaves it QUEUED for the poller to try again;
        Athena refusing the query itself fails it."""
        async with self.machine.lock(query_id):
            current = written or await self.store.get(query_id)
            if current is None or current.state != QueryState.QUEUED or current.athena_execution_id:
                return
            token = f"athenaq-{current.id}-{current.run}"
            try:
                execution_id = await self.athena.start(
                    current.query_text, current.database_name, current.workgroup, token
                )
            except AthenaCallError as exc:
                if exc.is_client_error:
                    await self.machine.apply(
                        current,
                        Event.FAIL,
                        by=POLLER,
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
