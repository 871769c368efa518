"""The project's scripted Athena endpoint for tests: an engine behind the local engine's
wire layer (`athenaq.local`), whose queries follow a script in their SQL text.

moto's Athena (5.2) lacks paging, FAILED, BatchGetQueryExecution, throttling,
idempotency and Athena's stop semantics, and DuckDB cannot be told how long to take or
how to fail, so each query scripts its own life with a line comment, e.g.

    SELECT 1 -- double: {"queue_ms": 50, "run_ms": 200, "generate": 2500}

Keys: queue_ms, run_ms, hold (RUNNING until released or stopped), fail (reason),
columns + rows, generate (N rows), scanned_bytes, start_throttle (K throttled starts),
start_invalid (message), results_delay_ms (per GetQueryResults call), stop_ms (how
long a stop takes to be confirmed), stop_throttle (K: the first K StopQueryExecution
calls are answered TooManyRequestsException), s3 ("denied", "missing" or "malformed": how S3
GetObject answers for the result object), s3_stall_after (N bytes: S3 GetObject sends
the first N bytes of the result object, then holds the rest, and the end of the body,
until the test calls `AthenaDouble.release_s3(execution_id)`; from then on the object is
served whole; the double stopping lets a held object go too), start_stall_ms (the
StartQueryExecution answer that made the execution is held that long after the
execution exists: what a process killed, or a network cut, between the start reaching
Athena and its answer looks like; a repeated token is answered at once). A cell of `rows` may be
`{"repeat": "text", "times": N}`, for values too large to put in the SQL, or
`{"parameter": N}`: the value of the N-th ExecutionParameter (from 1), read as the SQL
literal it is (`'it''s'` gives `it's`, `NULL` a NULL), as a query that selects the
placeholder would return it.

Beyond its script, a query is checked as Athena checks it: its ExecutionParameters must
be as many as the SQL's `?` placeholders, and literals, and its catalog one the double
knows (`catalogs`, AwsDataCatalog by default), or it FAILS with Athena's kind of reason
(after its script's queue_ms and run_ms). With ResultReuseConfiguration, a repeat of a
SUCCEEDED query (the same SQL, parameters, database, catalog, workgroup and result
folder, at most MaxAgeInMinutes old) SUCCEEDS at once with ReusedPreviousResult, that
query's result object and nothing scanned.

The result object `<OutputLocation><QueryExecutionId>.csv` of a SUCCEEDED query is in
Athena's CSV form: header first, every value double-quoted with `""` for a quote, NULL
an empty unquoted field. It also runs as a program (``python tests/athena_double.py
--port 8765``) for CI, benchmarks and manual testing; there SIGUSR1 ends every active
query SUCCEEDED at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from athenaq.local.api import ApiError
from athenaq.local.base import (
    ACTIVE,
    DEFAULT_CATALOG,
    STOPPED_BY_USER,
    AccessDenied,
    Engine,
    Execution,
    Failure,
    InvalidRequest,
    NoSuchKey,
    QueryNotFound,
    ResultObject,
    ResultPage,
    State,
    TooManyQueries,
    check_succeeded,
    page_of_ids,
    result_location,
    reuse_key,
    unknown_catalog,
)
from athenaq.local.parameters import ParameterError, values
from athenaq.local.server import Endpoint
from athenaq.local.values import Column, athena_column, text
from athenaq.logs import setup_logging

Json = dict[str, Any]
DEFAULT_OUTPUT = "s3://athenaq-double/results/"
ROWS_PER_CHUNK = 1000  # of a result object, so a generated one is never whole in memory
_DIRECTIVE = re.compile(r"--\s*double:(.*)$", re.MULTILINE)
_GENERATED = (("n", "integer"), ("label", "varchar"), ("maybe", "varchar"))


def _cell(value: Any, bound: list[Any]) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and "repeat" in value:
        return str(value["repeat"]) * int(value.get("times", 1))
    if isinstance(value, dict) and "parameter" in value:
        parameter = bound[int(value["parameter"]) - 1]
        return None if parameter is None else text(parameter)
    if isinstance(value, bool):  # Athena renders booleans lower-case
        return "true" if value else "false"
    return str(value)


def _csv_line(values: list[str | None]) -> str:
    """One row of Athena's CSV form (athenaq's own writer is not used: the double is
    independent of the code it tests)."""
    return ",".join("" if v is None else '"' + v.replace('"', '""') + '"' for v in values) + "\n"


@dataclass
class _Scripted:
    """One query: its state follows the script's timeline from `started` on."""

    id: str
    seq: int
    sql: str
    script: Json
    database: str | None
    catalog: str | None
    workgroup: str
    bucket: str  # of the result object
    key: str
    token: str | None  # the ClientRequestToken that made it
    submitted: float  # wall clock, for the timestamps clients see
    started: float  # monotonic, for the scripted timeline
    forced: State | None = None  # a state set by stop/release, overriding the timeline
    forced_at: float = 0.0
    forced_reason: str | None = None
    stop_calls: int = 0
    # GetQueryExecution answers given for it, alone or in a batch.
    status_reads: int = 0
    parameters: tuple[str, ...] | None = None
    bound: list[Any] = field(default_factory=list)  # the parameters' values
    reuse_minutes: int | None = None
    # The request a repeated ClientRequestToken must repeat, and what an execution that
    # reuses this one's result must share.
    request: tuple[Any, ...] = ()
    reuse_key: tuple[Any, ...] | None = None
    reused: bool = False

    def seconds(self, key: str) -> float:
        return float(self.script.get(key, 0)) / 1000

    def timeline(self, now: float) -> tuple[State, float | None]:
        """The state at monotonic `now`, and when it became final (None while active)."""
        if self.forced is not None and now >= self.forced_at:
            return self.forced, self.forced_at
        queue, run = self.seconds("queue_ms"), self.seconds("run_ms")
        elapsed = now - self.started
        if elapsed < queue:
            return State.QUEUED, None
        if self.script.get("hold") or elapsed < queue + run:
            return State.RUNNING, None
        final = State.FAILED if "fail" in self.script else State.SUCCEEDED
        return final, self.started + queue + run

    def state(self, now: float) -> State:
        return self.timeline(now)[0]

    def finish(self, state: State, reason: str | None, at: float) -> None:
        self.forced, self.forced_at, self.forced_reason = state, at, reason

    def snapshot(self, now: float) -> Execution:
        state, final_at = self.timeline(now)
        total = (final_at if final_at is not None else now) - self.started
        # Whole milliseconds that add up, as the local engine gives them: the queue and
        # the run make the total, and the completion is the submission plus the total.
        queue_ms = round(min(total, self.seconds("queue_ms")) * 1000)
        total_ms = round(total * 1000)
        reason = self.forced_reason if self.forced else self.script.get("fail")
        if final_at is None or state is State.SUCCEEDED or reason is None:
            reason = None
        return Execution(
            id=self.id,
            sql=self.sql,
            statement_type="DML",
            database=self.database,
            catalog=self.catalog,
            workgroup=self.workgroup,
            output_location=f"s3://{self.bucket}/{self.key}",
            state=state,
            reason=None if reason is None else str(reason),
            failure=Failure(2, 1001, str(reason)) if state is State.FAILED else None,
            submitted_at=self.submitted,
            completed_at=None if final_at is None else self.submitted + total_ms / 1000,
            queue_ms=queue_ms,
            engine_ms=total_ms - queue_ms,
            total_ms=total_ms,
            scanned_bytes=0 if self.reused else int(self.script.get("scanned_bytes", 1024)),
            parameters=self.parameters,
            reuse_minutes=self.reuse_minutes,
            reused=self.reused,
        )

    # The result, header row excluded; generated rows are made on demand so that a
    # multi-million-row result costs no memory.
    def columns(self) -> tuple[Column, ...]:
        named = self.script.get("columns", [["_col0", "integer"]])
        if "generate" in self.script:
            named = _GENERATED
        return tuple(athena_column(str(name), str(kind)) for name, kind in named)

    def row_count(self) -> int:
        if "generate" in self.script:
            return int(self.script["generate"])
        return len(self.script.get("rows", [["1"]]))

    def row(self, i: int) -> list[str | None]:
        if "generate" in self.script:
            return [str(i), f"row {i}", None if i % 3 == 0 else ("" if i % 3 == 1 else "x")]
        return [_cell(v, self.bound) for v in self.script.get("rows", [["1"]])[i]]

    def csv(self, malformed: bool) -> Iterator[bytes]:
        lines = [_csv_line([c.name for c in self.columns()])]
        count = self.row_count()
        for i in range(count):
            lines.append(_csv_line(self.row(i)))
            if len(lines) >= ROWS_PER_CHUNK and i < count - 1:
                yield "".join(lines).encode()
                lines = []
        text = "".join(lines)
        # Cut inside the last row (or the header): what an interrupted upload leaves.
        yield (text[:-2] if malformed else text).encode()


