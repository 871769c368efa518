"""What GET /ready checks: the store answers, the results folder takes a file, the poller
ticks. Every check is bounded in time, so a hung store or disk still gets an answer."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from typing import Protocol

from loguru import logger

from athenaq.results import ResultFiles
from athenaq.store import Store

# How long the store and the results folder each have to answer: the checks run at once,
# so /ready answers within about this long even when one of them hangs.
CHECK_DEADLINE_SECONDS = 1.0
# The poller is late once its latest tick ended this many intervals ago...
TICK_INTERVALS = 3
# ...and never sooner than this: a healthy tick may wait a second for Athena, and a tick
# of a short interval is no sooner late for that.
MIN_TICK_AGE_SECONDS = 3.0


class Ticking(Protocol):
    """The poller, as readiness sees it."""

    interval_seconds: float
    # time.monotonic() of the latest tick's end; None before the first.
    last_tick: float | None


class Readiness:
    """Whether this process can do its work: the store answers, the results folder takes
    a file, the poller ticks. Each check is bounded in time, and its failure is a short
    reason fit for any client: no address, path or credential."""

    def __init__(self, store: Store, results: ResultFiles, poller: Ticking) -> None:
        self.store = store
        self.results = results
        self.poller = poller
        # A poller that has not ended a tick yet is late counting from here.
        self._since = time.monotonic()
        # The file check under way: a disk that hangs holds one thread, not one per probe.
        self._writing: asyncio.Future[None] | None = None

    async def check(self) -> dict[str, str]:
        """Each check's outcome: "ok", or why it failed."""
        store, results = await asyncio.gather(
            _outcome("store", self.store.ping(CHECK_DEADLINE_SECONDS)),
            _outcome("results", self._results()),
        )
        return {"store": store, "results": results, "poller": self._poller()}

    async def _results(self) -> None:
        if self._writing is None or self._writing.done():
            self._writing = asyncio.ensure_future(asyncio.to_thread(self.results.check_writable))
            # Its outcome may come after every asker gave up on it.
            self._writing.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.wait_for(asyncio.shield(self._writing), CHECK_DEADLINE_SECONDS)

    def _poller(self) -> str:
        allowed = max(TICK_INTERVALS * self.poller.interval_seconds, MIN_TICK_AGE_SECONDS)
        last_tick = self.poller.last_tick
        age = time.monotonic() - (self._since if last_tick is None else last_tick)
        if age <= allowed:
            return "ok"
        if last_tick is None:
            return f"no tick ended in {age:.1f} s"
        return f"the latest tick ended {age:.1f} s ago (allowed: {allowed:g} s)"


async def _outcome(name: str, work: Awaitable[None]) -> str:
    try:
        await work
    except TimeoutError:
        reason = f"no answer within {CHECK_DEADLINE_SECONDS:g} s"
        logger.warning("readiness check failed", check=name, reason=reason)
    except Exception as exc:
        # Messages name hosts, users and files: the client gets the error's kind only, the
        # log the message too.
        if isinstance(exc, OSError) and exc.errno:
            reason = os.strerror(exc.errno)
        else:
            reason = f"failed: {type(exc).__name__}"
        logger.warning("readiness check failed", check=name, reason=reason, error=str(exc)[:300])
    else:
        return "ok"
    return reason
