"""The base handler: dependencies, authentication, and JSON errors for every endpoint."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loguru import logger
from tornado.http1connection import is_transfer_encoding_chunked
from tornado.httputil import HTTPHeaders, HTTPInputError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from athenaq.auth import Authorizer
from athenaq.commands import Commands
from athenaq.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidJson,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QueryNotFound,
    QueryRunning,
    RateLimited,
    UnsupportedMediaType,
    ValidationFailed,
)
from athenaq.handlers.exposition import Exposition
from athenaq.handlers.readiness import Readiness
from athenaq.identity import Caller
from athenaq.launcher import Launcher
from athenaq.logs import log_request
from athenaq.lookup import Lookup
from athenaq.ratelimit import RateLimiter
from athenaq.reports import Reports
from athenaq.schemas import CALLBACK, DumpPlan, error_body
from athenaq.states import IllegalTransition, QueryRecord
from athenaq.watcher import Watcher

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The codes of Tornado's own refusals (HTTPError), which are not ApiErrors.
_HTTP_CODES = {
    400: BadRequest.code,
    404: NotFound.code,
    405: MethodNotAllowed.code,
    413: PayloadTooLarge.code,
}
HandlerT = TypeVar("HandlerT", bound=type[RequestHandler])
# On every answer, errors included: no version for scanners to match, no content sniffing,
# and nothing a browser may load or frame from an API's answers.
SECURITY_HEADERS = {
    "Server": "athenaq",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
# What a CORS preflight may ask for, and the answer headers a browser's script may read.
_CORS_REQUEST_HEADERS = "Authorization, Content-Type, Idempotency-Key"
_CORS_EXPOSED_HEADERS = (
    "Location, Retry-After, Content-Disposition, ETag, WWW-Authenticate, Idempotent-Replayed"
)
_CORS_MAX_AGE = "600"


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

    commands: Commands
    lookup: Lookup
    launcher: Launcher
    authorizer: Authorizer
    # Seconds a client polling a QUEUED or RUNNING query should wait (Retry-After).
    retry_after: int
    # The largest request body read; past it a route that takes one answers 413.
    max_body_bytes: int
    # Requests in flight past which a new one answers 503 overloaded (but health,
    # readiness and metrics).
    max_inflight_requests: int
    # What GET /ready checks.
    readiness: Readiness
    # What GET /metrics serves.
    exposition: Exposition
    # Wakes the status requests that wait for their query to finish (`?wait=N`).
    watcher: Watcher
    # Listings, histories and usage.
    reports: Reports
    # The status object, with the config's price and retention (schemas.StatusSchema).
    status: DumpPlan
    # Requests per second per caller (auth.requests_per_second); None: no limit.
    rate_limiter: RateLimiter | None = None
    in_flight: RequestsInFlight = field(default_factory=RequestsInFlight)
    # Downloads being streamed: a shutdown that cuts them waits for each to log its cut.
    downloads: RequestsInFlight = field(default_factory=RequestsInFlight)
    # Set when a shutdown, its drain time over, closes the connections left: a download
    # cut then was cut by the shutdown, not abandoned by its client.
    cutting: asyncio.Event = field(default_factory=asyncio.Event)


def allow_unauthenticated(cls: HandlerT) -> HandlerT:
    """Mark a handler open to everyone (health checks); every other one authenticates."""
    cls.allow_unauthenticated = True  # type: ignore[attr-defined]
    return cls


# Every route streams its body, so that prepare() runs on the headers alone: a body too
# large, or one where the route takes none, is refused before a byte of it is read.
@stream_request_body
class BaseHandler(RequestHandler):
    allow_unauthenticated = False
    # The scope a caller's key needs for this endpoint (athenaq.identity); None: any key.
    required_scope: str | None = None
    # The methods whose body the route reads; any other request with a body answers 413.
    body_methods: frozenset[str] = frozenset()
    # False for the endpoints a load balancer or monitoring asks (health, readiness,
    # metrics): answered even when the process sheds every other request.
    sheddable = True

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        self.body = bytearray()
        self._counted = True
        ctx.in_flight.enter()

    def on_finish(self) -> None:
        self._leave()

    def on_connection_close(self) -> None:
        # A client that hangs up before its body is whole never gets its method run, so
        # neither finish() nor on_finish() comes: account for the request here.
        abandoned = not self._finished and not self.request._body_future.done()
        super().on_connection_close()
        if abandoned and self._counted:
            log_request(self, aborted=True)
            self._leave()

    def _leave(self) -> None:
        """Leave the in-flight count, once, whichever of finish or a hang-up comes first."""
        if self._counted:
            self._counted = False
            self.ctx.in_flight.leave()

    @property
    def commands(self) -> Commands:
        return self.ctx.commands

    @property
    def lookup(self) -> Lookup:
        return self.ctx.lookup

    @property
    def launcher(self) -> Launcher:
        return self.ctx.launcher

    @property
    def watcher(self) -> Watcher:
        return self.ctx.watcher

    async def status_object(self, record: QueryRecord) -> dict[str, Any]:
        """The query's status object, as GET /query/<id>/status shows it: with its
        webhook's progress, read only for a query that has a callback_url."""
        status = self.ctx.status.dump(record)
        callback = await self.lookup.callback(record)
        status["callback"] = None if callback is None else CALLBACK.dump(callback)
        return status

    async def prepare(self) -> None:
        if self.screen_request() or self.allow_unauthenticated:
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

    def screen_request(self) -> bool:
        """Shed load, refuse a body this route cannot take before reading it, and answer a
        CORS preflight; all before authentication, since a preflight carries no credentials.
        True when the request has been answered.

        First of all, past `max_inflight_requests` (this one counted) the request is shed:
        answered at once, before its body, its key or the store, so that clients back off
        rather than wait in a queue until they time out. A status request waiting for its
        query to finish costs next to nothing while it waits, and is not counted meanwhile."""
        in_flight = self.ctx.in_flight.count - self.ctx.watcher.waiting
        if self.sheddable and in_flight > self.ctx.max_inflight_requests:
            raise Overloaded("too many requests in flight; try again")
        self._screen_body()
        if self.request.method == "OPTIONS":
            return self._answer_preflight()
        if self.request.method in self.body_methods:
            media_type = self.request.headers.get("Content-Type", "").split(";")[0]
            media_type = media_type.strip().lower()
            # Also what keeps a browser's cross-site form or text/plain POST out.
            if media_type != "application/json" and not media_type.endswith("+json"):
                raise UnsupportedMediaType("Content-Type must be application/json")
        return False

    def _screen_body(self) -> None:
        """413 for a body announced over the route's limit, 400 for one whose framing
        Tornado would refuse, from the headers alone."""
        headers = self.request.headers
        try:
            chunked = is_transfer_encoding_chunked(headers)
            length = _content_length(headers)
        except HTTPInputError as exc:
            # Tornado would find the same when it reads the body, after prepare(), and
            # answer a bare 400. Answered here, the connection closes once this is sent.
            raise BadRequest(f"the request's body framing is broken: {exc}") from None
        limit = self._body_limit()
        if (length or 0) > limit or (chunked and limit == 0):
            raise self._too_large(limit)

    def _answer_preflight(self) -> bool:
        """204 with what the route allows, for a CORS preflight from an allowed origin."""
        if (
            self._cors_origin() is None
            or "Access-Control-Request-Method" not in self.request.headers
        ):
            return False
        self.set_status(204)
        self.set_header("Access-Control-Allow-Methods", ", ".join(self.allowed_methods()))
        self.set_header("Access-Control-Allow-Headers", _CORS_REQUEST_HEADERS)
        self.set_header("Access-Control-Max-Age", _CORS_MAX_AGE)
        self.finish()
        return True

    def data_received(self, chunk: bytes) -> None:
        limit = self._body_limit()
        if len(self.body) + len(chunk) > limit:
            # A chunked body has no length to judge it by up front: answer once it is too
            # long; Tornado then drops the rest and closes the connection.
            exc = self._too_large(limit)
            self.send_error(exc.status, exc_info=(type(exc), exc, None))
            return
        self.body.extend(chunk)

    def _body_limit(self) -> int:
        return self.ctx.max_body_bytes if self.request.method in self.body_methods else 0

    def _too_large(self, limit: int) -> PayloadTooLarge:
        if limit == 0:
            return PayloadTooLarge(f"{self.request.method} {self.request.path[:200]} takes no body")
        return PayloadTooLarge(f"the body is over {limit} bytes")

    def parse_json_body(self) -> Any:
        """The body as a JSON document; 400 for bytes that are not UTF-8, not JSON, nested
        past what the parser can follow, or strings that are not Unicode text."""
        try:
            text = bytes(self.body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"the body is not UTF-8 text: {exc}") from None
        try:
            document = json.loads(text)
        except RecursionError:
            raise InvalidJson("the body is not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise InvalidJson(f"the body is not valid JSON: {exc}") from None
        # Once the bytes decoded strictly, a lone surrogate can only come from a \u escape.
        if "\\u" in text:
            where = _lone_surrogate(document)
            if where is not None:
                raise ValidationFailed(f"{where}: a lone surrogate (\\u escape) is not text")
        return document

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        if name is not None:
            return super().decode_argument(value, name)
        # A path segment. Ids are ASCII, so a segment that is not even UTF-8 names nothing.
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryNotFound(value.decode("utf-8", "backslashreplace")[:64]) from None

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
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)
        if self.settings.get("cors_origins"):
            self.set_header("Vary", "Origin")
            origin = self._cors_origin()
            if origin is not None:
                self.set_header("Access-Control-Allow-Origin", origin)
                self.set_header("Access-Control-Expose-Headers", _CORS_EXPOSED_HEADERS)

    def _cors_origin(self) -> str | None:
        """The request's Origin when the config's allow-list has it (off when empty)."""
        origin = self.request.headers.get("Origin")
        allowed: frozenset[str] = self.settings.get("cors_origins", frozenset())
        return origin if origin in allowed else None

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
            body = error_body(exc.code, exc.message, exc.state)
        else:
            code = _HTTP_CODES.get(status_code, ApiError.code)
            message = self._reason if status_code < 500 else "internal server error"
            body = error_body(code, message)
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


def _content_length(headers: HTTPHeaders) -> int | None:
    """The announced body length, read as strictly as Tornado reads it: digits only, and
    a value a proxy repeated ("12, 12") only when every copy is the same."""
    value = headers.get("Content-Length")
    if value is None:
        return None
    first, *others = (piece.strip() for piece in value.split(","))
    if any(other != first for other in others):
        raise HTTPInputError(f"unequal Content-Lengths: {value[:100]!r}")
    if not (first.isascii() and first.isdigit()):
        raise HTTPInputError(f"Content-Length is not a number: {value[:100]!r}")
    return int(first)


def _lone_surrogate(document: Any) -> str | None:
    """Where in a decoded JSON document a string holds a lone surrogate (the top-level
    field, or "the body"), or None. Walked with a stack: the document may be deep."""
    fields = document.items() if isinstance(document, dict) else [("the body", document)]
    for name, value in fields:
        stack = [name, value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return name if name.isprintable() else "a field name"
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return None
