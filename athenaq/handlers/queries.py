"""The query endpoints: submit, status, results, refresh, cancel."""

from __future__ import annotations

import json
from typing import Any

from marshmallow import ValidationError
from tornado.web import stream_request_body

from athenaq.errors import InvalidJson, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from athenaq.handlers.base import BaseHandler, Context
from athenaq.schemas import (
    MAX_QUERY_BYTES,
    CancelSchema,
    ResultsSchema,
    StateSchema,
    StatusSchema,
    SubmitRequest,
)

MAX_BODY_BYTES = 1024 * 1024


def _first_message(messages: Any) -> str:
    """`field: message` for the first error marshmallow reports."""
    if isinstance(messages, dict):
        field, detail = next(iter(messages.items()))
        if field == "_schema":
            return "the body must be a JSON object"
        return f"{field}: {_first_message(detail)}"
    if isinstance(messages, list):
        return _first_message(messages[0])
    return str(messages)


@stream_request_body
class SubmitHandler(BaseHandler):
    """POST /query: 202 + Location; 400, 413, 415."""

    def initialize(self, ctx: Context) -> None:
        super().initialize(ctx)
        self._body = bytearray()
        self._body_too_large = False

    def data_received(self, chunk: bytes) -> None:
        # Keep at most the limit in memory; the rest is read and dropped so the
        # client still gets a JSON answer instead of a reset connection.
        if len(self._body) + len(chunk) > MAX_BODY_BYTES:
            self._body_too_large = True
        else:
            self._body.extend(chunk)

    async def post(self) -> None:
        media_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType("Content-Type must be application/json")
        if self._body_too_large:
            raise PayloadTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            document = json.loads(bytes(self._body))
        except ValueError as exc:
            raise InvalidJson(f"the body is not valid JSON: {exc}") from None
        try:
            request = SubmitRequest().load(document)
        except ValidationError as exc:
            raise ValidationFailed(_first_message(exc.messages)) from None
        if len(request["query"].encode("utf-8")) > MAX_QUERY_BYTES:
            raise PayloadTooLarge(f"query: over {MAX_QUERY_BYTES} bytes, Athena's limit")
        record = await self.machine.submit(request["query"])
        self.set_header("Location", f"/query/{record.id}/status")
        self.write_json(StateSchema().dump(record), status=202)


class StatusHandler(BaseHandler):
    """GET /query/<id>/status: 200; 404."""

    async def get(self, segment: str) -> None:
        record = await self.machine.get(self.query_id(segment))
        self.write_json(StatusSchema().dump(record))


class ResultsHandler(BaseHandler):
    """GET /query/<id>/results: 200; 404, 409 (running, cancelled, failed)."""

    async def get(self, segment: str) -> None:
        record, result = await self.machine.read_results(self.query_id(segment))
        body = {
            "id": record.id,
            "state": record.state.value,
            "results_at": record.results_at,
            "columns": result.columns,
            "rows": result.rows,
            "row_count": len(result.rows),
        }
        self.write_json(ResultsSchema().dump(body))


class RefreshHandler(BaseHandler):
    """POST /query/<id>/refresh: 202 QUEUED; 404, 409 running."""

    async def post(self, segment: str) -> None:
        record = await self.machine.refresh(self.query_id(segment))
        self.set_header("Location", f"/query/{record.id}/status")
        self.write_json(StateSchema().dump(record), status=202)


class CancelHandler(BaseHandler):
    """POST /query/<id>/cancel: 200 CANCELLED, 202 requested; 404, 409 finished/cancelled."""

    async def post(self, segment: str) -> None:
        record, confirmed = await self.machine.cancel(self.query_id(segment))
        if confirmed:
            self.write_json(StateSchema().dump(record))
        else:
            body = {"id": record.id, "state": record.state, "cancel_requested": True}
            self.write_json(CancelSchema().dump(body), status=202)


_ID = r"/query/([^/]+)"
default_handlers = [
    (r"/query", SubmitHandler),
    (_ID + r"/status", StatusHandler),
    (_ID + r"/results", ResultsHandler),
    (_ID + r"/refresh", RefreshHandler),
    (_ID + r"/cancel", CancelHandler),
]
