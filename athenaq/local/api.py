"""Athena's JSON 1.1 operations on an engine (`athenaq.local.base`): input checks and
wire shapes, the one implementation of them in the project.

Shapes follow botocore's Athena model (2017-05-18), so aiobotocore parses the
replies as it parses AWS's. Paging tokens are opaque to clients: base64 of a small
JSON object naming what they page and where the next page starts.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from athenaq.local.base import (
    Engine,
    Execution,
    InvalidRequest,
    QueryNotFound,
    TooManyQueries,
    Unavailable,
)

Json = dict[str, Any]
BATCH_LIMIT = 50
PAGE_LIMIT = 1000
LIST_LIMIT = 50
PARAMETER_LENGTH = 1024
MAX_REUSE_MINUTES = 10_080
DEFAULT_REUSE_MINUTES = 60
_WORKGROUP = re.compile(r"[a-zA-Z0-9._-]{1,128}")


class ApiError(Exception):
    """An AWS JSON 1.1 error reply: `__type`, `Message` and the shape's extra fields."""

    def __init__(self, kind: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: Json = {"__type": kind, "Message": message, **extra}


def invalid(message: str) -> ApiError:
    return ApiError("InvalidRequestException", message, AthenaErrorCode="INVALID_INPUT")


class AthenaApi:
    """The Athena operations an engine serves, by their X-Amz-Target name."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._operations: dict[str, Callable[[Json], Awaitable[Json]]] = {
            "StartQueryExecution": self.start_query_execution,
            "GetQueryExecution": self.get_query_execution,
            "BatchGetQueryExecution": self.batch_get_query_execution,
            "StopQueryExecution": self.stop_query_execution,
            "GetQueryResults": self.get_query_results,
            "ListQueryExecutions": self.list_query_executions,
        }

    async def call(self, operation: str, body: Json) -> Json:
        """Run one operation; every failure comes out as an ApiError."""
        handler = self._operations.get(operation)
        if handler is None:
            raise ApiError("UnknownOperationException", f"{operation} is not served here")
        query_id = body.get("QueryExecutionId")
        try:
            await self.engine.admit(operation, query_id if isinstance(query_id, str) else None)
            return await handler(body)
        except InvalidRequest as exc:
            raise invalid(str(exc)) from None
        except TooManyQueries as exc:
            raise ApiError(
                "TooManyRequestsException",
                f"Too many concurrent queries: {exc}",
                Reason="CONCURRENT_QUERY_LIMIT_EXCEEDED",
            ) from None
        except Unavailable as exc:
            raise ApiError("InternalServerException", str(exc), status=500) from None

    async def start_query_execution(self, body: Json) -> Json:
        sql = _required(body, "QueryString", 1, 262144)
        context = _object(body, "QueryExecutionContext")
        result = _object(body, "ResultConfiguration")
        workgroup = _string(body, "WorkGroup", 1, 128) or "primary"
        if not _WORKGROUP.fullmatch(workgroup):
            raise invalid(f"WorkGroup {workgroup!r} is not a valid workgroup name")
        query_id = self.engine.submit(
            sql,
            database=_string(context, "Database", 1, 255),
            catalog=_string(context, "Catalog", 1, 256),
            workgroup=workgroup,
            output_location=_string(result, "OutputLocation", 1, 1024),
            token=_string(body, "ClientRequestToken", 32, 128),
            parameters=_parameters(body),
            reuse_minutes=_reuse_minutes(body),
        )
        await self.engine.started(query_id)
        return {"QueryExecutionId": query_id}

    async def get_query_execution(self, body: Json) -> Json:
        query_id = _required(body, "QueryExecutionId", 1, 128)
        return {"QueryExecution": _execution(self.engine.get(query_id))}

    async def batch_get_query_execution(self, body: Json) -> Json:
        ids = body.get("QueryExecutionIds")
        if not isinstance(ids, list) or not 1 <= len(ids) <= BATCH_LIMIT:
            raise invalid(f"QueryExecutionIds must hold 1 to {BATCH_LIMIT} ids")
        found: list[Json] = []
        unprocessed: list[Json] = []
        for query_id in ids:
            try:
                found.append(_execution(self.engine.get(str(query_id))))
            except QueryNotFound as exc:
                unprocessed.append(
                    {
                        "QueryExecutionId": str(query_id),
                        "ErrorCode": "INVALID_INPUT",
                        "ErrorMessage": str(exc),
                    }
                )
        return {"QueryExecutions": found, "UnprocessedQueryExecutionIds": unprocessed}

    async def stop_query_execution(self, body: Json) -> Json:
        self.engine.stop(_required(body, "QueryExecutionId", 1, 128))
        return {}

    async def get_query_results(self, body: Json) -> Json:
        query_id = _required(body, "QueryExecutionId", 1, 128)
        limit = _integer(body, "MaxResults", 1, PAGE_LIMIT) or PAGE_LIMIT
        token = _string(body, "NextToken", 1, 1024)
        position = 0 if token is None else _decode_token(token, query_id)
        page = await self.engine.results(query_id, position, limit)
        reply: Json = {
            "UpdateCount": 0,
            "ResultSet": {
                "Rows": [
                    {"Data": [{} if v is None else {"VarCharValue": v} for v in row]}
                    for row in page.rows
                ],
                "ResultSetMetadata": {
                    "ColumnInfo": [
                        {
                            "CatalogName": "hive",
                            "SchemaName": "",
                            "TableName": "",
                            "Name": c.name,
                            "Label": c.name,
                            "Type": c.type,
                            "Precision": c.precision,
                            "Scale": c.scale,
                            "Nullable": "UNKNOWN",
                            "CaseSensitive": c.case_sensitive,
                        }
                        for c in page.columns
                    ]
                },
            },
        }
        if page.next_position is not None:
            reply["NextToken"] = _encode_token(query_id, page.next_position)
        return reply

    async def list_query_executions(self, body: Json) -> Json:
        # Newest first, as Athena lists; without a WorkGroup, Athena lists "primary".
        workgroup = _string(body, "WorkGroup", 1, 128) or "primary"
        limit = _integer(body, "MaxResults", 0, LIST_LIMIT) or LIST_LIMIT
        token = _string(body, "NextToken", 1, 1024)
        before = None if token is None else _decode_token(token, f"list:{workgroup}")
        ids, next_before = self.engine.list_ids(workgroup, limit, before)
        reply: Json = {"QueryExecutionIds": ids}
        if next_before is not None:
            reply["NextToken"] = _encode_token(f"list:{workgroup}", next_before)
        return reply


def _execution(execution: Execution) -> Json:
    status: Json = {"State": execution.state.value, "SubmissionDateTime": execution.submitted_at}
    if execution.completed_at is not None:
        status["CompletionDateTime"] = execution.completed_at
    if execution.reason is not None:
        status["StateChangeReason"] = execution.reason
    if execution.failure is not None:
        status["AthenaError"] = {
            "ErrorCategory": execution.failure.category,
            "ErrorType": execution.failure.error_type,
            "Retryable": False,
            "ErrorMessage": execution.failure.message,
        }
    context: Json = {}
    if execution.database is not None:
        context["Database"] = execution.database
    if execution.catalog is not None:
        context["Catalog"] = execution.catalog
    reuse: Json = {"Enabled": execution.reuse_minutes is not None}
    if execution.reuse_minutes is not None:
        reuse["MaxAgeInMinutes"] = execution.reuse_minutes
    reply: Json = {
        "QueryExecutionId": execution.id,
        "Query": execution.sql,
        "StatementType": execution.statement_type,
        "ResultConfiguration": {"OutputLocation": execution.output_location},
        "ResultReuseConfiguration": {"ResultReuseByAgeConfiguration": reuse},
        "QueryExecutionContext": context,
        "Status": status,
        "Statistics": {
            "EngineExecutionTimeInMillis": execution.engine_ms,
            "DataScannedInBytes": execution.scanned_bytes,
            "TotalExecutionTimeInMillis": execution.total_ms,
            "QueryQueueTimeInMillis": execution.queue_ms,
            "ResultReuseInformation": {"ReusedPreviousResult": execution.reused},
        },
        "WorkGroup": execution.workgroup,
    }
    if execution.parameters is not None:
        reply["ExecutionParameters"] = list(execution.parameters)
    return reply


def _parameters(body: Json) -> tuple[str, ...] | None:
    """ExecutionParameters: a list of at least one string of 1 to 1024 characters."""
    value = body.get("ExecutionParameters")
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and 1 <= len(v) <= PARAMETER_LENGTH for v in value)
    ):
        raise invalid(
            f"ExecutionParameters must be a list of strings of 1 to {PARAMETER_LENGTH} characters"
        )
    return tuple(value)


def _reuse_minutes(body: Json) -> int | None:
    """ResultReuseConfiguration's maximum age when it enables reuse (60 unless given)."""
    by_age = _object(_object(body, "ResultReuseConfiguration"), "ResultReuseByAgeConfiguration")
    if not by_age:
        return None
    enabled = by_age.get("Enabled")
    if not isinstance(enabled, bool):
        raise invalid("ResultReuseByAgeConfiguration.Enabled must be a boolean")
    minutes = _integer(by_age, "MaxAgeInMinutes", 0, MAX_REUSE_MINUTES)
    if not enabled:
        return None
    return DEFAULT_REUSE_MINUTES if minutes is None else minutes


def _string(body: Json, key: str, shortest: int, longest: int) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not shortest <= len(value) <= longest):
        raise invalid(f"{key} must be a string of {shortest} to {longest} characters")
    return value


def _required(body: Json, key: str, shortest: int, longest: int) -> str:
    value = _string(body, key, shortest, longest)
    if value is None:
        raise invalid(f"{key} is required")
    return value


def _integer(body: Json, key: str, lowest: int, highest: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise invalid(f"{key} must be an integer from {lowest} to {highest}")
    return value


def _object(body: Json, key: str) -> Json:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise invalid(f"{key} must be an object")
    return value


def _encode_token(scope: str, position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"s": scope, "p": position}).encode()).decode()


def _decode_token(token: str, scope: str) -> int:
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        position = payload["p"]
        if payload["s"] == scope and isinstance(position, int):
            return position
    except (ValueError, KeyError, TypeError, binascii.Error):
        pass
    raise invalid("Invalid NextToken")
