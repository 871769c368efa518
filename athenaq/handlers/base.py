"""The base handler: dependencies, authentication, and JSON errors for every endpoint."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loguru import logger
from tornado.web import HTTPError, RequestHandler

from athenaq.auth import Authorizer
from athenaq.errors import (
    ApiError,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    QueryNotFound,
    QueryRunning,
    RateLimited,
)
from athenaq.identity import Caller
from athenaq.launcher import Launcher
from athenaq.lookup import Lookup
from athenaq.machine import Machine
from athenaq.ratelimit import RateLimiter
from athenaq.states import IllegalTransition

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}
HandlerT = TypeVar("HandlerT", bound=type[RequestHandler])


class RequestsInFlight:
    """Counts requests being handled, so a shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


@dataclass(frozen=True)
class Context:
    """What every handler needs, handed over through `initialize(ctx=...)`."""

    machine: Machine
    lookup: Lookup
    launcher: Launcher
    authorizer: Authorizer
    # Seconds a client polling a QUEUED or RUNNING query should wait (Retry-After).
    retry_after: int
    # The largest request body read; past it a submit answers 413.
    max_body_bytes: int
    # Requests per second per caller (auth.requests_per_second); None: no limit.
    rate_limiter: RateLimiter | None = None
    in_flight: RequestsInFlight = field(default_factory=RequestsInFlight)


def allow_unauthenticated(cls: HandlerT) -> HandlerT:
    """Mark a handler open to everyone (health checks); every other one authenticates."""
    cls.allow_unauthenticated = True  # type: ignore[attr-defined]
    return cls


class BaseHandler(RequestHandler):
    allow_unauthenticated = False
    # The scope a caller's key needs for this endpoint (athenaq.identity); None: any key.
    required_scope: str | None = None

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        ctx.in_flight.enter()

    def on_finish(self) -> None:
        self.ctx.in_flight.leave()

    @property
    def machine(self) -> Machine:
        return self.ctx.machine

    @property
    def lookup(self) -> Lookup:
        return self.ctx.lookup

    @property
    def launcher(self) -> Launcher:
        return self.ctx.launcher

    async def prepare(self) -> None:
        if self.allow_unauthenticated:
            return
        caller = await self.ctx.authorizer.authorize(self.request)
        self.current_user = caller
        if self.required_scope is not None and self.required_scope not in caller.scopes:
            raise Forbidden(f"this key lacks the scope {self.required_scope}")
        if self.ctx.rate_limiter is not None:
            wait = self.ctx.rate_limiter.take(caller.name)
            if wait:
                raise RateLimited(
                    f"over {self.ctx.rate_limiter.rate:g} requests per second for this key",
                    retry_after=RateLimiter.retry_after(wait),
                )

    @property
    def caller(self) -> Caller:
        """Who the request acts as, once prepare() admitted it."""
        caller: Caller = self.current_user
        return caller

    def query_id(self, segment: str) -> str:
        """The path's query id; anything but a lowercase canonical UUID is unknown."""
        if not _UUID.match(segment):
            raise QueryNotFound(segment[:64])
        return segment

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body, ensure_ascii=False))

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Domain errors are answers, not faults; only the unexpected is logged with a trace.
        if isinstance(value, ApiError | HTTPError | IllegalTransition):
            return
        logger.opt(exception=(typ, value, tb)).error(
            "unhandled error", method=self.request.method, path=self.request.path
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every failure becomes `{"error": {"code", "message"}, "state"?}`."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HTTPError) and exc.status_code == 405:
            exc = MethodNotAllowed(f"{self.request.method} is not allowed on {self.request.path}")
        elif isinstance(exc, IllegalTransition):
            exc = Conflict(str(exc), state=exc.state.value)
        elif isinstance(exc, QueryRunning):
            self.set_header("Retry-After", str(self.ctx.retry_after))
        if isinstance(exc, ApiError):
            self.set_status(exc.status)
            for name, value in exc.headers.items():
                self.set_header(name, value)
            if exc.status == 405:
                self.set_header("Allow", ", ".join(self.allowed_methods()))
            body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
            if exc.state is not None:
                body["state"] = exc.state
        else:
            code = _HTTP_CODES.get(status_code, "internal_error")
            message = self._reason if status_code < 500 else "internal server error"
            body = {"error": {"code": code, "message": message}}
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body))

    @classmethod
    def allowed_methods(cls) -> list[str]:
        return [
            method
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if getattr(cls, method.lower()) is not getattr(RequestHandler, method.lower())
        ]


class NotFoundHandler(BaseHandler):
    """Any path no route matches: JSON 404."""

    allow_unauthenticated = True

    async def prepare(self) -> None:
        raise NotFound(f"no such endpoint: {self.request.path[:200]}")
