"""Benchmark of athenaq's request path: status reads and submits per second, against a bare
Tornado + asyncmy server doing the same database work.

    python bench/service.py                       # small: 3 rounds of 1 s, for CI
    python bench/service.py --rounds 7 --duration 5 --profile

Starts, as separate processes, the scripted Athena endpoint (tests/athena_double.py), an
athenaq server on a fresh MariaDB database, and a bare server (this file, `bare`) on
another fresh database with the same tables: `GET /query/<id>/status` is one
`SELECT * FROM queries WHERE id = %s` answered as JSON, `POST /query` inserts the query
and its first history row in one transaction, what athenaq's store does for a submit,
without the Athena call. Both databases start with the same SUCCEEDED rows, which the
status reads cycle through. The load comes from this process over keep-alive connections
at a fixed concurrency, each round measuring the bare server then athenaq, status reads
then submits; the table gives the medians over the rounds, so a noisy moment of a shared
machine weighs on one round only. Server CPU per request (from the servers' own CPU
time) is the figure least moved by that noise. Exits non-zero on any failed request.

athenaq's submits start an Athena execution each (`SELECT 1`, which the endpoint finishes
at once) in the background; a round ends when every one of them has been sent, and the
server's CPU per submit includes that. The poller ticks once at start and then every
`--poller-interval` seconds (default: not again during the run), so the measure leaves
out its GetQueryExecution calls and result downloads; give it 1 to see their effect.

`--profile` then runs a third server, athenaq under cProfile (CPU time), its database
reached through a relay that counts the commands it sends, and prints where the status
path's CPU goes and the round trips of a submit.

Needs MariaDB at --db (root, empty password by default) and `pip install -e . --group bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import json
import logging
import os
import platform
import pstats
import signal
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncmy
import psutil  # type: ignore[import-untyped]
from loguru import logger

from athenaq.store import Store
from results import (
    AWS_ENV,
    Processes,
    athenaq_config,
    engine_url,
    guarded,
    server_url,
    wait_for_line,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "mysql://root:@127.0.0.1:3306"
SUBMIT_SQL = "SELECT 1"
WARMUP_SECONDS = 0.5
SETTLE_TIMEOUT_SECONDS = 60.0
SETTLE_PROBE_SECONDS = 0.02
# The athenaq default; the bare pool gets the same.
POOL_SIZE = 10
# The poller ticks at start, then after this long: never during a run of default size.
DEFAULT_POLLER_INTERVAL = 3600.0
# athena.max_running: more than a run submits, as no tick frees a slot during it.
MAX_RUNNING = 1_000_000


# --- the bare server -------------------------------------------------------------------


def bare_app(pool: Any) -> Any:
    """The same database work as athenaq's status read and submit, and nothing else: no
    validation beyond the JSON body, no authentication hook, no access log."""
    import tornado.web

    def _json(value: Any) -> str:
        return value.isoformat() if isinstance(value, datetime) else str(value)

    class Status(tornado.web.RequestHandler):
        async def get(self, query_id: str) -> None:
            async with pool.acquire() as conn, conn.cursor(asyncmy.cursors.DictCursor) as cur:
                await cur.execute("SELECT * FROM queries WHERE id = %s", (query_id,))
                rows = await cur.fetchall()
            if not rows:
                raise tornado.web.HTTPError(404)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps(rows[0], default=_json))

    class Submit(tornado.web.RequestHandler):
        async def post(self) -> None:
            sql = json.loads(self.request.body)["query"]
            query_id = str(uuid.uuid4())
            now = datetime.now(UTC).replace(tzinfo=None)
            async with pool.acquire() as conn:
                await conn.begin()
                try:
                    async with conn.cursor() as cur:
                        await cur.execute(
                            "INSERT INTO queries (id, query_text, database_name, workgroup,"
                            " state, run, submitted_at, version, updated_at)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            (query_id, sql, "default", "primary", "QUEUED", 1, now, 0, now),
                        )
                        await cur.execute(
                            "INSERT INTO query_transitions (query_id, from_state, to_state,"
                            " reason, at) VALUES (%s, NULL, %s, %s, %s)",
                            (query_id, "QUEUED", "submitted", now),
                        )
                    await conn.commit()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await conn.rollback()
                    raise
            self.set_status(202)
            self.set_header("Location", f"/query/{query_id}/status")
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps({"id": query_id, "state": "QUEUED"}))

    return tornado.web.Application([(r"/query/([^/]+)/status", Status), (r"/query", Submit)])


async def serve_bare(url: str) -> None:
    from tornado.netutil import bind_sockets

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pool = await asyncmy.create_pool(
        **connect_args(url), autocommit=True, minsize=1, maxsize=POOL_SIZE
    )
    from tornado.httpserver import HTTPServer

    server = HTTPServer(bare_app(pool))
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    print(f"listening on http://127.0.0.1:{sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.stop()
    pool.close()
    await pool.wait_closed()


# --- athenaq under the profiler --------------------------------------------------------


def serve_profiled(profile_path: str, argv: list[str]) -> int:
    """athenaq's own main under cProfile counting CPU time; each SIGUSR1 starts a profile
    window or ends one, writing it to `<profile_path>.<n>` (whole, by a rename)."""
    from athenaq.main import main

    profiler = cProfile.Profile(time.process_time)
    windows = 0
    enabled = False

    def toggle(signum: int, frame: object) -> None:
        nonlocal windows, enabled
        if not enabled:
            profiler.enable()
        else:
            profiler.disable()
            path = f"{profile_path}.{windows}"
            profiler.dump_stats(path + ".tmp")
            os.replace(path + ".tmp", path)
            profiler.clear()
            windows += 1
        enabled = not enabled

    signal.signal(signal.SIGUSR1, toggle)
    return main(argv)


class CommandCounter:
    """A TCP relay to MariaDB that counts the commands its clients send, by the first word
    of the statement: each one is a round trip to the database."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.counts: collections.Counter[str] = collections.Counter()

    async def start(self) -> int:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(
            self._pipe(up_reader, writer, counted=False),
            self._pipe(reader, up_writer, counted=True),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, counted: bool
    ) -> None:
        pending = b""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                if counted:
                    pending = self._count(pending + data)
                await writer.drain()
        finally:
            writer.close()

    def _count(self, data: bytes) -> bytes:
        # A packet is a 3-byte length, a sequence number, the payload; a command opens a
        # new sequence at 0 (the handshake's answer is 1), COM_QUERY (3) carries the SQL.
        while len(data) >= 4:
            length = int.from_bytes(data[:3], "little")
            if len(data) < 4 + length:
                break
            sequence, payload, data = data[3], data[4 : 4 + length], data[4 + length :]
            if sequence == 0 and payload:
                if payload[0] == 3:
                    words = payload[1:].split(None, 1)
                    self.counts[words[0].decode(errors="replace").upper() if words else ""] += 1
                else:
                    self.counts[f"command {payload[0]}"] += 1
        return data


