"""A webhook receiver for the tests, on a free port of its own: a small Tornado
application in the test's event loop, which athenaq (in the test's process or another)
POSTs its deliveries to over HTTP.

`verify` is how a receiver checks a delivery, and what docs/api.md shows: the signature
over the exact bytes of the body, and its time within five minutes of the receiver's
clock, so a delivery captured and sent again later (a replay) is refused. Everything else
here is the test's control of the receiver: what each path answers, and requests it holds
unanswered (a slow or stuck receiver).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

# A delivery signed longer ago than this (or this far in the future) is refused.
TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The delivery is not athenaq's, was changed on the way, or is a replay."""


def verify(secret: str, header: str, body: bytes, now: float | None = None) -> None:
    """Check a delivery: `header` is its `Athenaq-Signature`, `body` the request body's
    bytes as received (before any JSON parsing). Raises SignatureError unless the
    signature is the HMAC-SHA256 of "<t>.<body>" with `secret`, and `t` is within
    TOLERANCE_SECONDS of `now` (the receiver's clock)."""
    try:
        parts = dict(part.strip().split("=", 1) for part in header.split(","))
        timestamp = int(parts["t"])
        signature = parts["v1"]
    except (KeyError, ValueError):
        raise SignatureError("malformed Athenaq-Signature header") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise SignatureError("signed too long ago, or in the future: a replay?")
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("the signature does not match the body")


@dataclass(frozen=True)
class Received:
    """A verified delivery and what the receiver answered it."""

    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


class Receiver:
    """Verifies every POST to any path; answers each path's scripted statuses in turn
    (200 once they run out); holds the requests to the paths in `holding` until
    `release()`."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[Received] = []
        # Why each refused request was refused.
        self.rejected: list[str] = []
        # The statuses each path answers next, in order; a 3xx goes with a Location.
        self.answers: dict[str, list[int]] = {}
        self.holding: set[str] = set()
        # Requests held right now, by path.
        self.held: list[str] = []
        self._released = asyncio.Event()
        self._server: HTTPServer | None = None
        self.port = 0

    async def start(self) -> None:
        app = tornado.web.Application([(r"(/.*)", _Handler, {"receiver": self})])
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(app)
        self._server.add_sockets(sockets)

    async def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self) -> None:
        """Answer the requests held, and hold no more."""
        self.holding.clear()
        self._released.set()

    def delivered(self) -> Iterator[Received]:
        """The deliveries answered 2xx."""
        return (r for r in self.received if 200 <= r.answered < 300)

    def states(self) -> set[tuple[str, str]]:
        """(query id, state) of each delivery answered 2xx."""
        return {(r.status["id"], r.status["state"]) for r in self.delivered()}

    def next_answer(self, path: str) -> int:
        answers = self.answers.get(path)
        return answers.pop(0) if answers else 200


class _Handler(tornado.web.RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def post(self, path: str) -> None:
        receiver = self.receiver
        body = self.request.body
        try:
            verify(receiver.secret, self.request.headers.get("Athenaq-Signature", ""), body)
        except SignatureError as exc:
            receiver.rejected.append(str(exc))
            self.set_status(400)
            self.finish(str(exc))
            return
        if path in receiver.holding:
            receiver.held.append(path)
            try:
                await receiver._released.wait()
            finally:
                receiver.held.remove(path)
        if self.request.connection.stream.closed():  # type: ignore[attr-defined]
            return  # the sender is gone (killed, or gave up waiting): nobody to answer
        code = receiver.next_answer(path)
        receiver.received.append(Received(path, dict(self.request.headers), body, code))
        self.set_status(code)
        if 300 <= code < 400:
            self.set_header("Location", receiver.url("/redirected"))
        self.finish()
