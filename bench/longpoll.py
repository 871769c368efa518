"""Benchmark of the long-poll: many requests waiting on one server for their queries to
finish (`GET /query/<id>/status?wait=60`), what they cost it, and how soon each is
answered once its query finishes.

    python bench/longpoll.py                    # small: 200 waiters, for CI
    python bench/longpoll.py --waiters 1000

Starts, as separate processes, the scripted Athena endpoint (tests/athena_double.py) and
two athenaq servers on one fresh MariaDB database (pool of 10, store deadline 10 s):
`near`, which serves every long-poll (`python bench/longpoll.py serve`: the service as
`athenaq serve` runs it, plus a probe), and `far`, a plain `athenaq serve`. It submits
--waiters queries that Athena holds RUNNING, half to each server (each polls its own and
stores their results), waits until all are RUNNING, then sends `near` one long-poll per
query, a hundred at a time, each hundred once the probe says the previous ones wait
(sent at once, those past server.max_inflight_requests while the others read their query
would be shed). With every request waiting, it measures --wait seconds: near's RSS
growth since before the first waiter (psutil), its CPU, the most connections of its
store's pool checked out at once (the probe looks at the pool every 10 ms), its open
connections to MariaDB (psutil) and the watcher's shared reads. Then the endpoint ends
every query SUCCEEDED at once (SIGUSR1), and each waiter's delay runs from the commit of
its query's move to SUCCEEDED (the `state changed` line its mover logs once the
transaction returns) to its answer at the client: for near's own queries the machine
wakes the waiter, for far's the shared read does. The moves' own transactions (from the
time of their history row, taken before them, to that line) are given beside: on a
loaded MariaDB they take longer than the wake. Exits non-zero when a waiter is not
answered SUCCEEDED or a request fails; a goal missed is a figure, not a failure.

The goals are the issue's: no more store connections than the pool (database.pool_size,
10), RSS growth under 50 MB, and a p99 delay under 1 s.

Needs MariaDB at --db (root, empty password by default) and `pip install -e . --group bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncmy
import psutil  # type: ignore[import-untyped]
from poller import percentile, verdict, wait_until
from service import connect_args, execute, machine

from results import (
    AWS_ENV,
    MB,
    Processes,
    athenaq_config,
    cpu_seconds,
    engine_url,
    guarded,
    server_url,
    wait_for_line,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "mysql://root:@127.0.0.1:3306"
DEFAULT_WAITERS = 200
DEFAULT_WAIT_SECONDS = 3.0
POLLER_INTERVAL_SECONDS = 1.0
WAIT_PARAMETER = 60
SUBMIT_CONCURRENCY = 32
# The store's deadline: a machine shared with other work can hold MariaDB's answers for
# seconds (as the tests' LOADED_STORE_TIMEOUT); a submit sent again after a 503 could
# make a query twice.
STORE_TIMEOUT_SECONDS = 10.0
# Long-polls sent at once, each batch once the previous one waits.
BATCH = 100
# How often the probe looks at the pool, and writes a line.
POOL_SAMPLE_SECONDS = 0.01
REPORT_SECONDS = 0.2
CONNECTION_SAMPLE_SECONDS = 0.05
SETTLE_TIMEOUT_SECONDS = 120.0
PROBE_PREFIX = "bench-probe "
POOL_SIZE = 10

# Goals.
RSS_GROWTH_MAX_MB = 50.0
DELAY_P99_MAX_SECONDS = 1.0


def query_sql(i: int) -> str:
    return f'SELECT {i} -- double: {{"hold": true}}'


# --- the near server, probed -----------------------------------------------------------


def raise_file_limit() -> None:
    """A socket per waiter: as many open files as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve_probed(config_path: str) -> None:
    """athenaq's `serve`, plus a line on stdout every REPORT_SECONDS: the requests
    waiting, the watcher's shared reads so far, and the most connections of the store's
    pool checked out at once since the last line."""
    from athenaq.config import load_config
    from athenaq.main import serve

    most = 0
    tasks: list[asyncio.Task[None]] = []

    async def sample(pool: Any) -> None:
        nonlocal most
        while True:
            most = max(most, pool.checkedout())
            await asyncio.sleep(POOL_SAMPLE_SECONDS)

    async def report(service: Any) -> None:
        nonlocal most
        watcher = service._ctx.watcher
        while True:
            await asyncio.sleep(REPORT_SECONDS)
            line = {
                "at": time.time(),
                "waiting": watcher.waiting,
                "reads": watcher.reads,
                "checked_out": most,
            }
            most = 0
            print(PROBE_PREFIX + json.dumps(line), flush=True)

    def started(service: Any) -> None:
        pool = service._store._sync.pool
        tasks.extend([asyncio.create_task(sample(pool)), asyncio.create_task(report(service))])

    try:
        await serve(load_config(config_path), started)
    finally:
        for task in tasks:
            task.cancel()


