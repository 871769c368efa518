"""Marshmallow schemas: what a request may carry and what a response shows."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)
from marshmallow.decorators import POST_DUMP, PRE_DUMP

from athenaq.clock import isoformat
from athenaq.identity import KEY_NAME
from athenaq.names import (
    MAX_PARAMETERS,
    PARAMETER_LENGTH,
    REUSE_MINUTES,
    validate_catalog,
    validate_database,
    validate_workgroup,
)
from athenaq.pricing import DEFAULT_PRICE_PER_TB_USD, cost_usd
from athenaq.states import QueryRecord, QueryState, SubmitOptions

# Athena's own limit for QueryString, counted in bytes here so no multibyte text slips past.
MAX_QUERY_BYTES = 262_144
# Rows in a page of `GET /query/<id>/results` when `limit` is not given, and at most.
DEFAULT_PAGE_ROWS = 1_000
MAX_PAGE_ROWS = 10_000
RESULT_FORMATS = ("json", "csv", "jsonl")
# The longest a status request may wait for its query to finish (`?wait=N`), in seconds.
MAX_WAIT_SECONDS = 60


class Timestamp(fields.Field[Any]):
    """ISO 8601 UTC with a Z, or null."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return isoformat(value)


# Labels a query may carry, their keys' form and their values' longest length.
MAX_LABELS = 10
LABEL_KEY = re.compile(r"[a-z0-9_.-]{1,63}")
MAX_LABEL_VALUE = 256
# The longest timeout_seconds: a day, well past Athena's own limit on a DML query's run
# (30 minutes by default, 240 at most on request), with room for a wait for a slot.
MAX_TIMEOUT_SECONDS = 86_400
MAX_CALLBACK_URL = 2_048
# The oldest results `max_age_seconds` may take from athenaq's cache: 7 days, the longest
# Athena's own result reuse serves (10,080 minutes).
MAX_AGE_SECONDS = 604_800
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
# A character that is not blank: not whitespace as Python's str.isspace() sees it. In the
# ECMA-262 regular expressions of JSON Schema (the OpenAPI document) \s lacks five of
# those and has U+FEFF, which Python keeps: the pattern reads the same in both.
NOT_BLANK = r"[^\s\x1c-\x1f\x85]|\ufeff"
# The header that makes a submit safe to retry, and the form of its value: printable
# ASCII, the space included (HTTP takes none at either end of a value).
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_CHARS = 255
IDEMPOTENCY_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}")
# The header of an answer that is a key's first answer again.
REPLAYED_HEADER = "Idempotent-Replayed"


class WholeNumber(fields.Integer):
    """A JSON integer: not a string, a boolean or a number with a fraction (`1.5`). A
    number written with a zero fraction (`5.0`) is the integer 5, as JSON Schema (the
    OpenAPI document) counts it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("must be an integer")
        result: int = super()._deserialize(value, attr, data, **kwargs)
        return result


class Labels(fields.Field[dict[str, str]]):
    """Up to MAX_LABELS pairs of a key of LABEL_KEY and a string value of up to
    MAX_LABEL_VALUE characters."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> dict[str, str]:
        if not isinstance(value, dict):
            raise ValidationError("must be an object of string values")
        if len(value) > MAX_LABELS:
            raise ValidationError(f"at most {MAX_LABELS} pairs, not {len(value)}")
        for key, label in value.items():
            if not LABEL_KEY.fullmatch(key):
                raise ValidationError(f"the key {key!r} must be 1 to 63 of a-z 0-9 _ . -")
            if not isinstance(label, str) or len(label) > MAX_LABEL_VALUE:
                raise ValidationError(
                    f"the value of {key!r} must be a string of at most {MAX_LABEL_VALUE} characters"
                )
        return dict(value)


