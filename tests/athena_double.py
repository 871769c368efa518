"""An Athena-compatible HTTP endpoint for tests: AWS JSON 1.1, scripted by the SQL text.

moto's Athena (5.2) lacks paging, FAILED, BatchGetQueryExecution, throttling,
idempotency and Athena's stop semantics, so this double speaks the wire protocol itself
and lets each query script its own life with a line comment, e.g.

    SELECT 1 -- double: {"queue_ms": 50, "run_ms": 200, "generate": 2500}

Keys: queue_ms, run_ms, hold (RUNNING until released or stopped), fail (reason),
columns + rows, generate (N rows), scanned_bytes, start_throttle (K throttled starts),
start_invalid (message), results_delay_ms (per GetQueryResults call), stop_ms (how
long a stop takes to be confirmed), s3 ("denied", "missing" or "malformed": how S3
GetObject answers for the result object), s3_stall_after (N bytes: S3 GetObject sends
the first N bytes of the result object, then holds the rest, and the end of the body,
until the test calls `AthenaDouble.release_s3(execution_id)`; from then on the object is
served whole; the double stopping lets a held object go too). A cell of `rows` may be
`{"repeat": "text", "times": N}`, for values too large to put in the SQL.

It also serves S3 GetObject in path style, `GET /<bucket>/<key>`, for the result object
`<OutputLocation><QueryExecutionId>.csv` of a SUCCEEDED query, in Athena's CSV form:
header first, every value double-quoted with `""` for a quote, NULL an empty unquoted
field.

Only tornado and the standard library are used, so it also runs as a standalone program
(``python tests/athena_double.py --port 8765``) for benchmarks and manual testing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import re
import signal
import threading
import time
import uuid
import xml.sax.saxutils
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

Json = dict[str, Any]
ACTIVE = frozenset({"QUEUED", "RUNNING"})
_DIRECTIVE = re.compile(r"--\s*double:(.*)$", re.MULTILINE)
_GENERATED = [["n", "integer"], ["label", "varchar"], ["maybe", "varchar"]]
# Precision Athena reports per type in ColumnInfo (0 for the rest).
_PRECISION = {
    "tinyint": 3,
    "smallint": 5,
    "integer": 10,
    "bigint": 19,
    "double": 17,
    "float": 17,
    "varchar": 2147483647,
    "string": 2147483647,
    "timestamp": 3,
}


class ApiError(Exception):
    """An AWS JSON 1.1 error reply: `__type` plus whatever extra fields the shape has."""

    def __init__(
        self, kind: str, message: str | None = None, status: int = 400, **extra: Any
    ) -> None:
        super().__init__(message or kind)
        self.status = status
        self.body: Json = {"__type": kind, **extra}
        if message is not None:
            self.body["Message"] = message


def invalid(message: str) -> ApiError:
    return ApiError("InvalidRequestException", message, AthenaErrorCode="INVALID_INPUT")


def _cell(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and "repeat" in value:
        return str(value["repeat"]) * int(value.get("times", 1))
    if isinstance(value, bool):  # Athena renders booleans lower-case
        return "true" if value else "false"
    return str(value)


@dataclass
class Execution:
    id: str
    sql: str
    script: Json
    database: str | None
    workgroup: str
    output: str | None
    submitted: float  # wall clock, for the timestamps clients see
    started: float  # monotonic, for the scripted timeline
    forced: str | None = None  # a state set by stop/release, overriding the timeline
    forced_at: float = 0.0
    forced_reason: str | None = None
    stop_calls: int = 0

    def _ms(self, key: str) -> float:
        return float(self.script.get(key, 0)) / 1000

    def timeline(self, now: float) -> tuple[str, float | None]:
        """The state at monotonic `now`, and when it became final (None while active)."""
        if self.forced is not None and now >= self.forced_at:
            return self.forced, self.forced_at
        queue, run = self._ms("queue_ms"), self._ms("run_ms")
        elapsed = now - self.started
        if elapsed < queue:
            return "QUEUED", None
        if self.script.get("hold") or elapsed < queue + run:
            return "RUNNING", None
        return ("FAILED" if "fail" in self.script else "SUCCEEDED"), self.started + queue + run

    def state(self, now: float) -> str:
        return self.timeline(now)[0]

    def finish(self, state: str, reason: str | None, now: float) -> None:
        self.forced, self.forced_at, self.forced_reason = state, now, reason

    def to_wire(self, now: float) -> Json:
        state, final_at = self.timeline(now)
        total = (final_at if final_at is not None else now) - self.started
        queued = min(total, self._ms("queue_ms"))
        status: Json = {"State": state, "SubmissionDateTime": self.submitted}
        reason = self.forced_reason if self.forced else self.script.get("fail")
        if final_at is not None and state != "SUCCEEDED" and reason is not None:
            status["StateChangeReason"] = str(reason)
        if state == "FAILED":
            status["AthenaError"] = {
                "ErrorCategory": 2,
                "ErrorType": 1001,
                "Retryable": False,
                "ErrorMessage": str(reason),
            }
        if final_at is not None:
            status["CompletionDateTime"] = self.submitted + total
        context: Json = {"Database": self.database} if self.database else {}
        out: Json = {"OutputLocation": f"{self.output}{self.id}.csv"} if self.output else {}
        return {
            "QueryExecutionId": self.id,
            "Query": self.sql,
            "StatementType": "DML",
            "ResultConfiguration": out,
            "QueryExecutionContext": context,
            "Status": status,
            "Statistics": {
                "EngineExecutionTimeInMillis": round((total - queued) * 1000),
                "DataScannedInBytes": int(self.script.get("scanned_bytes", 1024)),
                "TotalExecutionTimeInMillis": round(total * 1000),
                "QueryQueueTimeInMillis": round(queued * 1000),
            },
            "WorkGroup": self.workgroup,
        }

    # The result, header row excluded; generated rows are made on demand so that a
    # multi-million-row result costs no memory.
    def columns(self) -> list[list[str]]:
        if "generate" in self.script:
            return _GENERATED
        cols = self.script.get("columns", [["_col0", "integer"]])
        return [[str(name), str(kind)] for name, kind in cols]

    def row_count(self) -> int:
        if "generate" in self.script:
            return int(self.script["generate"])
        return len(self.script.get("rows", [["1"]]))

    def row(self, i: int) -> list[str | None]:
        if "generate" in self.script:
            return [str(i), f"row {i}", None if i % 3 == 0 else ("" if i % 3 == 1 else "x")]
        return [_cell(v) for v in self.script.get("rows", [["1"]])[i]]


def _encode_token(payload: Json) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def _decode_token(token: Any, expect: str) -> int:
    try:
        payload = json.loads(base64.urlsafe_b64decode(str(token).encode()))
        if payload["q"] == expect:
            return int(payload["o"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        pass
    raise invalid("Invalid NextToken")


def _ids_page(ids: list[str], body: Json, default: int, cap: int) -> tuple[list[str], int]:
    limit = body.get("MaxResults") or default
    if not 1 <= int(limit) <= cap:
        raise invalid(f"MaxResults must be between 1 and {cap}")
    offset = _decode_token(body["NextToken"], "list") if body.get("NextToken") else 0
    return ids[offset : offset + int(limit)], offset + int(limit)


class AthenaState:
    """All queries and counters; every public method holds the lock, so test threads
    and the double's event loop can both call them."""

    def __init__(self, *, batch: bool = True, max_running: int | None = None) -> None:
        self.batch, self.max_running = batch, max_running
        self._lock = threading.Lock()
        self._executions: dict[str, Execution] = {}  # insertion order = start order
        self._tokens: dict[str, str] = {}  # ClientRequestToken -> QueryExecutionId
        self._throttled: dict[str, int] = {}  # SQL text -> start_throttle answers given
        self._calls: dict[str, int] = {}
        self._s3_released: set[str] = set()  # executions whose s3_stall_after was released
        self._s3_held: dict[str, int] = {}  # GetObject replies now held at the stall

    def reset(self) -> None:
        with self._lock:
            for table in (self._executions, self._tokens, self._throttled, self._calls):
                table.clear()
            self._s3_released.clear()
            self._s3_held.clear()

    def count(self, operation: str) -> None:
        with self._lock:
            self._calls[operation] = self._calls.get(operation, 0) + 1

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def _get(self, execution_id: Any) -> Execution:
        found = self._executions.get(str(execution_id))
        if found is None:
            raise invalid(f"QueryExecution {execution_id} was not found")
        return found

    def execution(self, execution_id: str) -> Json:
        with self._lock:
            e = self._executions[execution_id]  # KeyError for unknown ids
            return {"state": e.state(time.monotonic()), "stop_calls": e.stop_calls, "sql": e.sql}

    def release(
        self, execution_id: str, state: str = "SUCCEEDED", reason: str | None = None
    ) -> str:
        if state not in ("SUCCEEDED", "FAILED"):
            raise ValueError(f"cannot release into {state}")
        with self._lock:
            e, now = self._executions[execution_id], time.monotonic()
            if e.state(now) in ACTIVE:  # a finished query stays as it was
                if state == "FAILED" and reason is None:
                    reason = "released as FAILED by the test"
                e.finish(state, reason, now)
            return e.state(now)

    def result_object(self, uri: str) -> tuple[Execution, str | None]:
        """The execution whose result object `uri` names, and its `s3` directive; S3's
        NoSuchKey (as an ApiError) when there is no such object (yet)."""
        name = uri.rpartition("/")[2]
        with self._lock:
            e = self._executions.get(name.removesuffix(".csv"))
            if (
                e is None
                or e.output is None
                or f"{e.output}{e.id}.csv" != uri
                or e.state(time.monotonic()) != "SUCCEEDED"
                or e.script.get("s3") == "missing"
            ):
                raise ApiError("NoSuchKey", "The specified key does not exist.", status=404)
            if e.script.get("s3") == "denied":
                raise ApiError("AccessDenied", "Access Denied", status=403)
            return e, e.script.get("s3")

    def s3_stall_after(self, execution_id: str) -> int | None:
        """Bytes of the result object GetObject sends before holding the rest; None when
        the object is served whole (no s3_stall_after, or released)."""
        with self._lock:
            e = self._executions.get(execution_id)
            if e is None or "s3_stall_after" not in e.script or execution_id in self._s3_released:
                return None
            return int(e.script["s3_stall_after"])

    def release_s3(self, execution_id: str) -> None:
        with self._lock:
            if execution_id not in self._executions:
                raise KeyError(execution_id)
            self._s3_released.add(execution_id)

    def s3_hold(self, execution_id: str, change: int) -> None:
        with self._lock:
            self._s3_held[execution_id] = self._s3_held.get(execution_id, 0) + change

    def s3_held(self, execution_id: str) -> int:
        with self._lock:
            return self._s3_held.get(execution_id, 0)

    def results_delay(self, body: Json) -> float:
        with self._lock:
            e = self._executions.get(str(body.get("QueryExecutionId")))
            return float(e.script.get("results_delay_ms", 0)) / 1000 if e else 0.0

    def dispatch(self, operation: str, body: Json) -> Json:
        handler = _OPERATIONS.get(operation)
        if handler is None:
            raise ApiError("UnknownOperationException")
        if operation == "BatchGetQueryExecution" and not self.batch:
            raise ApiError(
                "InternalServerException",
                "BatchGetQueryExecution is not available on this endpoint",
                status=500,
            )
        with self._lock:
            return handler(self, body, time.monotonic())

    # Operations, called with the lock held.
    def start_query_execution(self, body: Json, now: float) -> Json:
        sql = body.get("QueryString")
        if not isinstance(sql, str) or not 1 <= len(sql) <= 262144:
            raise invalid("QueryString must be 1 to 262144 characters")
        token = body.get("ClientRequestToken")
        if token is not None and str(token) in self._tokens:
            earlier = self._executions.get(self._tokens[str(token)])
            if earlier is not None and earlier.sql != sql:
                raise invalid("Idempotent parameters do not match")
            return {"QueryExecutionId": self._tokens[str(token)]}
        match = _DIRECTIVE.search(sql)
        try:
            script = json.loads(match.group(1)) if match else {}
        except ValueError as exc:
            raise invalid(f"bad double directive: {exc}") from None
        if not isinstance(script, dict):
            raise invalid("the double directive must be a JSON object")
        if "start_invalid" in script:
            raise invalid(str(script["start_invalid"]))
        if self._throttled.get(sql, 0) < int(script.get("start_throttle", 0)):
            self._throttled[sql] = self._throttled.get(sql, 0) + 1
            raise _throttle()
        active = sum(e.state(now) in ACTIVE for e in self._executions.values())
        if self.max_running is not None and active >= self.max_running:
            raise _throttle()
        context = body.get("QueryExecutionContext") or {}
        e = Execution(
            id=str(uuid.uuid4()),
            sql=sql,
            script=script,
            database=context.get("Database"),
            workgroup=body.get("WorkGroup") or "primary",
            output=(body.get("ResultConfiguration") or {}).get("OutputLocation"),
            submitted=time.time(),
            started=now,
        )
        self._executions[e.id] = e
        if token is not None:
            self._tokens[str(token)] = e.id
        return {"QueryExecutionId": e.id}

    def get_query_execution(self, body: Json, now: float) -> Json:
        return {"QueryExecution": self._get(body.get("QueryExecutionId")).to_wire(now)}

    def batch_get_query_execution(self, body: Json, now: float) -> Json:
        ids = body.get("QueryExecutionIds")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 50:
            raise invalid("QueryExecutionIds must hold 1 to 50 ids")
        found = [self._executions[i].to_wire(now) for i in ids if i in self._executions]
        missing = [
            {
                "QueryExecutionId": i,
                "ErrorCode": "INVALID_INPUT",
                "ErrorMessage": f"QueryExecution {i} was not found",
            }
            for i in ids
            if i not in self._executions
        ]
        return {"QueryExecutions": found, "UnprocessedQueryExecutionIds": missing}

    def stop_query_execution(self, body: Json, now: float) -> Json:
        e = self._get(body.get("QueryExecutionId"))
        e.stop_calls += 1
        if e.state(now) in ACTIVE:  # real Athena leaves a finished query alone
            # stop_ms: Athena takes that long to confirm the stop, as it may in AWS.
            e.finish("CANCELLED", "Query cancelled by user", now + e._ms("stop_ms"))
        return {}

    def get_query_results(self, body: Json, now: float) -> Json:
        e = self._get(body.get("QueryExecutionId"))
        state = e.state(now)
        if state in ACTIVE:
            raise invalid(f"Query has not yet finished. Current state: {state}")
        if state != "SUCCEEDED":
            raise invalid(f"Query did not finish successfully. Final query state: {state}")
        limit = int(body.get("MaxResults") or 1000)
        if not 1 <= limit <= 1000:
            raise invalid("MaxResults must be between 1 and 1000")
        # Row 0 is the header, so the data row i is row i + 1 of the whole result.
        start = _decode_token(body["NextToken"], e.id) if body.get("NextToken") else 0
        end = min(start + limit, e.row_count() + 1)
        cols = e.columns()
        rows = [[name for name, _ in cols] if i == 0 else e.row(i - 1) for i in range(start, end)]
        info = [
            {
                "CatalogName": "hive",
                "SchemaName": "",
                "TableName": "",
                "Name": name,
                "Label": name,
                "Type": kind,
                "Precision": _PRECISION.get(kind, 0),
                "Scale": 0,
                "Nullable": "UNKNOWN",
                "CaseSensitive": kind in ("varchar", "char", "string"),
            }
            for name, kind in cols
        ]
        out: Json = {
            "UpdateCount": 0,
            "ResultSet": {
                "Rows": [
                    {"Data": [{} if v is None else {"VarCharValue": v} for v in row]}
                    for row in rows
                ],
                "ResultSetMetadata": {"ColumnInfo": info},
            },
        }
        if end < e.row_count() + 1:
            out["NextToken"] = _encode_token({"q": e.id, "o": end})
        return out

    def list_query_executions(self, body: Json, now: float) -> Json:
        # Newest first, as Athena lists; without WorkGroup, Athena lists "primary".
        group = body.get("WorkGroup") or "primary"
        ids = [e.id for e in reversed(self._executions.values()) if e.workgroup == group]
        page, end = _ids_page(ids, body, 50, 50)
        out: Json = {"QueryExecutionIds": page}
        if end < len(ids):
            out["NextToken"] = _encode_token({"q": "list", "o": end})
        return out


