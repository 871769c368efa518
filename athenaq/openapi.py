"""The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`), made by apispec's
MarshmallowPlugin from the marshmallow schemas that validate requests and shape answers
(athenaq.schemas), and the error classes whose status and code each answer carries
(athenaq.errors). What those cannot say, which operation answers what, is the table
OPERATIONS below; tests/test_openapi.py holds it to the routes Tornado serves, and the
schemathesis run (tests/test_fuzz.py) to the server's answers."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from marshmallow import Schema, fields

from athenaq import errors, names, schemas
from athenaq.identity import ADMIN, CANCEL, METRICS, READ, SCOPES, SUBMIT

TITLE = "athenaq"
VERSION = "2"
OPENAPI_VERSION = "3.1.0"
BEARER = "bearer"
JSON = "application/json"
CSV = "text/csv"
NDJSON = "application/x-ndjson"
# Prometheus's text exposition format (prometheus_client's CONTENT_TYPE_LATEST).
PROMETHEUS = "text/plain"
# The path parameter of every `/query/<id>/...` route.
QUERY_ID = "query_id"

# Headers an answer may carry, by name: what each means.
_HEADERS: dict[str, dict[str, Any]] = {
    "Location": {
        "description": "The query's status: `/query/<id>/status`.",
        "schema": {"type": "string", "pattern": "^/query/[0-9a-f-]{36}/status$"},
    },
    "Retry-After": {
        "description": "Seconds to wait before asking again.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with: `Bearer`.",
        "schema": {"type": "string"},
    },
    schemas.REPLAYED_HEADER: {
        "description": "`true` on an answer that is the first answer to this "
        "Idempotency-Key again; absent on the first answer itself.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "ETag": {
        "description": "The download's tag: `If-None-Match` with it answers 304 until a "
        "refresh gives the query a new Athena execution.",
        "schema": {"type": "string"},
    },
    "Content-Disposition": {
        "description": '`attachment; filename="<id>.csv"` (or `.jsonl`).',
        "schema": {"type": "string"},
    },
    "Content-Encoding": {
        "description": "`gzip` when the request's Accept-Encoding names gzip: the download "
        "is compressed on the fly.",
        "schema": {"type": "string", "enum": ["gzip"]},
    },
}


@dataclass(frozen=True)
class Answer:
    """A successful answer: its description, body (a schema, or a mapping of media type
    to schema or None for text), and headers (names in _HEADERS, True when always sent)."""

    description: str
    body: type[Schema] | Mapping[str, type[Schema] | dict[str, Any]] | None = None
    headers: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """One method on one path of the API, as the document describes it."""

    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    answers: Mapping[int, Answer]
    # The errors it may answer with: their status, code and headers come from the class.
    raises: tuple[type[errors.ApiError], ...] = ()
    # The key's scope it needs; None: any key. Ignored when `open`.
    scope: str | None = None
    open: bool = False
    # The query parameters, as the schema that loads them.
    query: type[Schema] | None = None
    body: type[Schema] | None = None
    # Request headers beyond Authorization: name -> (description, JSON schema).
    headers: Mapping[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    # The statuses whose answers carry a query's id: links lead from them to the
    # operations on that query (_FOLLOW), which is what schemathesis chains.
    links: tuple[int, ...] = ()

    @property
    def takes_id(self) -> bool:
        return "{" + QUERY_ID + "}" in self.path


# What every request may meet before its handler runs (BaseHandler.prepare and the
# HTTP server): a body on a route that takes none, broken framing, and load shedding.
_ANY = (errors.BadRequest, errors.PayloadTooLarge)
_SHED = (errors.Overloaded,)
# ...and, for an endpoint that needs a key, its check against the store.
_KEYED = (
    *_ANY,
    *_SHED,
    errors.Unauthorized,
    errors.Forbidden,
    errors.RateLimited,
    errors.StoreUnavailable,
)
_ID = "/query/{" + QUERY_ID + "}"
# What a query may start: the key's databases, workgroups, statement kinds and limits.
_ADMISSION = (
    errors.StatementNotAllowed,
    errors.TooManyQueries,
    errors.QuotaExceeded,
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/query",
        "submitQuery",
        "Submit a query",
        "Records the query QUEUED and sends it to Athena in the background. With "
        "`max_age_seconds`, a query of the same owner that is the same query answers "
        "instead: 200 `cached` (SUCCEEDED, results young enough) or 202 `joined` "
        "(QUEUED or RUNNING). An `Idempotency-Key` makes a retry safe: the same key with "
        "the same body within 24 hours gets the first answer again.",
        {
            202: Answer(
                "Accepted: a new query (QUEUED), or one being run already (`joined`).",
                schemas.SubmittedSchema,
                {"Location": True, schemas.REPLAYED_HEADER: False},
            ),
            200: Answer(
                "A query that SUCCEEDED, from athenaq's cache (`cached`).",
                schemas.SubmittedSchema,
                {"Location": True, schemas.REPLAYED_HEADER: False},
            ),
        },
        raises=(
            *_KEYED,
            errors.InvalidJson,
            errors.ValidationFailed,
            errors.UnsupportedMediaType,
            errors.IdempotencyKeyReused,
            errors.ServiceUnavailable,
            *_ADMISSION,
        ),
        scope=SUBMIT,
        body=schemas.SubmitRequest,
        headers={
            schemas.IDEMPOTENCY_HEADER: (
                "Printable ASCII: the same owner sending the same key with the same body "
                "within 24 hours gets the first answer again.",
                {"type": "string", "pattern": f"^{schemas.IDEMPOTENCY_KEY.pattern}$"},
            )
        },
        links=(202, 200),
    ),
    Operation(
        "get",
        _ID + "/status",
        "getStatus",
        "A query's status",
        "The status object. With `wait=N`, answers as soon as the query is finished "
        "(SUCCEEDED, FAILED or CANCELLED), or after N seconds with its state then.",
        {200: Answer("The status object.", schemas.StatusAnswerSchema)},
        raises=(*_KEYED, errors.ValidationFailed, errors.NotFound),
        scope=READ,
        query=schemas.StatusRequest,
    ),
    Operation(
        "get",
        _ID + "/results",
        "getResults",
        "A query's results",
        "A page of the results as JSON (`offset`, `limit`), or the whole result as a "
        "download: `format=csv` (text/csv) or `format=jsonl` (application/x-ndjson), or "
        "without `format` the media type the Accept header prefers among application/json, "
        "text/csv and application/x-ndjson. A download is streamed, gzipped on the fly "
        "when Accept-Encoding names gzip (Content-Encoding: gzip), and carries an ETag.",
        {
            200: Answer(
                "A page of results (JSON), or the whole result (CSV, JSON lines).",
                {
                    JSON: schemas.ResultsSchema,
                    CSV: {
                        "type": "string",
                        "description": "A header row of the column names, then the rows, "
                        "in Athena's CSV form: every value double-quoted, NULL an empty "
                        "unquoted field.",
                    },
                    NDJSON: {
                        "type": "string",
                        "description": 'The line `{"columns": [...]}`, then one JSON array '
                        "per row, NULL as null.",
                    },
                },
                {
                    "ETag": False,
                    "Content-Disposition": False,
                    "Content-Encoding": False,
                },
            ),
            304: Answer("The download's ETag matches If-None-Match: nothing changed."),
        },
        raises=(
            *_KEYED,
            errors.ValidationFailed,
            errors.NotFound,
            errors.QueryRunning,
            errors.QueryCancelled,
            errors.QueryFailed,
            errors.ResultsMissing,
            errors.ResultsExpired,
        ),
        scope=READ,
        query=schemas.ResultsRequest,
        headers={
            "If-None-Match": (
                "A download's ETag: 304 when it is still the result's.",
                {"type": "string"},
            )
        },
    ),
    Operation(
        "post",
        _ID + "/refresh",
        "refreshQuery",
        "Run a finished query again",
        "A SUCCEEDED, FAILED or CANCELLED query goes back to QUEUED for a new Athena "
        "execution, with the fields it was submitted with; its old results are removed.",
        {202: Answer("QUEUED again.", schemas.StateSchema, {"Location": True})},
        raises=(*_KEYED, errors.NotFound, errors.QueryRunning, errors.Conflict, *_ADMISSION),
        scope=SUBMIT,
        links=(202,),
    ),
    Operation(
        "post",
        _ID + "/cancel",
        "cancelQuery",
        "Cancel a query",
        "Stops the query in Athena: 200 once Athena confirmed the stop (within "
        "athena.cancel_wait_seconds), 202 when it has not yet (the poller finishes it). "
        "A query that SUCCEEDED or FAILED keeps its outcome.",
        {
            200: Answer("CANCELLED.", schemas.StateSchema),
            202: Answer("Asked for; Athena has not confirmed the stop yet.", schemas.CancelSchema),
        },
        raises=(
            *_KEYED,
            errors.NotFound,
            errors.QueryFinished,
            errors.QueryCancelled,
            errors.Conflict,
            errors.ServiceUnavailable,
        ),
        scope=CANCEL,
        links=(200, 202),
    ),
    Operation(
        "get",
        _ID + "/history",
        "getHistory",
        "A query's history",
        "Every move of every run of the query, oldest first.",
        {200: Answer("The transitions.", schemas.HistorySchema)},
        raises=(*_KEYED, errors.NotFound),
        scope=READ,
    ),
    Operation(
        "get",
        "/queries",
        "listQueries",
        "List queries",
        "The caller's queries (an admin's: everyone's), newest first, a page at a time: "
        "follow `next`, a path with an opaque cursor.",
        {200: Answer("A page of status objects.", schemas.QueryListSchema)},
        raises=(*_KEYED, errors.ValidationFailed),
        scope=READ,
        query=schemas.ListRequest,
    ),
    Operation(
        "get",
        "/usage",
        "getUsage",
        "Queries, bytes scanned and cost",
        "The caller's queries (an admin's: everyone's) submitted in [since, until), "
        "counted by owner, UTC day or workgroup.",
        {200: Answer("The groups, in the order of their key.", schemas.UsageSchema)},
        raises=(*_KEYED, errors.ValidationFailed),
        scope=READ,
        query=schemas.UsageRequest,
    ),
    Operation(
        "get",
        "/health",
        "getHealth",
        "Liveness",
        "200 while the process serves HTTP, whatever its store, disk or poller; never shed.",
        {200: Answer("Alive.", schemas.HealthSchema)},
        raises=_ANY,
        open=True,
    ),
    Operation(
        "get",
        "/ready",
        "getReadiness",
        "Readiness",
        "Whether the process can do its work: the store answers, the results folder takes "
        "a file, the poller ticked lately. Never shed.",
        {
            200: Answer("Ready: every check `ok`.", schemas.ReadinessSchema),
            503: Answer(
                "Not ready: each failing check's reason in place of `ok`.",
                schemas.ReadinessSchema,
                {"Retry-After": True},
            ),
        },
        raises=_ANY,
        open=True,
    ),
    Operation(
        "get",
        "/metrics",
        "getMetrics",
        "Prometheus metrics",
        "This process's metrics in the Prometheus text format: queries by state, "
        "transitions, Athena calls, poll ticks, ingest, HTTP requests by route and "
        "status, admission, leases. Each process of a fleet serves its own. Never shed.",
        {200: Answer("The metrics.", {PROMETHEUS: {"type": "string"}})},
        raises=(
            *_ANY,
            errors.Unauthorized,
            errors.Forbidden,
            errors.RateLimited,
            errors.StoreUnavailable,
        ),
        scope=METRICS,
    ),
    Operation(
        "get",
        "/openapi.json",
        "getOpenApi",
        "This document",
        "The OpenAPI 3.1 document of this API.",
        {200: Answer("The document.", {JSON: {"type": "object"}})},
        raises=(*_ANY, *_SHED),
        open=True,
    ),
)

# The operations a query's id leads to, from an answer that carries it (`id`).
_FOLLOW = ("getStatus", "getResults", "getHistory", "cancelQuery", "refreshQuery")


def _error_classes() -> Iterator[type[errors.ApiError]]:
    stack = [errors.ApiError]
    while stack:
        cls = stack.pop()
        yield cls
        stack.extend(cls.__subclasses__())


def error_codes() -> list[str]:
    """Every `code` an error answer may carry."""
    return sorted({cls.code for cls in _error_classes()})


# Athena's rules for the names in a query's context (athenaq.names), as JSON Schema.
_NAME_RULES: dict[Any, dict[str, Any]] = {
    names.validate_database: {
        "minLength": names.DATABASE_LENGTH[0],
        "maxLength": names.DATABASE_LENGTH[1],
    },
    names.validate_workgroup: {"pattern": f"^{names.WORKGROUP.pattern}$"},
    # names.CATALOG, less the lone surrogates no JSON text that athenaq reads can hold.
    names.validate_catalog: {"pattern": "^[^\\x00-\\x08\\x0a-\\x1f]{1,256}$"},
    # An http(s) URL with a host and no user name (schemas._callback_url), named more
    # narrowly than the code takes it (a port of up to 4 digits, no IPv6 literal).
    schemas.validate_callback_url: {
        "maxLength": schemas.MAX_CALLBACK_URL,
        "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,4})?([/?#][^\\x00-\\x20\\x7f]*)?$",
        "description": "An http:// or https:// URL, POSTed the status at each finished run; "
        "its host must be one webhooks.allowed_hosts lists (else 400).",
    },
}


def _special_fields(converter: OpenAPIConverter, field: fields.Field[Any], **kwargs: Any) -> Any:
    """What apispec cannot read from athenaq's own fields: a method's nested schema, the
    labels' rules, a time as a query parameter takes it, a label filter."""
    nested = field.metadata.get("nested")
    if nested is not None:
        return converter.resolve_nested_schema(nested)
    if isinstance(field, schemas.Count) and "minimum" not in kwargs["ret"]:
        return {"minimum": 0}
    for rule in field.validators:
        if rule in _NAME_RULES:
            return _NAME_RULES[rule]
    if isinstance(field, schemas.Labels):
        labels: dict[str, Any] = {
            "type": ["object", "null"],
            "maxProperties": schemas.MAX_LABELS,
            "propertyNames": {"pattern": f"^{schemas.LABEL_KEY.pattern}$"},
            "additionalProperties": {"type": "string", "maxLength": schemas.MAX_LABEL_VALUE},
        }
        return labels
    if isinstance(field, schemas.Instant):
        return {
            "type": "string",
            "anyOf": [{"format": "date"}, {"format": "date-time"}],
            "description": "ISO 8601: a date (midnight UTC) or a date and time, UTC unless "
            "it carries an offset.",
            "examples": ["2026-12-02", "2026-12-02T18:14:21Z"],
        }
    if isinstance(field, schemas.LabelFilter):
        return {
            "type": "string",
            "pattern": f"^{schemas.LABEL_KEY.pattern}:[\\s\\S]{{0,{schemas.MAX_LABEL_VALUE}}}$",
            "description": "`key:value`: queries with that label.",
        }
    return {}