class _ScriptedObject(ResultObject):
    """A result object made as it is sent; held part way when its script says so."""

    def __init__(self, engine: ScriptedEngine, query: _Scripted, stall_at: int | None) -> None:
        super().__init__(None, query.submitted, f'"{query.id}"')
        self._engine, self._query, self._stall_at = engine, query, stall_at

    async def chunks(self, first: int) -> AsyncIterator[bytes]:
        sent, stall_at = 0, self._stall_at
        for data in self._query.csv(self._query.script.get("s3") == "malformed"):
            if stall_at is not None and sent + len(data) > stall_at:
                yield data[: stall_at - sent]
                data, sent, stall_at = data[stall_at - sent :], stall_at, None
                await self._engine.s3_hold(self._query.id)
            yield data
            sent += len(data)
        if stall_at is not None:  # N at or past the end: the end of the body waits
            await self._engine.s3_hold(self._query.id)


class ScriptedEngine(Engine):
    """Queries that follow their scripts. Every method holds the lock, so test threads
    and the endpoint's event loop can both call them."""

    def __init__(
        self,
        *,
        batch: bool = True,
        delay_ms: int = 0,
        max_running: int | None = None,
        catalogs: Iterable[str] = ("AwsDataCatalog",),
    ) -> None:
        self.batch, self.delay_ms, self.max_running = batch, delay_ms, max_running
        self.catalogs = frozenset(name.lower() for name in catalogs)
        self._lock = threading.Lock()
        self._executions: dict[str, _Scripted] = {}  # insertion order = start order
        self._tokens: dict[str, str] = {}  # ClientRequestToken -> QueryExecutionId
        self._stalling: set[str] = set()  # executions whose start answer start_stall_ms holds
        self._throttled: dict[str, int] = {}  # SQL text -> start_throttle answers given
        self._calls: dict[str, int] = {}
        # With max_running: the most executions queued or running at once, and the starts
        # refused for want of room.
        self._peak = self._refused = 0
        self._s3_released: set[str] = set()  # executions whose s3_stall_after was released
        self._s3_held: dict[str, int] = {}  # GetObject replies now held at the stall
        # Held objects wait on these, on the endpoint's loop; release_s3 opens them.
        self._s3_gates: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # The test's side.
    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def peak_active(self) -> int:
        """With max_running: the most executions queued or running at once so far."""
        with self._lock:
            return self._peak

    def refused_starts(self) -> int:
        """With max_running: the starts refused (TooManyRequestsException) for want of room."""
        with self._lock:
            return self._refused

    def execution(self, execution_id: str) -> Json:
        with self._lock:
            e = self._executions[execution_id]  # KeyError for unknown ids
            return {
                "state": e.state(time.monotonic()).value,
                "stop_calls": e.stop_calls,
                "status_reads": e.status_reads,
                "sql": e.sql,
                "parameters": e.parameters,
                "catalog": e.catalog,
                "reused": e.reused,
            }

    def executions(self) -> dict[str, str | None]:
        """Every execution's id and the ClientRequestToken that made it, in start order."""
        with self._lock:
            return {e.id: e.token for e in self._executions.values()}

    def release(
        self, execution_id: str, state: str = "SUCCEEDED", reason: str | None = None
    ) -> str:
        """End an active query as `state` (SUCCEEDED or FAILED); returns its state."""
        if state not in ("SUCCEEDED", "FAILED"):
            raise ValueError(f"cannot release into {state}")
        with self._lock:
            e, now = self._executions[execution_id], time.monotonic()
            if e.state(now) in ACTIVE:  # a finished query stays as it was
                if state == "FAILED" and reason is None:
                    reason = "released as FAILED by the test"
                e.finish(State(state), reason, now)
            return e.state(now).value

    def release_all(self) -> int:
        """End every active query SUCCEEDED at once; returns how many."""
        with self._lock:
            now = time.monotonic()
            active = [e for e in self._executions.values() if e.state(now) in ACTIVE]
            for e in active:
                e.finish(State.SUCCEEDED, None, now)
            return len(active)

    def release_s3(self, execution_id: str) -> None:
        """Let the execution's result object, held by s3_stall_after, go on: a held
        GetObject sends the rest, and later ones send it whole. KeyError for unknown ids."""
        with self._lock:
            if execution_id not in self._executions:
                raise KeyError(execution_id)
            self._s3_released.add(execution_id)
            gate, loop = self._s3_gates.pop(execution_id, None), self._loop
        if gate is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing is held
                loop.call_soon_threadsafe(gate.set)

    def s3_held(self, execution_id: str) -> int:
        """How many GetObject replies for the execution's object are held at its stall
        point right now (they sent the first s3_stall_after bytes)."""
        with self._lock:
            return self._s3_held.get(execution_id, 0)

    def reset(self) -> None:
        with self._lock:
            for table in (self._executions, self._tokens, self._throttled, self._calls):
                table.clear()
            self._stalling.clear()
            self._s3_released.clear()
            self._peak = self._refused = 0
            self._s3_held.clear()

    # The wire layer's side.
    async def admit(self, operation: str, query_id: str | None) -> None:
        with self._lock:
            self._calls[operation] = self._calls.get(operation, 0) + 1
            found = self._executions.get(query_id or "")
        # Only the Athena API is slowed, never S3.
        pause = 0.0 if operation in ("GetObject", "HeadObject") else self.delay_ms / 1000
        if operation == "GetQueryResults" and found is not None:
            pause += found.seconds("results_delay_ms")
        if pause:
            await asyncio.sleep(pause)
        if operation == "BatchGetQueryExecution" and not self.batch:
            # As AWS and the local engine answer an operation they do not have.
            raise ApiError("UnknownOperationException", f"{operation} is not served here")

    def submit(
        self,
        sql: str,
        *,
        database: str | None = None,
        catalog: str | None = None,
        workgroup: str = "primary",
        output_location: str | None = None,
        token: str | None = None,
        parameters: Sequence[str] | None = None,
        reuse_minutes: int | None = None,
    ) -> str:
        parameters = None if parameters is None else tuple(parameters)
        request = (sql, parameters, database, catalog, workgroup, reuse_minutes)
        with self._lock:
            if token is not None and token in self._tokens:
                earlier = self._executions[self._tokens[token]]
                if earlier.request != request:
                    raise InvalidRequest("Idempotent parameters do not match")
                return earlier.id
            match = _DIRECTIVE.search(sql)
            try:
                script = json.loads(match.group(1)) if match else {}
            except ValueError as exc:
                raise InvalidRequest(f"bad double directive: {exc}") from None
            if not isinstance(script, dict):
                raise InvalidRequest("the double directive must be a JSON object")
            # What Athena refuses once it runs the query: the query FAILS (as scripted).
            bound: list[Any] = []
            try:
                bound = values(sql, parameters)
            except ParameterError as exc:
                script = {**script, "fail": str(exc)}
            if (catalog or DEFAULT_CATALOG).lower() not in self.catalogs:
                script = {**script, "fail": unknown_catalog(catalog or "").message}
            if "start_invalid" in script:
                raise InvalidRequest(str(script["start_invalid"]))
            if self._throttled.get(sql, 0) < int(script.get("start_throttle", 0)):
                self._throttled[sql] = self._throttled.get(sql, 0) + 1
                raise TooManyQueries("start_throttle")
            now = time.monotonic()
            # Counted only when limited: a count over every execution ever started made
            # each start slower than the last in a long run (a benchmark's thousands).
            if self.max_running is not None:
                active = sum(e.state(now) in ACTIVE for e in self._executions.values())
                if active >= self.max_running:
                    self._refused += 1
                    raise TooManyQueries(f"{active} queries are queued or running")
                self._peak = max(self._peak, active + 1)
            query_id = str(uuid.uuid4())
            bucket, key = result_location(output_location or DEFAULT_OUTPUT, query_id)
            same = reuse_key(sql, parameters, database, catalog, workgroup, f"s3://{bucket}/{key}")
            earlier = None
            if same is not None and reuse_minutes is not None:
                earlier = self._reusable(same, now, now - reuse_minutes * 60)
            if earlier is not None:
                # Athena points the new execution at the earlier one's result object.
                bucket, key, script = earlier.bucket, earlier.key, earlier.script
            execution = self._executions[query_id] = _Scripted(
                query_id, len(self._executions), sql, script, database, catalog, workgroup,
                bucket, key, token, submitted=time.time(), started=now, parameters=parameters,
                bound=bound, reuse_minutes=reuse_minutes, request=request, reuse_key=same,
            )  # fmt: skip
            if earlier is not None:
                execution.reused = True
                execution.finish(State.SUCCEEDED, None, now)
            if token is not None:
                self._tokens[token] = query_id
            if "start_stall_ms" in script:
                self._stalling.add(query_id)
            return query_id

    def _reusable(self, key: tuple[Any, ...], now: float, since: float) -> _Scripted | None:
        """The newest execution that ran and SUCCEEDED with this reuse key at monotonic
        `since` or later; with the lock held."""
        for e in reversed(self._executions.values()):
            if e.reuse_key != key or e.reused:
                continue
            state, final_at = e.timeline(now)
            if state is State.SUCCEEDED and final_at is not None and final_at >= since:
                return e
        return None

    async def started(self, query_id: str) -> None:
        with self._lock:
            stalled = query_id in self._stalling
            self._stalling.discard(query_id)
            pause = self._executions[query_id].seconds("start_stall_ms") if stalled else 0.0
        if pause:
            await asyncio.sleep(pause)

    def get(self, query_id: str) -> Execution:
        with self._lock:
            e = self._get(query_id)
            e.status_reads += 1
            return e.snapshot(time.monotonic())

    def stop(self, query_id: str) -> None:
        with self._lock:
            e, now = self._get(query_id), time.monotonic()
            e.stop_calls += 1
            if e.stop_calls <= int(e.script.get("stop_throttle", 0)):
                raise TooManyQueries("stop_throttle")
            # Real Athena leaves a finished query alone, and a stop repeated while the
            # first is under way does not put off its end.
            if e.state(now) in ACTIVE and e.forced is None:
                # stop_ms: Athena takes that long to confirm the stop, as it may in AWS.
                e.finish(State.CANCELLED, STOPPED_BY_USER, now + e.seconds("stop_ms"))

    def list_ids(
        self, workgroup: str, limit: int, before: int | None = None
    ) -> tuple[list[str], int | None]:
        with self._lock:
            queries = reversed(self._executions.values())
            ids = ((e.seq, e.id) for e in queries if e.workgroup == workgroup)
            return page_of_ids(ids, limit, before)

    async def results(self, query_id: str, position: int, limit: int) -> ResultPage:
        """`Engine.results`: `position` is a row number, 0 the header row."""
        with self._lock:
            e = self._get(query_id)
            check_succeeded(e.state(time.monotonic()))
        end = e.row_count() + 1
        if not 0 <= position < end:
            raise InvalidRequest("Invalid NextToken")
        last = min(position + limit, end)
        columns = e.columns()
        rows = [
            [c.name for c in columns] if i == 0 else e.row(i - 1) for i in range(position, last)
        ]
        return ResultPage(columns, rows, last if last < end else None)

    async def open_object(self, bucket: str, key: str) -> ResultObject:
        with self._lock:
            e = self._executions.get(key.rpartition("/")[2].removesuffix(".csv"))
            if (
                e is None
                or (e.bucket, e.key) != (bucket, key)
                or e.state(time.monotonic()) is not State.SUCCEEDED
                or e.script.get("s3") == "missing"
            ):
                raise NoSuchKey(key)
            if e.script.get("s3") == "denied":
                raise AccessDenied(key)
            stall = e.script.get("s3_stall_after")
            released = e.id in self._s3_released
            return _ScriptedObject(self, e, None if stall is None or released else int(stall))

    async def s3_hold(self, execution_id: str) -> None:
        """Return once the execution's object is released, or the endpoint stops."""
        with self._lock:
            if self._closed or execution_id in self._s3_released:
                return
            self._loop = asyncio.get_running_loop()
            gate = self._s3_gates.setdefault(execution_id, asyncio.Event())
            self._s3_held[execution_id] = self._s3_held.get(execution_id, 0) + 1
        try:
            await gate.wait()
        finally:
            with self._lock:
                self._s3_held[execution_id] -= 1

    async def close(self) -> None:
        """Let held result objects go on, so their replies end."""
        with self._lock:
            self._closed = True
            gates, self._s3_gates = self._s3_gates, {}
        for gate in gates.values():
            gate.set()

    def _get(self, query_id: str) -> _Scripted:
        found = self._executions.get(query_id)
        if found is None:
            raise QueryNotFound(query_id)
        return found


