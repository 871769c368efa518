"""An engine's HTTP side: Athena JSON 1.1 and S3 GetObject/HeadObject on one port.

`POST /` with `X-Amz-Target: AmazonAthena.<Operation>` is Athena; `GET|HEAD
/<bucket>/<key>` (S3 path style) serves the engine's objects (for the local engine, the
files under its data folder, result files included). Every other S3 request answers
S3's NotImplemented error. Request signatures are not checked: any credentials will do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web
from loguru import logger
from tornado.httputil import format_timestamp

from athenaq.local.api import ApiError, AthenaApi
from athenaq.local.base import AccessDenied, Engine, NoSuchKey, ResultObject
from athenaq.local.engine import QueryEngine

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
CLOSE_CONNECTIONS_SECONDS = 2.0
_BINARY = "binary/octet-stream"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _S3Handler(tornado.web.RequestHandler):
    """Answers S3's NotImplemented to every method not in `served`."""

    served: frozenset[str] = frozenset()

    def initialize(self, engine: Engine, api: AthenaApi) -> None:
        self.engine = engine
        self.api = api

    def s3_error(self, status: int, code: str, message: str, **extra: str) -> None:
        self.set_status(status)
        self.set_header("x-amz-request-id", uuid.uuid4().hex)
        if self.request.method == "HEAD":  # S3 answers HEAD with the status alone
            self.finish()
            return
        fields = "".join(
            f"<{k}>{escape(v)}</{k}>" for k, v in {"Message": message, **extra}.items()
        )
        self.set_header("Content-Type", "application/xml")
        self.finish(
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>{fields}</Error>'
        )

    def prepare(self) -> None:
        if self.request.method not in self.served:
            self.s3_error(
                501,
                "NotImplemented",
                "The local engine serves only S3 GetObject and HeadObject",
                Resource=self.request.path,
            )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.s3_error(500, "InternalError", "We encountered an internal error. Please try again.")


