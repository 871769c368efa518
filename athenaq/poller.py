"""The poller: feeds Athena's view of the unfinished queries this process holds into the
machine.

Each tick claims the unfinished queries nobody holds (new, released by a process that
stopped, or expired with one that died), and renews this process's leases once half
spent, so each query is polled, and its results stored, by one process at a time. It
sends the ones not yet sent, asks Athena about the rest in batches of 50, and hands
each observation to the machine. Result downloads run as their own tasks, so a large
result never delays the polling of the other queries, and a tiny one (stored from its
first page) never waits behind large ones. Results that could not be written (a full
disk) are tried again after one interval, then after twice as long each time, up to a
minute. A store out of reach skips ticks the same way, up to a few intervals, and
polling resumes by itself once it answers. Each tick also times out the queries past
their deadline (athenaq/timeouts.py). A query whose cancel was asked for, but which
Athena still reports QUEUED or RUNNING (the cancel's stop never reached it, or it is slow
to stop), gets its stop sent again, as a task of its own, with the same kind of backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping

from loguru import logger
from tornado.ioloop import PeriodicCallback

from athenaq import metrics
from athenaq.athena import BATCH_LIMIT, Athena, AthenaCallError, Brief, Execution
from athenaq.clock import utcnow
from athenaq.errors import StoreUnavailable
from athenaq.launcher import Launcher
from athenaq.machine import Machine
from athenaq.states import Lease, QueryRecord, QueryState
from athenaq.store import Store
from athenaq.storing import ResultsStorer
from athenaq.tasks import TaskRegistry
from athenaq.timeouts import TIME_OUT, Timeouts

Q = QueryState
# The workers of `bounded` let other callbacks run at least this often (seconds): the
# loop is never held much longer by a tick over thousands of queries.
YIELD_SECONDS = 0.005
# A status call may take one interval, but at least this long (an interval of a few ms
# would time out healthy calls) and at most athena.call_timeout_seconds.
MIN_STATUS_DEADLINE_SECONDS = 1.0
# How many of the latest ticks' durations `tick_seconds` keeps.
TICK_HISTORY = 100
# The kind of background task that stores a query's results (see TaskRegistry).
DOWNLOAD = "download"
# The kind of background task that sends a cancel's stop to Athena again.
STOP = "stop"
# A cancelled query that Athena still reports QUEUED or RUNNING gets its stop sent again
# once the cancel is athena.cancel_wait_seconds and one interval old, then after twice as
# long each time, up to this, give or take STOP_RETRY_JITTER: an endpoint that takes
# status calls but not stops is not hammered.
MAX_STOP_RETRY_SECONDS = 60.0
STOP_RETRY_JITTER = 0.1
# Results that could not be written are tried again after one interval, then twice as
# long each time, up to this, give or take STORE_RETRY_JITTER (so that a disk freed at
# once is not hit by every waiting query in the same instant).
MAX_STORE_RETRY_SECONDS = 60.0
STORE_RETRY_JITTER = 0.1
# A store out of reach is asked again after one interval, then after twice as long each
# time, up to this many intervals: a store that comes back is polled again soon.
MAX_STORE_BACKOFF_INTERVALS = 4


class Poller:
    """Periodically drives every QUEUED/RUNNING query; `start()`/`stop()` bound its life."""

    def __init__(
        self,
        store: Store,
        athena: Athena,
        machine: Machine,
        storer: ResultsStorer,
        launcher: Launcher,
        tasks: TaskRegistry,
        interval_seconds: float,
        *,
        lease: Lease,
        max_calls: int = 10,
        max_downloads: int = 4,
        max_stores: int = 32,
        cancel_wait: float = 2.0,
    ) -> None:
        self.store = store
        self.athena = athena
        self.machine = machine
        self.storer = storer
        self.launcher = launcher
        self.tasks = tasks
        self.interval_seconds = interval_seconds
        self.lease = lease
        self.max_calls = max_calls
        # Results being stored (their first page read, their files written), and among
        # them the large ones being downloaded: a large download gives its store slot
        # back while it waits for and holds a download slot, so the tiny results, stored
        # from their first page, never wait behind the large ones. A result's slot is
        # given back once its files are written: its query's move to SUCCEEDED waits for
        # its batch (ResultsStorer) holding none.
        self._store_slots = asyncio.Semaphore(max_stores)
        self._download_slots = asyncio.Semaphore(max_downloads)
        self._callback: PeriodicCallback | None = None
        self._tick_task: asyncio.Task[None] | None = None
        # A tick waits this long for a status call: a slow or unreachable endpoint never
        # holds it much past its interval, and the next tick asks again.
        self.status_deadline = min(
            athena.call_timeout, max(interval_seconds, MIN_STATUS_DEADLINE_SECONDS)
        )
        self.timeouts = Timeouts(
            athena,
            machine,
            tasks,
            interval_seconds=interval_seconds,
            call_deadline=self.status_deadline,
        )
        # Executions whose results could not be written: the latest wait (seconds, before
        # jitter), and when (time.monotonic()) they are tried again. Athena is not asked about them
        # meanwhile: their executions have SUCCEEDED and stay so.
        self._store_retries: dict[str, tuple[float, float]] = {}
        # Executions whose cancel's stop is to be sent again: the latest wait (seconds,
        # before jitter; 0 before the first), and when (time.monotonic()) it is due. The
        # first is due once the cancel is this old: the cancel's own wait for Athena, and
        # a tick to see whether Athena stopped it meanwhile.
        self._stop_retries: dict[str, tuple[float, float]] = {}
        self.first_stop_retry = cancel_wait + interval_seconds
        # When (time.monotonic()) each query's latest store of results ended: a tick that
        # began before it holds that query's record as read before the store's writes (a
        # RUNNING one that is SUCCEEDED now), and must not start storing it again.
        self._stores_ended: dict[str, float] = {}
        # While the store is out of reach: the latest wait (seconds; 0 while it answers),
        # and when (time.monotonic()) the next tick asks it again.
        self._store_backoff = 0.0
        self._store_retry_at = 0.0
        # The records the latest claim returned, by id: the next claim reads again only
        # those whose rows changed since. When (time.monotonic()) this process's leases
        # were last renewed.
        self._held: dict[str, QueryRecord] = {}
        self._renewed_at = -math.inf
        # Ticks ended so far, and the latest ones' durations.
        self.ticks = 0
        self.tick_seconds: deque[float] = deque(maxlen=TICK_HISTORY)
        # time.monotonic() when the latest tick ended (None before the first): readiness
        # tells a poller that stopped or hangs by its age.
        self.last_tick: float | None = None

    def start(self) -> None:
        """Begin polling now, then every interval (with 10% jitter so processes spread out)."""
        self._callback = PeriodicCallback(self._run_tick, self.interval_seconds * 1000, jitter=0.1)
        self._callback.start()
        self._run_tick()

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop ticking, wait for the tick and the starts in flight (an execution started
        but not recorded would run untracked), and hand over at once every query but those
        whose results are being stored. Those downloads may finish for up to
        `drain_seconds`; the ones left then are cancelled, each waited for to its end (the
        query stays RUNNING for the process that takes it over to store)."""
        if self._callback is not None:
            self._callback.stop()
        if self._tick_task is not None:
            await asyncio.gather(self._tick_task, return_exceptions=True)
        await self.launcher.wait()
        # A stop cut here may not have reached Athena: the timeout or the cancel is
        # recorded, and the process that takes the query over sends it again.
        await self.tasks.cancel(TIME_OUT)
        await self.tasks.cancel(STOP)
        storing = self.tasks.keys(DOWNLOAD)
        try:
            released = await self.store.release(self.lease.holder, keep=storing)
            logger.info("leases released", queries=released, storing=len(storing))
        except Exception:
            logger.exception("could not release the leases; they end by themselves")
        if storing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_seconds):
                    await self.tasks.wait(DOWNLOAD)
            if cut := self.tasks.keys(DOWNLOAD):
                logger.warning("downloads cut by the shutdown", queries=len(cut))
        await self.tasks.cancel(DOWNLOAD)

    def _run_tick(self) -> None:
        # A slow tick is not overlapped by the next one: it is skipped instead.
        if self._tick_task is None or self._tick_task.done():
            self._tick_task = asyncio.ensure_future(self.tick())

    async def tick(self) -> None:
        """One round over the unfinished queries; errors are per query, never fatal."""
        started = time.monotonic()
        try:
            await self._round(started)
        finally:
            self.last_tick = time.monotonic()
            self.tick_seconds.append(self.last_tick - started)
            self.ticks += 1
            metrics.POLL_TICKS.observe(self.last_tick - started)

    @property
    def holding(self) -> int:
        """How many unfinished queries this process holds, as its latest claim found."""
        return len(self._held)

    async def _round(self, started: float) -> None:
        if started < self._store_retry_at:
            return  # the store was out of reach a moment ago: this tick waits it out
        # Leases are renewed once half spent, not at every tick: a tick that learns
        # nothing new writes nothing. A lease still lasts half its time when renewed, so
        # it never lapses while this process ticks (an interval is at most a third of it).
        renew = started - self._renewed_at >= self.lease.seconds / 2
        try:
            records = await self.store.claim(
                self.lease.holder, self.lease.seconds, self._held, renew=renew
            )
        except StoreUnavailable as exc:
            self._store_down(exc)
            return
        except Exception:
            logger.exception("poller could not read the store")
            return
        self._held = {r.id: r for r in records}
        if renew:
            self._renewed_at = started
        if self._store_backoff:
            logger.info("the store answers again; polling resumes")
            self._store_backoff = 0.0
        # Each pass over thousands of records takes a few ms: the loop runs between them.
        await asyncio.sleep(0)
        # The ones past their deadline and never sent time out instead of being sent.
        unsent = self.timeouts.sweep(records)
        self.launcher.resume([r for r in records if r.id not in unsent] if unsent else records)
        self._forget_retries({r.athena_execution_id for r in records})
        self._forget_stops({r.athena_execution_id for r in records if r.cancel_requested_at})
        await asyncio.sleep(0)
        now = time.monotonic()
        # Stores that ended before this tick began are in what its claim read.
        self._stores_ended = {i: t for i, t in self._stores_ended.items() if t >= started}
        watched = {
            r.athena_execution_id: r
            for r in records
            if r.athena_execution_id is not None
            and not self.tasks.running(DOWNLOAD, r.id)
            and r.id not in self._stores_ended
            and not self._waiting_to_store(r.athena_execution_id, now)
        }
        if watched:
            await asyncio.sleep(0)
            answers = _Answers(watched)
            missing = await self._fetch(watched, answers)
            down = await self._bounded(
                self._observe(record, execution) for record, execution in answers.changed
            ) or await self._bounded(
                self.machine.execution_lost(watched[i].id, i, message) for i, message in missing
            )
            if down is not None:
                self._store_down(down)  # gone since the claim: the next ticks wait it out
                return
            self.timeouts.stop_due(answers.deadlined)
            for record, execution_id in answers.stopping:
                self._stop_again(record, execution_id)
        logger.debug(
            "poll tick",
            held=len(records),
            asked_athena=len(watched),
            downloads=self.tasks.count(DOWNLOAD),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _observe(self, record: QueryRecord, execution: Execution) -> None:
        if current := await self.machine.observe(record.id, execution, record):
            self.tasks.spawn(DOWNLOAD, record.id, self._download(current, execution))

    async def _download(self, record: QueryRecord, execution: Execution) -> None:
        query_id = record.id
        slot = _Slot(self._store_slots)
        async with slot:
            try:
                stored = await self.storer.store_results(
                    query_id, execution, record, self._large(slot), written=slot.release
                )
            except StoreUnavailable as exc:
                logger.warning(
                    "the store is unavailable; the results are stored again later",
                    query_id=query_id,
                    athena_query_execution_id=execution.execution_id,
                    error=exc.message,
                )
                return
            except AthenaCallError as exc:
                # A passing failure (throttled, out of reach): the call logged it already.
                logger.warning(
                    "Athena did not give the results; the next poll tries again",
                    query_id=query_id,
                    athena_query_execution_id=execution.execution_id,
                    error=str(exc),
                )
                return
            except Exception:
                logger.exception(
                    "storing results failed; the next poll tries again",
                    query_id=query_id,
                    athena_query_execution_id=execution.execution_id,
                )
                return
            finally:
                self._stores_ended[query_id] = time.monotonic()
        if stored:
            self._store_retries.pop(execution.execution_id, None)
            self.launcher.slot_freed()
        else:
            self._retry_store_later(execution.execution_id)

    @contextlib.asynccontextmanager
    async def _large(self, slot: _Slot) -> AsyncIterator[None]:
        """Around a large result's download: its store slot is given back, and a download
        slot held instead."""
        slot.release()
        async with self._download_slots:
            yield

    def _store_down(self, exc: StoreUnavailable) -> None:
        """Skip ticks while the store is out of reach, logging once per outage."""
        if self._store_backoff:
            longest = MAX_STORE_BACKOFF_INTERVALS * self.interval_seconds
            self._store_backoff = min(self._store_backoff * 2, longest)
        else:
            logger.warning("the store is unavailable; polling backs off", error=exc.message)
            self._store_backoff = self.interval_seconds
        self._store_retry_at = time.monotonic() + self._store_backoff

    def _retry_store_later(self, execution_id: str) -> None:
        previous = self._store_retries.get(execution_id, (0.0, 0.0))[0]
        wait = min(previous * 2, MAX_STORE_RETRY_SECONDS) if previous else self.interval_seconds
        jittered = wait * random.uniform(1 - STORE_RETRY_JITTER, 1 + STORE_RETRY_JITTER)
        self._store_retries[execution_id] = (wait, time.monotonic() + jittered)

    def _waiting_to_store(self, execution_id: str, now: float) -> bool:
        retry = self._store_retries.get(execution_id)
        return retry is not None and retry[1] > now

    def _stop_again(self, record: QueryRecord, execution_id: str) -> None:
        """Send the stop of `record`'s cancel again, as a task of its own (a tick never
        waits for it), when it is due; Athena still runs the execution."""
        now = time.monotonic()
        wait, due = self._stop_retries.get(execution_id, (0.0, None))
        if due is None:
            # Due once the cancel is first_stop_retry old; never later than that from now,
            # whatever the clock of the process that recorded the cancel.
            assert record.cancel_requested_at is not None
            age = (utcnow() - record.cancel_requested_at).total_seconds()
            due = now + min(self.first_stop_retry, max(0.0, self.first_stop_retry - age))
            self._stop_retries[execution_id] = (0.0, due)
        if due > now or self.tasks.running(STOP, record.id):
            return
        wait = min(wait * 2, MAX_STOP_RETRY_SECONDS) if wait else self.first_stop_retry
        jittered = wait * random.uniform(1 - STOP_RETRY_JITTER, 1 + STOP_RETRY_JITTER)
        self._stop_retries[execution_id] = (wait, now + jittered)
        self.tasks.spawn(STOP, record.id, self._send_stop(record.id, execution_id))

    async def _send_stop(self, query_id: str, execution_id: str) -> None:
        fields = {"query_id": query_id, "athena_query_execution_id": execution_id}
        try:
            async with asyncio.timeout(self.status_deadline):
                await self.athena.stop(execution_id, single_attempt=True)
        except TimeoutError:
            logger.warning("a cancel's stop got no answer", seconds=self.status_deadline, **fields)
        except AthenaCallError:
            pass  # logged by the call; the stop is sent again later
        else:
            logger.info("a cancel's stop sent to Athena again", **fields)

    def _forget_stops(self, cancelling: set[str | None]) -> None:
        """Drop the stops to send again of executions no longer held with a cancel asked
        for (finished, refreshed, or taken over by another process)."""
        for execution_id in self._stop_retries.keys() - cancelling:
            del self._stop_retries[execution_id]

    def _forget_retries(self, unfinished: set[str | None]) -> None:
        """Drop the retries of executions no longer tracked (finished, cancelled,
        refreshed, or stored by another process)."""
        for execution_id in self._store_retries.keys() - unfinished:
            del self._store_retries[execution_id]

    async def _fetch(
        self, watched: Mapping[str, QueryRecord], answers: _Answers
    ) -> list[tuple[str, str]]:
        """Athena's view of each execution of `watched` (the queries as held, by
        execution id), batched where the endpoint can, handed to `answers` as it comes:
        read whole where it moves the query, else its state alone (Brief). Returns the
        ids Athena says it does not know, with its message.

        A passing failure (throttling, the network, a 5xx, the deadline) ends the round:
        the next tick asks again, batched. Only an endpoint that lacks the batch call is
        asked per id from then on."""
        execution_ids = list(watched)
        singles: list[str] = []
        # A bare 5xx from the batch call: moto's answer for the call it lacks, or an error
        # page of something in between. Asking per id tells which.
        probing = passing = False

        async def get_batch(chunk: list[str]) -> None:
            nonlocal probing, passing
            if passing:
                return  # the endpoint is out of reach or busy: the next tick asks again
            if not self.athena.has_batch:
                singles.extend(chunk)
                return
            try:
                async with asyncio.timeout(self.status_deadline):
                    found, unprocessed = await self.athena.batch_get(chunk, answers.moves)
            except TimeoutError:
                if not passing:
                    logger.warning("batch status call timed out", seconds=self.status_deadline)
                passing = True
                return
            except AthenaCallError as exc:
                probing = probing or exc.is_unexplained
                if not (exc.lacks_operation or exc.is_client_error or exc.is_unexplained):
                    passing = True  # the next tick asks again
                    return
                # No batch call there, a batch refused, or a bare 5xx to tell apart:
                # each id gets its own answer.
                singles.extend(chunk)
                return
            for execution in found:
                answers.add(execution)
            singles.extend(unprocessed)

        # The batches go out together (at most max_calls at once): a tick over thousands
        # of queries takes a few round trips, not one per 50 queries.
        await self._bounded(
            get_batch(execution_ids[start : start + BATCH_LIMIT])
            for start in range(0, len(execution_ids), BATCH_LIMIT)
        )
        if passing:
            return []
        missing: list[tuple[str, str]] = []
        answered = False

        async def get_one(execution_id: str) -> None:
            nonlocal answered, passing
            if passing:
                return  # the endpoint is out of reach or busy: the next tick asks again
            try:
                async with asyncio.timeout(self.status_deadline):
                    answers.add(await self.athena.get(execution_id))
                answered = True
            except AthenaCallError as exc:
                if exc.is_client_error:
                    missing.append((execution_id, exc.message))
                else:
                    passing = True
            except TimeoutError:
                passing = True

        await self._bounded(get_one(i) for i in singles)
        if probing and answered:
            self.athena.batch_missing()  # GetQueryExecution works where the batch call fails
        return missing

    async def _bounded(self, works: Iterable[Awaitable[None]]) -> StoreUnavailable | None:
        return await bounded(works, self.max_calls)


async def bounded(works: Iterable[Awaitable[None]], workers: int) -> StoreUnavailable | None:
    """Run `works` concurrently, at most `workers` at a time, logging each failure.

    A fixed pool of workers takes them one at a time from the iterable, so thousands of
    works never make thousands of tasks at once, and the workers share the loop's turns
    (_Pacer): once they have worked YIELD_SECONDS in one, the next work waits for the
    next (works that finish without waiting, one after another, or ten Athena answers
    come together, would hold it otherwise). A work that finds the store out of reach is
    no bug to log: the works not begun are dropped (the next tick does them again), and
    the failure is returned."""
    pending = iter(works)
    down: StoreUnavailable | None = None
    pacer = _Pacer()

    async def worker() -> None:
        nonlocal down
        await pacer.turn()
        for work in pending:
            if down is not None:
                if inspect.iscoroutine(work):
                    work.close()  # never begun
                continue
            try:
                await work
            except StoreUnavailable as exc:
                down = down or exc
            except Exception:
                logger.exception("poller step failed")
            await pacer.turn()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return down


class _Pacer:
    """The turns of the event loop, shared by workers: a worker about to begin a work
    goes on while the workers have worked less than YIELD_SECONDS since the turn began,
    and waits for the next turn otherwise.

    A turn begins when the loop runs the callback a worker that had to wait left for it
    (it runs ahead of the waiting workers, queued after it); a worker that resumes after
    the loop idled finds no turn begun and waits for one, one more step of the loop."""

    __slots__ = ("_ending", "_since")

    def __init__(self) -> None:
        self._since = time.perf_counter()
        self._ending = False

    async def turn(self) -> None:
        while time.perf_counter() - self._since > YIELD_SECONDS:
            if not self._ending:
                self._ending = True
                asyncio.get_running_loop().call_soon(self._begin)
            await asyncio.sleep(0)

    def _begin(self) -> None:
        self._since = time.perf_counter()
        self._ending = False


class _Answers:
    """What a tick's status answers ask of it, sorted as they come: the executions that
    move their query, for the machine; those of the queries with a deadline, for
    Timeouts; the cancels whose stop Athena has not carried out. The thousands that ask
    nothing are dropped at once, so a tick that learns nothing keeps nothing of them."""

    def __init__(self, watched: Mapping[str, QueryRecord]) -> None:
        self._watched = watched
        self.changed: list[tuple[QueryRecord, Execution]] = []
        self.deadlined: list[tuple[QueryRecord, Execution | Brief]] = []
        self.stopping: list[tuple[QueryRecord, str]] = []

    def moves(self, execution_id: str, state: str) -> bool:
        """Whether Athena's `state` moves the query of `execution_id`: its execution is
        then read whole."""
        return _changed(self._watched[execution_id], state)

    def add(self, execution: Execution | Brief) -> None:
        record = self._watched[execution.execution_id]
        if isinstance(execution, Execution) and _changed(record, execution.state):
            self.changed.append((record, execution))
        if record.timeout_at is not None:
            self.deadlined.append((record, execution))
        if record.cancel_requested_at is not None and execution.state in (Q.QUEUED, Q.RUNNING):
            self.stopping.append((record, execution.execution_id))


class _Slot:
    """One slot of a semaphore, which its holder may give back before the end of its
    `async with`: released there only if held then."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = False

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _changed(record: QueryRecord, state: str) -> bool:
    """Whether Athena's state of the execution moves the query: RUNNING for a QUEUED one,
    or an end. QUEUED for a RUNNING one (a transient error in Athena) moves nothing."""
    if state == Q.RUNNING:
        return record.state == Q.QUEUED
    return state != Q.QUEUED
