"""The process's own concurrency: one registry of background tasks, and per-key locks.

Every piece of background work (a start sent to Athena, a result download) runs as a
task of the registry, named by its kind and the query it is for: the same work never
runs twice at once, its failures are logged in one place, its numbers can be read, and a
shutdown waits for it or cancels it, to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

from loguru import logger

T = TypeVar("T")
R = TypeVar("R")


class TaskRegistry:
    """Background tasks by (kind, key); a key has at most one task of a kind at a time."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def spawn(self, kind: str, key: str, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` as its own task unless one of `kind` for `key` is under way; False
        (and `work` closed unstarted) then."""
        name = (kind, key)
        if self.running(kind, key):
            work.close()
            return False
        task = asyncio.ensure_future(self._run(kind, key, work))
        self._tasks[name] = task
        task.add_done_callback(lambda ended: self._forget(name, ended, work))
        return True

    def _forget(
        self, name: tuple[str, str], task: asyncio.Task[None], work: Coroutine[Any, Any, None]
    ) -> None:
        # A task cancelled before its first step (a shutdown) never started `work`:
        # closed here, it is not reported as a coroutine never awaited.
        work.close()
        if self._tasks.get(name) is task:
            del self._tasks[name]

    @staticmethod
    async def _run(kind: str, key: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            logger.exception("background work failed", task=kind, query_id=key)

    def running(self, kind: str, key: str) -> bool:
        # A task that has just ended is still listed until its done callback runs: it is
        # under way no more, and a new one may start.
        task = self._tasks.get((kind, key))
        return task is not None and not task.done()

    def keys(self, kind: str) -> list[str]:
        """The keys that have a task of `kind` under way."""
        return [key for task_kind, key in self._tasks if task_kind == kind]

    def count(self, kind: str | None = None) -> int:
        """How many tasks (of `kind`) are under way."""
        return sum(1 for name in self._tasks if kind is None or name[0] == kind)

    async def wait(self, kind: str | None = None) -> None:
        """Wait until no task (of `kind`) is left, those started meanwhile included. A
        wait cancelled (at a deadline) leaves the tasks running."""
        while pending := self._of(kind):
            await asyncio.wait(pending)

    async def cancel(self, kind: str) -> None:
        """Cancel every task of `kind` and wait for each to end."""
        while pending := self._of(kind):
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _of(self, kind: str | None) -> list[asyncio.Task[None]]:
        return [task for name, task in self._tasks.items() if kind is None or name[0] == kind]


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


class Batches(Generic[T, R]):
    """Items handed in one by one, written in batches: one batch at a time, of the items
    that came while the one before was written (at most `size`), by the task of the
    batch's first item. An item that comes while none is written is written at once,
    alone; the busier the writes, the bigger the batches.

    `write` is given a batch and returns each item's outcome in order, or raises: each
    item's caller then gets the error. A caller cancelled while its item waits takes the
    item out (it is written by no one); a writer cancelled mid-batch hands the batch's
    other items back, first in line, for the next writer."""

    def __init__(self, write: Callable[[list[T]], Awaitable[Sequence[R]]], size: int) -> None:
        self._write = write
        self._size = size
        self._waiting: deque[_Item[T, R]] = deque()
        self._writing = False

    async def __call__(self, value: T) -> R:
        item = _Item[T, R](value)
        self._waiting.append(item)
        if not self._writing:
            self._writing = True
            item.turn.set_result(None)
        try:
            await item.turn
        except asyncio.CancelledError:
            item.dropped = True
            if item.turn.done() and not item.turn.cancelled() and not item.outcome.done():
                self._pass_on()  # its turn to write came as it was cancelled
            raise
        if not item.outcome.done():
            try:
                await self._write_next()
            finally:
                self._pass_on()
        return item.outcome.result()

    async def _write_next(self) -> None:
        """Write the waiting items, the caller's first, up to `size` of them."""
        batch: list[_Item[T, R]] = []
        while self._waiting and len(batch) < self._size:
            item = self._waiting.popleft()
            if not item.dropped:
                batch.append(item)
        try:
            outcomes = list(
                zip(batch, await self._write([item.value for item in batch]), strict=True)
            )
        except asyncio.CancelledError:
            # Cut short (a shutdown): written or not, the others try again, first in line.
            self._waiting.extendleft(reversed(batch[1:]))
            raise
        except Exception as exc:
            for item in batch:
                item.settle(exc)
            return
        for item, outcome in outcomes:
            item.settle(outcome)

    def _pass_on(self) -> None:
        """Give the next waiting item's task the turn to write, or let the next item
        that comes write at once."""
        for item in self._waiting:
            if not item.dropped:
                item.turn.set_result(None)
                return
        self._waiting.clear()
        self._writing = False


class _Item(Generic[T, R]):
    """An item of `Batches`: its value, its turn to write (set when its task is to write
    the next batch), its outcome, and whether its caller gave up on it."""

    __slots__ = ("dropped", "outcome", "turn", "value")

    def __init__(self, value: T) -> None:
        loop = asyncio.get_running_loop()
        self.value = value
        self.turn: asyncio.Future[None] = loop.create_future()
        self.outcome: asyncio.Future[R] = loop.create_future()
        self.dropped = False

    def settle(self, outcome: R | Exception) -> None:
        """Give the item its outcome (a value, or the batch's error) and wake its task;
        unless its caller gave up on it."""
        if self.dropped:
            return
        if isinstance(outcome, Exception):
            self.outcome.set_exception(outcome)
        else:
            self.outcome.set_result(outcome)
        if not self.turn.done():
            self.turn.set_result(None)
