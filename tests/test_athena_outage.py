"""Athena out of reach: the service's Athena and S3 endpoint (the scripted double) sits
behind a TCP proxy the test refuses, cuts, blackholes and heals. No query fails for it,
ticks keep their pace, and the queries move on within a tick and a call of the heal."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from loguru import logger
from moto.server import ThreadedMotoServer

from athenaq.app import Service
from athenaq.athena import AthenaCallError
from athenaq.config import Config
from athenaq.poller import Poller
from tests.athena_double import AthenaDouble
from tests.conftest import Client, make_config, wait_for
from tests.tcpproxy import TcpProxy

# Short, so a blackholed call ends soon; long enough for any healthy call here.
CALL_TIMEOUT = 0.5
# Scheduling and store round trips on a busy machine (CI runs three test environments
# on two cores), on top of what the design allows; well under the 6 to 9 s a retrying
# call used to hold a tick.
SLACK = 3.0
# A SELECT the double runs for a while, and one it holds RUNNING until released.
RUNS = 'SELECT {n}\n-- double: {{"run_ms": 300}}'
HELD = 'SELECT {n}\n-- double: {{"hold": true}}'
# 5000 rows whose result object sends its first 1000 bytes, then holds the rest.
STALLED = 'SELECT 1\n-- double: {"generate": 5000, "s3_stall_after": 1000}'


def outage_config(db_url: str, endpoint_url: str, results_dir: Path) -> Config:
    config = make_config(db_url, endpoint_url, results_dir)
    return replace(config, athena=replace(config.athena, call_timeout_seconds=CALL_TIMEOUT))


@pytest.fixture
async def proxy(double: AthenaDouble) -> AsyncIterator[TcpProxy]:
    """The double's Athena API and S3 behind one proxy."""
    async with TcpProxy("127.0.0.1", urlsplit(double.url).port or 80) as opened:
        yield opened


@pytest.fixture
async def service(
    db_url: str,
    tmp_path: Path,
    proxy: TcpProxy,
    start_service: Callable[[Config], Awaitable[Service]],
) -> Service:
    config = outage_config(db_url, f"http://127.0.0.1:{proxy.port}", tmp_path / "results")
    return await start_service(config)


@pytest.fixture
def poller(service: Service) -> Poller:
    assert service.poller is not None
    return service.poller


@pytest.fixture
def client(service: Service) -> Client:
    return Client(service.url)


async def states(client: Client, ids: list[str]) -> list[str]:
    return [(await client.status(i))["state"] for i in ids]


async def sent(client: Client, ids: list[str]) -> list[str] | None:
    """The queries' Athena execution ids, once every one has been sent."""
    execution_ids = [(await client.status(i))["athena_query_execution_id"] for i in ids]
    return execution_ids if all(execution_ids) else None


async def ticks_pass(poller: Poller, count: int) -> list[float]:
    """Wait for `count` more ticks to end; the durations of those ticks."""
    first = poller.ticks
    await wait_for(lambda: poller.ticks >= first + count, what=f"{count} more ticks")
    return list(poller.tick_seconds)[-(poller.ticks - first) :]


async def all_succeed(client: Client, ids: list[str], since: float) -> float:
    """Wait for every query to be SUCCEEDED (none FAILED meanwhile); seconds since `since`."""

    async def done() -> bool:
        now = await states(client, ids)
        assert "FAILED" not in now, now
        return all(state == "SUCCEEDED" for state in now)

    await wait_for(done, timeout=30, what="every query SUCCEEDED")
    return time.monotonic() - since


async def test_a_refused_endpoint_fails_nothing_and_batching_resumes_at_once(
    client: Client, double: AthenaDouble, proxy: TcpProxy, poller: Poller
) -> None:
    running = [await client.submit(RUNS.format(n=n)) for n in range(5)]
    execution_ids = await wait_for(lambda: sent(client, running), what="the first starts")
    proxy.refuse()
    proxy.cut()
    # Submitted while Athena is out of reach: they wait QUEUED and say why.
    waiting = [await client.submit(f"SELECT {n}") for n in range(5, 8)]

    async def say_why() -> bool:
        reasons = [(await client.status(i))["state_reason"] or "" for i in waiting]
        return all(r.startswith("not sent to Athena yet, trying again") for r in reasons)

    await wait_for(say_why, what="the unsent queries to say why")
    # The first ones finish in Athena meanwhile; the service cannot hear of it yet.
    await wait_for(
        lambda: all(double.execution(e)["state"] == "SUCCEEDED" for e in execution_ids),
        what="the running queries to end in Athena",
    )
    durations = await ticks_pass(poller, 10)
    assert max(durations) < poller.status_deadline + SLACK, durations
    assert "FAILED" not in await states(client, running + waiting)
    batches = double.calls().get("BatchGetQueryExecution", 0)

    healed = time.monotonic()
    proxy.heal()
    recovery = await all_succeed(client, running + waiting, healed)
    # Sent, observed and stored after the heal: a tick, a start, the next tick, the
    # download; well under the seconds the retrying client used to hold each call.
    assert recovery < poller.status_deadline + 4 * poller.interval_seconds + SLACK, recovery
    print(f"refused: every query SUCCEEDED {recovery:.3f} s after the heal")
    calls = double.calls()
    assert calls["BatchGetQueryExecution"] > batches  # batched again at once
    assert calls.get("GetQueryExecution", 0) == 0  # never per id