# --- databases -------------------------------------------------------------------------


def connect_args(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    args: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
        "charset": "utf8mb4",
    }
    if database := parts.path.lstrip("/"):
        args["db"] = database
    return args


async def execute(url: str, *statements: str) -> None:
    conn = await asyncmy.connect(**connect_args(url), autocommit=True)
    try:
        async with conn.cursor() as cur:
            for statement in statements:
                await cur.execute(statement)
    finally:
        await conn.ensure_closed()


async def create_databases(server: str, names: list[str], seed_rows: int) -> None:
    """Fresh databases with athenaq's tables, the first seeded with SUCCEEDED queries, the
    others given a copy of the same rows."""
    for name in names:
        await execute(server, f"DROP DATABASE IF EXISTS `{name}`", f"CREATE DATABASE `{name}`")
        store = await Store.connect(f"{server}/{name}", maxsize=1)
        try:
            await store.create_schema()  # athenaq's own tables, at its newest revision
        finally:
            await store.close()
    conn = await asyncmy.connect(**connect_args(f"{server}/{names[0]}"), autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO queries ({', '.join(SEED_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(SEED_COLUMNS))})",
                [seed_row(i) for i in range(seed_rows)],
            )
            for name in names[1:]:
                await cur.execute(f"INSERT INTO `{name}`.queries SELECT * FROM queries")
    finally:
        await conn.ensure_closed()


SEED_COLUMNS = (
    "id",
    "query_text",
    "database_name",
    "workgroup",
    "state",
    "athena_execution_id",
    "run",
    "submitted_at",
    "started_at",
    "completed_at",
    "results_at",
    "row_count",
    "results_source",
    "data_scanned_bytes",
    "engine_execution_ms",
    "queue_ms",
    "total_execution_ms",
    "version",
    "updated_at",
)


