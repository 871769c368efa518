"""The service: its parts wired together, and its life from start to shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import tornado.web
from loguru import logger
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from athenaq.athena import Athena
from athenaq.auth import AllowEveryone, Authorizer
from athenaq.config import Config
from athenaq.handlers import health, queries
from athenaq.handlers.base import Context, NotFoundHandler
from athenaq.logs import log_request
from athenaq.machine import Machine
from athenaq.poller import Poller
from athenaq.results import ResultFiles
from athenaq.store import Store

# How long a shutdown waits for requests in flight before closing their connections.
DRAIN_SECONDS = 10.0


def make_app(ctx: Context) -> tornado.web.Application:
    routes: list[Any] = [
        (pattern, handler, {"ctx": ctx})
        for module in (queries, health)
        for pattern, handler in module.default_handlers
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        log_function=log_request,
        compress_response=True,
    )


class Service:
    """athenaq in one process: `start()` opens everything and listens, `stop()` undoes it."""

    def __init__(self, config: Config, *, authorizer: Authorizer | None = None) -> None:
        self.config = config
        self.authorizer = authorizer or AllowEveryone()
        self.port = 0
        self._stack = contextlib.AsyncExitStack()
        self._server: HTTPServer | None = None
        self.machine: Machine | None = None
        self.poller: Poller | None = None
        self._ctx: Context | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.server.host}:{self.port}"

    async def start(self) -> None:
        config = self.config
        try:
            store = await Store.connect(config.database.url)
            self._stack.push_async_callback(store.close)
            await store.create_schema()
            athena = await self._stack.enter_async_context(Athena.open(config.athena))
            results = ResultFiles(config.results.dir)
            await asyncio.to_thread(results.prepare)
            self.machine = Machine(
                store,
                athena,
                results,
                database=config.athena.database,
                workgroup=config.athena.workgroup,
                retry_after=max(1.0, config.poller.interval_seconds),
            )
            self._ctx = Context(machine=self.machine, authorizer=self.authorizer)
            app = make_app(self._ctx)
            sockets = bind_sockets(config.server.port, config.server.host)
            self.port = sockets[0].getsockname()[1]
            self._server = HTTPServer(app, max_body_size=100 * 1024 * 1024)
            self._server.add_sockets(sockets)
            self.poller = Poller(self.machine, config.poller.interval_seconds)
            self.poller.start()
        except BaseException:
            await self._stack.aclose()
            raise
        logger.info("listening", url=self.url, results_dir=str(results.directory))

    async def stop(self) -> None:
        """Stop polling and accepting, let work in flight finish, close the store and clients."""
        if self.poller is None:
            return
        started = time.monotonic()
        await self.poller.stop()
        self.poller = None
        if self._server is not None:
            self._server.stop()
            if self._ctx is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ctx.in_flight.idle(), DRAIN_SECONDS)
            await self._server.close_all_connections()
        if self.machine is not None:
            await self.machine.drain()
        await self._stack.aclose()
        logger.info("stopped", duration_ms=round((time.monotonic() - started) * 1000, 1))
