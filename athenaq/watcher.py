"""The long-poll watcher: one per process, it wakes the requests that wait for a query to
finish (`GET /query/<id>/status?wait=N`).

A waiting request holds no connection of the store: it registers a `Waiter` and awaits
it. The watcher wakes it at once when this process's machine moves its query to a
finished state (`Watcher.moved`, the machine's hook), and otherwise learns of changes
made anywhere (another process sharing the store) by one shared read every
`interval` seconds while anyone waits: the state and run of every waited-on query, by
primary key, in one statement per `store.watch.CHUNK` ids, however many requests wait
on them. A query is done waiting for once it is finished, or once it began a new run (a
refresh after it finished, between two reads). A waiter is woken with the query as it
now stands: the machine's record, or the whole rows of the queries a shared read found
done, read together; so a thousand answers cost no read each. A shutdown wakes every
waiter, with its query read for it in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterator

from loguru import logger

from athenaq.errors import StoreUnavailable
from athenaq.states import QueryRecord, QueryState
from athenaq.store import Store
from athenaq.store.watch import Progress

# How often the shared read runs while requests wait: a change made by another process
# is answered within about this, plus the read.
INTERVAL_SECONDS = 0.5


class Woken(enum.Enum):
    """Why a waiter's wait ended."""

    # Its query finished, or began a new run.
    MOVED = "moved"
    # Its time was up.
    TIMEOUT = "timeout"
    # The process is shutting down.
    STOPPING = "stopping"
    # Its client hung up.
    GONE = "gone"


class Waiter:
    """One request waiting for a query (as it read it, unfinished) to finish."""

    __slots__ = ("_watcher", "_woken", "query_id", "record", "run")

    def __init__(self, watcher: Watcher, record: QueryRecord) -> None:
        self._watcher = watcher
        self.query_id = record.id
        self.run = record.run
        # The query as it stood when the waiter was woken, if the watcher had it.
        self.record: QueryRecord | None = None
        self._woken: asyncio.Future[Woken] = asyncio.get_running_loop().create_future()

    def wake(self, why: Woken, record: QueryRecord | None = None) -> None:
        """End the wait, with the query as it stands when known (the first wake stands)."""
        if not self._woken.done():
            self.record = record
            self._woken.set_result(why)

    async def wait(self, seconds: float) -> Woken:
        """Wait until woken, at most `seconds`. Raises StoreUnavailable when the wait ends
        without news of the query while the latest shared read found the store out of
        reach: the answer is then a 503 at once, rather than after one more read's
        deadline."""
        done, _ = await asyncio.wait((self._woken,), timeout=seconds)
        woken = self._woken.result() if done else Woken.TIMEOUT
        if self.record is None and woken is not Woken.GONE and self._watcher.store_down:
            raise StoreUnavailable("the store cannot be reached")
        return woken


class Watcher:
    """Wakes the waiters of this process; `start()`/`stop()` bound its life."""

    def __init__(self, store: Store, *, interval: float = INTERVAL_SECONDS) -> None:
        self.store = store
        self.interval = interval
        self._waiters: dict[str, set[Waiter]] = {}
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        # Set when the first waiter comes to an idle watcher, and at the stop.
        self._nudge = asyncio.Event()
        self._stopped = asyncio.Event()
        # Shared reads ended so far (failed ones too), and whether the latest found the
        # store out of reach.
        self.reads = 0
        self.store_down = False

    @property
    def waiting(self) -> int:
        """How many waiters wait."""
        return self._count

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Wake every waiter, with its query as it stands (read for all of them at once),
        and any that comes later at once; end the shared reads."""
        self._stopped.set()
        self._nudge.set()
        if self._task is not None:
            await self._task
        if self._waiters:
            records = await self._records(list(self._waiters))
            for query_id, waiters in self._waiters.items():
                for waiter in waiters:
                    waiter.wake(Woken.STOPPING, records.get(query_id))

    @contextlib.contextmanager
    def watching(self, record: QueryRecord) -> Iterator[Waiter]:
        """A waiter for `record`'s query, registered for the block."""
        waiter = Waiter(self, record)
        if self.stopping:
            waiter.wake(Woken.STOPPING)
            yield waiter
            return
        waiters = self._waiters.setdefault(record.id, set())
        waiters.add(waiter)
        self._count += 1
        if self._count == 1:
            self._nudge.set()
        try:
            yield waiter
        finally:
            self._count -= 1
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[record.id]

    def moved(self, record: QueryRecord) -> None:
        """The machine's hook: `record` is a query this process just moved."""
        for waiter in self._waiters.get(record.id, ()):
            if _done(waiter, record.state, record.run):
                waiter.wake(Woken.MOVED, record)

    async def _run(self) -> None:
        while not self.stopping:
            if not self._waiters:
                self._nudge.clear()
                await self._nudge.wait()
                continue
            # The first read comes an interval after the first waiter, who has just read.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stopped.wait()
            if self._waiters and not self.stopping:
                await self._read()

    async def _read(self) -> None:
        """One shared read of the waited-on queries; the waiters whose query is done are
        woken with its whole row, read for all of them at once, on the same connection."""
        try:
            _, records = await self.store.states_of(list(self._waiters), self._due)
        except StoreUnavailable as exc:
            if not self.store_down:
                logger.warning("the store is unavailable; long-polls wait blind", error=str(exc))
            self.store_down = True
            return
        except Exception:
            logger.exception("the long-poll watcher could not read the store")
            return
        finally:
            self.reads += 1
        if self.store_down:
            logger.info("the store answers again; long-polls are told of changes")
            self.store_down = False
        for query_id, record in records.items():
            for waiter in self._waiters.get(query_id, ()):
                # A row read after its state: it may have moved again since, even back
                # to unfinished (a refresh), and is answered as it is read.
                waiter.wake(Woken.MOVED, record)

    def _due(self, query_id: str, progress: Progress) -> bool:
        """Whether a waiter of the query is done waiting: its whole row is to be read."""
        state, run = progress
        return any(_done(waiter, state, run) for waiter in self._waiters.get(query_id, ()))

    async def _records(self, ids: list[str]) -> dict[str, QueryRecord]:
        """The queries of `ids` as they stand; none when the store does not answer (each
        waiter then reads its own query, or answers 503 when the store is known down)."""
        try:
            return await self.store.records_of(ids)
        except StoreUnavailable:
            self.store_down = True
        except Exception:
            logger.exception("the long-poll watcher could not read the store")
        return {}


def _done(waiter: Waiter, state: QueryState, run: int) -> bool:
    """Whether the query a waiter waits for is done: finished, or in a new run."""
    return state.is_finished or run != waiter.run
