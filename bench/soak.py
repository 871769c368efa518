"""Soak benchmark: a fleet of athenaq processes under mixed load for minutes, through a
store cut and an Athena cut, watched for leaks, lost or stuck queries, and 5xx answers.

    python bench/soak.py                  # the figure run: 10 minutes
    python bench/soak.py --minutes 0.1    # a smoke run of about 50 s, for CI

Starts, as separate processes, the scripted Athena endpoint (tests/athena_double.py) and
three `athenaq serve` on one fresh MariaDB database and one results folder. Each reaches
the store through one TCP proxy and the endpoint (Athena and S3) through another, both
run by this process (tests/tcpproxy.py), so that the middle of the run can cut them:

- at 40% of the run, the store: every connection closed, new ones refused, for
  `--cut-seconds` (10 by default): requests should answer 503 store_unavailable meanwhile;
- at 65%, the Athena endpoint, the same way: no query should fail of it.

The load comes from this process at `--rate` requests per second, spread over the three
processes: submits (scripted queries that run 0 to 2 s, a tenth failing by script, some
running 5 to 20 s for cancels to catch, some of 20,000 rows), status reads, CSV
downloads (their rows counted), cancels and refreshes. Every answer is counted by phase
(the cancels' answers and the slowest apart); any 5xx but 503 is printed when it comes.

Every minute (more often in a run shorter than five minutes), each athenaq process's RSS
(/proc/<pid>/status) and its descriptors (/proc/<pid>/fd), told apart by what they are
(sockets by their ports in /proc/net/tcp): its store pool's connections (to the store's
proxy), its Athena and S3 clients' (to the endpoint's proxy), requests' connections (to
its own port), result files open, and the other descriptors (its listening socket, the
event loop's, the log, other files). Each count is the fewest of ten reads over a
second (those held: those of the requests and calls in flight come and go), and the
most. After the load has ended and the queries with it, the last sample waits until the
clients have closed their idle connections.

After the load, the queries are given time to end; then the benchmark prints the lost
ones (accepted, then unknown), the stuck ones (still QUEUED or RUNNING), the ones whose
end is not their script's (a FAILED query that had no failure scripted), downloads with
the wrong row count, histories that are no legal path, ERROR lines in the logs, and each
process's exit status after SIGTERM. Goals: RSS flat (every sample within 10% of the
one at the end of the warm-up, two minutes, in which the pools grow to the concurrency
the load reaches); the pools' connections within the pools' sizes at every read
(database.pool_size; 50 for each of the three AWS clients); the other descriptors flat
(within 10%, as RSS); idle at the end, no request's connection, result file, or Athena
or S3 connection left; 0 lost, 0 stuck, 0 unexpected 5xx. It exits non-zero when a
query is lost, stuck or ended wrong, a 5xx other than 503 or a request without an answer
happened, or a process did not exit 0; not on RSS or descriptors.

Needs MariaDB at --db (root, empty password by default; the database
`athenaq_soak_<pid>` is made and dropped) and `pip install -e . --group bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from service import execute
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from athenaq.athena import POOL_CONNECTIONS
from athenaq.config import DatabaseConfig
from athenaq.store import Store
from results import (
    AWS_ENV,
    Processes,
    athenaq_config,
    engine_url,
    guarded,
    machine,
    server_url,
    wait_for_line,
)

ROOT = Path(__file__).resolve().parent.parent
# The proxy and the history check are shared with the tests; neither imports pytest.
sys.path.insert(0, str(ROOT))
from tests.histories import illegal_move  # noqa: E402
from tests.tcpproxy import TcpProxy  # noqa: E402

DEFAULT_DB = "mysql://root:@127.0.0.1:3306"
PROCESSES = 3
# Of the run: when the store is cut, then the Athena endpoint.
STORE_CUT_AT = 0.40
ATHENA_CUT_AT = 0.65
# The warm-up: two minutes, long enough for the pools to grow to the concurrency the load
# reaches, or the first fifth of a shorter run.
WARMUP_SECONDS = 120.0
WARMUP_SHARE = 0.2
FLAT_WITHIN = 0.10
# Requests in flight at most; a request due beyond it is skipped (and counted).
MAX_IN_FLIGHT = 64
REQUEST_TIMEOUT_SECONDS = 30.0
# The queries' ends are awaited this long after the load, at most.
SETTLE_SECONDS = 90.0
# How often each action is picked.
ACTIONS = {"submit": 3, "status": 8, "download": 2, "cancel": 1, "refresh": 1}
# Per submit: what its script makes it (the kinds' shares).
KINDS = {"quick": 0.70, "fail": 0.10, "long": 0.15, "large": 0.05}
LARGE_ROWS = 20_000
LONG_RUN_SECONDS = (5.0, 20.0)
# Descriptors are read this many times over a second at each sample.
FD_READS = 10
# What each descriptor of an athenaq process is: a connection of its store pool (to the
# store's proxy), of its Athena and S3 clients (to the endpoint's proxy), a request's
# connection (to its own port), a result file open, or anything else (its listening
# socket, the event loop's own descriptors, the log, other files).
STORE, ATHENA, REQUESTS, RESULTS, OTHER = "store", "athena", "requests", "results", "other"
CLASSES = (STORE, ATHENA, REQUESTS, RESULTS, OTHER)
# Connections the Athena and S3 clients of a process (Athena, Athena tried once, S3) keep
# open at most, together.
ATHENA_POOL = 3 * POOL_CONNECTIONS
# The clients close a connection idle this long (aiohttp's keep-alive under aiobotocore),
# looking for them once per that time: after the load, the last sample waits out twice
# that, and a few ticks more.
KEEPALIVE_SECONDS = float(AioConfig().connector_args["keepalive_timeout"])
IDLE_SECONDS = 2 * KEEPALIVE_SECONDS + 3.0
# /proc/net/tcp's hex code of a listening socket.
TCP_LISTEN = "0A"


@dataclass
class Tracked:
    """A query this benchmark submitted, as it last heard of it."""

    kind: str
    rows: int
    state: str = "QUEUED"
    # A cancel was accepted (200 or 202), or answered 503, which may have been after its
    # mark was written (a write cut short by the store may have been done, says the API):
    # CANCELLED is then a right end.
    cancelled: bool = False
    refreshes: int = 0


@dataclass
class Phase:
    """The answers of one part of the run."""

    name: str
    codes: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    slowest_503: float = 0.0
    # The cancels' answers, and the longest one took (seconds).
    cancels: collections.Counter[int] = field(default_factory=collections.Counter)
    slowest_cancel: float = 0.0


@dataclass
class Sample:
    at: float  # seconds since the load began
    rss_mb: float
    # Per class of descriptor: the fewest of FD_READS reads over a second (those held;
    # those of the requests and calls in flight come and go), and the most.
    held: dict[str, int]
    peak: dict[str, int]

    @property
    def fds(self) -> int:
        return sum(self.held.values())


class Soak:
    def __init__(self, urls: list[str], args: argparse.Namespace) -> None:
        self.urls = urls
        self.args = args
        self.rng = random.Random(args.seed)
        self.http = AsyncHTTPClient(max_clients=MAX_IN_FLIGHT)
        self.queries: dict[str, Tracked] = {}
        self.phases: list[Phase] = [Phase("before the cuts")]
        self.unexpected: list[str] = []  # 5xx other than 503
        self.no_answer: list[str] = []  # timeouts, refused connections
        self.actions: collections.Counter[str] = collections.Counter()
        self.skipped = 0
        self.bad_downloads: list[str] = []
        self.in_flight = 0
        self.submitted = 0
        self.started = time.monotonic()

    @property
    def phase(self) -> Phase:
        return self.phases[-1]

    def begin(self, name: str) -> None:
        self.phases.append(Phase(name))
        print(f"[{self.elapsed():7.1f} s] {name}", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def request(
        self, method: str, path: str, body: Any = None, url: str | None = None
    ) -> HTTPResponse:
        base = url or self.rng.choice(self.urls)
        raw = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        phase, began = self.phase, time.monotonic()
        response = await self.http.fetch(
            base + path,
            method=method,
            body=raw,
            headers={"Content-Type": "application/json"} if body is not None else None,
            raise_error=False,
            request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        took = time.monotonic() - began
        phase.codes[response.code] += 1
        phase.latencies.append(took)
        if path.endswith("/cancel"):
            phase.cancels[response.code] += 1
            phase.slowest_cancel = max(phase.slowest_cancel, took)
        what = f"{method} {path} at {base}: {response.code}"
        if response.code == 503:
            phase.slowest_503 = max(phase.slowest_503, took)
        elif response.code == 599:
            self.no_answer.append(f"{what} {response.error}")
            print(f"[{self.elapsed():7.1f} s] no answer: {what} {response.error}", flush=True)
        elif response.code >= 500:
            text = (response.body or b"")[:300].decode(errors="replace")
            self.unexpected.append(f"{what} {text}")
            print(f"[{self.elapsed():7.1f} s] unexpected {what} {text}", flush=True)
        return response

    # --- the actions -----------------------------------------------------------------

    def script(self) -> tuple[str, str, int]:
        kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        rows = self.rng.randint(1, 2000)
        directive: dict[str, Any] = {"run_ms": self.rng.randint(0, 2000), "generate": rows}
        if kind == "fail":
            directive = {"run_ms": self.rng.randint(0, 1000), "fail": "failed by its script"}
            rows = 0
        elif kind == "long":
            low, high = (s * self.args.scale for s in LONG_RUN_SECONDS)
            directive["run_ms"] = round(self.rng.uniform(low, high) * 1000)
        elif kind == "large":
            rows = directive["generate"] = LARGE_ROWS
        self.submitted += 1
        return kind, f"SELECT {self.submitted} -- double: {json.dumps(directive)}", rows

    async def submit(self) -> None:
        kind, sql, rows = self.script()
        response = await self.request("POST", "/query", {"query": sql})
        if response.code == 202:
            self.queries[json.loads(response.body)["id"]] = Tracked(kind, rows)

    def pick(self, wanted: Callable[[Tracked], bool] | None = None) -> str | None:
        """A query, recent ones more often; None when none is `wanted`."""
        ids = list(self.queries)
        if not ids:
            return None
        recent = ids[-200:]
        for _ in range(20):
            query_id = self.rng.choice(recent if self.rng.random() < 0.7 else ids)
            if wanted is None or wanted(self.queries[query_id]):
                return query_id
        return None

    async def status(self, query_id: str | None = None) -> None:
        query_id = query_id or self.pick()
        if query_id is None:
            return
        response = await self.request("GET", f"/query/{query_id}/status")
        if response.code == 200:
            self.queries[query_id].state = json.loads(response.body)["state"]

    async def download(self) -> None:
        query_id = self.pick(lambda q: q.state == "SUCCEEDED")
        if query_id is None:
            return await self.status()
        response = await self.request("GET", f"/query/{query_id}/results?format=csv")
        if response.code == 200:
            lines = response.body.count(b"\n")
            expected = self.queries[query_id].rows + 1  # the header row
            if lines != expected:
                self.bad_downloads.append(f"{query_id}: {lines} lines, not {expected}")
        elif response.code == 409:
            self.queries[query_id].state = "RUNNING"  # refreshed meanwhile, say
        return None

    async def cancel(self) -> None:
        query_id = self.pick(lambda q: q.state in ("QUEUED", "RUNNING") and q.kind == "long")
        query_id = query_id or self.pick(lambda q: q.state in ("QUEUED", "RUNNING"))
        if query_id is None:
            return await self.status()
        response = await self.request("POST", f"/query/{query_id}/cancel")
        if response.code in (200, 202, 503):
            self.queries[query_id].cancelled = True
        return None

    async def refresh(self) -> None:
        query_id = self.pick(
            lambda q: q.state in ("SUCCEEDED", "FAILED", "CANCELLED") and q.refreshes < 3
        )
        if query_id is None:
            return await self.status()
        response = await self.request("POST", f"/query/{query_id}/refresh")
        if response.code == 202:
            tracked = self.queries[query_id]
            # A new run: its end is its script's again.
            tracked.state, tracked.cancelled = "QUEUED", False
            tracked.refreshes += 1
        return None

    async def load(self, seconds: float) -> None:
        """Requests at `--rate` per second for `seconds`, each its own task."""
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "submit": self.submit,
            "status": self.status,
            "download": self.download,
            "cancel": self.cancel,
            "refresh": self.refresh,
        }
        names, weights = list(ACTIONS), list(ACTIONS.values())
        tasks: set[asyncio.Task[None]] = set()
        period = 1 / self.args.rate
        due = time.monotonic()
        end = due + seconds
        while (now := time.monotonic()) < end:
            if now < due:
                await asyncio.sleep(due - now)
                continue
            due += period
            if self.in_flight >= MAX_IN_FLIGHT:
                self.skipped += 1
                continue
            name = self.rng.choices(names, weights=weights)[0]
            self.actions[name] += 1
            task = asyncio.ensure_future(self._counted(actions[name]()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def _counted(self, action: Awaitable[None]) -> None:
        self.in_flight += 1
        try:
            await action
        finally:
            self.in_flight -= 1

    async def settle(self, seconds: float) -> list[str]:
        """Read the status of every query not known finished until none is left or
        `seconds` pass; the ids still unfinished (stuck)."""
        deadline = time.monotonic() + seconds
        while True:
            unfinished = [i for i, q in self.queries.items() if q.state in ("QUEUED", "RUNNING")]
            if not unfinished or time.monotonic() > deadline:
                return unfinished
            for start in range(0, len(unfinished), 16):
                await asyncio.gather(*(self.status(i) for i in unfinished[start : start + 16]))
            await asyncio.sleep(1)


# --- processes and their measures ---------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def tcp_sockets() -> dict[str, tuple[int, int, str]]:
    """Every TCP socket of this network namespace (the athenaq processes', the proxies')
    by inode: its local port, its remote port, its state (/proc/net/tcp's hex code)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(f.rpartition(":")[2], 16) for f in fields[1:3])
                found[fields[9]] = (local, remote, fields[3])
    return found


@dataclass(frozen=True)
class Ports:
    """What tells an athenaq process's descriptors apart."""

    store: int  # the store proxy's port
    athena: int  # the Athena endpoint proxy's port
    results: str  # the results folder


def descriptors(
    pid: int, own_port: int, ports: Ports, tcp: dict[str, tuple[int, int, str]]
) -> dict[str, int]:
    """How many descriptors `pid` holds now, by class (see CLASSES)."""
    counts = dict.fromkeys(CLASSES, 0)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed since the listing
        kind = OTHER
        if target.startswith("socket:["):
            local, remote, state = tcp.get(target[8:-1], (0, 0, ""))
            if remote == ports.store:
                kind = STORE
            elif remote == ports.athena:
                kind = ATHENA
            elif local == own_port and state != TCP_LISTEN:
                kind = REQUESTS
        elif target.startswith(ports.results):
            kind = RESULTS
        counts[kind] += 1
    return counts


class Watch:
    """RSS and descriptors of each athenaq process, sampled and printed."""

    def __init__(self, pids: list[int], own_ports: list[int], ports: Ports, soak: Soak) -> None:
        self.pids = pids
        self.own_ports = dict(zip(pids, own_ports, strict=True))
        self.ports = ports
        self.soak = soak
        self.samples: dict[int, list[Sample]] = {pid: [] for pid in pids}

    def read(self) -> dict[int, dict[str, int]]:
        tcp = tcp_sockets()
        return {pid: descriptors(pid, self.own_ports[pid], self.ports, tcp) for pid in self.pids}

    async def sample(self) -> None:
        """RSS now, and the descriptors over the next second by class: the fewest and
        the most of FD_READS reads."""
        at = self.soak.elapsed()
        reads = [self.read()]
        for _ in range(FD_READS - 1):
            await asyncio.sleep(1 / FD_READS)
            reads.append(self.read())
        parts = []
        for n, pid in enumerate(self.pids):
            held = {c: min(r[pid][c] for r in reads) for c in CLASSES}
            peak = {c: max(r[pid][c] for r in reads) for c in CLASSES}
            sample = Sample(at, rss_mb(pid), held, peak)
            self.samples[pid].append(sample)
            classes = ", ".join(f"{c} {held[c]}" for c in CLASSES)
            parts.append(
                f"athenaq {n + 1}: RSS {sample.rss_mb:6.1f} MB, {sample.fds:3d} fds ({classes})"
            )
        print(f"[{at:7.1f} s] " + "\n            ".join(parts), flush=True)

    async def every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds - (self.soak.elapsed() % seconds))
            await self.sample()

    def judged(self, warmup: float, pool_size: int) -> list[Judged]:
        """Per process, against the sample at the end of the warm-up: the largest move
        of RSS and of the other descriptors after it (the idle sample included); the
        most connections each pool had at any read; and what the idle sample, taken once
        the load ended and idle connections timed out, still held of what comes and goes."""
        judged = []
        for samples in self.samples.values():
            after = [s for s in samples if s.at >= warmup * 0.9]
            reference, idle = after[0], samples[-1]
            judged.append(
                Judged(
                    reference=reference,
                    idle=idle,
                    rss=max(abs(s.rss_mb - reference.rss_mb) for s in after) / reference.rss_mb,
                    other=max(abs(s.held[OTHER] - reference.held[OTHER]) for s in after),
                    store_peak=max(s.peak[STORE] for s in samples),
                    athena_peak=max(s.peak[ATHENA] for s in samples),
                    pool_size=pool_size,
                )
            )
        return judged