def seed_row(i: int) -> tuple[Any, ...]:
    at = datetime(2024, 1, 1) + timedelta(minutes=i)
    return (
        str(uuid.UUID(int=i + 1)),
        f"SELECT * FROM events WHERE day = DATE '2024-01-01' LIMIT {i}",
        "default",
        "primary",
        "SUCCEEDED",
        str(uuid.UUID(int=10**6 + i)),
        1,
        at,
        at + timedelta(seconds=1),
        at + timedelta(seconds=3),
        at + timedelta(seconds=4),
        i,
        "s3",
        1_000_000 + i,
        1500,
        80,
        1600,
        3,
        at + timedelta(seconds=4),
    )


async def unsent(url: str) -> int:
    """Submitted queries athenaq has not sent to Athena yet."""
    conn = await asyncmy.connect(**connect_args(url))
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM queries WHERE athena_execution_id IS NULL")
            row = await cur.fetchone()
    finally:
        await conn.ensure_closed()
    return int(row[0])


async def settle(url: str) -> float:
    """Seconds until athenaq has sent every submitted query to Athena."""
    started = time.perf_counter()
    while await unsent(url):
        if time.perf_counter() - started > SETTLE_TIMEOUT_SECONDS:
            raise RuntimeError(f"submits not sent to Athena after {SETTLE_TIMEOUT_SECONDS} s")
        await asyncio.sleep(SETTLE_PROBE_SECONDS)
    return time.perf_counter() - started


# --- load ------------------------------------------------------------------------------


@dataclass
class Round:
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds * 1000 / self.requests

    @property
    def client_cpu_ms(self) -> float:
        return self.client_cpu_seconds * 1000 / self.requests


@dataclass
class Server:
    name: str
    base: str
    pid: int
    db_url: str
    rounds: dict[str, list[Round]] = field(default_factory=lambda: {"status": [], "submit": []})

    def cpu(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)


class Failures(Exception):
    pass


class Load:
    """Requests from `concurrency` workers, each on its own keep-alive connection."""

    def __init__(self, http: aiohttp.ClientSession, ids: list[str], concurrency: int) -> None:
        self.http = http
        self.ids = ids
        self.concurrency = concurrency
        self.failures: list[str] = []

    async def status(self, base: str, n: int) -> None:
        query_id = self.ids[n % len(self.ids)]
        async with self.http.get(f"{base}/query/{query_id}/status") as response:
            body = await response.read()
        if response.status != 200 or query_id.encode() not in body:
            self.failures.append(f"GET {base}/query/{query_id}/status: {response.status}")

    async def submit(self, base: str, n: int) -> None:
        async with self.http.post(f"{base}/query", json={"query": SUBMIT_SQL}) as response:
            body = await response.read()
        if response.status != 202:
            self.failures.append(f"POST {base}/query: {response.status} {body[:200]!r}")

    async def run(
        self, request: Callable[[str, int], Awaitable[None]], base: str, seconds: float
    ) -> tuple[int, float, list[float]]:
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def worker(n: int) -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await request(base, n)
                latencies.append(time.perf_counter() - started)
                n += self.concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(self.concurrency)))
        elapsed = time.perf_counter() - started
        if self.failures:
            raise Failures(f"{len(self.failures)} failed requests, first: {self.failures[0]}")
        return len(latencies), elapsed, latencies

    async def measure(self, server: Server, kind: str, seconds: float) -> Round:
        cpu, client_cpu = server.cpu(), time.process_time()
        count, elapsed, latencies = await self.run(getattr(self, kind), server.base, seconds)
        client_cpu = time.process_time() - client_cpu
        if kind == "submit" and server.name != "bare":
            # Its background launches belong to the submits measured: wait for the last
            # one, and count the CPU it took, not the time (the rate is the clients').
            # The baseline's too: launches left running would take their CPU unseen.
            await settle(server.db_url)
        return Round(count, elapsed, latencies, server.cpu() - cpu, client_cpu)