# The headers an error carries, by the classes that send them (ApiError.headers and the
# handlers' Retry-After for a query still running).
_ERROR_HEADERS: dict[str, tuple[type[errors.ApiError], ...]] = {
    "WWW-Authenticate": (errors.Unauthorized,),
    "Retry-After": (errors.TooManyRequests, errors.ServiceUnavailable, errors.QueryRunning),
}


def _error_response(cls_list: list[type[errors.ApiError]]) -> dict[str, Any]:
    codes = sorted({cls.code for cls in cls_list})
    headers = {}
    for name, senders in _ERROR_HEADERS.items():
        sent = [issubclass(cls, senders) for cls in cls_list]
        if any(sent):
            # Required when every code of this status sends it.
            headers[name] = {**_HEADERS[name], "required": all(sent)}
    response: dict[str, Any] = {
        "description": ", ".join(f"`{code}`" for code in codes),
        "content": {
            JSON: {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {
                            "properties": {
                                "error": {"properties": {"code": {"enum": codes}}},
                            }
                        },
                    ]
                }
            }
        },
    }
    if headers:
        response["headers"] = headers
    return response


def _body(converter: OpenAPIConverter, body: Any) -> dict[str, Any]:
    if isinstance(body, type) and issubclass(body, Schema):
        return {JSON: {"schema": converter.resolve_nested_schema(body)}}
    content = {}
    for media_type, schema in body.items():
        if isinstance(schema, type) and issubclass(schema, Schema):
            schema = converter.resolve_nested_schema(schema)
        content[media_type] = {"schema": schema}
    return content


