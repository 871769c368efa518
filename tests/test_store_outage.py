"""The store out of reach: every request that needs it answers `503 store_unavailable`
with Retry-After within 2 s, /ready names the store, /health stays 200, and everything
recovers without a restart, no query lost or FAILED.

MySQL sits behind a TCP proxy the test refuses (cutting the connections held) or
blackholes; the server itself is never touched. SQLite is locked by another connection
for longer than the store's deadline: its writes are out of reach, while WAL lets its
reads go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest
from loguru import logger
from tornado.httpclient import HTTPResponse

from athenaq.app import Service
from athenaq.config import Config
from athenaq.errors import StoreUnavailable
from athenaq.identity import DEFAULT_SCOPES, METRICS
from athenaq.store import Store
from athenaq.store.outage import Deadline
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_config, make_key, wait_for, with_keys
from tests.tcpproxy import TcpProxy

# The contract's bound for any answer while the store is out of reach.
ANSWER_SECONDS = 2.0
# A query the double keeps RUNNING until the test releases it.
HELD = 'SELECT {n}\n-- double: {{"hold": true}}'
# A SQLite write lock held well within the store's deadline.
BRIEF_LOCK_SECONDS = 0.3


@dataclass
class Outage:
    """Ways to put the service's store out of reach, and to heal it."""

    url: str
    ways: dict[str, Callable[[], Awaitable[None]]]
    heal: Callable[[], None]
    # MySQL out of reach stops reads too; a SQLite write lock stops only writes.
    reads_stop: bool
    # A disturbance that passes at once: every MySQL connection cut (a server restart), a
    # SQLite write lock held for less than the deadline.
    blip: Callable[[], Awaitable[None]]


@pytest.fixture
async def outage(db_url: str) -> AsyncIterator[Outage]:
    if db_url.startswith("sqlite"):
        holder: list[sqlite3.Connection] = []

        async def lock() -> None:
            conn = sqlite3.connect(unquote(urlsplit(db_url).path)[1:], timeout=0)
            conn.isolation_level = None
            holder.append(conn)

            def begin() -> bool:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    return False  # the service is writing: the next try takes the lock
                return True

            await wait_for(begin, what="the SQLite write lock")

        def unlock() -> None:
            while holder:
                holder.pop().close()

        async def brief_lock() -> None:
            await lock()
            asyncio.get_running_loop().call_later(BRIEF_LOCK_SECONDS, unlock)

        yield Outage(db_url, {"locked": lock}, unlock, reads_stop=False, blip=brief_lock)
        unlock()
        return
    parts = urlsplit(db_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 3306) as proxy:
        user = parts.netloc.rpartition("@")[0]
        proxied = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))

        async def refuse() -> None:
            proxy.refuse()
            proxy.cut()  # the pooled connections are lost too

        async def blackhole() -> None:
            proxy.blackhole()

        async def cut() -> None:
            proxy.cut()

        ways = {"refused": refuse, "blackholed": blackhole}
        yield Outage(proxied, ways, proxy.heal, reads_stop=True, blip=cut)


async def timed(client: Client, method: str, path: str, payload: Any = None) -> HTTPResponse:
    started = time.monotonic()
    response = await client.request(method, path, payload)
    seconds = time.monotonic() - started
    assert seconds < ANSWER_SECONDS, f"{method} {path} took {seconds:.2f} s"
    return response


def assert_store_unavailable(response: HTTPResponse, what: str) -> None:
    assert response.code == 503, (what, response.code, response.body)
    assert response.headers["Retry-After"] == "1", what
    assert body(response)["error"]["code"] == "store_unavailable", what


