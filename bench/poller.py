"""Benchmark of athenaq's poller with many queries in flight: what waiting costs, and how
fast tiny results are stored once Athena finishes them.

    python bench/poller.py                            # small: 300 queries, for CI
    python bench/poller.py --queries 5000 --wait 30
    python bench/poller.py --queries 5000 --source ../other-checkout   # another commit

Starts, as separate processes, the scripted Athena endpoint (tests/athena_double.py) and
one athenaq server (`python bench/poller.py serve`: the service as `athenaq serve` runs
it, plus a probe of its event loop) on a fresh MariaDB database, with a poller interval
of `--interval` seconds. It submits `--queries` queries that Athena holds RUNNING (script
`hold`), waits until athenaq has sent them all and seen them RUNNING, then measures
`--wait` seconds of waiting: the poller's tick durations against its interval, the
server's CPU (its own user + system time over the wall time), `GET /health` latency
(one request at a time, every HEALTH_PROBE_SECONDS) and the longest the event loop was
held (a task that sleeps LAG_PROBE_SECONDS at a time and records how late it wakes).
Then the endpoint ends every query SUCCEEDED at once (SIGUSR1) with a one-row result,
and it measures how fast athenaq stores them all, and the same loop and `/health`
figures meanwhile. Exits non-zero when a query does not end SUCCEEDED with its row, or
a request fails; a goal missed is a figure, not a failure.

The goals are those of the poller in the fleet issue: every tick within its interval,
under 25% of a core while waiting, `/health` p99 under 100 ms, and at least 300 tiny
results stored per second. The loop-hold figure has its own goal: about 20 ms at most.

Needs MariaDB at --db (root, empty password by default) and `pip install -e . --group bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncmy
import psutil  # type: ignore[import-untyped]
from service import connect_args, execute, machine

from results import (
    AWS_ENV,
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
DEFAULT_QUERIES = 300
DEFAULT_WAIT_SECONDS = 3.0
DEFAULT_INTERVAL_SECONDS = 1.0
SUBMIT_CONCURRENCY = 32
# Tries of one submit answered 503 or 429, each after the Retry-After it gave.
SUBMIT_ATTEMPTS = 10
HEALTH_PROBE_SECONDS = 0.05
# The loop probe's sleep: short enough to see a hold of a few ms, long enough that its
# own wake-ups cost the server nothing measurable.
LAG_PROBE_SECONDS = 0.01
# How often the server writes its probe's figures, and the bench reads the store.
REPORT_SECONDS = 0.5
STATE_POLL_SECONDS = 0.1
SETTLE_TIMEOUT_SECONDS = 600.0
STORE_TIMEOUT_SECONDS = 10.0
PROBE_PREFIX = "bench-probe "

# Goals.
CPU_WAITING_MAX = 0.25
HEALTH_P99_MAX_MS = 100.0
STORED_PER_SECOND_MIN = 300.0
LOOP_HOLD_MAX_MS = 20.0


def query_sql(i: int) -> str:
    script = {"hold": True, "columns": [["n", "integer"], ["label", "varchar"]]}
    script["rows"] = [[i, f"query {i}"]]
    return f"SELECT {i} AS n, 'query {i}' AS label -- double: {json.dumps(script)}"


# --- the server, with its loop probed --------------------------------------------------


async def serve_probed(config_path: str) -> None:
    """athenaq's `serve`, plus a line on stdout every REPORT_SECONDS: the durations of the
    ticks that ended since the last line, the longest loop hold meanwhile and the longest
    garbage collection."""
    from athenaq.config import load_config
    from athenaq.main import serve

    longest = longest_gc = collecting = 0.0
    tasks: list[asyncio.Task[None]] = []

    def collected(phase: str, info: dict[str, int]) -> None:
        nonlocal collecting, longest_gc
        if phase == "start":
            collecting = time.perf_counter()
        else:
            longest_gc = max(longest_gc, time.perf_counter() - collecting)

    async def probe() -> None:
        nonlocal longest
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            longest = max(longest, time.perf_counter() - before - LAG_PROBE_SECONDS)

    async def report(service: Any) -> None:
        nonlocal longest, longest_gc
        seen = 0
        while service.poller is not None:
            await asyncio.sleep(REPORT_SECONDS)
            poller = service.poller
            if poller is None:
                break
            new = min(poller.ticks - seen, len(poller.tick_seconds))
            ticks = list(poller.tick_seconds)[len(poller.tick_seconds) - new :]
            seen = poller.ticks
            line = {"at": time.time(), "ticks": ticks, "hold": longest, "gc": longest_gc}
            longest = longest_gc = 0.0
            print(PROBE_PREFIX + json.dumps(line), flush=True)

    def started(service: Any) -> None:
        tasks.extend([asyncio.create_task(probe()), asyncio.create_task(report(service))])

    gc.callbacks.append(collected)
    try:
        if "started" in inspect.signature(serve).parameters:
            await serve(load_config(config_path), started)
        else:  # an athenaq from before the hook (--source): served here the same way
            from athenaq.app import Service

            stopping = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
            service = Service(load_config(config_path))
            await service.start()
            started(service)
            await stopping.wait()
            await service.stop()
    finally:
        for task in tasks:
            task.cancel()


def serve(argv: list[str]) -> int:
    from athenaq.logs import setup_logging

    setup_logging(level="INFO")
    asyncio.run(serve_probed(argv[0]))
    return 0


# --- measurements ----------------------------------------------------------------------


@dataclass
class Phase:
    """What one window (waiting, or storing) showed."""

    started: float = 0.0  # time.time()
    ended: float = 0.0
    cpu_seconds: float = 0.0
    health: list[float] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)
    hold: float = 0.0
    gc: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def cpu(self) -> float:
        return self.cpu_seconds / self.seconds

    def health_p99_ms(self) -> float:
        return percentile(self.health, 0.99) * 1000

    def collect(self, probes: list[dict[str, Any]]) -> None:
        """Take the server's probe lines written in this window."""
        for line in probes:
            # A line covers the REPORT_SECONDS before it.
            if self.started + REPORT_SECONDS <= line["at"] <= self.ended:
                self.ticks += line["ticks"]
                self.hold = max(self.hold, line["hold"])
                self.gc = max(self.gc, line["gc"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Health:
    """GET /health, one at a time, recording each answer's latency."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base
        self.latencies: list[float] = []
        self.failures: list[str] = []

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            async with self.http.get(f"{self.base}/health") as response:
                await response.read()
            self.latencies.append(time.perf_counter() - started)
            if response.status != 200:
                self.failures.append(f"GET /health: {response.status}")
            await asyncio.sleep(HEALTH_PROBE_SECONDS)


async def states(db_url: str) -> dict[str, int]:
    conn = await asyncmy.connect(**connect_args(db_url), autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT state, COUNT(*), COUNT(athena_execution_id) FROM queries GROUP BY state"
            )
            counts: dict[str, int] = {}
            for state, count, sent in await cur.fetchall():
                counts[state] = count
                if state == "QUEUED":
                    counts["QUEUED sent"] = sent
            return counts
    finally:
        await conn.ensure_closed()


async def wait_until(
    db_url: str, done: Callable[[dict[str, int]], bool], what: str
) -> dict[str, int]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        counts = await states(db_url)
        if done(counts):
            return counts
        await asyncio.sleep(STATE_POLL_SECONDS)
    raise RuntimeError(f"{what} did not happen in {SETTLE_TIMEOUT_SECONDS:g} s: {counts}")


async def submit_all(http: aiohttp.ClientSession, base: str, count: int) -> list[str]:
    ids: list[str] = []
    numbers = iter(range(count))

    async def submitter() -> None:
        for i in numbers:
            ids.append(await submit(http, base, i))

    await asyncio.gather(*(submitter() for _ in range(SUBMIT_CONCURRENCY)))
    return ids


async def submit(http: aiohttp.ClientSession, base: str, i: int) -> str:
    """POST query `i`, sent again after a 503 or 429 as a client should (a machine this
    loaded can hold the store past its deadline): its Idempotency-Key makes a repeat the
    same query, never a second one."""
    for _ in range(SUBMIT_ATTEMPTS):
        async with http.post(
            f"{base}/query",
            json={"query": query_sql(i)},
            headers={"Idempotency-Key": f"bench-poller-{i}"},
        ) as response:
            body = await response.json()
        if response.status == 202:
            return str(body["id"])
        if response.status not in (429, 503):
            break
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    raise RuntimeError(f"POST /query: {response.status} {body}")


async def check_results(http: aiohttp.ClientSession, base: str, ids: list[str]) -> None:
    """A sample of the results is what each query's script said."""
    for query_id in ids[:: max(1, len(ids) // 20)]:
        async with http.get(f"{base}/query/{query_id}/status") as response:
            status = await response.json()
        async with http.get(f"{base}/query/{query_id}/results") as response:
            body = await response.json()
        n = int(status["query"].split()[1])
        columns = [{"name": "n", "type": "integer"}, {"name": "label", "type": "varchar"}]
        if body.get("columns") != columns or body.get("rows") != [[str(n), f"query {n}"]]:
            raise RuntimeError(f"wrong results for {query_id}: {body}")


async def measure(
    processes: Processes, work: Path, args: argparse.Namespace
) -> tuple[Phase, Phase, float]:
    env = {**os.environ, **AWS_ENV}
    double_log = work / "double.log"
    double = processes.start(
        [sys.executable, str(ROOT / "tests" / "athena_double.py"), "--port", "0"],
        double_log,
        env,
    )
    endpoint = wait_for_line("athena double", double, double_log, engine_url)
    db_url = f"{args.db}/{args.database}"
    config = work / "athenaq.json"
    config.write_text(json.dumps(poller_config(work, db_url, endpoint, args)))
    log = work / "athenaq.log"
    server_env = {**env, "PYTHONPATH": args.source} if args.source else env
    child = processes.start([sys.executable, __file__, "serve", str(config)], log, server_env)
    base = wait_for_line("athenaq", child, log, server_url)
    server = psutil.Process(child.pid)
    waiting, storing = Phase(), Phase()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        ids = await submit_all(http, base, args.queries)
        await wait_until(
            db_url, lambda c: c.get("RUNNING", 0) == args.queries, "every query RUNNING"
        )
        health = Health(http, base)
        probing = asyncio.create_task(health.run())
        try:
            waiting.started, cpu = time.time(), cpu_seconds(server)
            await asyncio.sleep(args.wait)
            waiting.ended, waiting.cpu_seconds = time.time(), cpu_seconds(server) - cpu
            waiting.health, health.latencies = health.latencies, []
            storing.started, cpu = time.time(), cpu_seconds(server)
            os.kill(double.pid, signal.SIGUSR1)
            counts = await wait_until(
                db_url,
                lambda c: c.get("QUEUED", 0) + c.get("RUNNING", 0) == 0,
                "every query finished",
            )
            storing.ended, storing.cpu_seconds = time.time(), cpu_seconds(server) - cpu
            storing.health = health.latencies
        finally:
            probing.cancel()
        if counts.get("SUCCEEDED", 0) != args.queries or health.failures:
            raise RuntimeError(f"queries ended {counts}; {health.failures[:3]}")
        await check_results(http, base, ids)
    # The probe's lines of the last moments are in the log once the server has written
    # them: one more report period.
    await asyncio.sleep(REPORT_SECONDS * 2)
    probes = [
        json.loads(line.removeprefix(PROBE_PREFIX))
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(PROBE_PREFIX)
    ]
    waiting.collect(probes)
    storing.collect(probes)
    return waiting, storing, args.queries / storing.seconds


# --- report ----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(
    waiting: Phase, storing: Phase, stored_rate: float, args: argparse.Namespace, load: str
) -> str:
    interval = args.interval
    over = sum(t > interval for t in waiting.ticks)
    tick_max = max(waiting.ticks, default=0.0)
    tick_p95 = percentile(waiting.ticks, 0.95)
    source = f"athenaq from {args.source}" if args.source else "athenaq from this tree"
    lines = [
        f"| {args.queries} queries, interval {interval:g} s, {source} | figure | goal |",
        "|---|---:|---|",
        f"| waiting {waiting.seconds:.0f} s: ticks | {len(waiting.ticks)} | |",
        f"| tick max / p95 (ms) | {tick_max * 1000:.0f} / {tick_p95 * 1000:.0f}"
        f" | {verdict(over == 0)}: every tick within {interval * 1000:.0f} ms ({over} over) |",
        f"| server CPU while waiting | {waiting.cpu:.0%} of a core"
        f" | {verdict(waiting.cpu < CPU_WAITING_MAX)}: under {CPU_WAITING_MAX:.0%} |",
        f"| /health p99 while waiting (ms) | {waiting.health_p99_ms():.1f}"
        f" | {verdict(waiting.health_p99_ms() < HEALTH_P99_MAX_MS)}: under"
        f" {HEALTH_P99_MAX_MS:g} ms |",
        f"| longest loop hold while waiting (ms) | {waiting.hold * 1000:.1f}"
        f" | {verdict(waiting.hold * 1000 <= LOOP_HOLD_MAX_MS)}: about"
        f" {LOOP_HOLD_MAX_MS:g} ms |",
        f"| of which the longest garbage collection (ms) | {waiting.gc * 1000:.1f} | |",
        f"| storing: {args.queries} one-row results stored in (s) | {storing.seconds:.1f} | |",
        f"| tiny results stored per second | {stored_rate:.0f}"
        f" | {verdict(stored_rate >= STORED_PER_SECOND_MIN)}: at least"
        f" {STORED_PER_SECOND_MIN:g} |",
        f"| server CPU while storing | {storing.cpu:.0%} of a core | |",
        f"| /health p99 while storing (ms) | {storing.health_p99_ms():.1f} | |",
        f"| longest loop hold while storing (ms) | {storing.hold * 1000:.1f} | |",
        f"| of which the longest garbage collection (ms) | {storing.gc * 1000:.1f} | |",
        "",
        f"Stored per second: from Athena finishing them all (one signal to the endpoint) to"
        f" the last SUCCEEDED, so it includes up to one interval before the next tick sees"
        f" them. /health median while waiting"
        f" {statistics.median(waiting.health or [0]) * 1000:.1f} ms.",
        f"Machine: {machine(load)}",
    ]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def poller_config(
    work: Path, db_url: str, endpoint: str, args: argparse.Namespace
) -> dict[str, Any]:
    # Every query in flight runs in Athena at once (admission control would keep all but
    # 20 QUEUED); a --source from before it lacks the key.
    athena: dict[str, Any] = {} if args.uncapped else {"max_running": args.queries}
    document = athenaq_config(work, db_url, endpoint, args.interval, **athena)
    # On a loaded machine, thousands of submits and their queries' first moves at once keep
    # the pool busy past the 1.5 s deadline: a submit's 503 would end the run before the
    # measures begin.
    document["database"]["timeout_seconds"] = STORE_TIMEOUT_SECONDS
    return document


async def run(processes: Processes, work: Path, args: argparse.Namespace) -> str:
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    await execute(args.db, f"DROP DATABASE IF EXISTS `{args.database}`")
    try:
        waiting, storing, rate = await measure(processes, work, args)
        return report(waiting, storing, rate, args, load)
    finally:
        processes.stop_all()
        await execute(args.db, f"DROP DATABASE IF EXISTS `{args.database}`")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--queries",
        type=int,
        default=DEFAULT_QUERIES,
        help=f"queries in flight (default {DEFAULT_QUERIES})",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        help=f"seconds measured while Athena holds them (default {DEFAULT_WAIT_SECONDS:g})",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_SECONDS,
        help=f"athenaq's poller interval (default {DEFAULT_INTERVAL_SECONDS:g} s)",
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"MariaDB server (default {DEFAULT_DB})")
    parser.add_argument(
        "--database",
        default=f"athenaq_poller_bench_{os.getpid()}",
        help="the database created and dropped",
    )
    parser.add_argument(
        "--source",
        metavar="DIR",
        help="run the athenaq of this source tree (another commit, e.g. from"
        " `git worktree add`) instead of the installed one",
    )
    parser.add_argument(
        "--uncapped",
        action="store_true",
        help="give no athena.max_running: for a --source from before admission control",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = parser.parse_args(argv)
    if args.source:
        args.source = os.path.abspath(args.source)
    if args.queries < 1 or args.wait <= 0 or args.interval <= 0:
        parser.error("--queries, --wait and --interval must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
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