def _csv_line(values: list[str | None]) -> str:
    """One row of Athena's CSV form (athenaq's own writer is not used: the double is
    independent of the code it tests)."""
    return ",".join("" if v is None else '"' + v.replace('"', '""') + '"' for v in values) + "\n"


def _throttle() -> ApiError:
    return ApiError(
        "TooManyRequestsException",
        "Too many concurrent queries",
        Reason="CONCURRENT_QUERY_LIMIT_EXCEEDED",
    )


_OPERATIONS: dict[str, Callable[[AthenaState, Json, float], Json]] = {
    "StartQueryExecution": AthenaState.start_query_execution,
    "GetQueryExecution": AthenaState.get_query_execution,
    "BatchGetQueryExecution": AthenaState.batch_get_query_execution,
    "StopQueryExecution": AthenaState.stop_query_execution,
    "GetQueryResults": AthenaState.get_query_results,
    "ListQueryExecutions": AthenaState.list_query_executions,
}


class _Handler(tornado.web.RequestHandler):
    def initialize(self, double: AthenaDouble) -> None:
        self.double = double

    def reply(self, status: int, body: Json, content_type: str = "application/json") -> None:
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(json.dumps(body))


def _parse(raw: bytes) -> Json | None:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class _AthenaHandler(_Handler):
    """POST / with X-Amz-Target: AmazonAthena.<Operation>; signatures are ignored."""

    async def post(self) -> None:
        prefix, _, operation = self.request.headers.get("X-Amz-Target", "").partition(".")
        state = self.double.state
        state.count(operation or "(no X-Amz-Target)")
        self.set_header("x-amzn-RequestId", str(uuid.uuid4()))
        body = _parse(self.request.body)
        if self.double.delay_ms:  # only the Athena API is slowed, never the control API
            await asyncio.sleep(self.double.delay_ms / 1000)
        try:
            if prefix != "AmazonAthena":
                raise ApiError("UnknownOperationException")
            if body is None:
                raise ApiError("SerializationException", "body must be a JSON object")
            if operation == "GetQueryResults" and (pause := state.results_delay(body)):
                await asyncio.sleep(pause)
            status, reply = 200, state.dispatch(operation, body)
        except ApiError as exc:
            status, reply = exc.status, exc.body
        self.reply(status, reply, "application/x-amz-json-1.1")


