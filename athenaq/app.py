"""The service: its parts wired together, and its life from start to shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import socket
import ssl
import time
from datetime import timedelta
from typing import Any

import tornado.web
from loguru import logger
from tornado.netutil import bind_sockets

from athenaq.admission import AdaptiveCap
from athenaq.athena import Athena
from athenaq.auth import AllowEveryone, ApiKeys, Authorizer
from athenaq.commands import Commands
from athenaq.config import EMBEDDED, Config, S3Config, ServerConfig
from athenaq.handlers import health, monitoring, queries, reports, spec
from athenaq.handlers.base import Context, NotFoundHandler
from athenaq.handlers.exposition import Exposition
from athenaq.handlers.readiness import Readiness
from athenaq.handlers.server import AthenaqHTTPServer
from athenaq.ingest import Ingest
from athenaq.launcher import Launcher
from athenaq.logs import log_request
from athenaq.lookup import Lookup
from athenaq.machine import Machine
from athenaq.policy import Policy
from athenaq.poller import Poller
from athenaq.purger import KeyPurger
from athenaq.ratelimit import RateLimiter
from athenaq.reports import Reports
from athenaq.results import ResultFiles
from athenaq.retention import Retention, pass_seconds
from athenaq.schemas import DumpPlan, StatusSchema
from athenaq.states import Lease, QueryRecord
from athenaq.store import Store
from athenaq.storing import ResultsStorer
from athenaq.tasks import TaskRegistry
from athenaq.watcher import Watcher
from athenaq.webhooks import Dispatcher

# Where the embedded local engine keeps the result objects Athena would put in S3.
LOCAL_ENGINE_DIR = "_local_engine"
# Tornado's own body limit, set past any a route takes: every handler streams its body and
# answers its own JSON 413 (BaseHandler), and Tornado's check would only append a bare 400
# to that answer.
UNLIMITED_BODY = 2**62
# Athena's throttling of a start halves athena.max_running for this process, at most once
# per poll interval (the starts of one round are throttled together); each this many
# intervals without a throttle raise it back by one.
CAP_QUIET_INTERVALS = 10
# How long a shutdown waits, once it has cut the connections left, for the downloads it
# cut to log so: each needs one turn of the loop.
CUT_DOWNLOADS_SECONDS = 1.0


def make_app(ctx: Context, cors_origins: frozenset[str] = frozenset()) -> tornado.web.Application:
    routes: list[Any] = [
        (pattern, handler, {"ctx": ctx})
        for module in (queries, reports, health, monitoring, spec)
        for pattern, handler in module.default_handlers
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        log_function=log_request,
        compress_response=True,
        # Read by BaseHandler.set_default_headers, which runs before a handler's initialize.
        cors_origins=cors_origins,
    )


def make_http_server(app: tornado.web.Application, config: ServerConfig) -> AthenaqHTTPServer:
    tls = None
    if config.tls is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return AthenaqHTTPServer(
        app,
        ssl_options=tls,
        idle_connection_timeout=config.idle_connection_timeout,
        body_timeout=config.body_timeout,
        max_body_size=UNLIMITED_BODY,
        max_connections=config.max_connections,
    )


class Service:
    """athenaq in one process: `start()` opens everything and listens, `stop()` undoes it."""

    def __init__(self, config: Config, *, authorizer: Authorizer | None = None) -> None:
        """`authorizer` replaces the one `auth.mode` chooses."""
        self.config = config
        self.authorizer = authorizer
        self.port = 0
        self._stack = contextlib.AsyncExitStack()
        self._server: AthenaqHTTPServer | None = None
        self.tasks = TaskRegistry()
        self.poller: Poller | None = None
        self.purger: KeyPurger | None = None
        # Removes expired results (results.retention_days); None without retention.
        self.retention: Retention | None = None
        self._ctx: Context | None = None
        # The routes it serves, once started (tests hold the OpenAPI document to them).
        self.app: tornado.web.Application | None = None
        self._store: Store | None = None
        self._watcher: Watcher | None = None
        self._dispatcher: Dispatcher | None = None
        # This process's name in the queries it polls: unique across hosts and restarts.
        self.lease = Lease(
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}",
            config.poller.lease_seconds,
        )

    @property
    def url(self) -> str:
        scheme = "http" if self.config.server.tls is None else "https"
        return f"{scheme}://{self.config.server.host}:{self.port}"

    async def start(self) -> None:
        config = self.config
        try:
            store = await Store.connect(
                config.database.url,
                maxsize=config.database.pool_size,
                call_timeout=config.database.timeout_seconds,
            )
            self._stack.push_async_callback(store.close)
            self._store = store
            if config.database.migrate_on_start:
                change = await store.create_schema()
                for step in change.steps:
                    logger.info("schema changed", step=step, revision=change.after)
            else:
                await store.check_schema()
            results = ResultFiles(config.results.dir)
            athena = await self._stack.enter_async_context(await self._open_athena(results))
            await asyncio.to_thread(results.prepare)
            lookup = Lookup(store, results)
            watcher = Watcher(store)
            dispatcher = Dispatcher(
                store,
                config.webhooks,
                self.tasks,
                holder=self.lease.holder,
                interval_seconds=config.poller.interval_seconds,
            )

            def moved(record: QueryRecord) -> None:
                watcher.moved(record)
                dispatcher.moved(record)

            retention = None
            if config.results.retention_days is not None:
                keep = timedelta(days=config.results.retention_days)
                retention = Retention(
                    store,
                    results,
                    self.tasks,
                    keep=keep,
                    interval=pass_seconds(keep, config.poller.interval_seconds),
                )
            # The status object as GET /query/<id>/status, the listing and webhooks show it.
            status = DumpPlan(
                StatusSchema(
                    price_per_tb_usd=config.athena.price_per_tb_usd,
                    retention=retention.keep if retention is not None else None,
                )
            )
            machine = Machine(store, lease=self.lease, moved=moved, status=status.dump)
            storer = ResultsStorer(
                machine,
                store,
                results,
                Ingest(athena, results, config.results.first_page_rows),
                store_retry=timedelta(minutes=config.results.store_retry_minutes),
            )
            commands = Commands(
                machine,
                store,
                athena,
                results,
                lookup,
                Policy(store),
                database=config.athena.database,
                workgroup=config.athena.workgroup,
                catalog=config.athena.catalog,
                callback_hosts=config.webhooks.allowed_hosts,
                cancel_wait=config.athena.cancel_wait_seconds,
            )
            interval = config.poller.interval_seconds
            cap = AdaptiveCap(
                config.athena.max_running,
                hold_seconds=interval,
                quiet_seconds=CAP_QUIET_INTERVALS * interval,
            )
            launcher = Launcher(store, athena, machine, self.tasks, cap=cap, lease=self.lease)
            poller = Poller(
                store,
                athena,
                machine,
                storer,
                launcher,
                self.tasks,
                config.poller.interval_seconds,
                lease=self.lease,
                max_calls=config.poller.max_concurrent_calls,
                max_downloads=config.poller.max_concurrent_downloads,
                max_stores=config.poller.max_concurrent_stores,
                cancel_wait=config.athena.cancel_wait_seconds,
            )
            price = config.athena.price_per_tb_usd
            self._ctx = Context(
                commands=commands,
                lookup=lookup,
                launcher=launcher,
                authorizer=self.authorizer or self._authorizer(store),
                retry_after=max(1, round(config.poller.interval_seconds)),
                max_body_bytes=config.server.max_body_bytes,
                max_inflight_requests=config.server.max_inflight_requests,
                readiness=Readiness(store, results, poller),
                exposition=Exposition(store, poller),
                watcher=watcher,
                reports=Reports(store, price_per_tb_usd=price),
                status=status,
                rate_limiter=(
                    RateLimiter(config.auth.requests_per_second)
                    if config.auth.requests_per_second
                    else None
                ),
            )
            app = self.app = make_app(self._ctx, frozenset(config.server.cors_origins))
            sockets = bind_sockets(config.server.port, config.server.host)
            self.port = sockets[0].getsockname()[1]
            self._server = make_http_server(app, config.server)
            self._server.add_sockets(sockets)
            self.poller = poller
            poller.start()
            self._watcher = watcher
            watcher.start()
            self.purger = KeyPurger(store)
            self.purger.start()
            self._dispatcher = dispatcher
            dispatcher.start()
            if retention is not None:
                self.retention = retention
                retention.start()
        except BaseException:
            await self._stack.aclose()
            raise
        logger.info("listening", url=self.url, results_dir=str(results.directory))

    def _authorizer(self, store: Store) -> Authorizer:
        if self.config.auth.mode == "api_keys":
            return ApiKeys(store)
        return AllowEveryone(self.config.sql.default_statements)

    async def _open_athena(
        self, results: ResultFiles
    ) -> contextlib.AbstractAsyncContextManager[Athena]:
        """Athena's and S3's clients; in embedded mode first start the local engine in this
        process and point both at it, the same calls as against AWS."""
        athena_config = self.config.athena
        if athena_config.endpoint_url != EMBEDDED:
            return Athena.open(athena_config, self.config.s3)
        from athenaq.local import LocalEngine  # an optional extra: imported only when used

        engine = LocalEngine(
            results.directory / LOCAL_ENGINE_DIR,
            default_output_location=athena_config.output_location,
        )
        endpoint_url = await engine.start()
        self._stack.push_async_callback(engine.stop)
        logger.info("local engine started", url=endpoint_url)
        # The local engine asks for no credentials; any keep the client off the AWS chain.
        return Athena.open(
            dataclasses.replace(athena_config, endpoint_url=endpoint_url),
            S3Config(endpoint_url=endpoint_url),
            credentials={"aws_access_key_id": "local", "aws_secret_access_key": "local"},
        )

    async def stop(self) -> None:
        """Stop accepting and polling, hand the queries held over at once, let downloads
        in flight (the poller's and clients') and webhook deliveries finish for up to
        `server.drain_seconds`, then cut the rest; close the store and clients."""
        if self.poller is None:
            return
        started = time.monotonic()
        drain = self.config.server.drain_seconds
        if self._server is not None:
            self._server.stop()
        if self._watcher is not None:
            # Long-polls answer now, with their queries as they stand, not at the drain's end.
            await self._watcher.stop()
        if self.retention is not None:
            await self.retention.stop()
            self.retention = None
        requests = asyncio.ensure_future(self._drain_requests(drain))
        if self.purger is not None:
            await self.purger.stop()
        await self.poller.stop(drain)
        self.poller = None
        await requests
        if self._dispatcher is not None:
            # After the poller: the results it stored while draining have their deliveries
            # sent, within what is left of the drain, or left due for the next process.
            await self._dispatcher.stop(max(0.0, drain - (time.monotonic() - started)))
            self._dispatcher = None
        # Starts that requests in flight asked for.
        await self.tasks.wait()
        if self._store is not None:
            # What the poller kept while storing it, and what requests in flight submitted:
            # another process's next poll takes it over.
            with contextlib.suppress(Exception):
                released = await self._store.release(self.lease.holder)
                logger.info("leases released", queries=released, holder=self.lease.holder)
        await self._stack.aclose()
        logger.info("stopped", duration_ms=round((time.monotonic() - started) * 1000, 1))

    async def _drain_requests(self, seconds: float) -> None:
        """Wait up to `seconds` for the requests in flight, then close the connections
        left (a download cut then is logged as the shutdown's doing)."""
        if self._server is None or self._ctx is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ctx.in_flight.idle(), seconds)
        self._ctx.cutting.set()
        await self._server.close_all_connections()
        # Closing a connection ends its serving loop before the download writing to it
        # resumes: give each cut download its turn to log the cut before the process goes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ctx.downloads.idle(), CUT_DOWNLOADS_SECONDS)
