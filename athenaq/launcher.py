"""The launcher: admits QUEUED queries to Athena's slots and sends the admitted ones to
Athena, each start as a background task.

Only an admitted query is sent (athena.max_running, store/admission.py). A submit or a
refresh asks for an admission at once, which admits it when a slot is free and nobody
waits before it; the poller asks again at each tick for every QUEUED query that has no
Athena execution yet: the admitted ones are sent (a throttled start, a restart, a start
another process never made, an admission made by another process), and while some wait,
an admission runs. A result stored frees a slot, and asks for an admission too.
Admissions run one at a time in a process: asked for while one runs, one more follows
it, for every request made meanwhile. The registry keeps one start per query at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses

from loguru import logger

from athenaq.admission import AdaptiveCap
from athenaq.athena import Athena, AthenaCallError
from athenaq.clock import utcnow
from athenaq.errors import StoreUnavailable
from athenaq.identity import POLLER
from athenaq.machine import Machine
from athenaq.states import Event, Lease, QueryRecord, QueryState
from athenaq.store import Store
from athenaq.tasks import TaskRegistry

# The kinds of background task that send a query to Athena, and that admit queries to
# Athena's slots (one at a time, under this key), see TaskRegistry.
LAUNCH = "launch"
ADMIT = "admit"


class Launcher:
    """Admits queries to Athena's slots, starts them in Athena and records their
    execution ids."""

    def __init__(
        self,
        store: Store,
        athena: Athena,
        machine: Machine,
        tasks: TaskRegistry,
        *,
        cap: AdaptiveCap,
        lease: Lease,
    ) -> None:
        self.store = store
        self.athena = athena
        self.machine = machine
        self.tasks = tasks
        # athena.max_running, lowered for a while when Athena throttles starts.
        self.cap = cap
        # This process's: the admitted queries it holds are its own to send.
        self.lease = lease
        # An admission was asked for while one ran: one more follows it.
        self._admit_again = False
        # Whether the latest tick held queries waiting for a slot: a slot freed here then
        # asks for an admission at once rather than at the next tick.
        self._waiting = False
        # Submits and refreshes waiting for an admission, as written: once admitted, their
        # start needs no read of them (an admission changes no version).
        self._written: dict[str, QueryRecord] = {}

    def launch_soon(self, query_id: str, written: QueryRecord | None = None) -> None:
        """Send the query to Athena in the background, unless a start is under way; one
        `written` not admitted yet (a submit, a refresh) asks for an admission instead,
        which sends it when it takes a slot.

        `written` is the record as the caller has just written it: the start needs no
        read of it then. A stale one costs nothing worse than a lost compare-and-set, and
        the start's token keeps Athena from running it twice."""
        if written is not None and written.admitted_at is None:
            self._written[query_id] = written
            self.admit_soon()
            return
        self.tasks.spawn(LAUNCH, query_id, self.launch(query_id, written))

    def resume(self, held: list[QueryRecord]) -> None:
        """The poller's part at each tick, for the unfinished queries this process
        holds: send the admitted ones that have no Athena execution, and ask for an
        admission while some wait for a slot."""
        waiting = set()
        for record in held:
            if record.state == QueryState.QUEUED and record.athena_execution_id is None:
                if record.admitted_at is None:
                    waiting.add(record.id)
                else:
                    self.launch_soon(record.id)
        # Admitted by another process's admission, cancelled, handed over: read at start.
        self._written = {i: r for i, r in self._written.items() if i in waiting}
        self._waiting = bool(waiting)
        if waiting:
            self.admit_soon()

    def slot_freed(self) -> None:
        """A query of this process finished: its slot goes to a waiting one at once."""
        if self._waiting:
            self.admit_soon()

    def admit_soon(self) -> None:
        """Run an admission in the background: waiting queries of every process take the
        free slots in the fair order, and the ones this process holds are sent."""
        if not self.tasks.spawn(ADMIT, ADMIT, self._admit()):
            self._admit_again = True

    async def _admit(self) -> None:
        while True:
            self._admit_again = False
            try:
                admitted = await self.store.admit(self.cap.value)
            except StoreUnavailable:
                return  # the poller says so, and its next tick asks again
            for query_id, holder in admitted:
                written = self._written.pop(query_id, None)
                if holder == self.lease.holder:
                    if written is not None:
                        written = dataclasses.replace(written, admitted_at=utcnow())
                    self.launch_soon(query_id, written)
            if admitted:
                logger.debug("admitted", queries=len(admitted), max_running=self.cap.value)
            if not self._admit_again:
                return

    async def wait(self) -> None:
        """Wait for the admission and the starts in flight: an execution started but not
        recorded would run untracked."""
        await self.tasks.wait(ADMIT)
        await self.tasks.wait(LAUNCH)

    async def launch(self, query_id: str, written: QueryRecord | None = None) -> None:
        """Send a QUEUED query that has no Athena execution yet to Athena.

        A throttled or failed call leaves it QUEUED for the poller to try again;
        Athena refusing the query itself fails it. So does the store out of reach: a
        start sent but not recorded is sent again with its token, and Athena answers with
        the same execution."""
        try:
            await self._launch(query_id, written)
        except StoreUnavailable as exc:
            logger.warning(
                "the store is unavailable; the query is sent again later",
                query_id=query_id,
                error=exc.message,
            )

    async def _launch(self, query_id: str, written: QueryRecord | None) -> None:
        async with self.machine.lock(query_id):
            current = written or await self.store.get(query_id)
            if current is None or current.state != QueryState.QUEUED or current.athena_execution_id:
                return
            if current.timed_out(utcnow()):
                return  # past its deadline: the poller times it out (athenaq/timeouts.py)
            if current.admitted_at is None:
                self.admit_soon()  # not admitted yet: an admission sends it when it is
                return
            token = f"athenaq-{current.id}-{current.run}"
            try:
                execution_id = await self.athena.start(
                    current.query_text,
                    current.database_name,
                    current.workgroup,
                    token,
                    catalog=current.catalog,
                    parameters=current.parameters,
                    result_reuse_minutes=current.result_reuse_minutes,
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
                # The query keeps its slot; a throttle lowers the cap for the next ones.
                if exc.is_throttling:
                    self.cap.throttled()
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
