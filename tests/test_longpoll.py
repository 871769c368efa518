"""Long-poll: `GET /query/<id>/status?wait=N` answers within a second of its query
finishing, whichever process finished it, or after N seconds with the query as it
stands; it holds no connection of the store while it waits, and a thousand waiters cost
one shared read of the waited-on queries per interval."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import resource
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.config import Config
from athenaq.states import QueryState
from athenaq.store import Store
from athenaq.store.watch import CHUNK, statements_for
from athenaq.watcher import Watcher
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_config, make_key, wait_for, with_keys
from tests.served import served, served_config

StartService = Callable[..., Awaitable[Service]]
# Runs until stopped on the local engine too; the double holds it RUNNING until released.
HELD = 'SELECT count(*) + {n} FROM range(20000000000000)\n-- double: {{"hold": true}}'
# The contract: an answer within 1 s of the change.
ANSWER_SECONDS = 1.0
# Time a loaded machine may add to a wait's own N seconds before its answer arrives.
SLACK_SECONDS = 2.0


class LongPoll:
    """One status request with `?wait=N` on a connection of its own, written by hand:
    a thousand of them at once with no client's connection limit between, and a client
    that can hang up mid-wait."""

    def __init__(self, port: int, query_id: str, wait: Any, key: str | None = None) -> None:
        self.port = port
        self.path = f"/query/{query_id}/status?wait={wait}"
        self.key = key
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.sent_at = 0.0

    async def send(self) -> LongPoll:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        auth = f"Authorization: Bearer {self.key}\r\n" if self.key else ""
        head = f"GET {self.path} HTTP/1.1\r\nHost: athenaq\r\n{auth}\r\n"
        self._writer.write(head.encode())
        await self._writer.drain()
        self.sent_at = time.monotonic()
        return self

    async def answer(self, timeout: float = 90) -> tuple[int, Any]:
        """The answer's status code and JSON body; the connection is closed after it."""
        assert self._reader is not None and self._writer is not None
        try:
            async with asyncio.timeout(timeout):
                head = await self._reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                payload = await self._reader.readexactly(int(headers["Content-Length"]))
        finally:
            self.hang_up()
        return int(lines[0].split()[1]), json.loads(payload)

    def hang_up(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def send_all(polls: list[LongPoll], at_once: int = 100) -> list[LongPoll]:
    # In rounds: a thousand connects at once would overflow the listening socket's
    # backlog, and the kernel would retry the rest a second later.
    for start in range(0, len(polls), at_once):
        await asyncio.gather(*(poll.send() for poll in polls[start : start + at_once]))
    return polls


def watcher_of(service: Service) -> Watcher:
    assert service._ctx is not None
    return service._ctx.watcher


def moved_at(log: list[dict[str, Any]], query_id: str, state: str) -> datetime:
    """When the query's move to `state` was committed: the time of the `state changed`
    line its mover logs once the transaction returns (the row's own time is taken before
    the transaction, which a loaded store can hold for long)."""
    (line,) = [
        line
        for line in log
        if line["message"] == "state changed"
        and line["query_id"] == query_id
        and line["state"] == state
    ]
    return datetime.fromisoformat(line["timestamp"].removesuffix("Z"))


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def execution_of(client: Client, query_id: str) -> str:
    status = await client.wait_state(query_id, "RUNNING")
    return str(status["athena_query_execution_id"])


@pytest.fixture
async def reader(db_url: str) -> AsyncIterator[Store]:
    """The database under test, for reading histories beside the service."""
    opened = await Store.connect(db_url, maxsize=1)
    yield opened
    await opened.close()


async def test_a_wait_answers_within_a_second_of_the_poller_finishing_the_query(
    client: Client, service: Service, double: AthenaDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    query_id = await client.submit(HELD.format(n=1))
    execution_id = await execution_of(client, query_id)
    poll = await LongPoll(service.port, query_id, 30).send()
    watcher = watcher_of(service)
    await wait_for(lambda: watcher.waiting == 1, what="the request to wait")
    double.release(execution_id)
    code, status = await poll.answer()
    answered = utcnow()
    assert code == 200 and status["state"] == "SUCCEEDED", status
    assert status == await client.status(query_id)
    log = log_lines(capsys.readouterr().err)
    delay = (answered - moved_at(log, query_id, "SUCCEEDED")).total_seconds()
    print(f"answered {delay * 1000:.0f} ms after the move to SUCCEEDED")
    assert delay < ANSWER_SECONDS
    await wait_for(lambda: watcher.waiting == 0, what="the waiter to leave")


async def test_a_wait_answers_within_a_second_when_another_process_finishes_the_query(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService, reader: Store
) -> None:
    """The query is held and finished by a process of its own; the waiting request is
    served by this one, whose machine never sees the move."""
    service = await start_service(make_config(db_url, double.url, tmp_path / "results"))
    with served(tmp_path, served_config(db_url, double.url)) as other:
        await other.serving()
        query_id = await other.client.submit(HELD.format(n=2))
        execution_id = await execution_of(other.client, query_id)
        record = await reader.get(query_id)
        assert record is not None and record.lease_holder != service.lease.holder
        watcher = watcher_of(service)
        polls = await send_all([LongPoll(service.port, query_id, 30) for _ in range(3)])
        await wait_for(lambda: watcher.waiting == 3, what="the requests to wait")
        reads = watcher.reads
        double.release(execution_id)
        answers = [await poll.answer() for poll in polls]
        answered = utcnow()
        assert [(code, status["state"]) for code, status in answers] == [(200, "SUCCEEDED")] * 3
        delay = (answered - moved_at(other.lines(), query_id, "SUCCEEDED")).total_seconds()
        print(f"answered {delay * 1000:.0f} ms after the other process's move to SUCCEEDED")
        assert delay < ANSWER_SECONDS
        # Woken by the shared read: one at least, for the three of them.
        assert watcher.reads > reads
        record = await reader.get(query_id)
        assert record is not None and record.lease_holder != service.lease.holder


async def test_a_wait_that_times_out_answers_the_query_as_it_stands(
    client: Client, service: Service
) -> None:
    query_id = await client.submit(HELD.format(n=3))
    await client.wait_state(query_id, "RUNNING")
    poll = await LongPoll(service.port, query_id, 1).send()
    code, status = await poll.answer()
    waited = time.monotonic() - poll.sent_at
    assert code == 200 and status["state"] == "RUNNING", status
    assert 1.0 <= waited < 1.0 + SLACK_SECONDS, waited
    assert status == await client.status(query_id)


async def test_a_finished_query_is_answered_at_once(client: Client, service: Service) -> None:
    query_id = await client.submit("SELECT 1")
    await client.wait_state(query_id, "SUCCEEDED")
    started = time.monotonic()
    response = await client.request("GET", f"/query/{query_id}/status?wait=60")
    assert response.code == 200 and body(response)["state"] == "SUCCEEDED"
    assert time.monotonic() - started < SLACK_SECONDS
    assert watcher_of(service).reads == 0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("wait=0", "wait: must be 1 to 60"),
        ("wait=61", "wait: must be 1 to 60"),
        ("wait=-1", "wait: must be a non-negative integer"),
        ("wait=1.5", "wait: must be a non-negative integer"),
        ("wait=abc", "wait: must be a non-negative integer"),
        ("wait=", "wait: must be a non-negative integer"),
        ("wait=%D9%A3", "wait: must be a non-negative integer"),  # an Arabic-Indic 3
        ("wait=%FF", "wait: not valid UTF-8"),
        ("wait=1&wait=2", "wait: given more than once"),
    ],
)
async def test_a_bad_wait_is_a_400_naming_it(
    client: Client, service: Service, query: str, message: str
) -> None:
    query_id = await client.submit(HELD.format(n=4))
    response = await client.request("GET", f"/query/{query_id}/status?{query}")
    assert response.code == 400, response.body
    assert body(response)["error"] == {"code": "validation_error", "message": message}