@dataclass
class Judged:
    reference: Sample  # at the end of the warm-up
    idle: Sample  # after the load, idle
    rss: float  # the largest move after the warm-up, a share of the reference
    other: int  # the largest move of the other descriptors after the warm-up
    store_peak: int
    athena_peak: int
    pool_size: int

    @property
    def other_share(self) -> float:
        return self.other / max(1, self.reference.held[OTHER])

    @property
    def pools_bounded(self) -> bool:
        return self.store_peak <= self.pool_size and self.athena_peak <= ATHENA_POOL

    @property
    def idle_clear(self) -> bool:
        """Nothing left of requests, result files, Athena or S3 connections once idle."""
        return all(self.idle.held[c] == 0 for c in (REQUESTS, RESULTS, ATHENA))


async def histories(db_url: str, ids: list[str]) -> tuple[list[str], int]:
    """The queries whose history is no legal path, and the number of transitions read."""
    store = await Store.connect(db_url, maxsize=4)
    illegal, moves_read = [], 0
    try:
        for start in range(0, len(ids), 32):
            chunk = ids[start : start + 32]
            for query_id, history in zip(
                chunk, await asyncio.gather(*(store.history(i) for i in chunk)), strict=True
            ):
                moves = [(h.from_state, h.to_state) for h in history]
                moves_read += len(moves)
                if (bad := illegal_move(moves)) is not None:
                    illegal.append(f"{query_id}: {bad} in {moves}")
    finally:
        await store.close()
    return illegal, moves_read