async def measure(servers: list[Server], ids: list[str], args: argparse.Namespace) -> None:
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        load = Load(http, ids, args.concurrency)
        for server in servers:
            for kind in ("status", "submit"):
                await load.run(getattr(load, kind), server.base, WARMUP_SECONDS)
            if server.name != "bare":
                await settle(server.db_url)
        for number in range(1, args.rounds + 1):
            line = []
            for kind in ("status", "submit"):
                for server in servers:
                    result = await load.measure(server, kind, args.duration)
                    server.rounds[kind].append(result)
                    line.append(f"{server.name} {kind} {result.rate:.0f}/s")
            print(f"round {number}: " + ", ".join(line), flush=True)


# --- profile ---------------------------------------------------------------------------


@dataclass
class Profile:
    stats: pstats.Stats
    commands: collections.Counter[str]
    requests: int

    @property
    def total(self) -> float:
        return float(self.stats.total_tt)  # type: ignore[attr-defined]

    def entries(self, path: str, name: str) -> Iterator[tuple[Any, Any]]:
        for key, value in self.stats.stats.items():  # type: ignore[attr-defined]
            if key[0].replace(os.sep, "/").endswith(path) and key[2] == name:
                yield key, value

    def cumulative(self, path: str, name: str, caller: tuple[str, str] | None = None) -> float:
        """CPU seconds in `path:name` and what it calls; only its calls from `caller`."""
        seconds = 0.0
        for _, (_, _, _, cum, callers) in self.entries(path, name):
            if caller is None:
                seconds += cum
                continue
            for key, (_, _, _, from_caller) in callers.items():
                if key[0].replace(os.sep, "/").endswith(caller[0]) and key[2] == caller[1]:
                    seconds += from_caller
        return seconds

    def calls(self, path: str, name: str) -> int:
        return sum(value[1] for _, value in self.entries(path, name))

    def share(self, seconds: float) -> str:
        return f"{100 * seconds / self.total:.0f} %"

    def per_request_ms(self, seconds: float) -> str:
        return f"{seconds * 1000 / self.requests:.3f} ms"

    def top(self, count: int) -> list[str]:
        rows = sorted(
            self.stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda item: item[1][2],
            reverse=True,
        )[:count]
        return [
            f"  {100 * tt / self.total:5.1f} %  {pstats.func_std_string(key)}"
            for key, (_, _, tt, _, _) in rows
        ]


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the profiled server wrote no {path.name}")
        time.sleep(SETTLE_PROBE_SECONDS)


async def profile(
    processes: Processes,
    work: Path,
    endpoint: str,
    args: argparse.Namespace,
    ids: list[str],
    database: str,
) -> list[Profile]:
    parts = urlsplit(args.db)
    relay = CommandCounter(parts.hostname or "127.0.0.1", parts.port or 3306)
    relay_port = await relay.start()
    user = parts.username or "root"
    password = f":{parts.password}" if parts.password else ":"
    db_url = f"mysql://{user}{password}@127.0.0.1:{relay_port}/{database}"
    config = work / "profile.json"
    config.write_text(json.dumps(service_config(work / "profile", db_url, endpoint, args)))
    log = work / "profile.log"
    # Started with the relay serving in this loop: the store connects at once.
    argv = [sys.executable, __file__, "profiled", str(work / "profile.prof")]
    server = processes.start([*argv, "--config", str(config)], log, {**os.environ, **AWS_ENV})
    base = await asyncio.to_thread(wait_for_line, "athenaq", server, log, server_url)
    # Waiting for the launches reads the database directly, not through the relay.
    target = Server("athenaq", base, server.pid, f"{args.db}/{database}")
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    seconds = args.duration * args.rounds
    profiles = []
    async with aiohttp.ClientSession(connector=connector) as http:
        load = Load(http, ids, args.concurrency)
        for kind in ("status", "submit"):
            await load.run(getattr(load, kind), base, WARMUP_SECONDS)
        await settle(target.db_url)
        for number, kind in enumerate(("status", "submit")):
            relay.counts.clear()
            server.send_signal(signal.SIGUSR1)
            result = await load.measure(target, kind, seconds)
            server.send_signal(signal.SIGUSR1)
            commands = collections.Counter(relay.counts)
            path = work / f"profile.prof.{number}"
            await asyncio.to_thread(wait_for_file, path)
            profiles.append(Profile(pstats.Stats(str(path)), commands, result.requests))
    return profiles


