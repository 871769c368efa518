"""Every AWS call of the service: Athena and S3 through aiobotocore.

The same calls serve AWS and any Athena- or S3-compatible endpoint (`endpoint_url`).
Errors come out as `AthenaCallError` with Athena's error code, or as
`ResultObjectUnreadable` when a result object in S3 cannot be used, so callers never
import botocore.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.parsers import AioJSONParser, AioResponseParserFactory
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import create_loader
from botocore.utils import parse_timestamp
from loguru import logger

from athenaq import metrics
from athenaq.config import AthenaConfig, S3Config
from athenaq.resultset import Column, ResultPage

# botocore's default "legacy" mode does not retry TooManyRequestsException; standard does.
RETRYING = {"mode": "standard", "max_attempts": 4}
# Calls the poller repeats at its next tick anyway are tried once, so a throttled start
# or a status call to an endpoint out of reach never holds a tick or a lock for seconds.
SINGLE_ATTEMPT = {"mode": "standard", "total_max_attempts": 1}
# A result object that cannot be read is read through GetQueryResults, always available:
# S3 gets one retry (a transient error or a SlowDown), so an S3 that is down or out of
# reach delays the results by about a second, not by a full round of backoffs.
S3_ATTEMPTS = {"mode": "standard", "total_max_attempts": 2}
BATCH_LIMIT = 50
# Connections each client (Athena, Athena tried once, S3) keeps open at most.
POOL_CONNECTIONS = 50
PAGE_ROWS = 1000
# Bytes asked of the S3 body per read: large enough that the hop to a worker thread per
# chunk costs nothing next to storing it, small enough to bound the memory of one read.
S3_CHUNK_BYTES = 1024 * 1024
# Pauses (seconds) between the checks of a stop's confirmation: Athena confirms a stop
# within moments, and a client would rather hear "cancelled" than "cancel requested".
STOP_CONFIRM_DELAYS = (0.0, 0.05, 0.1, 0.2, 0.4)
THROTTLING_CODES = frozenset({"TooManyRequestsException", "ThrottlingException"})
# The operation label, among Athena's, of S3's GetObject (a result object's download).
S3_GET_OBJECT = "get_object"
# How AWS (and the local engine) answer an operation they do not have.
UNKNOWN_OPERATION_CODES = frozenset({"UnknownOperationException", "InvalidAction"})


def client_config(
    call_timeout: float, retries: dict[str, Any], user_agent: str, **extra: Any
) -> AioConfig:
    """A client's config: no attempt waits longer than `call_timeout` to connect or for
    the next bytes of an answer (the caller's deadline bounds the whole call).

    `user_agent` is given, made once: otherwise botocore assembles and sanitizes its
    user agent string from a dozen parts twice per call, a sixth of a call's CPU."""
    return AioConfig(
        retries=retries,
        connect_timeout=call_timeout,
        read_timeout=call_timeout,
        max_pool_connections=POOL_CONNECTIONS,
        user_agent=user_agent,
        **extra,
    )


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
    def outcome(self) -> str:
        """The call's outcome, as the metrics count it."""
        return _outcome(self.code, self.status)

    @property
    def is_client_error(self) -> bool:
        """Athena refused the request itself (bad SQL, unknown id): retrying cannot help."""
        return self.status == 400 and not self.is_throttling

    @property
    def lacks_operation(self) -> bool:
        """The endpoint says it does not have the operation at all."""
        return self.code in UNKNOWN_OPERATION_CODES or self.status == 501

    @property
    def is_unexplained(self) -> bool:
        """A 5xx whose body holds no Athena error: a proxy's error page, or an emulator's
        answer to an operation it lacks (moto's bare HTML 500)."""
        return self.status is not None and self.status >= 500 and self.code == str(self.status)


def _outcome(code: str, status: int | None) -> str:
    """The outcome of an AWS call that failed with error `code` and HTTP `status` (None:
    no answer came: the network, the deadline)."""
    if code in THROTTLING_CODES:
        return metrics.THROTTLED
    if status is None:
        return metrics.UNREACHABLE
    return metrics.CLIENT_ERROR if status < 500 else metrics.SERVER_ERROR


def _measured(operation: str, outcome: str, started: float) -> float:
    """Count a call of `operation` begun at `started` (time.monotonic()); its seconds."""
    seconds = time.monotonic() - started
    metrics.ATHENA_CALLS.labels(operation, outcome).observe(seconds)
    return seconds


class ResultObjectUnreadable(Exception):
    """A query's result object in S3 cannot be used (denied, missing, no S3 there,
    malformed, cut off): the caller reads the result through GetQueryResults instead."""

    def __init__(self, location: str, code: str, message: str) -> None:
        super().__init__(f"{location}: {code}: {message}")
        self.location = location
        self.code = code
        self.message = message


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
    # The result object's S3 URI, `<OutputLocation><QueryExecutionId>.csv` for a SELECT
    # (for a reused result: the earlier execution's object).
    output_location: str | None = None
    # Whether Athena answered with an earlier execution's result (result reuse); None
    # when it does not say.
    reused_previous_result: bool | None = None

    @property
    def started_at(self) -> datetime | None:
        """When Athena began to run the execution: its SubmissionDateTime plus its
        QueryQueueTimeInMillis, both of Athena's clock. None while it is QUEUED, when it
        ended in the queue (FAILED or CANCELLED with all its time spent queued: it never
        ran), or when Athena does not say."""
        if self.state == "QUEUED" or self.submitted_at is None or self.queue_ms is None:
            return None
        if (
            self.state in ("FAILED", "CANCELLED")
            and self.total_execution_ms is not None
            and self.queue_ms >= self.total_execution_ms
        ):
            return None
        return self.submitted_at + timedelta(milliseconds=self.queue_ms)

    @property
    def statistics(self) -> dict[str, Any]:
        """When it started and ended and what it cost, as the query's record keeps them
        (the start only when Athena says: otherwise the record keeps the one it has)."""
        statistics = {
            "completed_at": self.completed_at,
            "data_scanned_bytes": self.data_scanned_bytes,
            "engine_execution_ms": self.engine_execution_ms,
            "queue_ms": self.queue_ms,
            "total_execution_ms": self.total_execution_ms,
            "reused_previous_result": self.reused_previous_result,
        }
        if (started := self.started_at) is not None:
            statistics["started_at"] = started
        return statistics


class Brief(NamedTuple):
    """An execution's id and state, as a status answer gives them, the rest unread."""

    execution_id: str
    state: str


@dataclass(frozen=True)
class FirstPage:
    """A result's first GetQueryResults page: columns and rows, the columns' labels, and
    whether it is the whole result."""

    page: ResultPage
    labels: list[str]
    whole: bool

    @property
    def columns(self) -> list[Column]:
        return self.page.columns or []


def _timestamp(value: Any) -> datetime:
    """A timestamp of an answer. Athena's (JSON) are seconds since the epoch, which this
    reads at a fifth of the cost of botocore's parser and its dateutil time zones: a tick
    over thousands of queries parses two per query. Others (S3's) go to botocore's."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    parsed: datetime = parse_timestamp(value)
    return parsed


def _naive_utc(value: Any) -> datetime | None:
    """A timestamp of an execution as the store keeps it; the answers to status calls
    come as JSON decodes them (seconds since the epoch), see _StatusParser."""
    if value is None:
        return None
    when: datetime = value if isinstance(value, datetime) else _timestamp(value)
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


# The answers taken as JSON decodes them (see _StatusParser).
_UNWALKED_SHAPES = frozenset(
    {"BatchGetQueryExecutionOutput", "GetQueryExecutionOutput", "GetQueryResultsOutput"}
)


class _StatusParser(AioJSONParser):  # type: ignore[misc]
    """botocore's parser of JSON answers, but the answers to status calls and to
    GetQueryResults are taken as JSON decodes them, without botocore's walk of them
    against the service model: with thousands of queries in flight that walk was a third
    of the poller's CPU (50 executions per answer, each field converted one at a time),
    and it converts each cell of a page of rows. `_execution` reads the few fields it
    needs, its timestamps included; a page's fields are strings and numbers already.
    Errors are parsed as before."""

    def _handle_json_body(self, raw_body: bytes, shape: Any) -> Any:
        if shape is not None and shape.name in _UNWALKED_SHAPES:
            return self._parse_body_as_json(raw_body)
        return super()._handle_json_body(raw_body, shape)


class _ParserFactory(AioResponseParserFactory):  # type: ignore[misc]
    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name == "json":
            return _StatusParser(**self._defaults)
        return super().create_parser(protocol_name)


def _execution(raw: dict[str, Any]) -> Execution:
    status = raw.get("Status", {})
    stats = raw.get("Statistics", {})
    reason = status.get("StateChangeReason")
    athena_error = status.get("AthenaError", {}).get("ErrorMessage")
    if athena_error and athena_error != reason:
        reason = f"{reason}: {athena_error}" if reason else athena_error
    reused = stats.get("ResultReuseInformation", {}).get("ReusedPreviousResult")
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
        output_location=raw.get("ResultConfiguration", {}).get("OutputLocation"),
        reused_previous_result=reused if isinstance(reused, bool) else None,
    )


def _cells(row: dict[str, Any]) -> list[str | None]:
    # Athena sends NULL as an empty Datum ({}), and "" as {"VarCharValue": ""}.
    return [datum.get("VarCharValue") for datum in row.get("Data", [])]


@functools.cache
def _session() -> AioSession:
    """botocore's session, one per process, with one loader of service models: a new
    session registers botocore's handlers again (about 20 ms of CPU) and parses the Athena
    and S3 models and the endpoint tables again (about 50 ms per client), and none of it
    changes while the process runs (each client is given its own config)."""
    session = get_session()
    models = create_loader(session.get_config_variable("data_path"))
    session.register_component("data_loader", models)
    parsers = _ParserFactory()
    parsers.set_parser_defaults(timestamp_parser=_timestamp)
    session.register_component("response_parser_factory", parsers)
    return session


class Athena:
    """The service's Athena and S3 clients; one per process, opened and closed by `main`.

    Every call ends within `call_timeout` seconds, its retries included: a slow or
    blackholed endpoint fails it as a passing `AthenaCallError` instead of holding its
    caller (a tick, a start, a shutdown)."""

    def __init__(
        self,
        client: Any,
        single_attempt_client: Any,
        s3_client: Any,
        output_location: str,
        call_timeout: float,
    ) -> None:
        self._client = client
        self._single_attempt_client = single_attempt_client
        self._s3 = s3_client
        self._output_location = output_location
        self.call_timeout = call_timeout
        # False once the endpoint said it lacks BatchGetQueryExecution (moto, some
        # emulators): it will not grow one while this client lives.
        self.has_batch = True

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        config: AthenaConfig,
        s3_config: S3Config,
        credentials: dict[str, str] | None = None,
    ) -> AsyncIterator[Athena]:
        """Clients for `config`; credentials come from the standard AWS chain unless given.

        The S3 client (result objects) shares the region and credentials; against an
        S3-compatible endpoint it addresses buckets by path, as such endpoints expect."""
        session = _session()
        timeout = config.call_timeout_seconds
        user_agent = session.user_agent()
        if session.user_agent_extra:
            # botocore appends the session's extra to a given user agent itself.
            user_agent = user_agent.removesuffix(f" {session.user_agent_extra}")
        # Given a user agent, botocore no longer adds the app id an operator configured.
        app_id = session.get_config_variable("user_agent_appid")
        if app_id:
            user_agent += f" app/{app_id}"
        async with contextlib.AsyncExitStack() as stack:
            client, single_attempt_client = [
                await stack.enter_async_context(
                    session.create_client(
                        "athena",
                        region_name=config.region,
                        endpoint_url=config.endpoint_url,
                        config=client_config(timeout, retries, user_agent),
                        **(credentials or {}),
                    )
                )
                for retries in (RETRYING, SINGLE_ATTEMPT)
            ]
            s3_options: dict[str, Any] = {}
            if s3_config.endpoint_url is not None:
                s3_options["s3"] = {"addressing_style": "path"}
            s3_client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    region_name=config.region,
                    endpoint_url=s3_config.endpoint_url,
                    config=client_config(timeout, S3_ATTEMPTS, user_agent, **s3_options),
                    **(credentials or {}),
                )
            )
            yield cls(client, single_attempt_client, s3_client, config.output_location, timeout)

    async def _call(
        self,
        operation: str,
        *,
        single_attempt: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """One Athena call, ended after `call_timeout` seconds; a caller that must have
        the answer sooner puts its own deadline around it."""
        started = time.monotonic()
        client = self._single_attempt_client if single_attempt else self._client
        try:
            async with asyncio.timeout(self.call_timeout):
                response: dict[str, Any] = await getattr(client, operation)(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            failure = AthenaCallError(
                operation, error.get("Code", "Unknown"), error.get("Message", ""), status
            )
        except BotoCoreError as exc:
            failure = AthenaCallError(operation, type(exc).__name__, str(exc), None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The deadline, or the transport failing past botocore: a passing failure.
            message = str(exc) or f"no answer within {self.call_timeout:g} s"
            failure = AthenaCallError(operation, type(exc).__name__, message, None)
        except asyncio.CancelledError:
            _measured(operation, metrics.CANCELLED, started)  # the caller's deadline, a stop
            raise
        else:
            _measured(operation, metrics.OK, started)
            return response
        seconds = _measured(operation, failure.outcome, started)
        logger.warning(
            "athena call failed",
            operation=operation,
            error_code=failure.code,
            error=failure.message,
            http_status=failure.status,
            duration_ms=round(seconds * 1000, 1),
            athena_query_execution_id=params.get("QueryExecutionId"),
        )
        raise failure

    async def start(
        self,
        sql: str,
        database: str,
        workgroup: str,
        token: str,
        *,
        catalog: str | None = None,
        parameters: Sequence[str] | None = None,
        result_reuse_minutes: int | None = None,
    ) -> str:
        """Start an execution, trying once; `token` makes a repeated start idempotent in AWS.

        `parameters` are Athena's ExecutionParameters, bound to the SQL's `?` by Athena;
        `result_reuse_minutes` lets Athena answer with an identical execution's result no
        older than that."""
        context = {"Database": database}
        if catalog is not None:
            context["Catalog"] = catalog
        options: dict[str, Any] = {}
        if parameters:
            options["ExecutionParameters"] = list(parameters)
        if result_reuse_minutes is not None:
            options["ResultReuseConfiguration"] = {
                "ResultReuseByAgeConfiguration": {
                    "Enabled": True,
                    "MaxAgeInMinutes": result_reuse_minutes,
                }
            }
        response = await self._call(
            "start_query_execution",
            single_attempt=True,
            QueryString=sql,
            ClientRequestToken=token,
            QueryExecutionContext=context,
            WorkGroup=workgroup,
            ResultConfiguration={"OutputLocation": self._output_location},
            **options,
        )
        execution_id: str = response["QueryExecutionId"]
        return execution_id

    async def get(self, execution_id: str) -> Execution:
        """Athena's view of one execution, asked once: its callers ask again anyway."""
        response = await self._call(
            "get_query_execution", single_attempt=True, QueryExecutionId=execution_id
        )
        return _execution(response["QueryExecution"])

    async def settled(self, execution_id: str) -> Execution | None:
        """Athena's view of a just-stopped execution, asked a few times over a short while
        until it is no longer QUEUED or RUNNING; None when Athena never answered."""
        execution = None
        for delay in STOP_CONFIRM_DELAYS:
            await asyncio.sleep(delay)
            try:
                execution = await self.get(execution_id)
            except AthenaCallError:
                continue
            if execution.state not in ("QUEUED", "RUNNING"):
                break
        return execution

    async def batch_get(
        self, execution_ids: Sequence[str], whole: Callable[[str, str], bool] | None = None
    ) -> tuple[list[Execution | Brief], list[str]]:
        """Up to 50 executions in one call; also returns the ids Athena did not process.
        An endpoint that says it lacks the call is remembered (`has_batch`).

        With `whole`, an execution is read whole only where `whole(id, state)` says so,
        else as its Brief: a poller's tick compares the state of thousands, and reads the
        rest of the few that changed."""
        if not 1 <= len(execution_ids) <= BATCH_LIMIT:
            raise ValueError(f"batch of {len(execution_ids)} ids; Athena takes 1 to {BATCH_LIMIT}")
        try:
            response = await self._call(
                "batch_get_query_execution",
                single_attempt=True,
                QueryExecutionIds=list(execution_ids),
            )
        except AthenaCallError as exc:
            if exc.lacks_operation:
                self.batch_missing()
            raise
        executions: list[Execution | Brief] = []
        for raw in response.get("QueryExecutions", []):
            brief = Brief(raw["QueryExecutionId"], raw.get("Status", {}).get("State", "QUEUED"))
            executions.append(_execution(raw) if whole is None or whole(*brief) else brief)
        unprocessed = [
            item["QueryExecutionId"] for item in response.get("UnprocessedQueryExecutionIds", [])
        ]
        return executions, unprocessed

    def batch_missing(self) -> None:
        """Use GetQueryExecution per id from now on: the endpoint lacks the batch call."""
        if self.has_batch:
            logger.warning("the Athena endpoint lacks BatchGetQueryExecution; asking per id")
        self.has_batch = False

    async def stop(self, execution_id: str, *, single_attempt: bool = False) -> None:
        """Ask Athena to stop an execution; a stop repeated is harmless. The poller's
        repeats of a cancel's stop are tried once: it sends them again later anyway."""
        await self._call(
            "stop_query_execution", single_attempt=single_attempt, QueryExecutionId=execution_id
        )

    async def result_pages(self, execution_id: str) -> AsyncGenerator[ResultPage, None]:
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

    async def object_chunks(self, execution: Execution) -> AsyncGenerator[bytes, None]:
        """The bytes of the execution's CSV result object in S3, as they arrive.

        The next chunk is already being read while the caller handles one. Raises
        ResultObjectUnreadable when the object cannot be read, before the first chunk or
        after some: the caller then reads the result through GetQueryResults."""
        location = execution.output_location or ""
        bucket, key = _object_address(location)
        body = await self._get_object(location, bucket, key)
        async with body:
            reading = asyncio.ensure_future(_read(body, location))
            try:
                while chunk := await reading:
                    reading = asyncio.ensure_future(_read(body, location))
                    yield chunk
            finally:
                reading.cancel()
                # Wait for the read to end without taking on its outcome: a cancel of the
                # caller itself (a stopping service) still goes through.
                await asyncio.wait([reading])
                if not reading.cancelled():
                    reading.exception()  # retrieved: the read's own error is of no use now

    async def first_page(self, execution_id: str, rows: int) -> FirstPage:
        """The first GetQueryResults page of at most `rows` rows (Athena counts the
        header row among them): the result's columns (name, type) and labels, which the
        CSV object's header row lacks, and the rows, whole when the page is the last."""
        response = await self._call(
            "get_query_results", QueryExecutionId=execution_id, MaxResults=rows
        )
        result_set = response.get("ResultSet", {})
        info = result_set.get("ResultSetMetadata", {}).get("ColumnInfo", [])
        columns = [Column(name=c["Name"], type=c.get("Type", "varchar")) for c in info]
        labels = [c.get("Label", c["Name"]) for c in info]
        values = [_cells(row) for row in result_set.get("Rows", [])]
        # A SELECT's first row repeats the column names; DDL results have none.
        if values and values[0] == labels:
            values = values[1:]
        return FirstPage(
            ResultPage(columns=columns, rows=values), labels, not response.get("NextToken")
        )

    async def _get_object(self, location: str, bucket: str, key: str) -> Any:
        """The body of an S3 GetObject, to be read and closed by the caller (the call is
        counted until the body's headers came; its reads are the ingest's)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.call_timeout):
                response = await self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            _measured(S3_GET_OBJECT, _outcome(code, status), started)
            raise ResultObjectUnreadable(location, code, error.get("Message", "")) from exc
        except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
            _measured(S3_GET_OBJECT, metrics.UNREACHABLE, started)
            raise ResultObjectUnreadable(location, type(exc).__name__, str(exc)) from exc
        except asyncio.CancelledError:
            _measured(S3_GET_OBJECT, metrics.CANCELLED, started)
            raise
        _measured(S3_GET_OBJECT, metrics.OK, started)
        return response["Body"]


async def _read(body: Any, location: str) -> bytes:
    """The next S3_CHUNK_BYTES of the body (less at its end, empty after it). A read
    gives what the connection has buffered, ~128 KiB: gathering them keeps the cost of
    handling a chunk, paid per chunk, small next to its bytes."""
    parts: list[bytes] = []
    size = 0
    try:
        while size < S3_CHUNK_BYTES and (part := await body.read(S3_CHUNK_BYTES - size)):
            parts.append(part)
            size += len(part)
    except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
        raise ResultObjectUnreadable(location, type(exc).__name__, str(exc)) from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _object_address(location: str) -> tuple[str, str]:
    """Bucket and key of a CSV result object's `s3://bucket/key.csv` URI."""
    bucket, _, key = location.removeprefix("s3://").partition("/")
    if not location.startswith("s3://") or not bucket or not key.endswith(".csv"):
        # DDL results are `.txt` in Athena, in another form: only GetQueryResults reads them.
        raise ResultObjectUnreadable(location, "NotACsvResult", "no CSV result object")
    return bucket, key
