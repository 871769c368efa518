"""The process's own concurrency: one registry of background tasks, and per-key locks.

Every piece of background work (a start sent to Athena, a result download) runs as a
task of the registry, named by its kind and the query it is for: the same work never
runs twice at once, its failures are logged in one place, its numbers can be read, and a
shutdown waits for it or cancels it, to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from loguru import logger


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