def stop(children: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM to each, at once; their exit statuses (None: killed after 30 s)."""
    for child in children:
        child.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for child in children:
        try:
            codes.append(child.wait(timeout=30))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            codes.append(None)
    return codes


def error_lines(log: Path) -> list[str]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
                found.append(line)
    return found


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --- the run -------------------------------------------------------------------------------


async def run(processes: Processes, work: Path, args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    args.scale = min(1.0, seconds / 600)  # long queries run shorter in a short run
    cut_seconds = min(args.cut_seconds, seconds / 8)
    warmup = min(WARMUP_SECONDS, seconds * WARMUP_SHARE)
    sample_every = min(60.0, seconds / 5)
    env = {**os.environ, **AWS_ENV}
    database = f"athenaq_soak_{os.getpid()}"
    direct_db = f"{args.db}/{database}"
    store = await Store.connect(direct_db, maxsize=1)
    try:
        await store.create_schema()
    finally:
        await store.close()
    try:
        log = work / "double.log"
        double = processes.start(
            [sys.executable, str(ROOT / "tests" / "athena_double.py"), "--port", "0"], log, env
        )
        endpoint = urlsplit(wait_for_line("athena double", double, log, engine_url))
        db = urlsplit(args.db)
        async with (
            TcpProxy(db.hostname or "127.0.0.1", db.port or 3306) as store_proxy,
            TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as athena_proxy,
        ):
            proxied_db = (
                f"mysql://{db.username or 'root'}:{db.password or ''}"
                f"@127.0.0.1:{store_proxy.port}/{database}"
            )
            document = athenaq_config(
                work, proxied_db, f"http://127.0.0.1:{athena_proxy.port}", args.poller_interval
            )
            children, logs = [], []
            for n in range(PROCESSES):
                config, log = work / f"athenaq{n + 1}.json", work / f"athenaq{n + 1}.log"
                config.write_text(json.dumps(document))
                logs.append(log)
                children.append(
                    processes.start(
                        [sys.executable, "-m", "athenaq", "serve", "--config", str(config)],
                        log,
                        env,
                    )
                )
            urls = [
                await asyncio.to_thread(wait_for_line, f"athenaq {n + 1}", child, log, server_url)
                for n, (child, log) in enumerate(zip(children, logs, strict=True))
            ]
            soak = Soak(urls, args)
            watch = Watch(
                [c.pid for c in children],
                [urlsplit(url).port or 80 for url in urls],
                Ports(store_proxy.port, athena_proxy.port, str(work / "results")),
                soak,
            )
            print(
                f"{PROCESSES} athenaq processes, {args.rate:g} requests/s for {seconds:g} s;"
                f" store cut at {STORE_CUT_AT * seconds:.0f} s, Athena cut at"
                f" {ATHENA_CUT_AT * seconds:.0f} s, {cut_seconds:g} s each; warm-up"
                f" {warmup:g} s (logs in {work})",
                flush=True,
            )
            await watch.sample()
            sampler = asyncio.ensure_future(watch.every(sample_every))

            async def cuts() -> None:
                for at, proxy, name in (
                    (STORE_CUT_AT, store_proxy, "store"),
                    (ATHENA_CUT_AT, athena_proxy, "Athena endpoint"),
                ):
                    await asyncio.sleep(max(0.0, at * seconds - soak.elapsed()))
                    soak.begin(f"{name} cut")
                    proxy.refuse()
                    proxy.cut()
                    await asyncio.sleep(cut_seconds)
                    proxy.heal()
                    soak.begin(f"after the {name} cut")

            await asyncio.gather(soak.load(seconds), cuts())
            soak.begin("settling")
            stuck = await soak.settle(SETTLE_SECONDS)
            sampler.cancel()
            # Idle: no request, nothing left to poll, idle connections timed out.
            print(f"[{soak.elapsed():7.1f} s] idle for {IDLE_SECONDS:g} s", flush=True)
            await asyncio.sleep(IDLE_SECONDS)
            await watch.sample()
            finals = {i: q.state for i, q in soak.queries.items()}
            found = await known(direct_db, list(finals))
            lost = [i for i in soak.queries if i not in found]
            # Stopped while the store and the endpoint still answer through the proxies.
            codes = await asyncio.to_thread(stop, children)
        illegal, moves_read = await histories(direct_db, list(finals))
    finally:
        await execute(args.db, f"DROP DATABASE IF EXISTS `{database}`")

    wrong = []
    for query_id, tracked in soak.queries.items():
        expected = {"FAILED"} if tracked.kind == "fail" else {"SUCCEEDED"}
        if tracked.cancelled:
            expected.add("CANCELLED")
        if tracked.state not in expected and tracked.state not in ("QUEUED", "RUNNING"):
            wrong.append(f"{query_id} ({tracked.kind}) ended {tracked.state}")
    errors = {n + 1: error_lines(log) for n, log in enumerate(logs)}
    print(report(soak, watch, warmup, stuck, lost, wrong, illegal, moves_read, errors, codes))
    for title, items in (
        ("lost", lost),
        ("stuck", stuck),
        ("ended other than scripted", wrong),
        ("wrong downloads", soak.bad_downloads),
        ("illegal histories", illegal),
        ("5xx other than 503", soak.unexpected),
        ("no answer", soak.no_answer),
    ):
        for item in items[:10]:
            print(f"{title}: {item}")
    for n, lines in errors.items():
        for line in lines[:5]:
            print(f"athenaq {n} ERROR: {line}")
    failed = (
        lost
        or stuck
        or wrong
        or illegal
        or soak.bad_downloads
        or soak.unexpected
        or soak.no_answer
        or any(code != 0 for code in codes)
    )
    return 1 if failed else 0


async def known(db_url: str, ids: list[str]) -> set[str]:
    """Those of `ids` the store has."""
    store = await Store.connect(db_url, maxsize=4)
    found = set()
    try:
        for start in range(0, len(ids), 32):
            chunk = ids[start : start + 32]
            records = await asyncio.gather(*(store.get(i) for i in chunk))
            found.update(i for i, record in zip(chunk, records, strict=True) if record)
    finally:
        await store.close()
    return found


def report(
    soak: Soak,
    watch: Watch,
    warmup: float,
    stuck: list[str],
    lost: list[str],
    wrong: list[str],
    illegal: list[str],
    moves_read: int,
    errors: dict[int, list[str]],
    codes: list[int | None],
) -> str:
    lines = [
        "",
        "| phase | requests | 2xx | 4xx | 503 | other 5xx | no answer | p50 (ms) | p99 (ms)"
        " | slowest 503 (ms) | cancels: answers | slowest cancel (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for phase in soak.phases:
        codes_ = phase.codes
        total = sum(codes_.values())
        ok = sum(n for c, n in codes_.items() if 200 <= c < 300)
        client = sum(n for c, n in codes_.items() if 400 <= c < 500)
        other = sum(n for c, n in codes_.items() if c >= 500 and c not in (503, 599))
        cancels = ", ".join(f"{n} {c}" for c, n in sorted(phase.cancels.items())) or "-"
        lines.append(
            f"| {phase.name} | {total} | {ok} | {client} | {codes_[503]} | {other}"
            f" | {codes_[599]} | {percentile(phase.latencies, 0.5) * 1000:.0f}"
            f" | {percentile(phase.latencies, 0.99) * 1000:.0f}"
            f" | {phase.slowest_503 * 1000:.0f} | {cancels} | {phase.slowest_cancel * 1000:.0f} |"
        )
    ends = collections.Counter(q.state for q in soak.queries.values())
    pool_size = DatabaseConfig.pool_size
    judged = watch.judged(warmup, pool_size)
    lines += [
        "",
        "Descriptors held (the fewest of a second's reads) by class, and RSS, per sample:",
    ]
    for n, pid in enumerate(watch.pids):
        lines += [
            "",
            f"| athenaq {n + 1}: at (s) | RSS (MB) | fds | {' | '.join(CLASSES)} |",
            "|---:" * (3 + len(CLASSES)) + "|",
        ]
        for sample in watch.samples[pid]:
            lines.append(
                f"| {sample.at:.0f} | {sample.rss_mb:.1f} | {sample.fds} | "
                + " | ".join(str(sample.held[c]) for c in CLASSES)
                + " |"
            )
    lines += [
        "",
        "| athenaq process | RSS after warm-up (MB) | RSS idle (MB) | largest RSS move"
        f" | most store connections (pool {pool_size}) | most Athena/S3 connections"
        f" (pools {ATHENA_POOL}) | other fds after warm-up | other fds idle | largest move"
        " | idle: requests, results, Athena/S3 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, j in enumerate(judged):
        idle = ", ".join(str(j.idle.held[c]) for c in (REQUESTS, RESULTS, ATHENA))
        lines.append(
            f"| {n + 1} | {j.reference.rss_mb:.1f} | {j.idle.rss_mb:.1f} | {j.rss:.1%}"
            f" | {j.store_peak} | {j.athena_peak} | {j.reference.held[OTHER]}"
            f" | {j.idle.held[OTHER]} | {j.other} ({j.other_share:.0%}) | {idle} |"
        )
    unexpected = len(soak.unexpected) + len(soak.no_answer)
    lines += [
        "",
        f"actions: {dict(soak.actions)}; skipped (over {MAX_IN_FLIGHT} in flight): {soak.skipped}",
        f"queries: {len(soak.queries)} accepted, ends {dict(ends)}, refreshed"
        f" {sum(q.refreshes for q in soak.queries.values())} times",
        f"lost {len(lost)}, stuck {len(stuck)}, ended other than scripted {len(wrong)},"
        f" wrong downloads {len(soak.bad_downloads)}, illegal histories {len(illegal)}"
        f" (of {moves_read} transitions)",
        f"5xx other than 503: {len(soak.unexpected)}; requests without an answer:"
        f" {len(soak.no_answer)}",
        f"ERROR log lines per process: {[len(e) for e in errors.values()]}; exit statuses"
        f" after SIGTERM: {codes}",
        "",
        f"RSS flat within {FLAT_WITHIN:.0%} after the warm-up ({warmup:g} s):"
        f" {verdict(all(j.rss <= FLAT_WITHIN for j in judged))}",
        f"store and Athena/S3 connections within their pools:"
        f" {verdict(all(j.pools_bounded for j in judged))}",
        f"other descriptors flat within {FLAT_WITHIN:.0%} after the warm-up:"
        f" {verdict(all(j.other_share <= FLAT_WITHIN for j in judged))}",
        f"idle, no request, result file or Athena/S3 connection left open:"
        f" {verdict(all(j.idle_clear for j in judged))}",
        f"0 lost, 0 stuck: {verdict(not lost and not stuck)}",
        f"0 unexpected 5xx: {verdict(not unexpected)}",
        "",
        f"Machine: {machine()}",
    ]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="of load (default 10)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument(
        "--cut-seconds", type=float, default=10.0, help="each cut's length, at most 1/8 of the run"
    )
    parser.add_argument("--poller-interval", type=float, default=1.0)
    parser.add_argument("--db", default=DEFAULT_DB, help=f"MariaDB server (default {DEFAULT_DB})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work folder and the logs")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="athenaq-soak-"))
    processes = Processes()
    status = guarded(work, processes, args.keep, lambda: asyncio.run(run(processes, work, args)))
    if status:
        print(f"logs in {work}" if args.keep else "run with --keep to keep the logs")
    return status


if __name__ == "__main__":
    sys.exit(main())