def serve(argv: list[str]) -> int:
    from athenaq.logs import setup_logging

    raise_file_limit()
    setup_logging(level="INFO")
    asyncio.run(serve_probed(argv[0]))
    return 0


# --- measurements ----------------------------------------------------------------------


def probes(log: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix(PROBE_PREFIX))
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(PROBE_PREFIX)
    ]


async def probe_until(log: Path, done: Callable[[dict[str, Any]], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        lines = probes(log)
        if lines and done(lines[-1]):
            return
        await asyncio.sleep(REPORT_SECONDS / 2)
    raise RuntimeError(f"{what} did not happen in {SETTLE_TIMEOUT_SECONDS:g} s")


@dataclass
class Waiting:
    """What the window with every request waiting showed."""

    started: float = 0.0  # time.time()
    ended: float = 0.0
    rss_before: int = 0
    rss_peak: int = 0
    cpu_seconds: float = 0.0
    reads: int = 0
    checked_out: int = 0
    store_connections: int = 0
    seconds_to_wait: float = 0.0


@dataclass
class Answers:
    answered: dict[str, float] = field(default_factory=dict)  # query id -> time.time()
    failures: list[str] = field(default_factory=list)
    again: int = 0  # long-polls that ended at their 60 s and were sent again


async def long_poll(
    http: aiohttp.ClientSession, base: str, query_id: str, answers: Answers
) -> None:
    """Wait for the query to finish, one long-poll at a time."""
    while True:
        try:
            async with http.get(f"{base}/query/{query_id}/status?wait={WAIT_PARAMETER}") as r:
                body = await r.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            answers.failures.append(f"{query_id}: {type(exc).__name__}: {exc}")
            return
        if r.status != 200:
            answers.failures.append(f"{query_id}: {r.status} {body}")
            return
        if body["state"] not in ("QUEUED", "RUNNING"):
            answers.answered[query_id] = time.time()
            if body["state"] != "SUCCEEDED":
                answers.failures.append(f"{query_id}: ended {body['state']}")
            return
        answers.again += 1


async def submit_all(http: aiohttp.ClientSession, bases: list[str], count: int) -> list[str]:
    ids: list[str | None] = [None] * count
    numbers = iter(range(count))

    async def submitter() -> None:
        for i in numbers:
            base = bases[i % len(bases)]
            async with http.post(f"{base}/query", json={"query": query_sql(i)}) as response:
                body = await response.json()
            if response.status != 202:
                raise RuntimeError(f"POST /query: {response.status} {body}")
            ids[i] = body["id"]

    await asyncio.gather(*(submitter() for _ in range(SUBMIT_CONCURRENCY)))
    return [i for i in ids if i is not None]


def store_connections(server: psutil.Process, port: int) -> int:
    """The server's open TCP connections to the store's port."""
    # net_connections from psutil 6 on; connections before.
    listing = getattr(server, "net_connections", None) or server.connections
    sockets = listing(kind="tcp")
    return sum(1 for s in sockets if s.raddr and s.raddr.port == port)


async def written_at(db_url: str) -> dict[str, float]:
    """When (time.time()) each query's move to SUCCEEDED began to be written: the time of
    its history row, taken before the transaction."""
    conn = await asyncmy.connect(**connect_args(db_url), autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT query_id, at FROM query_transitions WHERE to_state = 'SUCCEEDED'"
            )
            rows = await cur.fetchall()
    finally:
        await conn.ensure_closed()
    return {query_id: at.replace(tzinfo=UTC).timestamp() for query_id, at in rows}


def committed_at(logs: list[Path]) -> dict[str, float]:
    """When (time.time()) each query's move to SUCCEEDED was committed: the time of the
    `state changed` line its mover logs once the transaction returns."""
    found = {}
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"state changed"' in line:
                record = json.loads(line)
                if record.get("state") == "SUCCEEDED":
                    at = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
                    found[record["query_id"]] = at.timestamp()
    return found


async def measure(
    processes: Processes, work: Path, args: argparse.Namespace
) -> tuple[Waiting, dict[str, list[float]], Answers]:
    env = {**os.environ, **AWS_ENV}
    double_log = work / "double.log"
    double = processes.start(
        [sys.executable, str(ROOT / "tests" / "athena_double.py"), "--port", "0"],
        double_log,
        env,
    )
    endpoint = wait_for_line("athena double", double, double_log, engine_url)
    db_url = f"{args.db}/{args.database}"
    bases: dict[str, str] = {}
    children: dict[str, Any] = {}
    for name in ("near", "far"):
        document = athenaq_config(
            work, db_url, endpoint, POLLER_INTERVAL_SECONDS, max_running=args.waiters
        )
        document["database"].update(pool_size=POOL_SIZE, timeout_seconds=STORE_TIMEOUT_SECONDS)
        document["server"]["max_connections"] = args.waiters + 100
        config = work / f"{name}.json"
        config.write_text(json.dumps(document))
        log = work / f"{name}.log"
        command = (
            [__file__, "serve", str(config)]
            if name == "near"
            else ["-m", "athenaq", "serve", "--config", str(config)]
        )
        children[name] = processes.start([sys.executable, *command], log, env)
        bases[name] = wait_for_line(f"athenaq {name}", children[name], log, server_url)
        # The first server made the schema; the second finds it made.
    near_log = work / "near.log"
    near = psutil.Process(children["near"].pid)
    store_port = urlsplit(args.db).port or 3306
    waiting, answers = Waiting(), Answers()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=WAIT_PARAMETER + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        ids = await submit_all(http, [bases["near"], bases["far"]], args.waiters)
        near_ids = set(ids[0::2])
        await wait_until(
            db_url, lambda c: c.get("RUNNING", 0) == args.waiters, "every query RUNNING"
        )
        waiting.rss_before = int(near.memory_info().rss)
        sent_at = time.monotonic()
        polls: list[asyncio.Task[None]] = []
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            polls += [
                asyncio.create_task(long_poll(http, bases["near"], i, answers)) for i in batch
            ]
            count = len(polls)
            await probe_until(
                near_log, lambda line, count=count: line["waiting"] >= count, f"{count} waiting"
            )
            if answers.failures:
                raise RuntimeError(f"long-polls failed: {answers.failures[:3]}")
        waiting.seconds_to_wait = time.monotonic() - sent_at

        waiting.started, cpu = time.time(), cpu_seconds(near)
        reads = probes(near_log)[-1]["reads"]
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            waiting.rss_peak = max(waiting.rss_peak, int(near.memory_info().rss))
            waiting.store_connections = max(
                waiting.store_connections, store_connections(near, store_port)
            )
            await asyncio.sleep(CONNECTION_SAMPLE_SECONDS)
        waiting.ended, waiting.cpu_seconds = time.time(), cpu_seconds(near) - cpu
        # The probe's line written after the window covers its last moments.
        await asyncio.sleep(REPORT_SECONDS * 2)
        window = [p for p in probes(near_log) if waiting.started <= p["at"] <= waiting.ended]
        waiting.checked_out = max((p["checked_out"] for p in window), default=0)
        waiting.reads = window[-1]["reads"] - reads if window else 0

        os.kill(double.pid, signal.SIGUSR1)
        await asyncio.wait_for(asyncio.gather(*polls), SETTLE_TIMEOUT_SECONDS)
    if answers.failures or len(answers.answered) != len(ids):
        raise RuntimeError(f"{len(answers.failures)} waiters failed: {answers.failures[:3]}")
    written = await written_at(db_url)
    committed = committed_at([work / "near.log", near_log.with_name("far.log")])
    # For a look afterwards (--keep): when each query moved, and when its waiter heard.
    (work / "answers.json").write_text(
        json.dumps({"written": written, "committed": committed, **vars(answers)})
    )
    delays: dict[str, list[float]] = {"near": [], "far": [], "writes": []}
    for query_id, answered in answers.answered.items():
        mover = "near" if query_id in near_ids else "far"
        delays[mover].append(answered - committed[query_id])
        delays["writes"].append(committed[query_id] - written[query_id])
    return waiting, delays, answers


# --- report ----------------------------------------------------------------------------


def report(
    waiting: Waiting, delays: dict[str, list[float]], answers: Answers, args: argparse.Namespace
) -> str:
    growth = (waiting.rss_peak - waiting.rss_before) / MB
    seconds = waiting.ended - waiting.started
    every = delays["near"] + delays["far"]
    writes = delays["writes"]
    p99 = percentile(every, 0.99)
    lines = [
        f"| {args.waiters} long-polls waiting on one server | figure | goal |",
        "|---|---:|---|",
        f"| all waiting (s after the first was sent) | {waiting.seconds_to_wait:.1f} | |",
        f"| RSS before the waiters / growth to the peak (MB) | {waiting.rss_before / MB:.0f}"
        f" / {growth:.1f} | {verdict(growth < RSS_GROWTH_MAX_MB)}: growth under"
        f" {RSS_GROWTH_MAX_MB:g} MB |",
        f"| RSS growth per waiter (KB) | {growth * 1024 / args.waiters:.1f} | |",
        f"| most pool connections checked out at once while waiting | {waiting.checked_out}"
        f" | {verdict(waiting.checked_out <= POOL_SIZE)}: at most the pool ({POOL_SIZE}) |",
        f"| most open connections to the store while waiting | {waiting.store_connections}"
        f" | {verdict(waiting.store_connections <= POOL_SIZE)}: at most the pool |",
        f"| shared reads while waiting {seconds:.0f} s | {waiting.reads}"
        f" ({waiting.reads / seconds:.1f}/s) | |",
        f"| server CPU while waiting | {waiting.cpu_seconds / seconds:.1%} of a core | |",
    ]
    for name, what in (("near", "moved by the server itself"), ("far", "moved by the other")):
        values = delays[name]
        lines.append(
            f"| delay, {len(values)} queries {what}: p50 / p99 / max (ms)"
            f" | {percentile(values, 0.5) * 1000:.0f} / {percentile(values, 0.99) * 1000:.0f}"
            f" / {max(values, default=0) * 1000:.0f} | |"
        )
    lines += [
        f"| delay p99, all (ms) | {p99 * 1000:.0f}"
        f" | {verdict(p99 < DELAY_P99_MAX_SECONDS)}: under {DELAY_P99_MAX_SECONDS * 1000:g} ms |",
        f"| the moves' own transactions: p50 / p99 (ms) | {percentile(writes, 0.5) * 1000:.0f}"
        f" / {percentile(writes, 0.99) * 1000:.0f} | |",
        "",
        f"Delay: from the commit of the query's move to SUCCEEDED (the mover's `state changed`"
        f" line, logged once the transaction returns) to the waiter's answer at the client,"
        f" while all {args.waiters} queries end at once (each server storing its half). The"
        f" moves' own transactions run from the time in their history row to that line."
        f" Long-polls sent again after their {WAIT_PARAMETER} s: {answers.again}.",
        f"Machine: {machine(' '.join(f'{v:.2f}' for v in os.getloadavg()))}",
    ]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


async def run(processes: Processes, work: Path, args: argparse.Namespace) -> str:
    await execute(args.db, f"DROP DATABASE IF EXISTS `{args.database}`")
    try:
        waiting, delays, answers = await measure(processes, work, args)
        return report(waiting, delays, answers, args)
    finally:
        processes.stop_all()
        await execute(args.db, f"DROP DATABASE IF EXISTS `{args.database}`")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--waiters",
        type=int,
        default=DEFAULT_WAITERS,
        help=f"long-polls, one per query (default {DEFAULT_WAITERS})",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        help=f"seconds measured with every request waiting (default {DEFAULT_WAIT_SECONDS:g})",
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"MariaDB server (default {DEFAULT_DB})")
    parser.add_argument(
        "--database",
        default=f"athenaq_longpoll_bench_{os.getpid()}",
        help="the database created and dropped",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = parser.parse_args(argv)
    if args.waiters < 2 or args.wait <= 0:
        parser.error("--waiters must be at least 2 and --wait positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    args = parse_args(argv)
    raise_file_limit()
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