def unprofiled(cpu_ms_per_read: float) -> list[str]:
    """The status path's suspects timed here, without a profiler (which inflates code made
    of many small calls), against the server's CPU per read measured."""
    from athenaq.logs import setup_logging
    from athenaq.schemas import STATUS, StatusSchema
    from athenaq.states import QueryRecord, QueryState

    seeded = dict(zip(SEED_COLUMNS, seed_row(0), strict=True))
    unseeded = dict.fromkeys(QueryRecord.__dataclass_fields__)
    record = QueryRecord(
        **{**unseeded, **seeded, "state": QueryState.SUCCEEDED, "owner": "anonymous"}
    )
    schema = StatusSchema()
    with tempfile.TemporaryFile("w") as stream:
        setup_logging(stream=stream)
        suspects = {
            "StatusSchema() built (the release did it per request)": StatusSchema,
            "StatusSchema().dump(record)": lambda: schema.dump(record),
            "STATUS.dump(record), the plan the handler uses": lambda: STATUS.dump(record),
            "a request's log line (loguru, JSON, write, flush to a file)": lambda: logger.log(
                "INFO",
                "request",
                method="GET",
                path=f"/query/{record.id}/status",
                status=200,
                duration_ms=1.2,
                remote_ip="127.0.0.1",
                user="anonymous",
            ),
        }
        lines = [
            f"Timed alone, without the profiler, against {cpu_ms_per_read:.2f} ms of server"
            " CPU per status read:"
        ]
        for label, call in suspects.items():
            # CPU time, like the server's figure: a busy machine's preemptions stay out.
            seconds = min(timeit.repeat(call, number=200, repeat=5, timer=time.process_time)) / 200
            lines.append(
                f"  {label}: {seconds * 1e6:.0f} us, {100 * seconds * 1000 / cpu_ms_per_read:.0f} %"
            )
        logger.remove()
    return lines


def profile_report(status: Profile, submit: Profile, cpu_ms_per_read: float) -> str:
    handlers = "athenaq/handlers/queries.py"
    schema = ("marshmallow/schema.py", "__init__")
    status_schema = status.cumulative(*schema, caller=(handlers, "get"))
    dump = status.cumulative("athenaq/schemas.py", "dump", caller=(handlers, "get"))
    log = status.cumulative("athenaq/logs.py", "log_request")
    sink = status.cumulative("athenaq/logs.py", "sink")
    flush = status.cumulative("~", "<method 'flush' of '_io.TextIOWrapper' objects>")
    store = status.cumulative("athenaq/store/queries.py", "get")
    auth = status.cumulative("athenaq/handlers/base.py", "prepare")
    lines = [
        f"Status path: {status.requests} reads, {status.total:.2f} s of server CPU in the"
        f" profile ({status.per_request_ms(status.total)} per read, profiler included)",
        "| part of GET /query/<id>/status | share of CPU | per read |",
        "|---|---:|---:|",
    ]
    for label, seconds in (
        ("a schema built in the handler", status_schema),
        ("the status dump (STATUS, the plan of StatusSchema)", dump),
        ("access log line (log_request: loguru, JSON, write, flush)", log),
        ("  of which the stderr flush", flush),
        ("Store.get (pool, asyncmy, row to record)", store),
        ("authentication (prepare)", auth),
    ):
        lines.append(f"| {label} | {status.share(seconds)} | {status.per_request_ms(seconds)} |")
    lines += [
        f"(the log sink, every line: {status.share(sink)};"
        f" log lines per read: {status.calls('athenaq/logs.py', 'sink') / status.requests:.2f})",
        "",
        *unprofiled(cpu_ms_per_read),
        "",
        "Top functions by own CPU, status path:",
        *status.top(15),
        "",
        f"Submit path: {submit.requests} submits, database commands per submit"
        " (each a round trip; the relay counts what athenaq sends):",
    ]
    total = sum(submit.commands.values())
    lines.append(
        "  "
        + ", ".join(
            f"{word or '?'} {count / submit.requests:.2f}"
            for word, count in submit.commands.most_common()
        )
        + f"; all {total / submit.requests:.2f}"
    )
    per_status = sum(status.commands.values()) / status.requests
    lines.append(f"  (status path: {per_status:.2f} commands per read)")
    post = submit.cumulative(handlers, "post")
    launch = submit.cumulative("athenaq/launcher.py", "launch")
    request_schema = submit.cumulative(*schema, caller=(handlers, "post"))
    lines += [
        f"  CPU per submit {submit.per_request_ms(submit.total)}: the handler (post)"
        f" {submit.share(post)}, its background launch {submit.share(launch)},"
        f" schemas built in the handler {submit.share(request_schema)},"
        f" log lines {submit.share(submit.cumulative('athenaq/logs.py', 'sink'))}"
        f" ({submit.calls('athenaq/logs.py', 'sink') / submit.requests:.2f} per submit)",
        "",
        "Top functions by own CPU, submit path:",
        *submit.top(15),
    ]
    return "\n".join(lines)