class AthenaHandler(_S3Handler):
    """POST / with X-Amz-Target: AmazonAthena.<Operation>: 200, 400 or 500 (JSON)."""

    served = frozenset({"POST"})

    async def post(self) -> None:
        prefix, _, operation = self.request.headers.get("X-Amz-Target", "").partition(".")
        try:
            if prefix != "AmazonAthena":
                raise ApiError("UnknownOperationException", "X-Amz-Target must be AmazonAthena.*")
            body = _json_object(self.request.body)
            status, reply = 200, await self.api.call(operation, body)
        except ApiError as exc:
            status, reply = exc.status, exc.body
        self.reply(status, reply)

    def reply(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.set_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.reply(500, {"__type": "InternalServerException", "Message": "Internal engine error"})


class ObjectHandler(_S3Handler):
    """GET|HEAD /<bucket>/<key>: 200, 206 (Range), 404, 416 (S3 XML errors)."""

    served = frozenset({"GET", "HEAD"})

    async def get(self, bucket: str, key: str) -> None:
        await self._serve(bucket, key, body=True)

    async def head(self, bucket: str, key: str) -> None:
        await self._serve(bucket, key, body=False)

    async def _serve(self, bucket: str, key: str, *, body: bool) -> None:
        await self.engine.admit("GetObject" if body else "HeadObject", None)
        try:
            source = await self.engine.open_object(bucket, key)
        except NoSuchKey:
            self.s3_error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
            return
        except AccessDenied:
            self.s3_error(403, "AccessDenied", "Access Denied", Key=key)
            return
        try:
            await self._send(source, key, body=body)
        except tornado.iostream.StreamClosedError:
            pass  # the client went away mid-object
        finally:
            await source.close()

    async def _send(self, source: ResultObject, key: str, *, body: bool) -> None:
        first, length = 0, source.size  # a length None: the whole object, chunked
        if source.size is not None:
            try:
                span = _byte_range(self.request.headers.get("Range"), source.size)
            except ValueError:
                self.set_header("Content-Range", f"bytes */{source.size}")
                self.s3_error(416, "InvalidRange", "The requested range is not satisfiable")
                return
            first, last = span or (0, source.size - 1)
            length = last - first + 1
            if span is not None:
                self.set_status(206)
                self.set_header("Content-Range", f"bytes {first}-{last}/{source.size}")
            self.set_header("Accept-Ranges", "bytes")
            self.set_header("Content-Length", length)
        # Objects carry no metadata here: result files are CSV, the rest S3's default.
        self.set_header("Content-Type", "text/csv" if key.endswith(".csv") else _BINARY)
        self.set_header("Last-Modified", format_timestamp(source.modified))
        self.set_header("ETag", source.etag)
        self.set_header("x-amz-request-id", uuid.uuid4().hex)
        if body:
            remaining = length
            async for chunk in source.chunks(first):
                if remaining is not None:
                    chunk = chunk[:remaining]
                    remaining -= len(chunk)
                self.write(chunk)
                await self.flush()
                if remaining == 0:
                    break
            if remaining:  # Tornado drops the connection: the client sees a short body
                raise OSError(f"{key} shrank while it was being sent")
        self.finish()


def make_app(engine: Engine) -> tornado.web.Application:
    args = {"engine": engine, "api": AthenaApi(engine)}
    return tornado.web.Application(
        [
            (r"/", AthenaHandler, args),
            (r"/([^/]+)/(.+)", ObjectHandler, args),
            (r"/.*", _S3Handler, args),
        ],
        log_function=_log_request,
    )


class Endpoint:
    """Serves an engine on the event loop `serve` is awaited on, so a process can embed it."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self._url: str | None = None

    async def serve(self, engine: Engine, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host`:`port` (0: any free port) for `engine`, which `stop` closes;
        returns the base URL."""
        try:
            if self._engine is not None:
                raise RuntimeError("the endpoint is serving already")
            sockets = tornado.netutil.bind_sockets(port, host)
        except BaseException:
            await engine.close()
            raise
        self._server = tornado.httpserver.HTTPServer(make_app(engine))
        self._server.add_sockets(sockets)
        self._engine = engine
        bound_port = sockets[0].getsockname()[1]
        self._url = (
            f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
        )
        logger.info("athena endpoint listening", url=self._url, engine=type(engine).__name__)
        return self._url

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the endpoint is not serving")
        return self._url

    async def stop(self) -> None:
        """Stop listening, close the engine (it cancels or lets go of what is left), close
        connections."""
        if self._server is None or self._engine is None:
            return
        self._server.stop()
        await self._engine.close()
        # A client in the middle of a long download keeps its connection: do not wait.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.close_all_connections(), CLOSE_CONNECTIONS_SECONDS)
        self._server = self._engine = self._url = None


class LocalEngine(Endpoint):
    """athenaq-local: an Athena-compatible endpoint running real SQL on DuckDB.

    SQL runs on `workers` threads. Results land under `data_dir`, which S3 GetObject on
    the same URL serves."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        max_running: int = 20,
        workers: int = 4,
        default_output_location: str | None = "s3://athenaq-local/results/",
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.max_running = max_running
        self.workers = workers
        self.default_output_location = default_output_location

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host`:`port` (0: any free port); returns the base URL."""
        engine = QueryEngine(
            self.data_dir,
            max_running=self.max_running,
            workers=self.workers,
            default_output_location=self.default_output_location,
        )
        return await self.serve(engine, host, port)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError("SerializationException", "The request body must be a JSON object")
    return body


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte a Range header asks for; None for the whole object (no
    Range, or one S3 would ignore); ValueError when no byte of it exists."""
    found = _RANGE.fullmatch(header.strip()) if header else None
    if found is None or found[1] == found[2] == "":
        return None
    if found[1] == "":  # bytes=-N: the last N bytes
        suffix = int(found[2])
        if suffix == 0 or size == 0:
            raise ValueError(header)
        return max(size - suffix, 0), size - 1
    first = int(found[1])
    last = int(found[2]) if found[2] else size - 1
    if last < first:
        return None
    if first >= size:
        raise ValueError(header)
    return first, min(last, size - 1)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Clients poll: one line per request belongs at debug level.
    logger.debug(
        "athena endpoint request",
        method=handler.request.method,
        path=handler.request.path,
        target=handler.request.headers.get("X-Amz-Target"),
        status=handler.get_status(),
        duration_ms=round(handler.request.request_time() * 1000, 1),
    )
