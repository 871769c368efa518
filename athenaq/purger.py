"""The purge of expired idempotency keys.

An Idempotency-Key holds for IDEMPOTENCY_HOURS; a request never reads an older one (it
takes the key over). Every minute, with jitter, each process deletes the expired keys,
oldest first, a batch per statement down their index by time, up to BATCHES batches a
round: the table holds the keys of the last hours and no more, whatever the number of
processes (they delete the same rows; a row is deleted once).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from loguru import logger
from tornado.ioloop import PeriodicCallback

from athenaq.clock import utcnow
from athenaq.errors import StoreUnavailable
from athenaq.states import IDEMPOTENCY_HOURS
from athenaq.store import Store

INTERVAL_SECONDS = 60.0
# Keys per statement, and statements per round: 60,000 a minute, far above any rate of
# submits a process takes.
BATCH = 1_000
BATCHES = 60


class KeyPurger:
    """Deletes the idempotency keys past their hours, every `interval_seconds`."""

    def __init__(self, store: Store, interval_seconds: float = INTERVAL_SECONDS) -> None:
        self.store = store
        self.interval_seconds = interval_seconds
        self._callback: PeriodicCallback | None = None
        self._round: asyncio.Task[int] | None = None
        self._stopping = False

    def start(self) -> None:
        """Purge every interval (with 10% jitter so processes spread out), the first
        time one interval from now: a process that starts has other work first."""
        self._callback = PeriodicCallback(self._run, self.interval_seconds * 1000, jitter=0.1)
        self._callback.start()

    async def stop(self) -> None:
        """Stop purging: a round under way ends after its statement in flight (cut, the
        statement would cost its connection)."""
        self._stopping = True
        if self._callback is not None:
            self._callback.stop()
        if self._round is not None:
            await asyncio.gather(self._round, return_exceptions=True)

    def _run(self) -> None:
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._purge_logged())

    async def _purge_logged(self) -> int:
        try:
            return await self.purge()
        except StoreUnavailable as exc:
            logger.warning("could not purge the expired idempotency keys", error=str(exc))
        except Exception:
            logger.exception("could not purge the expired idempotency keys")
        return 0

    async def purge(self) -> int:
        """Delete the keys expired by now, up to about BATCH * BATCHES; how many."""
        expired_at = utcnow() - timedelta(hours=IDEMPOTENCY_HOURS)
        deleted = 0
        for _ in range(BATCHES):
            if self._stopping:
                break
            count = await self.store.purge_idempotency_keys(expired_at, BATCH)
            deleted += count
            if count < BATCH:
                break
        if deleted:
            logger.info("expired idempotency keys purged", keys=deleted)
        return deleted