# --- report ----------------------------------------------------------------------------


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def machine(load_before: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}; load average (1, 5, 15 min)"
        f" {load_before} before, {load_average()} after"
    )


def report(
    bare: Server,
    athenaq: Server,
    args: argparse.Namespace,
    load_before: str,
    baseline: Server | None = None,
) -> str:
    def median(server: Server, kind: str, figure: Callable[[Round], float]) -> float:
        return statistics.median(figure(r) for r in server.rounds[kind])

    extra = " | baseline | baseline / bare" if baseline else ""
    lines = [
        f"| {args.rounds} rounds of {args.duration:g} s, {args.concurrency} connections"
        f" | bare | athenaq | athenaq / bare{extra} |",
        "|---|---:|---:|---:|" + ("---:|---:|" if baseline else ""),
    ]
    for kind, label in (("status", "status reads"), ("submit", "submits")):
        for name, figure, form in (
            ("/s", lambda r: r.rate, "{:.0f}"),
            (" p50 (ms)", lambda r: r.percentile(0.5) * 1000, "{:.1f}"),
            (" p99 (ms)", lambda r: r.percentile(0.99) * 1000, "{:.1f}"),
            (" server CPU per request (ms)", lambda r: r.cpu_ms, "{:.2f}"),
            # The load generator's own cost: when it nears a core, it is the limit.
            (" load generator CPU per request (ms)", lambda r: r.client_cpu_ms, "{:.2f}"),
        ):
            ours, theirs = median(athenaq, kind, figure), median(bare, kind, figure)
            row = f"| {label}{name} | {form.format(theirs)} | {form.format(ours)}"
            row += f" | {ours / theirs:.2f} |"
            if baseline:
                before = median(baseline, kind, figure)
                row += f" {form.format(before)} | {before / theirs:.2f} |"
            lines.append(row)

    def bound(server: Server) -> str:
        # The rates depend on what else runs on the machine; the CPU per request does not.
        ratios = {
            kind: median(bare, kind, lambda r: r.cpu_ms) / median(server, kind, lambda r: r.cpu_ms)
            for kind in ("status", "submit")
        }
        return f"status reads {ratios['status']:.2f}, submits {ratios['submit']:.2f}"

    lines += [
        "",
        "What the rate ratio becomes when each server is held by its own CPU (bare CPU per"
        f" request / athenaq's): {bound(athenaq)}"
        + (f"; baseline ({args.baseline}): {bound(baseline)}." if baseline else "."),
        f"Medians over the rounds. athenaq's submits include sending each query to Athena"
        f" ({SUBMIT_SQL!r}) in the background; poller interval {args.poller_interval:g} s.",
        f"Machine: {machine(load_before)}",
    ]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def service_config(
    work: Path, db_url: str, endpoint: str, args: argparse.Namespace, *, capped: bool = True
) -> dict[str, Any]:
    """`capped`: give athena.max_running (a baseline from before admission control lacks
    the key). Room for every submit of the run: the poller does not tick to free slots,
    and the measure is of the request path, an admission per submit included."""
    athena: dict[str, Any] = {"max_running": MAX_RUNNING} if capped else {}
    return athenaq_config(work, db_url, endpoint, args.poller_interval, **athena)