async def test_a_blackholed_endpoint_holds_no_tick_and_fails_nothing(
    client: Client, double: AthenaDouble, proxy: TcpProxy, poller: Poller
) -> None:
    held = [await client.submit(HELD.format(n=n)) for n in range(3)]
    for query_id in held:
        await client.wait_state(query_id, "RUNNING")
    execution_ids = await wait_for(lambda: sent(client, held), what="the starts")
    proxy.blackhole()
    unsent = await client.submit("SELECT 9")
    # Every status call now hangs until the tick's deadline; ticks go on at that pace.
    durations = await ticks_pass(poller, 4)
    assert max(durations) < poller.status_deadline + SLACK, durations
    assert min(durations[1:]) >= poller.status_deadline * 0.9, durations  # they did wait
    print(f"blackholed: ticks of {min(durations):.3f} to {max(durations):.3f} s")
    for execution_id in execution_ids:
        double.release(execution_id)  # done in Athena while out of reach

    async def start_timed_out() -> bool:
        return "TimeoutError" in ((await client.status(unsent))["state_reason"] or "")

    await wait_for(start_timed_out, what="the blackholed start to give up")
    assert await states(client, held) == ["RUNNING"] * 3
    assert (await client.status(unsent))["state"] == "QUEUED"

    healed = time.monotonic()
    proxy.heal()
    recovery = await all_succeed(client, [*held, unsent], healed)
    assert recovery < poller.status_deadline + 4 * poller.interval_seconds + SLACK, recovery
    print(f"blackholed: every query SUCCEEDED {recovery:.3f} s after the heal")
    assert double.calls().get("GetQueryExecution", 0) == 0


async def test_a_cut_download_is_tried_again_not_failed(
    client: Client, double: AthenaDouble, proxy: TcpProxy, poller: Poller
) -> None:
    # The result object sends its first bytes, then holds: the download is under way.
    query_id = await client.submit(
        'SELECT 1\n-- double: {"generate": 5000, "s3_stall_after": 1000}'
    )
    [execution_id] = await wait_for(lambda: sent(client, [query_id]), what="the start")
    # The download is under way: the result object sent its first bytes and holds.
    await wait_for(lambda: double.s3_held(execution_id), what="the download to be under way")
    logged: list[tuple[str, str]] = []
    sink = logger.add(lambda m: logged.append((m.record["level"].name, m.record["message"])))
    try:
        proxy.refuse()
        proxy.cut()
        await ticks_pass(poller, 5)
        status = await client.status(query_id)
        assert status["state"] == "RUNNING", status
        # Neither the object nor GetQueryResults can be read: a passing failure, no error.
        cut = ("WARNING", "Athena did not give the results; the next poll tries again")
        await wait_for(lambda: cut in logged, what="the download to give up for now")
        double.release_s3(execution_id)
        healed = time.monotonic()
        proxy.heal()
        recovery = await all_succeed(client, [query_id], healed)
    finally:
        logger.remove(sink)
    print(f"cut download: SUCCEEDED {recovery:.3f} s after the heal")
    assert (await client.status(query_id))["row_count"] == 5000
    assert not [message for level, message in logged if level in ("ERROR", "CRITICAL")]


async def test_a_blackholed_endpoint_does_not_hold_the_shutdown(
    client: Client, service: Service, proxy: TcpProxy
) -> None:
    proxy.blackhole()
    await client.submit("SELECT 1")  # its start hangs in the blackhole
    accepted = proxy.accepted
    await wait_for(lambda: proxy.accepted > accepted, what="a call into the blackhole")
    began = time.monotonic()
    await service.stop()
    took = time.monotonic() - began
    # The start in flight and the tick end at their deadlines.
    assert took < CALL_TIMEOUT + SLACK, took
    print(f"blackholed: the service stopped in {took:.3f} s")


@pytest.fixture
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


async def test_an_endpoint_without_the_batch_call_is_asked_per_id_for_good(
    db_url: str,
    tmp_path: Path,
    moto_url: str,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    # moto answers BatchGetQueryExecution with a bare HTML 500, no Athena error in it,
    # where GetQueryExecution answers: the poller asks per id, and keeps to it.
    service = await start_service(make_config(db_url, moto_url, tmp_path / "results"))
    assert service.poller is not None
    client = Client(service.url)
    ids = [await client.submit(f"SELECT {n}") for n in range(3)]
    for query_id in ids:
        await client.wait_state(query_id, "SUCCEEDED")
    assert service.poller.athena.has_batch is False


@pytest.mark.parametrize(
    ("code", "status", "lacks", "unexplained", "client_error"),
    [
        ("UnknownOperationException", 400, True, False, True),  # AWS, the local engine
        ("NotImplemented", 501, True, False, False),
        ("500", 500, False, True, False),  # moto's bare page, or a proxy's: ask per id to tell
        ("InternalServerException", 500, False, False, False),  # passing
        ("TooManyRequestsException", 400, False, False, False),  # passing
        ("TimeoutError", None, False, False, False),  # passing
        ("InvalidRequestException", 400, False, False, True),  # Athena refused it
    ],
)
def test_how_a_failed_call_is_read(
    code: str, status: int | None, lacks: bool, unexplained: bool, client_error: bool
) -> None:
    failure = AthenaCallError("batch_get_query_execution", code, "", status)
    assert (failure.lacks_operation, failure.is_unexplained, failure.is_client_error) == (
        lacks,
        unexplained,
        client_error,
    )
