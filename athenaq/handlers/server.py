"""The HTTP server in front of the handlers: a cap on open connections, and JSON for the
requests Tornado refuses before any handler exists."""

from __future__ import annotations

import json
from typing import Any

from loguru import logger
from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream

from athenaq.errors import BadRequest, Overloaded
from athenaq.handlers.base import SECURITY_HEADERS
from athenaq.schemas import error_body


def _error_headers(body: bytes, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Content-Length": str(len(body)),
        "Connection": "close",
        "Cache-Control": "no-store",
        **SECURITY_HEADERS,
        **extra,
    }


def _error_body(code: str, message: str) -> bytes:
    return json.dumps(error_body(code, message)).encode()


class AthenaqHTTPServer(HTTPServer):
    """Tornado's HTTP server, with at most `max_connections` open connections (a new one
    past it is answered `503 overloaded` and closed) and a JSON 400 for a request Tornado
    cannot turn into one (too many query parameters, repeated Host headers)."""

    def initialize(self, *args: Any, max_connections: int = 512, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.open_connections = 0

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if self.open_connections >= self.max_connections:
            self._refuse(stream)
            return
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)

    def _refuse(self, stream: IOStream) -> None:
        body = _error_body(Overloaded.code, "too many open connections; try again")
        headers = _error_headers(body, **{"Retry-After": "1"})
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        logger.warning("connection refused", reason="max_connections", limit=self.max_connections)
        # Answered before the request is read: the client learns why instead of a reset.
        written = stream.write(f"HTTP/1.1 503 Service Unavailable\r\n{head}\r\n".encode() + body)
        written.add_done_callback(lambda _: stream.close())
        # A client already gone fails the write; that is no news worth a log line.
        written.add_done_callback(lambda future: future.exception())

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _JsonInputErrors(super().start_request(server_conn, request_conn), request_conn)


class _JsonInputErrors(httputil.HTTPMessageDelegate):
    """Answers a request Tornado rejects while making it (`HTTPInputError` from the
    request's own parsing) with a JSON 400 rather than Tornado's bare one."""

    def __init__(
        self, delegate: httputil.HTTPMessageDelegate, connection: httputil.HTTPConnection
    ) -> None:
        self.delegate = delegate
        self.connection = connection
        self.refused = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        try:
            return self.delegate.headers_received(start_line, headers)
        except httputil.HTTPInputError as exc:
            self.refused = True
            body = _error_body(BadRequest.code, f"the request cannot be read: {exc}")
            self.connection.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", 400, "Bad Request"),
                httputil.HTTPHeaders(_error_headers(body)),
                body,
            )
            self.connection.finish()
            assert isinstance(start_line, httputil.RequestStartLine)
            logger.warning(
                "request",
                method=start_line.method,
                path=start_line.path.partition("?")[0][:200],
                status=400,
                error=str(exc)[:200],
            )
            return None

    def data_received(self, chunk: bytes) -> Any:
        return None if self.refused else self.delegate.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.delegate.on_connection_close()