class _ObjectHandler(_Handler):
    """S3 GetObject, path style: GET /<bucket>/<key> of a query's result object."""

    # Rows of the object sent per write, so a generated result is never whole in memory.
    ROWS_PER_WRITE = 1000

    _execution_id = ""
    _stall_at: int | None = None  # bytes to send before holding the rest (s3_stall_after)
    _sent = 0

    async def get(self, bucket: str, key: str) -> None:
        self.double.state.count("GetObject")
        self.set_header("x-amz-request-id", uuid.uuid4().hex)
        try:
            e, mode = self.double.state.result_object(f"s3://{bucket}/{key}")
        except ApiError as exc:
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/xml")
            code, message = exc.body["__type"], xml.sax.saxutils.escape(str(exc))
            self.finish(
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Key>{xml.sax.saxutils.escape(key)}</Key></Error>"
            )
            return
        self.set_header("Content-Type", "text/csv")
        self._execution_id = e.id
        self._stall_at = self.double.state.s3_stall_after(e.id)
        lines = [_csv_line([name for name, _ in e.columns()])]
        count = e.row_count()
        # The client may go away while the object is held (a test killed it).
        with contextlib.suppress(tornado.iostream.StreamClosedError):
            for i in range(count):
                lines.append(_csv_line(e.row(i)))
                if len(lines) >= self.ROWS_PER_WRITE and i < count - 1:
                    await self._send("".join(lines).encode())
                    lines = []
            text = "".join(lines)
            if mode == "malformed":
                # Cut inside the last row (or the header): what an interrupted upload leaves.
                text = text[:-2]
            if self._stall_at is None:
                self.finish(text.encode())
                return
            await self._send(text.encode())
            if self._stall_at is not None:  # N at or past the end: the end of the body waits
                await self._hold()
            self.finish()

    async def _send(self, data: bytes) -> None:
        """Write and flush `data`, holding at the stall point if the object has one."""
        if self._stall_at is not None and self._sent + len(data) > self._stall_at:
            cut = self._stall_at - self._sent
            self.write(data[:cut])
            await self.flush()
            self._sent += cut
            data = data[cut:]
            await self._hold()
        self.write(data)
        await self.flush()
        self._sent += len(data)

    async def _hold(self) -> None:
        self._stall_at = None
        state = self.double.state
        state.s3_hold(self._execution_id, 1)
        try:
            await self.double.s3_released(self._execution_id)
        finally:
            state.s3_hold(self._execution_id, -1)


