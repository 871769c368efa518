"""Marshmallow schemas: what a request may carry and what a response shows."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates
from marshmallow.decorators import POST_DUMP, PRE_DUMP

from athenaq.clock import isoformat

# Athena's own limit for QueryString, counted in bytes here so no multibyte text slips past.
MAX_QUERY_BYTES = 262_144
# Rows in a page of `GET /query/<id>/results` when `limit` is not given, and at most.
DEFAULT_PAGE_ROWS = 1_000
MAX_PAGE_ROWS = 10_000
RESULT_FORMATS = ("json", "csv", "jsonl")


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


class Count(fields.Integer):
    """A non-negative integer written in decimal digits only, as a query parameter is."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise ValidationError("must be a non-negative integer")
        result: int = super()._deserialize(value, attr, data, **kwargs)
        return result


class ResultsRequest(Schema):
    """The query parameters of `GET /query/<id>/results`, each given at most once."""

    class Meta:
        unknown = RAISE

    offset = Count(load_default=0)
    limit = Count(
        load_default=DEFAULT_PAGE_ROWS,
        validate=validate.Range(min=1, max=MAX_PAGE_ROWS, error="must be 1 to {max}"),
    )
    format = fields.String(
        validate=validate.OneOf(RESULT_FORMATS, error="must be one of: {choices}")
    )


class StatisticsSchema(Schema):
    data_scanned_bytes = fields.Integer(allow_none=True)
    engine_execution_ms = fields.Integer(allow_none=True)
    queue_ms = fields.Integer(allow_none=True)
    total_execution_ms = fields.Integer(allow_none=True)


class DumpPlan:
    """`schema.dump(obj)` for an object whose every field is an attribute (a record),
    planned once from the schema's own fields: the same keys, the same fields'
    serialisers, without marshmallow's walk around them at each call (accessor lookups,
    hook checks), which costs more than the serialisers. The schema stays the shape's one
    definition; a schema with dump hooks cannot be planned."""

    def __init__(self, schema: Schema) -> None:
        if schema._hooks[PRE_DUMP] or schema._hooks[POST_DUMP]:
            raise ValueError(f"{type(schema).__name__} has dump hooks: dump with the schema")
        self._steps = [
            (field.data_key or name, field.attribute or name, name, field)
            for name, field in schema.dump_fields.items()
        ]

    def dump(self, obj: Any) -> dict[str, Any]:
        # As Field.serialize: a field computed from the whole object (Function) reads none.
        return {
            key: field._serialize(
                getattr(obj, attribute) if field._CHECK_ATTRIBUTE else None, name, obj
            )
            for key, attribute, name, field in self._steps
        }


# Built once: a schema copies its fields when it is made, which would cost more than the
# dump on every request.
STATISTICS = DumpPlan(StatisticsSchema())


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
    results_source = fields.String(allow_none=True)
    statistics = fields.Function(lambda record: STATISTICS.dump(record))
    owner = fields.String()


# The status answer, the most asked for: see DumpPlan.
STATUS = DumpPlan(StatusSchema())


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
    offset = fields.Integer()
    limit = fields.Integer()
    next = fields.String(allow_none=True)