async def test_other_parameters_are_ignored_as_before(client: Client) -> None:
    query_id = await client.submit("SELECT 1")
    status = await client.wait_state(query_id, "SUCCEEDED")
    for query in ("other=1", "other=1&other=2", "other=%FF", "Wait=0"):
        response = await client.request("GET", f"/query/{query_id}/status?{query}")
        assert response.code == 200, (query, response.body)
        assert body(response) == status


async def test_another_owners_query_is_404_before_any_wait(
    config: Config, start_service: StartService, keys_store: Store
) -> None:
    service = await start_service(with_keys(config))
    alice = Client(service.url, key=await make_key(keys_store, "alice"))
    bob_key = await make_key(keys_store, "bob")
    query_id = await alice.submit(HELD.format(n=5))
    await alice.wait_state(query_id, "RUNNING")
    for segment in (query_id, "not-a-query-id"):
        started = time.monotonic()
        poll = await LongPoll(service.port, segment, 30, bob_key).send()
        code, document = await poll.answer()
        assert (code, document["error"]["code"]) == (404, "not_found")
        assert time.monotonic() - started < SLACK_SECONDS
    assert watcher_of(service).reads == 0
    # The owner waits.
    poll = await LongPoll(service.port, query_id, 1, alice.headers["Authorization"][7:]).send()
    assert (await poll.answer())[1]["state"] == "RUNNING"


