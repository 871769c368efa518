"""Every AWS call of the service: Athena through aiobotocore.

The same calls serve AWS and any Athena-compatible endpoint (`endpoint_url`).
Errors come out as `AthenaCallError` with Athena's error code, so callers never
import botocore.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from loguru import logger

from athenaq.config import AthenaConfig

# botocore's default "legacy" mode does not retry TooManyRequestsException; standard does.
CLIENT_CONFIG = AioConfig(
    retries={"mode": "standard", "max_attempts": 4},
    connect_timeout=10,
    read_timeout=60,
    max_pool_connections=50,
)
# Calls the poller repeats at its next tick anyway are tried once, so a throttled start
# or an endpoint without the batch call (moto) never holds a tick or a lock for seconds.
SINGLE_ATTEMPT = CLIENT_CONFIG.merge(
    AioConfig(retries={"mode": "standard", "total_max_attempts": 1})
)
BATCH_LIMIT = 50
PAGE_ROWS = 1000
THROTTLING_CODES = frozenset({"TooManyRequestsException", "ThrottlingException"})


class AthenaCallError(Exception):
    """An Athena call failed; `code` is Athena's error type (or the transport's)."""

    def __init__(self, operation: str, code: str, message: str, status: int | None) -> None:
        super().__init__(f"{operation}: {code}: {message}")
        self.operation = operation
        self.code = code
        self.message = message
        self.status = status

    @property
    def is_throttling(self) -> bool:
        return self.code in THROTTLING_CODES

    @property
    def is_client_error(self) -> bool:
        """Athena refused the request itself (bad SQL, unknown id): retrying cannot help."""
        return self.status == 400 and not self.is_throttling


@dataclass(frozen=True)
class Execution:
    """What Athena says of one query execution."""

    execution_id: str
    state: str
    reason: str | None
    submitted_at: datetime | None
    completed_at: datetime | None
    data_scanned_bytes: int | None
    engine_execution_ms: int | None
    queue_ms: int | None
    total_execution_ms: int | None


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class ResultPage:
    """One GetQueryResults page; `columns` is set on the first page only."""

    columns: list[Column] | None
    rows: list[list[str | None]]


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _execution(raw: dict[str, Any]) -> Execution:
    status = raw.get("Status", {})
    stats = raw.get("Statistics", {})
    reason = status.get("StateChangeReason")
    athena_error = status.get("AthenaError", {}).get("ErrorMessage")
    if athena_error and athena_error != reason:
        reason = f"{reason}: {athena_error}" if reason else athena_error
    return Execution(
        execution_id=raw["QueryExecutionId"],
        state=status.get("State", "QUEUED"),
        reason=reason,
        submitted_at=_naive_utc(status.get("SubmissionDateTime")),
        completed_at=_naive_utc(status.get("CompletionDateTime")),
        data_scanned_bytes=stats.get("DataScannedInBytes"),
        engine_execution_ms=stats.get("EngineExecutionTimeInMillis"),
        queue_ms=stats.get("QueryQueueTimeInMillis"),
        total_execution_ms=stats.get("TotalExecutionTimeInMillis"),
    )


def _cells(row: dict[str, Any]) -> list[str | None]:
    # Athena sends NULL as an empty Datum ({}), and "" as {"VarCharValue": ""}.
    return [datum.get("VarCharValue") for datum in row.get("Data", [])]


class Athena:
    """The service's Athena client; one per process, opened and closed by `main`."""

    def __init__(self, client: Any, single_attempt_client: Any, output_location: str) -> None:
        self._client = client
        self._single_attempt_client = single_attempt_client
        self._output_location = output_location

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, config: AthenaConfig, credentials: dict[str, str] | None = None
    ) -> AsyncIterator[Athena]:
        """Clients for `config`; credentials come from the standard AWS chain unless given."""
        session = get_session()
        async with contextlib.AsyncExitStack() as stack:
            client, single_attempt_client = [
                await stack.enter_async_context(
                    session.create_client(
                        "athena",
                        region_name=config.region,
                        endpoint_url=config.endpoint_url,
                        config=client_config,
                        **(credentials or {}),
                    )
                )
                for client_config in (CLIENT_CONFIG, SINGLE_ATTEMPT)
            ]
            yield cls(client, single_attempt_client, config.output_location)

    async def _call(
        self, operation: str, *, single_attempt: bool = False, **params: Any
    ) -> dict[str, Any]:
        started = time.monotonic()
        client = self._single_attempt_client if single_attempt else self._client
        try:
            response: dict[str, Any] = await getattr(client, operation)(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            failure = AthenaCallError(
                operation, error.get("Code", "Unknown"), error.get("Message", ""), status
            )
        except BotoCoreError as exc:
            failure = AthenaCallError(operation, type(exc).__name__, str(exc), None)
        else:
            return response
        logger.warning(
            "athena call failed",
            operation=operation,
            error_code=failure.code,
            error=failure.message,
            http_status=failure.status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            athena_query_execution_id=params.get("QueryExecutionId"),
        )
        raise failure

    async def start(self, sql: str, database: str, workgroup: str, token: str) -> str:
        """Start an execution, trying once; `token` makes a repeated start idempotent in AWS."""
        response = await self._call(
            "start_query_execution",
            single_attempt=True,
            QueryString=sql,
            ClientRequestToken=token,
            QueryExecutionContext={"Database": database},
            WorkGroup=workgroup,
            ResultConfiguration={"OutputLocation": self._output_location},
        )
        execution_id: str = response["QueryExecutionId"]
        return execution_id

    async def get(self, execution_id: str) -> Execution:
        response = await self._call("get_query_execution", QueryExecutionId=execution_id)
        return _execution(response["QueryExecution"])

    async def batch_get(self, execution_ids: Sequence[str]) -> tuple[list[Execution], list[str]]:
        """Up to 50 executions in one call; also returns the ids Athena did not process."""
        if not 1 <= len(execution_ids) <= BATCH_LIMIT:
            raise ValueError(f"batch of {len(execution_ids)} ids; Athena takes 1 to {BATCH_LIMIT}")
        response = await self._call(
            "batch_get_query_execution", single_attempt=True, QueryExecutionIds=list(execution_ids)
        )
        executions = [_execution(raw) for raw in response.get("QueryExecutions", [])]
        unprocessed = [
            item["QueryExecutionId"] for item in response.get("UnprocessedQueryExecutionIds", [])
        ]
        return executions, unprocessed

    async def stop(self, execution_id: str) -> None:
        await self._call("stop_query_execution", QueryExecutionId=execution_id)

    async def result_pages(self, execution_id: str) -> AsyncIterator[ResultPage]:
        """GetQueryResults pages of up to 1000 rows, header row removed."""
        token: str | None = None
        first = True
        while True:
            params: dict[str, Any] = {"QueryExecutionId": execution_id, "MaxResults": PAGE_ROWS}
            if token:
                params["NextToken"] = token
            response = await self._call("get_query_results", **params)
            result_set = response.get("ResultSet", {})
            rows = [_cells(row) for row in result_set.get("Rows", [])]
            columns = None
            if first:
                info = result_set.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                columns = [Column(name=c["Name"], type=c.get("Type", "varchar")) for c in info]
                # A SELECT's first row repeats the column names; DDL results have none.
                if rows and rows[0] == [c.get("Label", c["Name"]) for c in info]:
                    rows = rows[1:]
            yield ResultPage(columns=columns, rows=rows)
            first = False
            token = response.get("NextToken")
            if not token:
                return
