"""Webhooks: each finished run of a query with a callback_url POSTed there, signed, at
least once.

The delivery is stored with the move that finishes the run (Machine.callback,
Store.transition), so neither a crash nor a restart loses it. Each process runs one
`Dispatcher`, a task of its own beside the poller: it takes the due deliveries from the
store (each held by one process at a time, for a lease of LEASE_TIMEOUTS times
`webhooks.timeout_seconds`: a process killed mid-delivery leaves it to any process once
the lease ends), and sends at most `webhooks.max_concurrent` at once, each within
`webhooks.timeout_seconds`, so a slow or dead receiver holds one of those slots for that
long and nothing else: not the poller, not a request.

An attempt is a POST of the stored body, the same bytes every time, with
`Athenaq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` made for the
attempt, and `Athenaq-Delivery: <query id>.<run>`, the same at every attempt. A 2xx
answer delivers it. Anything else fails the attempt: another status (a 3xx too:
redirects are never followed, so a receiver cannot send athenaq on to a host of its own
network), no answer within the timeout, a connection refused. The host of the URL is
checked against `webhooks.allowed_hosts` again before each attempt (the config may have
changed since the submit): a host no longer there gives the delivery up at once. A
failure is tried again after `webhooks.first_retry_seconds`, then twice as long after
each failure up to MAX_RETRY_SECONDS, give or take RETRY_JITTER, until
`webhooks.retry_hours` after the move; the last attempt's failure then gives it up, and
`last_error` says so. Errors are recorded without the secret, which never leaves the
signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
from loguru import logger

from athenaq.clock import utcnow
from athenaq.config import WebhooksConfig, host_key
from athenaq.errors import StoreUnavailable
from athenaq.states import QueryRecord
from athenaq.store import Store
from athenaq.store.deliveries import Delivery
from athenaq.tasks import TaskRegistry

SIGNATURE_HEADER = "Athenaq-Signature"
DELIVERY_HEADER = "Athenaq-Delivery"
# The kind of background task that sends a delivery (see TaskRegistry).
WEBHOOK = "webhook"
# The longest wait between two attempts of a delivery.
MAX_RETRY_SECONDS = 3600.0
# Each wait is this fraction longer or shorter, at random: deliveries that failed together
# (a receiver down) are not all tried again in the same instant.
RETRY_JITTER = 0.2
# A process holds a delivery it sends for this many webhooks.timeout_seconds: the attempt,
# then the store's record of it.
LEASE_TIMEOUTS = 3
# A last_error is cut to this many characters.
MAX_ERROR_CHARACTERS = 500
# The dispatcher looks for due deliveries every poll interval, give or take this.
INTERVAL_JITTER = 0.1
# While the store is out of reach: one interval, then twice as long each time, up to
# this many intervals.
MAX_STORE_BACKOFF_INTERVALS = 4


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Athenaq-Signature` of `body` sent at `timestamp` (unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_wait(first_seconds: float, attempts: int) -> float:
    """Seconds to wait after the failure of attempt number `attempts` (from 1), jitter
    included: `first_seconds`, doubled at each attempt after the first, at most
    MAX_RETRY_SECONDS."""
    wait = min(first_seconds * 2.0 ** min(attempts - 1, 64), MAX_RETRY_SECONDS)
    return wait * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)


class _Refused(Exception):
    """The delivery must not be sent: it is given up at once."""


class Dispatcher:
    """Sends this process's share of the due webhook deliveries; `start()`/`stop()` bound
    its life."""

    def __init__(
        self,
        store: Store,
        config: WebhooksConfig,
        tasks: TaskRegistry,
        *,
        holder: str,
        interval_seconds: float,
    ) -> None:
        self.store = store
        self.config = config
        self.tasks = tasks
        # This process's name in the deliveries it takes (its lease holder name).
        self.holder = holder
        self.interval_seconds = interval_seconds
        self.lease_seconds = LEASE_TIMEOUTS * config.timeout_seconds
        # The deliveries being sent, by task key, as taken.
        self._sending: dict[str, Delivery] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # While the store is out of reach: the latest wait (seconds; 0 while it answers).
        self._store_backoff = 0.0

    def start(self) -> None:
        """Begin sending: the deliveries due now, then those that come due."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
            connector=aiohttp.TCPConnector(limit=self.config.max_concurrent),
            # No proxy from the environment, no cookies kept between receivers.
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "athenaq"},
        )
        self._task = asyncio.ensure_future(self._run())

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next interval."""
        self._wake.set()

    def moved(self, record: QueryRecord) -> None:
        """The machine's hook: a query that finished with a callback_url has a delivery due."""
        if record.callback_url is not None and record.is_finished:
            self._wake.set()

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Take no more deliveries; let the attempts under way end, for up to
        `drain_seconds` (at most one timeout), then cut the rest and make their
        deliveries due again at once, for the next process to send."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(drain_seconds, self.config.timeout_seconds)):
                await self.tasks.wait(WEBHOOK)
        cut = list(self._sending.values())
        await self.tasks.cancel(WEBHOOK)
        if cut:
            try:
                put_back = await self.store.put_back_deliveries(cut)
                logger.info("webhook deliveries cut by the shutdown", deliveries=put_back)
            except Exception:
                logger.exception("could not put back the deliveries cut; their lease ends them")
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            wait = self.interval_seconds * random.uniform(1 - INTERVAL_JITTER, 1 + INTERVAL_JITTER)
            try:
                if await self._round():
                    wait = 0.0  # it took all it could: more may be due
                if self._store_backoff:
                    logger.info("the store answers again; webhook deliveries resume")
                    self._store_backoff = 0.0
            except StoreUnavailable as exc:
                wait = self._store_down(exc)
            except Exception:
                logger.exception("the webhook dispatcher could not read the store")
            if wait:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def _round(self) -> bool:
        """Take as many due deliveries as there are free slots, and send each as a task of
        its own; whether it took as many as it asked for."""
        free = self.config.max_concurrent - len(self._sending)
        if free <= 0 or self._stopping:
            return False
        taken = await self.store.take_deliveries(self.holder, self.lease_seconds, free)
        for delivery in taken:
            key = f"{delivery.query_id}.{delivery.run}"
            if key in self._sending:
                continue  # its earlier attempt, past its lease, is still under way here
            self._sending[key] = delivery
            self.tasks.spawn(WEBHOOK, key, self._deliver(key, delivery))
        return len(taken) == free

    def _store_down(self, exc: StoreUnavailable) -> float:
        if self._store_backoff:
            longest = MAX_STORE_BACKOFF_INTERVALS * self.interval_seconds
            self._store_backoff = min(self._store_backoff * 2, longest)
        else:
            logger.warning("the store is unavailable; webhook deliveries wait", error=exc.message)
            self._store_backoff = self.interval_seconds
        return self._store_backoff

    async def _deliver(self, key: str, delivery: Delivery) -> None:
        fields = {
            "query_id": delivery.query_id,
            "run": delivery.run,
            "state": delivery.state.value,
            "attempt": delivery.attempts,
        }
        try:
            await self._attempt(delivery, fields)
        except StoreUnavailable as exc:
            logger.warning(
                "could not record a webhook attempt; it is made again once its lease ends",
                error=exc.message,
                **fields,
            )
        finally:
            self._sending.pop(key, None)
            self._wake.set()  # a slot is free

    async def _attempt(self, delivery: Delivery, fields: dict[str, object]) -> None:
        """Send `delivery` (as taken) once, and record what became of it."""
        started = time.monotonic()
        try:
            error = await self._post(delivery)
        except _Refused as exc:
            error = f"gave up: {exc}"
            await self.store.delivery_failed(delivery, error, None)
            logger.warning("webhook delivery refused", error=error, **fields)
            return
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        if error is None:
            if await self.store.delivered(delivery):
                logger.info("webhook delivered", duration_ms=duration_ms, **fields)
            return
        retry_at = self._retry_at(delivery, utcnow())
        if retry_at is None:
            attempts = delivery.attempts
            error = f"gave up after {attempts} attempt{'' if attempts == 1 else 's'}: {error}"
        error = error[:MAX_ERROR_CHARACTERS]
        await self.store.delivery_failed(delivery, error, retry_at)
        logger.warning(
            "webhook delivery failed" if retry_at else "webhook delivery given up",
            error=error,
            retry_at=None if retry_at is None else retry_at.isoformat(),
            duration_ms=duration_ms,
            **fields,
        )

    def _retry_at(self, delivery: Delivery, now: datetime) -> datetime | None:
        """When to try `delivery` again after its latest attempt failed; None when its
        webhooks.retry_hours are over: it is given up."""
        deadline = delivery.created_at + timedelta(hours=self.config.retry_hours)
        if now >= deadline:
            return None
        wait = retry_wait(self.config.first_retry_seconds, delivery.attempts)
        return min(now + timedelta(seconds=wait), deadline)

    async def _post(self, delivery: Delivery) -> str | None:
        """One attempt: None when the receiver took it (2xx), else what went wrong.
        Raises _Refused when the URL's host is not (any more) in allowed_hosts."""
        host = host_key(urlsplit(delivery.url).hostname or "")
        secret = self.config.secret
        if host not in self.config.allowed_hosts or secret is None:
            raise _Refused(f"the host {host!r} is not in webhooks.allowed_hosts")
        assert self._session is not None, "start() first"
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
            DELIVERY_HEADER: f"{delivery.query_id}.{delivery.run}",
        }
        try:
            async with self._session.post(
                delivery.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                code = response.status
        except TimeoutError:
            return f"no answer within {self.config.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return f"could not POST: {type(exc).__name__}: {exc}"
        if 200 <= code < 300:
            return None
        if 300 <= code < 400:
            return f"HTTP {code} (redirects are not followed)"
        return f"HTTP {code}"