class _ReleaseHandler(_Handler):
    def post(self) -> None:
        body = _parse(self.request.body) or {}
        try:
            final = self.double.release(
                str(body.get("id")), body.get("state", "SUCCEEDED"), body.get("reason")
            )
            self.reply(200, {"state": final})
        except KeyError:
            self.reply(404, {"error": f"unknown execution {body.get('id')}"})
        except ValueError as exc:
            self.reply(400, {"error": str(exc)})


class _CallsHandler(_Handler):
    def get(self) -> None:
        self.reply(200, self.double.calls())


class _ExecutionHandler(_Handler):
    def get(self, execution_id: str) -> None:
        try:
            self.reply(200, self.double.execution(execution_id))
        except KeyError:
            self.reply(404, {"error": f"unknown execution {execution_id}"})


class _ResetHandler(_Handler):
    def post(self) -> None:
        self.double.state.reset()
        self.reply(200, {})


class AthenaDouble:
    """The endpoint; `start()` serves it on its own thread and event loop."""

    def __init__(
        self, *, batch: bool = True, delay_ms: int = 0, max_running: int | None = None
    ) -> None:
        self.delay_ms = delay_ms
        self.state = AthenaState(batch=batch, max_running=max_running)
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        # Result objects held at their s3_stall_after point; used on the double's loop only.
        self._s3_gates: dict[str, asyncio.Event] = {}
        self._stopping = False

    # The control API, callable from any thread.
    def release(
        self, execution_id: str, state: str = "SUCCEEDED", reason: str | None = None
    ) -> str:
        return self.state.release(execution_id, state, reason)

    def release_s3(self, execution_id: str) -> None:
        """Let the execution's result object, held by s3_stall_after, go on: a held
        GetObject sends the rest, and later ones send it whole. KeyError for unknown ids."""
        self.state.release_s3(execution_id)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing is held
                loop.call_soon_threadsafe(self._open_s3_gate, execution_id)

    def s3_held(self, execution_id: str) -> int:
        """How many GetObject replies for the execution's object are held at its stall
        point right now (they sent the first s3_stall_after bytes)."""
        return self.state.s3_held(execution_id)

    def calls(self) -> dict[str, int]:
        return self.state.calls()

    def execution(self, execution_id: str) -> Json:
        return self.state.execution(execution_id)

    def reset(self) -> None:
        self.state.reset()

    async def s3_released(self, execution_id: str) -> None:
        """On the double's loop: return once the execution's object is released (or the
        double stops)."""
        # The check and the gate's creation happen in one step of the loop, and
        # release_s3 opens the gate on the loop after marking the release: none is missed.
        if self._stopping or self.state.s3_stall_after(execution_id) is None:
            return
        await self._s3_gates.setdefault(execution_id, asyncio.Event()).wait()

    def _open_s3_gate(self, execution_id: str) -> None:
        gate = self._s3_gates.pop(execution_id, None)
        if gate is not None:
            gate.set()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the Athena double is not serving")
        return f"http://127.0.0.1:{self._port}"

    def make_app(self) -> tornado.web.Application:
        args = {"double": self}
        return tornado.web.Application(
            [
                (r"/", _AthenaHandler, args),
                (r"/_double/release", _ReleaseHandler, args),
                (r"/_double/calls", _CallsHandler, args),
                (r"/_double/executions/([^/]+)", _ExecutionHandler, args),
                (r"/_double/reset", _ResetHandler, args),
                (r"/([^/]+)/(.+)", _ObjectHandler, args),
            ]
        )

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        on_ready: Callable[[str], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serve on the running loop until `stop` (or `self.stop()`) fires."""
        self._loop, self._stop_event = asyncio.get_running_loop(), stop or asyncio.Event()
        self._stopping = False
        sockets = tornado.netutil.bind_sockets(port, host)
        server = tornado.httpserver.HTTPServer(self.make_app())
        server.add_sockets(sockets)
        self._port = sockets[0].getsockname()[1]
        try:
            if on_ready is not None:
                on_ready(f"http://{host}:{self._port}")
            await self._stop_event.wait()
        finally:
            server.stop()
            self._stopping = True  # held result objects go on, so their handlers end
            for gate in self._s3_gates.values():
                gate.set()
            self._s3_gates.clear()
            # A handler sleeping out a delay keeps its connection; do not wait forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.close_all_connections(), 2)

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("the Athena double is already running")
        ready = threading.Event()

        def run() -> None:
            try:
                asyncio.run(self.serve(on_ready=lambda _url: ready.set()))
            except BaseException as exc:  # reported to start() instead of lost
                self._error = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="athena-double", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error is not None or self._port is None:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError(f"the Athena double did not start: {self._error!r}")
        return self.url

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(10)
        self._thread, self._loop, self._stop_event, self._port = None, None, None, None

    def __enter__(self) -> AthenaDouble:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def _main(args: argparse.Namespace) -> None:
    double = AthenaDouble(batch=args.batch, delay_ms=args.delay_ms, max_running=args.max_running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await double.serve(
        args.host,
        args.port,
        stop=stop,
        on_ready=lambda url: print(f"listening on {url}", flush=True),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Athena-compatible test endpoint")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--no-batch",
        dest="batch",
        action="store_false",
        help="answer BatchGetQueryExecution with HTTP 500",
    )
    parser.add_argument("--delay-ms", type=int, default=0, help="delay every Athena reply")
    parser.add_argument(
        "--max-running",
        type=int,
        default=None,
        help="throttle StartQueryExecution at this many active queries",
    )
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
