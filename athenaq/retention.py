"""Retention: result files older than `results.retention_days` are removed, in the
background, by every process of a fleet at once if need be.

A pass takes the oldest results not removed yet that were stored before the cutoff
(`Store.results_to_expire`, from the `queries_results_expiry` index) and, for each,
first marks it removed with a compare-and-set (`Store.expire_results`: still that
SUCCEEDED run, not marked yet), then removes its files: of several processes racing for
one result, one wins and removes; a refresh meanwhile makes the mark miss, and removes
the files itself.

Marked first, removed second: a reader that read the query before the mark and opens
the files after the removal finds them gone, reads the query again, sees the mark and
answers 410 results_expired (Lookup.open_results); one that opened them first reads
them to the end, since an open file outlives its removal (POSIX). A process that dies
between a mark and its removal leaves the files: each pass removes again the files of
the results marked in the last few passes, and a process's first pass those of the last
day.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from loguru import logger
from tornado.ioloop import PeriodicCallback

from athenaq.clock import utcnow
from athenaq.errors import ServiceUnavailable
from athenaq.results import ResultFiles
from athenaq.store import Store
from athenaq.tasks import TaskRegistry

TASK = "retention"
# Results marked and removed per read of the candidates, and reads per pass: a backlog
# (retention just turned on over years of results) is worked off pass by pass.
BATCH = 200
MAX_BATCHES = 50
# The longest time between two passes; a short retention has passes a tenth of it apart,
# at least a poll interval.
MAX_PASS_SECONDS = 60.0
# Passes after which a mark's removal is no longer tried again; a first pass goes back
# this far.
RETRY_PASSES = 3
FIRST_LOOKBACK = timedelta(days=1)


def pass_seconds(keep: timedelta, poll_interval: float) -> float:
    """The time between two passes for a retention of `keep`."""
    return min(MAX_PASS_SECONDS, max(poll_interval, keep.total_seconds() / 10))


class Retention:
    """Removes expired results in passes, `interval` seconds apart (10% jitter)."""

    def __init__(
        self,
        store: Store,
        results: ResultFiles,
        tasks: TaskRegistry,
        *,
        keep: timedelta,
        interval: float,
    ) -> None:
        self.store = store
        self.results = results
        self.tasks = tasks
        self.keep = keep
        self.interval = interval
        self._callback: PeriodicCallback | None = None
        self._passes = 0

    def start(self) -> None:
        """Pass now, then every interval."""
        self._callback = PeriodicCallback(self._tick, self.interval * 1000, jitter=0.1)
        self._callback.start()
        self._tick()

    async def stop(self) -> None:
        """Start no more passes, and end the one under way (a removal cut short is done
        again by the next pass, of this process or another)."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        await self.tasks.cancel(TASK)

    def _tick(self) -> None:
        self.tasks.spawn(TASK, TASK, self._pass())

    async def _pass(self) -> None:
        started = time.monotonic()
        try:
            removed = await self.sweep()
        except (ServiceUnavailable, OSError) as exc:
            # Passing: the store or the disk is out of reach; the next pass goes on.
            logger.warning("retention pass failed", error=str(exc))
            return
        if removed:
            logger.info(
                "expired results removed",
                queries=removed,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )

    async def sweep(self) -> int:
        """One pass: mark and remove the results stored more than `keep` ago, then remove
        again the files of the results marked lately (see the module's docstring).
        Returns how many results this pass marked and removed."""
        now = utcnow()
        lookback = FIRST_LOOKBACK if self._passes == 0 else RETRY_PASSES * self._interval()
        self._passes += 1
        removed: set[str] = set()
        for _ in range(MAX_BATCHES):
            batch = await self.store.results_to_expire(now - self.keep, BATCH)
            for query_id, execution_id in batch:
                if await self.store.expire_results(query_id, execution_id):
                    await self.results.delete(query_id, execution_id)
                    removed.add(query_id)
            if len(batch) < BATCH:
                break
            await asyncio.sleep(0)
        for query_id, execution_id in await self.store.results_expired_since(now - lookback):
            if query_id not in removed:
                await self.results.delete(query_id, execution_id)
        return len(removed)

    def _interval(self) -> timedelta:
        return timedelta(seconds=self.interval)