@pytest.mark.parametrize("keys", [False, True], ids=["open", "api_keys"])
async def test_every_answer_is_a_quick_503_while_the_store_is_out_of_reach(
    keys: bool,
    outage: Outage,
    double: AthenaDouble,
    keys_store: Store,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(outage.url, double.url, tmp_path / "results", store_timeout=1.5)
    key = None
    if keys:
        config = with_keys(config)
        key = await make_key(keys_store, "alice", DEFAULT_SCOPES | {METRICS})
    service = await start_service(config)
    client = Client(service.url, key=key)
    done = await client.submit("SELECT 1")
    await client.wait_state(done, "SUCCEEDED")
    held = [await client.submit(HELD.format(n=n)) for n in range(2)]
    for query_id in held:
        await client.wait_state(query_id, "RUNNING")
    submitted = [done, *held]
    # Each scrape reads the store's counts (not once per few seconds): the first here.
    assert service._ctx is not None
    service._ctx.exposition.seconds = 0
    assert b'athenaq_queries{state="RUNNING"} 2.0' in (await timed(client, "GET", "/metrics")).body

    # (method, path, body, whether it writes, its answer with the store in reach)
    requests = [
        ("POST", "/query", {"query": "SELECT 2"}, True, 202),
        ("GET", f"/query/{done}/status", None, False, 200),
        ("GET", f"/query/{done}/results", None, False, 200),
        ("POST", f"/query/{done}/cancel", None, False, 409),
        ("POST", f"/query/{done}/refresh", None, True, 202),
    ]
    poller = service.poller
    assert poller is not None
    for way, start in outage.ways.items():
        await start()
        ticks = poller.ticks
        # At once, but for the refresh: it waits for the cancel's hold on the query first.
        *together, refresh = requests
        scraping = asyncio.ensure_future(timed(client, "GET", "/metrics"))
        responses = await asyncio.gather(*(timed(client, *request[:3]) for request in together))
        responses.append(await timed(client, *refresh[:3]))
        scrape = await scraping
        if keys and (outage.reads_stop or scrape.code == 503):
            # A key is looked up in the store, for /metrics too.
            assert_store_unavailable(scrape, f"{way}: GET /metrics")
        else:
            # The figures read before, and every other metric of the process.
            assert scrape.code == 200, (way, scrape.body)
            assert b'athenaq_queries{state="RUNNING"} 2.0' in scrape.body, way
            assert b"\nathenaq_poll_tick_duration_seconds_count " in scrape.body, way
        for (method, path, _, writes, normal), response in zip(requests, responses, strict=True):
            if writes or outage.reads_stop or response.code == 503:
                assert_store_unavailable(response, f"{way}: {method} {path}")
            else:
                # WAL lets a read go on past another connection's write lock, unless it
                # waits for the one connection behind a write (the poller's claim).
                assert response.code == normal, (way, path, response.body)
        health = await timed(client, "GET", "/health")
        assert health.code == 200
        ready = await timed(client, "GET", "/ready")
        if outage.reads_stop:
            assert ready.code == 503, ready.body
            assert ready.headers["Retry-After"] == "1"
            assert body(ready)["checks"]["store"] != "ok"
        if way != "blackholed":  # a blackholed claim ends only with the heal
            # A whole tick (the first may have begun before the outage) met the outage.
            met = ticks + 2
            await wait_for(lambda met=met: poller.ticks >= met, what=f"a tick while {way}")

        outage.heal()

        async def recovered() -> bool:
            response = await client.request("GET", f"/query/{done}/status")
            return response.code == 200

        await wait_for(recovered, what=f"the store in reach again after {way}")
        submitted.append(await client.submit("SELECT 3"))
        assert (await client.request("GET", "/ready")).code == 200

    for query_id in held:
        double.release((await client.status(query_id))["athena_query_execution_id"])
    for query_id in submitted:
        status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", "CANCELLED")
        assert status["state"] == "SUCCEEDED", status
    # The poller said so once per outage (a blackholed claim may outlast it: then never),
    # not at each skipped tick, and that it resumed after each.
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    messages = [line["message"] for line in lines]
    # An answered 503 is logged as a warning, not as an error: nothing to fix in athenaq.
    refused = [line for line in lines if line["message"] == "request" and line["status"] == 503]
    assert refused
    assert {line["level"] for line in refused} == {"WARNING"}
    if outage.reads_stop and not keys:
        assert "the metrics could not read the store; its latest figures are served" in messages
    backs_off = messages.count("the store is unavailable; polling backs off")
    # Where reads go on (SQLite's write lock), a tick whose claim only reads (its leases
    # renewed once half spent) may not meet the outage at all.
    assert (1 if outage.reads_stop else 0) <= backs_off <= len(outage.ways)
    assert messages.count("the store answers again; polling resumes") == backs_off


async def test_a_long_poll_never_waits_past_its_time_while_the_store_is_out_of_reach(
    outage: Outage,
    double: AthenaDouble,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    """A request waiting for its query when the store goes: answered once its N seconds
    are up, within the 503 rule's 2 s after them; one begun meanwhile is a quick 503."""
    wait = 2
    config = make_config(outage.url, double.url, tmp_path / "results", store_timeout=1.5)
    service = await start_service(config)
    client = Client(service.url)
    held = await client.submit(HELD.format(n=0))
    await client.wait_state(held, "RUNNING")
    assert service._ctx is not None
    watcher = service._ctx.watcher
    path = f"/query/{held}/status?wait={wait}"
    for way, start in outage.ways.items():
        started = time.monotonic()
        waiting = asyncio.ensure_future(client.request("GET", path))
        await wait_for(lambda: watcher.waiting == 1, what="the request to wait")
        await start()
        response = await waiting
        seconds = time.monotonic() - started
        print(f"{way}: answered {response.code} after {seconds:.2f} s")
        assert wait <= seconds < wait + ANSWER_SECONDS, (way, seconds)
        if outage.reads_stop or response.code == 503:
            assert_store_unavailable(response, f"{way}: a long-poll")
        else:
            assert (response.code, body(response)["state"]) == (200, "RUNNING"), response.body
        if outage.reads_stop:
            # Its first read is a request's read like any other.
            response = await timed(client, "GET", path)
            assert_store_unavailable(response, f"{way}: a long-poll begun in the outage")
        outage.heal()

        async def recovered() -> bool:
            response = await client.request("GET", f"/query/{held}/status")
            return response.code == 200

        await wait_for(recovered, what=f"the store in reach again after {way}")
    # And the next wait is told of the end, as ever.
    waiting = asyncio.ensure_future(client.request("GET", f"/query/{held}/status?wait=30"))
    await wait_for(lambda: watcher.waiting == 1, what="the request to wait")
    double.release((await client.status(held))["athena_query_execution_id"])
    response = await waiting
    assert (response.code, body(response)["state"]) == (200, "SUCCEEDED"), response.body


async def test_a_bug_in_a_statement_is_not_taken_for_an_outage(keys_store: Store) -> None:
    """An integrity error (here a duplicate id) is a bug to see, a 500, not a 503."""
    await keys_store.create("same-id", "SELECT 1", "default", "primary", "first", owner="a")
    with pytest.raises(Exception) as raised:
        await keys_store.create("same-id", "SELECT 1", "default", "primary", "again", owner="a")
    assert not isinstance(raised.value, StoreUnavailable)
    assert "IntegrityError" in type(raised.value).__name__


async def test_a_store_call_that_does_not_answer_leaves_the_pool_usable(
    outage: Outage,
    double: AthenaDouble,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    """More requests than the pool has connections, each cut by the deadline: none holds a
    connection afterwards, and the ones after the heal are served at once."""
    config = make_config(outage.url, double.url, tmp_path / "results", store_timeout=1.5)
    config = replace(config, database=replace(config.database, pool_size=2))
    service = await start_service(config)
    client = Client(service.url)
    for start in outage.ways.values():
        await start()
        # Twice the pool at once: the two waiting for a connection are cut by the deadline too.
        responses = await asyncio.gather(
            *(timed(client, "POST", "/query", {"query": f"SELECT {n}"}) for n in range(4))
        )
        for response in responses:
            assert_store_unavailable(response, "submit")
        outage.heal()

        async def submitted() -> bool:
            response = await client.request("POST", "/query", {"query": "SELECT 9"})
            return response.code == 202

        await wait_for(submitted, what="a submit to pass again")


async def test_a_store_disturbance_that_passes_at_once_costs_one_answer_at_most(
    outage: Outage,
    double: AthenaDouble,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    """Every pooled MySQL connection cut: the first request to find one gone answers 503
    and has the others replaced, not one 503 per connection. A SQLite lock shorter than
    the deadline is waited out."""
    # A poller that ticks once, at the start: its claim finding a connection gone would
    # have the pool renewed by SQLAlchemy before any request could.
    quiet = {"interval_seconds": 600, "lease_seconds": 1800}
    config = make_config(outage.url, double.url, tmp_path / "results", store_timeout=1.5, **quiet)
    service = await start_service(config)
    client = Client(service.url)
    done = await client.submit("SELECT 1")
    # Every connection of the pool opened and pooled.
    await asyncio.gather(
        *(
            client.request("GET", f"/query/{done}/status")
            for _ in range(2 * config.database.pool_size)
        )
    )
    await outage.blip()
    answers = []
    for n in range(config.database.pool_size):
        answers.append((await timed(client, "GET", f"/query/{done}/status")).code)
        answers.append((await timed(client, "POST", "/query", {"query": f"SELECT {n}"})).code)
    assert set(answers) <= {200, 202, 503}, answers
    assert answers.count(503) <= 1, answers


async def test_a_deadline_ends_a_block_that_swallowed_its_cancel() -> None:
    """On Python 3.11 asyncio.wait_for (the MySQL driver connects and reads with it) can
    swallow the deadline's cancel; the block must end at the deadline all the same, and
    leave its task uncancelled."""

    async def swallowing() -> None:
        # wait_for's answer when its operation completes as the cancel arrives:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await asyncio.Event().wait()  # then a read on a connection that never answers

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.2 s"):
        async with Deadline(0.2):
            await swallowing()
    assert time.monotonic() - started < 2
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # no cancel left pending for the caller's next await


async def test_a_cancel_from_outside_passes_through_a_deadline() -> None:
    """A caller's own cancel (a client gone, a shutdown) stays a cancel, not a 503."""

    inside = asyncio.Event()

    async def waiting() -> None:
        async with Deadline(30):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(waiting())
    await wait_for(inside.is_set, what="the block to begin")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_start_the_store_cannot_record_is_sent_again_with_its_token(
    outage: Outage,
    double: AthenaDouble,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    """The store goes out of reach while a start is in Athena: the execution id cannot be
    recorded. That is a warning, not an error; the poller sends the query again once the
    store answers, with the same token, and Athena runs it once."""
    config = make_config(outage.url, double.url, tmp_path / "results", store_timeout=1.5)
    service = await start_service(config)
    client = Client(service.url)
    logged: list[tuple[str, str]] = []
    sink = logger.add(lambda m: logged.append((m.record["level"].name, m.record["message"])))
    try:
        # Athena makes the execution at once and answers the start a moment later.
        query_id = await client.submit('SELECT 1\n-- double: {"start_stall_ms": 500}')
        await wait_for(double.executions, what="the execution in Athena")
        start = next(iter(outage.ways.values()))
        await start()
        unrecorded = ("WARNING", "the store is unavailable; the query is sent again later")
        await wait_for(lambda: unrecorded in logged, what="the start to meet the outage")
        outage.heal()
        status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", timeout=30)
    finally:
        logger.remove(sink)
    assert status["state"] == "SUCCEEDED", status
    [token] = double.executions().values()  # one execution: the start sent again got it
    assert token is not None and token.startswith(f"athenaq-{query_id}-"), token
    assert not [message for level, message in logged if level in ("ERROR", "CRITICAL")]


async def test_a_store_lost_in_the_middle_of_a_tick_is_waited_out_not_an_error(
    outage: Outage,
    double: AthenaDouble,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    """The store goes out of reach after a tick's claim, while it waits for Athena's
    answer: the moves Athena's answer asks for and the results to store meet the outage.
    The poller backs off as when its claim meets it, a download leaves its results for a
    later tick, nothing is logged as an error, and the queries end as Athena ended them
    once the store is back."""
    config = make_config(outage.url, double.url, tmp_path / "results", store_timeout=1.5)
    service = await start_service(config)
    client = Client(service.url)
    ids = [await client.submit(HELD.format(n=n)) for n in range(6)]
    executions = {}
    for query_id in ids:
        executions[query_id] = (await client.wait_state(query_id, "RUNNING"))[
            "athena_query_execution_id"
        ]
    logged: list[tuple[str, str]] = []
    sink = logger.add(lambda m: logged.append((m.record["level"].name, m.record["message"])))
    try:
        ends = {}
        for n, (query_id, execution_id) in enumerate(executions.items()):
            ends[query_id] = double.release(execution_id, ("SUCCEEDED", "FAILED")[n % 2])
        # Athena answers late from now on: the next status call is under way while the
        # store goes.
        double.engine.delay_ms = 300
        asked = double.calls().get("BatchGetQueryExecution", 0)
        await wait_for(
            lambda: double.calls().get("BatchGetQueryExecution", 0) > asked,
            what="a status call after the ends",
        )
        start = next(iter(outage.ways.values()))
        await start()
        backs_off = ("WARNING", "the store is unavailable; polling backs off")
        stored_later = ("WARNING", "the store is unavailable; the results are stored again later")
        await wait_for(
            lambda: backs_off in logged and stored_later in logged,
            what="the poller to back off, and a download to meet the outage",
        )
        outage.heal()
        for query_id, state in ends.items():
            status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", timeout=30)
            assert status["state"] == state, status
    finally:
        logger.remove(sink)
    assert not [message for level, message in logged if level in ("ERROR", "CRITICAL")]