def _operation(spec: APISpec, converter: OpenAPIConverter, op: Operation) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    if op.takes_id:
        parameters.append(
            {
                "name": QUERY_ID,
                "in": "path",
                "required": True,
                "description": "The query's id, a lowercase canonical UUID made by athenaq; "
                "any other segment is an unknown query (404).",
                "schema": {"type": "string", "format": "uuid"},
            }
        )
    if op.query is not None:
        parameters.extend(converter.schema2parameters(op.query, location="query"))
    for name, (description, schema) in op.headers.items():
        parameters.append(
            {"name": name, "in": "header", "description": description, "schema": schema}
        )
    responses: dict[str, Any] = {}
    for status, answer in op.answers.items():
        response: dict[str, Any] = {"description": answer.description}
        if answer.body is not None:
            response["content"] = _body(converter, answer.body)
        if answer.headers:
            response["headers"] = {
                name: {**_HEADERS[name], "required": required}
                for name, required in answer.headers.items()
            }
        if status in op.links:
            response["links"] = {
                target: {
                    "operationId": target,
                    "parameters": {QUERY_ID: "$response.body#/id"},
                }
                for target in _FOLLOW
            }
        responses[str(status)] = response
    by_status: dict[int, list[type[errors.ApiError]]] = {}
    for cls in op.raises:
        by_status.setdefault(cls.status, []).append(cls)
    for status, classes in sorted(by_status.items()):
        responses[str(status)] = _error_response(classes)
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": op.description,
        "parameters": parameters,
        "responses": dict(sorted(responses.items())),
        "security": [] if op.open else [{BEARER: [op.scope] if op.scope else []}],
    }
    if op.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": converter.resolve_nested_schema(op.body)}},
        }
    return operation


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, made once per process (it depends on no config)."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=TITLE,
        version=VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "Runs AWS Athena queries for applications: submit SQL, follow "
            "the query by its id, read its results, refresh or cancel it. Every error is "
            '`{"error": {"code", "message"}, "state"?}`. With `auth.mode: api_keys` every '
            "endpoint but /health, /ready and /openapi.json needs `Authorization: Bearer "
            "<key>` with the scope its security requirement names; with `auth.mode: none` "
            "no key is asked for.",
        },
    )
    plugin.map_to_openapi_type(schemas.Timestamp, "string", "date-time")
    converter = plugin.converter
    assert converter is not None
    converter.add_attribute_function(_special_fields)
    spec.components.security_scheme(
        BEARER,
        {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key made by `athenaq keys create`. Scopes: "
            + ", ".join(SCOPES)
            + f" ({ADMIN}: every owner's queries; {METRICS}: GET /metrics).",
        },
    )
    spec.components.schema("Error", schema=schemas.ErrorSchema)
    by_path: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        by_path.setdefault(op.path, {})[op.method] = _operation(spec, converter, op)
    for path, operations in by_path.items():
        spec.path(path=path, operations=operations)
    result = spec.to_dict()
    _every_field_answered(result)
    result["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"] = error_codes()
    return result


def _every_field_answered(document: dict[str, Any]) -> None:
    """Mark every field of an answer's schema required, and no other field allowed: the
    answers carry them all (DumpPlan and dump write every field), but for a submit's
    `cached` and `joined` and an error's `state`. A client, and the fuzzing, may count on
    them."""
    optional = {("Submitted", "cached"), ("Submitted", "joined"), ("Error", "state")}
    requests = {"SubmitRequest"} | {
        op.query.__name__.removesuffix("Schema") for op in OPERATIONS if op.query
    }
    for name, schema in document["components"]["schemas"].items():
        if name in requests:
            continue
        properties = schema.get("properties", {})
        schema["required"] = [key for key in properties if (name, key) not in optional]
        schema["additionalProperties"] = False