class AthenaDouble:
    """The scripted engine, served by the local engine's wire layer; `start()` serves it
    on its own thread and event loop, `stop()` ends both."""

    def __init__(
        self,
        *,
        batch: bool = True,
        delay_ms: int = 0,
        max_running: int | None = None,
        catalogs: Iterable[str] = ("AwsDataCatalog",),
    ) -> None:
        engine = self.engine = ScriptedEngine(
            batch=batch, delay_ms=delay_ms, max_running=max_running, catalogs=catalogs
        )
        # The engine's test side, callable from any thread.
        self.calls, self.execution, self.reset = engine.calls, engine.execution, engine.reset
        self.executions = engine.executions
        self.peak_active, self.refused_starts = engine.peak_active, engine.refused_starts
        self.release, self.release_s3, self.s3_held = (
            engine.release,
            engine.release_s3,
            engine.s3_held,
        )
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self._served_on: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the Athena double is not serving")
        return self._url

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        on_ready: Callable[[str], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serve on the running loop until `stop` (or `self.stop()`) fires."""
        self._served_on, self._stop_event = asyncio.get_running_loop(), stop or asyncio.Event()
        endpoint = Endpoint()
        self._url = await endpoint.serve(self.engine, host, port)
        try:
            if on_ready is not None:
                on_ready(self._url)
            await self._stop_event.wait()
        finally:
            await endpoint.stop()

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
        if self._error is not None or self._url is None:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError(f"the Athena double did not start: {self._error!r}")
        return self.url

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._served_on is not None and self._stop_event is not None:
            self._served_on.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(10)
        self._thread = self._served_on = self._stop_event = self._url = None

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
    # A benchmark holds its queries ("hold") while it measures, then lets them all finish.
    loop.add_signal_handler(signal.SIGUSR1, double.engine.release_all)
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
        help="answer BatchGetQueryExecution as an endpoint without it: 400 UnknownOperation",
    )
    parser.add_argument("--delay-ms", type=int, default=0, help="delay every Athena reply")
    parser.add_argument(
        "--max-running",
        type=int,
        default=None,
        help="throttle StartQueryExecution at this many active queries",
    )
    setup_logging(level="INFO")
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