async def test_a_waiter_whose_client_hangs_up_is_removed(
    client: Client, service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    query_id = await client.submit(HELD.format(n=6))
    await client.wait_state(query_id, "RUNNING")
    watcher = watcher_of(service)
    assert service._ctx is not None
    in_flight = service._ctx.in_flight
    polls = await send_all([LongPoll(service.port, query_id, 60) for _ in range(5)])
    await wait_for(lambda: watcher.waiting == 5, what="the requests to wait")
    for poll in polls:
        poll.hang_up()
    await wait_for(lambda: watcher.waiting == 0, what="the waiters to be removed")
    await wait_for(lambda: in_flight.count == 0, what="the requests to leave the count")
    assert not watcher._waiters
    # Logged as abandoned by their clients.
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    aborted = [line for line in lines if line["message"] == "request" and line["status"] == 499]
    assert [line["path"] for line in aborted] == [f"/query/{query_id}/status"] * 5


@dataclasses.dataclass
class StoreUse:
    """What a store did meanwhile: every statement (on the driver's connections and
    through SQLAlchemy), and its pool's checkouts."""

    statements: list[str] = dataclasses.field(default_factory=list)
    checkouts: int = 0
    checked_out: int = 0
    most_checked_out: int = 0


@contextlib.contextmanager
def store_use(store: Store) -> Iterator[StoreUse]:
    use = StoreUse()
    driver = store._driver
    prepared = driver.prepared

    def counted(statement: Any, params: dict[str, Any]) -> Any:
        found = prepared(statement, params)
        use.statements.append(" ".join(found.sql.split()))
        return found

    def executed(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        use.statements.append(" ".join(statement.split()))

    def checkout(*args: Any) -> None:
        use.checkouts += 1
        use.checked_out += 1
        use.most_checked_out = max(use.most_checked_out, use.checked_out)

    def checkin(*args: Any) -> None:
        use.checked_out -= 1

    engine = store._sync
    driver.prepared = counted  # type: ignore[method-assign]
    listeners = [("before_cursor_execute", executed), ("checkout", checkout), ("checkin", checkin)]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        yield use
    finally:
        del driver.prepared
        for name, listener in listeners:
            event.remove(engine, name, listener)


WAITERS = 1000
QUERIES = 20


async def test_a_thousand_waiters_cost_one_read_per_interval_and_hold_no_connection(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    # Two sockets per waiter in this process, the client's and the server's.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4 * WAITERS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4 * WAITERS, hard), hard))
    # A poller that ticks once, at the start: the queries stay as they are sent, and the
    # store does nothing but the watcher's reads while the requests wait.
    config = make_config(
        db_url, double.url, tmp_path / "results", interval_seconds=600, lease_seconds=1800
    )
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, max_connections=WAITERS + 100)
    )
    service = await start_service(config)
    client = Client(service.url)
    ids = [await client.submit(HELD.format(n=n)) for n in range(QUERIES)]

    async def all_sent() -> bool:
        statuses = [await client.status(i) for i in ids]
        return all(status["athena_query_execution_id"] for status in statuses)

    await wait_for(all_sent, what="every query sent to Athena")
    watcher = watcher_of(service)
    store = service._store
    assert store is not None
    polls = [LongPoll(service.port, ids[n % QUERIES], 60) for n in range(WAITERS)]
    started = time.monotonic()
    # A hundred at a time, each hundred waiting before the next comes: sent at once, the
    # ones past server.max_inflight_requests while the others read their query would be
    # shed (a request counts as in flight until it waits).
    for sent in range(100, WAITERS + 1, 100):
        await send_all(polls[sent - 100 : sent])
        await wait_for(lambda sent=sent: watcher.waiting == sent, what=f"{sent} requests waiting")
    print(f"{WAITERS} requests waiting {time.monotonic() - started:.1f} s after the first")

    # Five shared reads while they all wait: one statement each (for the 20 queries
    # waited on), on one connection, and nothing else asked of the store; no connection
    # held between the reads.
    # Looked at from just after a shared read: the next comes an interval later.
    ended = watcher.reads
    await wait_for(lambda: watcher.reads > ended, what="a shared read")
    with store_use(store) as use:
        reads = watcher.reads
        for n in range(1, 6):
            await wait_for(lambda n=n: watcher.reads >= reads + n, what=f"shared read {n}")
            assert use.checked_out == 0
            assert store._sync.pool.checkedout() == 0  # type: ignore[attr-defined]
        made = watcher.reads - reads
        assert watcher.waiting == WAITERS
    assert statements_for(QUERIES) == 1
    assert len(use.statements) == made * statements_for(QUERIES), use.statements
    assert all("FROM queries WHERE queries.id IN" in s for s in use.statements), use.statements
    assert use.checkouts == made and use.most_checked_out == 1
    # Far more requests than server.max_inflight_requests wait, and the others are not
    # shed: a waiting request is not counted as in flight.
    assert config.server.max_inflight_requests < WAITERS
    response = await client.request("GET", f"/query/{ids[0]}/status")
    assert response.code == 200, response.body

    # A cancel ends one query: its 50 waiters answer CANCELLED, the others wait on.
    cancelled = ids[0]
    await client.cancel(cancelled)
    for poll in polls[::QUERIES]:
        code, status = await poll.answer()
        assert (code, status["state"]) == (200, "CANCELLED")
    await wait_for(
        lambda: watcher.waiting == WAITERS - WAITERS // QUERIES, what="the answered to leave"
    )
    # A hundred clients hang up: their waiters are gone.
    gone = [poll for n, poll in enumerate(polls) if n % QUERIES == 1]
    for poll in gone:
        poll.hang_up()
    left = WAITERS - 2 * (WAITERS // QUERIES)
    await wait_for(lambda: watcher.waiting == left, what="the hung up to leave")

    # The shutdown answers every waiter at once, with its query as it stands, read for
    # all of them together: no waiter reads its own.
    stopping = time.monotonic()
    with store_use(store) as use:
        stop = asyncio.ensure_future(service.stop())
        waiting = [poll for n, poll in enumerate(polls) if n % QUERIES > 1]
        answers = await asyncio.gather(*(poll.answer() for poll in waiting))
        answered = time.monotonic() - stopping
        await stop
    by_id = [s for s in use.statements if s.startswith("SELECT") and "queries.id = " in s]
    assert by_id == [], by_id[:3]
    print(f"{len(waiting)} waiters answered {answered:.2f} s after the stop began")
    # Sent, and never seen RUNNING by the poller, which ticked only before the submits.
    assert {(code, status["state"]) for code, status in answers} == {(200, "QUEUED")}
    assert answered < config.server.drain_seconds


async def test_the_shared_read_takes_its_ids_in_chunks(db_url: str) -> None:
    store = await Store.connect(db_url, maxsize=1)
    try:
        await store.create_schema()
        made = [
            await store.create(f"q{n}", "SELECT 1", "db", "wg", "submitted", owner="o")
            for n in range(4)
        ]
        await store.transition(made[1], QueryState.CANCELLED, "cancelled", {}, by="test")
        expected = {r.id: (QueryState.QUEUED, 1) for r in made}
        expected["q1"] = (QueryState.CANCELLED, 1)
        for count in (1, 2, 9, 64, 65, CHUNK, CHUNK + 1, 2 * CHUNK + 3):
            # Ids of no query, with the queries' at the ends of the chunks.
            ids = [f"none-{n}" for n in range(count)]
            for query_id, at in zip(expected, (0, CHUNK - 1, CHUNK, count - 1), strict=True):
                if at < count:
                    ids[at] = query_id
            with store_use(store) as use:
                progress, none = await store.states_of(ids)
            assert len(use.statements) == statements_for(count) == -(-count // CHUNK)
            assert progress == {i: expected[i] for i in ids if i in expected}, count
            assert none == {} and use.checkouts == 1
            # With the whole rows of the finished ones, on the same connection.
            with store_use(store) as use:
                progress, finished = await store.states_of(ids, lambda _, p: p.state.is_finished)
            assert progress == {i: expected[i] for i in ids if i in expected}, count
            assert finished == ({"q1": await store.get("q1")} if "q1" in ids else {})
            assert len(use.statements) == statements_for(count) + ("q1" in ids)
            assert use.checkouts == 1
            with store_use(store) as use:
                records = await store.records_of(ids)
            assert len(use.statements) == statements_for(count)
            assert records == {i: await store.get(i) for i in ids if i in expected}, count
    finally:
        await store.close()


async def test_a_shutdown_answers_the_waiters_at_once(
    db_url: str, double: AthenaDouble, tmp_path: Path
) -> None:
    """SIGTERM: the waiting requests are answered with their queries as they stand, long
    before the drain would cut them."""
    document = served_config(db_url, double.url)
    document["server"]["drain_seconds"] = 60
    with served(tmp_path, document) as process:
        await process.serving()
        query_id = await process.client.submit(HELD.format(n=7))
        await process.client.wait_state(query_id, "RUNNING")
        polls = await send_all([LongPoll(process.port, query_id, 60) for _ in range(5)])
        # A status on a connection made after theirs: once it is answered, theirs were
        # accepted (and their requests read), or the stop would refuse them.
        await process.client.status(query_id)
        answers = asyncio.gather(*(poll.answer() for poll in polls))
        stopping = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        answered = [(code, status["state"]) for code, status in await answers]
        waited = time.monotonic() - stopping
        assert await process.exited(30) == 0
        assert answered == [(200, "RUNNING")] * 5
        print(f"answered {waited:.2f} s after SIGTERM")
        assert waited < document["server"]["drain_seconds"] / 6
