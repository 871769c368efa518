"""Marshmallow schemas: what a request may carry and what a response shows."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from athenaq.clock import isoformat

# Athena's own limit for QueryString, counted in bytes here so no multibyte text slips past.
MAX_QUERY_BYTES = 262_144


class Timestamp(fields.Field[Any]):
    """ISO 8601 UTC with a Z, or null."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return isoformat(value)


class SubmitRequest(Schema):
    class Meta:
        unknown = RAISE

    query = fields.String(required=True, validate=validate.Length(min=1))

    @validates("query")
    def not_blank(self, value: str, **_: Any) -> None:
        if not value.strip():
            raise ValidationError("must not be blank")


class StatisticsSchema(Schema):
    data_scanned_bytes = fields.Integer(allow_none=True)
    engine_execution_ms = fields.Integer(allow_none=True)
    queue_ms = fields.Integer(allow_none=True)
    total_execution_ms = fields.Integer(allow_none=True)


class StateSchema(Schema):
    """`{"id", "state"}`: the answer to a submit, a refresh or a cancel."""

    id = fields.String()
    state = fields.String()


class CancelSchema(StateSchema):
    cancel_requested = fields.Boolean()


class StatusSchema(StateSchema):
    state_reason = fields.String(allow_none=True)
    query = fields.String(attribute="query_text")
    database = fields.String(attribute="database_name")
    workgroup = fields.String()
    athena_query_execution_id = fields.String(attribute="athena_execution_id", allow_none=True)
    submitted_at = Timestamp()
    started_at = Timestamp()
    completed_at = Timestamp()
    results_at = Timestamp()
    cancel_requested = fields.Function(lambda record: record.cancel_requested_at is not None)
    row_count = fields.Integer(allow_none=True)
    statistics = fields.Function(lambda record: StatisticsSchema().dump(record))


class ColumnSchema(Schema):
    name = fields.String()
    type = fields.String()


class ResultsSchema(Schema):
    id = fields.String()
    state = fields.String()
    results_at = Timestamp()
    columns = fields.List(fields.Nested(ColumnSchema))
    rows = fields.Raw()
    row_count = fields.Integer()