async def run(processes: Processes, work: Path, args: argparse.Namespace) -> str:
    load_before = load_average()
    names = [f"{args.database}_athenaq", f"{args.database}_bare"]
    if args.profile:
        names.append(f"{args.database}_profile")
    if args.baseline:
        names.append(f"{args.database}_baseline")
    await create_databases(args.db, names, args.seed_rows)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(args.seed_rows)]
    env = {**os.environ, **AWS_ENV}
    try:
        double_log = work / "double.log"
        double = processes.start(
            [sys.executable, str(ROOT / "tests" / "athena_double.py"), "--port", "0"],
            double_log,
            env,
        )
        endpoint = wait_for_line("athena double", double, double_log, engine_url)
        athenaq_db = f"{args.db}/{names[0]}"
        config = work / "athenaq.json"
        config.write_text(json.dumps(service_config(work, athenaq_db, endpoint, args)))
        log = work / "athenaq.log"
        child = processes.start(
            [sys.executable, "-m", "athenaq", "--config", str(config)], log, env
        )
        athenaq = Server(
            "athenaq", wait_for_line("athenaq", child, log, server_url), child.pid, athenaq_db
        )
        bare_db = f"{args.db}/{names[1]}"
        log = work / "bare.log"
        child = processes.start([sys.executable, __file__, "bare", bare_db], log, env)
        bare = Server("bare", wait_for_line("bare", child, log, engine_url), child.pid, bare_db)
        servers = [bare, athenaq]
        baseline = None
        if args.baseline:
            # Another commit's athenaq, from its source tree, on a database of its own.
            baseline_db = f"{args.db}/{names[-1]}"
            config = work / "baseline.json"
            capped = args.baseline_capped
            document = service_config(work, baseline_db, endpoint, args, capped=capped)
            config.write_text(json.dumps(document))
            log = work / "baseline.log"
            child = processes.start(
                [sys.executable, "-m", "athenaq", "--config", str(config)],
                log,
                {**env, "PYTHONPATH": args.baseline},
            )
            url = wait_for_line("baseline", child, log, server_url)
            baseline = Server("baseline", url, child.pid, baseline_db)
            servers.append(baseline)
        await measure(servers, ids, args)
        table = report(bare, athenaq, args, load_before, baseline)
        if args.profile:
            profiles = await profile(processes, work, endpoint, args, ids, names[2])
            cpu_ms = statistics.median(r.cpu_ms for r in athenaq.rounds["status"])
            table += "\n\n" + profile_report(*profiles, cpu_ms)
        return table
    finally:
        processes.stop_all()
        for name in names:
            await execute(args.db, f"DROP DATABASE IF EXISTS `{name}`")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of measures (default 3)")
    parser.add_argument(
        "--duration", type=float, default=1.0, help="seconds per measure (default 1)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight (default 16)"
    )
    parser.add_argument(
        "--seed-rows", type=int, default=200, help="queries the status reads cycle through"
    )
    parser.add_argument(
        "--poller-interval",
        type=float,
        default=DEFAULT_POLLER_INTERVAL,
        help="athenaq's poller interval in seconds (default: no tick after the first)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile athenaq's status and submit paths"
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"MariaDB server (default {DEFAULT_DB})")
    parser.add_argument(
        "--database",
        default=f"athenaq_bench_{os.getpid()}",
        help="prefix of the databases created and dropped",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also measure the athenaq of this source tree (another commit, e.g. from"
        " `git worktree add`) in the same rounds, on a database of its own",
    )
    parser.add_argument(
        "--baseline-capped",
        action="store_true",
        help="the baseline knows athena.max_running (a commit with admission control)",
    )
    args = parser.parse_args(argv)
    if args.baseline:
        # The servers run in a folder of their own: a relative path would not name it there.
        args.baseline = os.path.abspath(args.baseline)
    if args.rounds < 1 or args.duration <= 0 or args.concurrency < 1 or args.seed_rows < 1:
        parser.error("--rounds, --duration, --concurrency and --seed-rows must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The processes this file starts: the bare server and athenaq under the profiler.
    if argv[:1] == ["bare"]:
        asyncio.run(serve_bare(argv[1]))
        return 0
    if argv[:1] == ["profiled"]:
        return serve_profiled(argv[1], argv[2:])
    args = parse_args(argv)
    # asyncmy logs the note of each DROP DATABASE IF EXISTS that found nothing to drop.
    logging.getLogger("asyncmy").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="athenaq-bench-"))
    processes = Processes()

    def bench() -> int:
        print(asyncio.run(run(processes, work, args)))
        return 0

    return guarded(work, processes, args.keep, bench)


if __name__ == "__main__":
    sys.exit(main())
