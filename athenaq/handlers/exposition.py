"""What GET /metrics serves: the process's metrics (athenaq/metrics.py) and this
service's own figures, in the Prometheus text format.

The store's counts (queries by state, those waiting for an Athena slot) are read at a
scrape, at most once every STORE_FIGURES_SECONDS whatever the number of scrapers, one
read at a time: scrapes cannot load the store. A read that fails (the store out of
reach) keeps the figures read before, served with their age, so the process's other
metrics are still scraped while the store is away.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol

from loguru import logger
from prometheus_client import generate_latest

from athenaq import metrics
from athenaq.errors import StoreUnavailable
from athenaq.store import Store

# How long the store's counts serve scrapes before they are read again.
STORE_FIGURES_SECONDS = 5.0


class Polling(Protocol):
    """The poller, as the metrics see it."""

    # time.monotonic() of the latest tick's end; None before the first.
    last_tick: float | None

    @property
    def holding(self) -> int: ...


class Exposition:
    """One service's metrics page: its registry, and its store's counts, kept briefly."""

    def __init__(
        self,
        store: Store,
        poller: Polling,
        *,
        seconds: float = STORE_FIGURES_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.seconds = seconds
        self._clock = clock
        # The latest figures read; None before the first read that succeeded.
        self.figures: metrics.StoreFigures | None = None
        # When the latest read began (time.monotonic()), and the read under way.
        self._asked_at = -math.inf
        self._reading: asyncio.Future[None] | None = None
        self.registry = metrics.registry(
            metrics.ServiceCollector(
                lambda: self.figures,
                lambda: poller.holding,
                lambda: poller.last_tick,
                clock,
            )
        )

    async def page(self) -> bytes:
        """The metrics in the Prometheus text format, the store's counts read again when
        they are older than `seconds`."""
        await self._refresh()
        return generate_latest(self.registry)

    async def _refresh(self) -> None:
        if self._reading is None or self._reading.done():
            if self._clock() - self._asked_at < self.seconds:
                return
            self._asked_at = self._clock()
            self._reading = asyncio.ensure_future(self._read())
        # A scrape that gives up (its client gone) leaves the read to the others.
        await asyncio.shield(self._reading)

    async def _read(self) -> None:
        try:
            counts = await self.store.count_states()
        except StoreUnavailable as exc:
            logger.warning(
                "the metrics could not read the store; its latest figures are served",
                error=exc.message,
            )
            return
        self.figures = metrics.StoreFigures(
            {state.value: count for state, count in counts.by_state.items()},
            counts.waiting,
            self._clock(),
        )
