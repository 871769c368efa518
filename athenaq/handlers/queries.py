"""The query endpoints: submit, status, results, refresh, cancel."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from loguru import logger
from marshmallow import Schema, ValidationError
from tornado.iostream import StreamClosedError

from athenaq.commands import Outcome
from athenaq.errors import PayloadTooLarge, ValidationFailed
from athenaq.handlers.base import BaseHandler
from athenaq.handlers.idempotency import parse_idempotency_key
from athenaq.identity import CANCEL, READ, SUBMIT
from athenaq.logs import ABORTED_STATUS
from athenaq.schemas import (
    MAX_QUERY_BYTES,
    REPLAYED_HEADER,
    CancelSchema,
    ResultsRequest,
    ResultsSchema,
    StateSchema,
    StatusRequest,
    SubmitRequest,
    SubmittedSchema,
    submit_options,
)
from athenaq.watcher import Waiter, Woken

if TYPE_CHECKING:
    from athenaq.results import DownloadFormat, ResultReader
    from athenaq.states import QueryRecord

# Schemas are built once: building one copies its fields, which costs more than using it.
_SUBMIT_REQUEST = SubmitRequest()
_RESULTS_REQUEST = ResultsRequest()
_STATUS_REQUEST = StatusRequest()
_STATE = StateSchema()
_RESULTS = ResultsSchema()
_CANCEL = CancelSchema()
_SUBMITTED = SubmittedSchema()


def _first_message(messages: Any, path: str = "") -> str:
    """`field: message` for the first error marshmallow reports; an item of a list is
    named by its index, `parameters[2]: ...`."""
    if isinstance(messages, dict):
        field, detail = next(iter(messages.items()))
        if field == "_schema":
            return "the body must be a JSON object"
        if isinstance(field, int):
            where = f"{path}[{field}]"
        else:
            where = f"{path}.{field}" if path else str(field)
        return _first_message(detail, where)
    if isinstance(messages, list):
        return _first_message(messages[0], path)
    return f"{path}: {messages}" if path else str(messages)


def _load_parameters(
    schema: Schema, query_arguments: dict[str, list[bytes]], only: str | None = None
) -> dict[str, Any]:
    """The query parameters (`only` that one) loaded by `schema`; 400 for one given more
    than once, not UTF-8, or that the schema refuses."""
    arguments: dict[str, str] = {}
    for name, values in query_arguments.items():
        if only is not None and name != only:
            continue
        if len(values) > 1:
            raise ValidationFailed(f"{name}: given more than once")
        try:
            arguments[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationFailed(f"{name}: not valid UTF-8") from None
    try:
        request: dict[str, Any] = schema.load(arguments)
    except ValidationError as exc:
        raise ValidationFailed(_first_message(exc.messages)) from None
    return request


class SubmitHandler(BaseHandler):
    """POST /query: 202 + Location, 200 cached; 400, 403, 413, 415, 422, 429."""

    required_scope = SUBMIT
    body_methods = frozenset({"POST"})

    async def post(self) -> None:
        document = self.parse_json_body()
        try:
            request = _SUBMIT_REQUEST.load(document)
        except ValidationError as exc:
            raise ValidationFailed(_first_message(exc.messages)) from None
        if len(request["query"].encode("utf-8")) > MAX_QUERY_BYTES:
            raise PayloadTooLarge(f"query: over {MAX_QUERY_BYTES} bytes, Athena's limit")
        idempotency = parse_idempotency_key(self.request.headers, request)
        submitted = await self.commands.submit(
            request["query"],
            self.caller,
            submit_options(request),
            max_age_seconds=request["max_age_seconds"],
            idempotency=idempotency,
        )
        record = submitted.record
        if submitted.started:
            self.launcher.launch_soon(record.id, record)
        if submitted.replayed:
            self.set_header(REPLAYED_HEADER, "true")
        self.set_header("Location", f"/query/{record.id}/status")
        body: dict[str, Any] = {"id": record.id, "state": record.state.value}
        if submitted.outcome is not Outcome.CREATED:
            body[submitted.outcome.value] = True
        self.write_json(_SUBMITTED.dump(body), status=submitted.outcome.status)


class StatusHandler(BaseHandler):
    """GET /query/<id>/status, `?wait=N` to wait up to N s for the query to finish: 200;
    400, 404."""

    required_scope = READ
    # While the request waits: what wakes it, also when its client hangs up.
    waiter: Waiter | None = None

    async def get(self, segment: str) -> None:
        query_id = self.query_id(segment)
        wait = _load_parameters(_STATUS_REQUEST, self.request.query_arguments, "wait").get("wait")
        record = await self.lookup.status(query_id, self.caller)
        if wait is not None and not record.is_finished:
            with self.watcher.watching(record) as self.waiter:
                woken = await self.waiter.wait(wait)
            latest, self.waiter = self.waiter.record, None
            if woken is Woken.GONE:
                # Nobody to answer; logged as a request its client abandoned.
                self.set_status(ABORTED_STATUS)
                return
            if latest is None:
                record = await self.lookup.status(query_id, self.caller)
            else:
                record = await self.lookup.described(latest)
        self.write_json(await self.status_object(record))

    def on_connection_close(self) -> None:
        if self.waiter is not None:
            self.waiter.wake(Woken.GONE)
        super().on_connection_close()

    def compute_etag(self) -> None:
        # The answer is `Cache-Control: no-store`: no cache keeps it to revalidate, so a
        # hash of every answer would be work for nothing.
        return None


class ResultsHandler(BaseHandler):
    """GET /query/<id>/results: 200 a page (JSON) or the whole result (CSV, JSON lines),
    304; 400, 404, 409 (running, cancelled, failed)."""

    required_scope = READ

    async def get(self, segment: str) -> None:
        query_id = self.query_id(segment)
        request = self._parameters()
        fmt = request.get("format") or self._negotiated_format()
        record, reader = await self.lookup.open_results(query_id, self.caller)
        try:
            if fmt == "json":
                await self._page(record, reader, request["offset"], request["limit"])
            else:
                await self._download(record, reader, fmt)
        finally:
            reader.close()

    def _parameters(self) -> dict[str, Any]:
        return _load_parameters(_RESULTS_REQUEST, self.request.query_arguments)

    def _negotiated_format(self) -> str:
        """The format the Accept header prefers; JSON when it names none we make."""
        best, best_q = "json", 0.0
        for media_type, q in _weighted(self.request.headers.get("Accept", "")):
            fmt = _ACCEPTED.get(media_type)
            if fmt is not None and q > best_q:
                best, best_q = fmt, q
        return best

    async def _page(
        self, record: QueryRecord, reader: ResultReader, offset: int, limit: int
    ) -> None:
        page = await reader.page(offset, limit)
        following = offset + limit
        body = {
            "id": record.id,
            "state": record.state.value,
            "results_at": record.results_at,
            "columns": reader.columns,
            "rows": page.rows,
            "row_count": page.row_count,
            "offset": offset,
            "limit": limit,
            "next": (
                f"/query/{record.id}/results?offset={following}&limit={limit}"
                if following < page.row_count
                else None
            ),
        }
        self.write_json(_RESULTS.dump(body))

    async def _download(self, record: QueryRecord, reader: ResultReader, fmt: str) -> None:
        download: DownloadFormat = "csv" if fmt == "csv" else "jsonl"
        gzip = _accepts_gzip(self.request.headers.get("Accept-Encoding", ""))
        if not self.settings.get("compress_response"):
            # Otherwise Tornado's gzip transform adds it to every answer itself.
            self.set_header("Vary", "Accept-Encoding")
        # A result never changes until a refresh, which gives it a new execution id.
        self.set_header("Etag", f'"{record.athena_execution_id}.{download}{".gz" if gzip else ""}"')
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", _MEDIA_TYPES[download])
        self.set_header("Content-Disposition", f'attachment; filename="{record.id}.{download}"')
        if gzip:
            # Set before the first chunk, so Tornado's own gzip transform leaves it alone.
            self.set_header("Content-Encoding", "gzip")
        self.ctx.downloads.enter()
        try:
            async with contextlib.aclosing(reader.download(download, gzip=gzip)) as chunks:
                async for chunk in chunks:
                    self.write(chunk)
                    # Waits until the client took the chunk: memory stays flat however slow.
                    await self.flush()
        except StreamClosedError:
            if self.ctx.cutting.is_set():
                logger.warning("download cut by the shutdown", query_id=record.id)
            else:
                logger.info("download abandoned by the client", query_id=record.id)
            return
        finally:
            self.ctx.downloads.leave()
        self.finish()


_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
_ACCEPTED = {
    "application/json": "json",
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
}


def _weighted(header: str) -> list[tuple[str, float]]:
    """`(media type, q)` for each entry of an Accept header."""
    entries = []
    for entry in header.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name:
            entries.append((name.lower(), q))
    return entries


def _accepts_gzip(header: str) -> bool:
    # The same test as Tornado's compress_response applies to every other answer, so a
    # download is never left to it (which would compress a stream with a flush per chunk).
    return "gzip" in header


class RefreshHandler(BaseHandler):
    """POST /query/<id>/refresh: 202 QUEUED; 404, 409 running, 429."""

    required_scope = SUBMIT

    async def post(self, segment: str) -> None:
        record = await self.commands.refresh(self.query_id(segment), self.caller)
        self.launcher.launch_soon(record.id, record)
        self.set_header("Location", f"/query/{record.id}/status")
        self.write_json(_STATE.dump(record), status=202)


class CancelHandler(BaseHandler):
    """POST /query/<id>/cancel: 200 CANCELLED, 202 requested; 404, 409 finished/cancelled."""

    required_scope = CANCEL

    async def post(self, segment: str) -> None:
        record, confirmed = await self.commands.cancel(self.query_id(segment), self.caller)
        if confirmed:
            self.write_json(_STATE.dump(record))
        else:
            body = {"id": record.id, "state": record.state, "cancel_requested": True}
            self.write_json(_CANCEL.dump(body), status=202)


_ID = r"/query/([^/]+)"
default_handlers = [
    (r"/query", SubmitHandler),
    (_ID + r"/status", StatusHandler),
    (_ID + r"/results", ResultsHandler),
    (_ID + r"/refresh", RefreshHandler),
    (_ID + r"/cancel", CancelHandler),
]