def validate_callback_url(value: str) -> None:
    """An absolute http(s) URL with a host and no credentials; whether its host is
    allowed is the config's to say (Commands.submit)."""
    if len(value) > MAX_CALLBACK_URL or _CONTROL.search(value):
        raise ValidationError(
            f"must be a URL of at most {MAX_CALLBACK_URL} characters, without spaces"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ValidationError("must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("must not carry a user name or password")


def _optional(field: type[fields.Field[Any]], **options: Any) -> Any:
    # null is the same as leaving the field out.
    return field(load_default=None, allow_none=True, **options)


class SubmitRequest(Schema):
    """`POST /query`'s body: the SQL and the optional fields of API.md's submit table
    (submit_options maps them to what the query keeps)."""

    class Meta:
        unknown = RAISE

    query = fields.String(
        required=True,
        validate=validate.Length(min=1),
        # For the OpenAPI document: at least one character that is not blank (not_blank)
        # and at most MAX_QUERY_BYTES (counted in UTF-8 bytes by the handler: 413).
        metadata={"pattern": NOT_BLANK, "maxLength": MAX_QUERY_BYTES},
    )
    database = _optional(fields.String, validate=validate_database)
    workgroup = _optional(fields.String, validate=validate_workgroup)
    catalog = _optional(fields.String, validate=validate_catalog)
    parameters = _optional(
        fields.List,
        cls_or_instance=fields.String(
            validate=validate.Length(*PARAMETER_LENGTH, error="must be {min} to {max} characters")
        ),
        validate=validate.Length(max=MAX_PARAMETERS, error="at most {max} values"),
    )
    labels = _optional(Labels)
    result_reuse_minutes = _optional(
        WholeNumber, validate=validate.Range(*REUSE_MINUTES, error="must be {min} to {max}")
    )
    timeout_seconds = _optional(
        WholeNumber,
        validate=validate.Range(1, MAX_TIMEOUT_SECONDS, error="must be {min} to {max}"),
    )
    callback_url = _optional(fields.String, validate=validate_callback_url)
    max_age_seconds = _optional(
        WholeNumber, validate=validate.Range(1, MAX_AGE_SECONDS, error="must be {min} to {max}")
    )

    @validates("query")
    def not_blank(self, value: str, **_: Any) -> None:
        if re.search(NOT_BLANK, value) is None:
            raise ValidationError("must not be blank")


def submit_options(request: Mapping[str, Any]) -> SubmitOptions:
    """What a loaded SubmitRequest asks besides its SQL. What it leaves out (or sends as
    null, or empty) is None: Commands.submit fills in the config's database, workgroup
    and catalog."""
    parameters = request.get("parameters")
    labels = request.get("labels")
    return SubmitOptions(
        database=request.get("database"),
        workgroup=request.get("workgroup"),
        catalog=request.get("catalog"),
        parameters=tuple(parameters) if parameters else None,
        labels=labels or None,
        result_reuse_minutes=request.get("result_reuse_minutes"),
        timeout_seconds=request.get("timeout_seconds"),
        callback_url=request.get("callback_url"),
    )


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


class StatusRequest(Schema):
    """The query parameters of `GET /query/<id>/status`: only `wait` is read, the others
    are ignored, as they were before it."""

    class Meta:
        unknown = EXCLUDE

    wait = Count(
        validate=validate.Range(min=1, max=MAX_WAIT_SECONDS, error="must be 1 to {max}"),
    )


class StatisticsSchema(Schema):
    """A record's Athena statistics, and their price at `price_per_tb_usd`."""

    data_scanned_bytes = fields.Integer(allow_none=True)
    engine_execution_ms = fields.Integer(allow_none=True)
    queue_ms = fields.Integer(allow_none=True)
    total_execution_ms = fields.Integer(allow_none=True)
    cost_usd = fields.Method("_cost_usd", metadata={"type": ["number", "null"]})

    def __init__(
        self, *, price_per_tb_usd: float = DEFAULT_PRICE_PER_TB_USD, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.price_per_tb_usd = price_per_tb_usd

    def _cost_usd(self, record: QueryRecord) -> float | None:
        return cost_usd(
            record.data_scanned_bytes,
            failed=record.state == QueryState.FAILED,
            price_per_tb_usd=self.price_per_tb_usd,
        )


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


# What a `state` in an answer may be: Athena's own names (API.md, "Query states").
STATES = validate.OneOf([state.value for state in QueryState])


class StateSchema(Schema):
    """`{"id", "state"}`: the answer to a submit, a refresh or a cancel."""

    # Validators on answer fields are never run (answers are dumped, not loaded): they
    # say what the field holds, for the OpenAPI document (athenaq.openapi).
    id = fields.String(metadata={"format": "uuid"})
    state = fields.String(validate=STATES)


class CancelSchema(StateSchema):
    cancel_requested = fields.Boolean()


class SubmittedSchema(StateSchema):
    """A submit's answer; `cached` or `joined` (true) when it is a query there already."""

    cached = fields.Boolean()
    joined = fields.Boolean()


class StatusSchema(StateSchema):
    """The status object of a query. What the service's config adds to the record, the
    cost's price and the results' retention, is given when the schema is made: the
    service makes its own (Context.status)."""

    state_reason = fields.String(allow_none=True)
    query = fields.String(attribute="query_text")
    database = fields.String(attribute="database_name")
    workgroup = fields.String()
    catalog = fields.String()
    parameters = fields.List(fields.String(), allow_none=True)
    labels = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True)
    result_reuse_minutes = fields.Integer(allow_none=True)
    reused_previous_result = fields.Boolean(allow_none=True)
    timeout_seconds = fields.Integer(allow_none=True)
    timeout_at = Timestamp(allow_none=True)
    callback_url = fields.String(allow_none=True)
    athena_query_execution_id = fields.String(attribute="athena_execution_id", allow_none=True)
    submitted_at = Timestamp()
    started_at = Timestamp(allow_none=True)
    completed_at = Timestamp(allow_none=True)
    results_at = Timestamp(allow_none=True)
    # When retention removes the results: results_at + results.retention_days; null
    # without retention or results. The metadata says what the methods give (OpenAPI).
    results_expires_at = fields.Method(
        "_results_expires_at", metadata={"type": ["string", "null"], "format": "date-time"}
    )
    cancel_requested = fields.Function(
        lambda record: record.cancel_requested_at is not None, metadata={"type": "boolean"}
    )
    row_count = fields.Integer(allow_none=True)
    results_source = fields.String(allow_none=True)
    statistics = fields.Method("_statistics", metadata={"nested": StatisticsSchema})
    owner = fields.String()

    def __init__(
        self,
        *,
        price_per_tb_usd: float = DEFAULT_PRICE_PER_TB_USD,
        retention: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Planned once: a schema copies its fields when it is made, which would cost more
        # than the dump on every request.
        self.statistics_plan = DumpPlan(StatisticsSchema(price_per_tb_usd=price_per_tb_usd))
        self.retention = retention

    def _statistics(self, record: QueryRecord) -> dict[str, Any]:
        return self.statistics_plan.dump(record)

    def _results_expires_at(self, record: QueryRecord) -> str | None:
        if self.retention is None or record.results_at is None:
            return None
        return isoformat(record.results_at + self.retention)


# The status answer at the default price and without retention (the service makes its
# own, with its config's, in Context.status): see DumpPlan.
STATUS = DumpPlan(StatusSchema())


class CallbackSchema(Schema):
    """The webhook delivery of a query's current run, as its status shows it (`callback`)."""

    url = fields.String()
    delivered_at = Timestamp(allow_none=True)
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)


CALLBACK = DumpPlan(CallbackSchema())


class StatusAnswerSchema(StatusSchema):
    """The status object as the API answers it: the record's fields, and the progress of
    its webhook (null without a callback_url), which BaseHandler.status_object adds."""

    callback = fields.Nested(CallbackSchema, allow_none=True)


class ColumnSchema(Schema):
    name = fields.String()
    type = fields.String()


class ResultsSchema(Schema):
    id = fields.String(metadata={"format": "uuid"})
    state = fields.String(validate=validate.OneOf([QueryState.SUCCEEDED.value]))
    results_at = Timestamp()
    columns = fields.List(fields.Nested(ColumnSchema))
    # Cells in Athena's text form, SQL NULL as null.
    rows = fields.Raw(
        metadata={
            "type": "array",
            "items": {"type": "array", "items": {"type": ["string", "null"]}},
        }
    )
    row_count = fields.Integer()
    offset = fields.Integer()
    limit = fields.Integer()
    next = fields.String(allow_none=True)


# -- the listing, the history and the usage -----------------------------------------

# Queries in a page of `GET /queries` when `limit` is not given, and at most.
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 500
USAGE_GROUPS = ("owner", "day", "workgroup")


class Instant(fields.Field[datetime]):
    """A time as a query parameter: an ISO 8601 date (midnight UTC) or date and time,
    UTC unless it carries an offset (`Z`, `+02:00`); loaded as naive UTC, as stored."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str):
            raise ValidationError("must be a string")
        # A `+` of an offset that the client did not encode (%2B) arrives as a space.
        text = value.replace(" ", "+") if "T" in value else value
        try:
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except (ValueError, OverflowError):
            raise ValidationError(
                "must be an ISO 8601 date or time, e.g. 2026-12-02 or 2026-12-02T18:14:21Z"
            ) from None
        return parsed


class LabelFilter(fields.Field[tuple[str, str]]):
    """`key:value`, a label as a submit gives them (Labels; the value may hold colons)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[str, str]:
        if not isinstance(value, str):
            raise ValidationError("must be a string")
        key, colon, label_value = value.partition(":")
        if not colon:
            raise ValidationError("must be key:value")
        if not LABEL_KEY.fullmatch(key):
            raise ValidationError("the key must be 1 to 63 of a-z, 0-9, _, . and -")
        if len(label_value) > MAX_LABEL_VALUE:
            raise ValidationError(f"the value is over {MAX_LABEL_VALUE} characters")
        return key, label_value


class _TimeRange(Schema):
    class Meta:
        unknown = RAISE

    since = Instant()
    until = Instant()

    @validates_schema
    def ordered(self, data: dict[str, Any], **_: Any) -> None:
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and since > until:
            raise ValidationError("must not be after until", "since")


class ListRequest(_TimeRange):
    """The query parameters of `GET /queries`, each given at most once."""

    state = fields.String(
        validate=validate.OneOf(
            [state.value for state in QueryState], error="must be one of: {choices}"
        )
    )
    label = LabelFilter()
    owner = fields.String(
        validate=validate.Regexp(KEY_NAME, error="must be a key's name (or anonymous)")
    )
    limit = Count(
        load_default=DEFAULT_LIST_LIMIT,
        validate=validate.Range(min=1, max=MAX_LIST_LIMIT, error="must be 1 to {max}"),
    )
    cursor = fields.String(
        validate=validate.Length(min=1),
        metadata={"description": "Where the previous page ended: take it from `next`."},
    )


class UsageRequest(_TimeRange):
    """The query parameters of `GET /usage`, each given at most once."""

    group_by = fields.String(
        load_default="owner",
        validate=validate.OneOf(USAGE_GROUPS, error="must be one of: {choices}"),
    )


class TransitionSchema(Schema):
    """A move of a query's history, with the run it belongs to (1, then one more per
    refresh) and the event that made it."""

    run = fields.Integer()
    from_ = fields.String(data_key="from", attribute="from_state", allow_none=True, validate=STATES)
    to = fields.String(attribute="to_state", validate=STATES)
    event = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    by = fields.String(allow_none=True)
    at = Timestamp()


class HistorySchema(Schema):
    id = fields.String(metadata={"format": "uuid"})
    transitions = fields.List(fields.Nested(TransitionSchema))


class UsageGroupSchema(Schema):
    key = fields.String()
    queries = fields.Integer()
    succeeded = fields.Integer()
    failed = fields.Integer()
    cancelled = fields.Integer()
    data_scanned_bytes = fields.Integer()
    cost_usd = fields.Float()


class UsageSchema(Schema):
    groups = fields.List(fields.Nested(UsageGroupSchema))


class QueryListSchema(Schema):
    """`GET /queries`: a page of status objects, each as `GET /query/<id>/status` answers
    it, and the path of the next page (null after the last)."""

    queries = fields.List(fields.Nested(StatusAnswerSchema))
    next = fields.String(allow_none=True)


# -- operating it ----------------------------------------------------------------------


class HealthSchema(Schema):
    status = fields.String(validate=validate.OneOf(["ok"]))


class ReadinessSchema(Schema):
    """`GET /ready`: ready or not, and each check's outcome ("ok", or why it failed)."""

    status = fields.String(validate=validate.OneOf(["ready", "unavailable"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String())


# -- errors ------------------------------------------------------------------------------


class ErrorDetailSchema(Schema):
    code = fields.String()
    message = fields.String()


class ErrorSchema(Schema):
    """Every error: `{"error": {"code", "message"}, "state"?}`; `state` when the error is
    about the query's state."""

    error = fields.Nested(ErrorDetailSchema)
    state = fields.String(validate=STATES)


_ERROR = ErrorSchema()


def error_body(code: str, message: str, state: str | None = None) -> dict[str, Any]:
    """The error envelope of an answer."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if state is not None:
        body["state"] = state
    answer: dict[str, Any] = _ERROR.dump(body)
    return answer
