"""Cancels that Athena cannot take at once: out of reach (refused or blackholed behind a
TCP proxy the test controls), or slow to confirm the stop. The cancel answers 202 within
`athena.cancel_wait_seconds` instead of waiting for the call's deadline; the poller sends
the stop again, with backoff, until Athena reports the execution ended; a query that
finished in Athena first keeps its outcome, and no query fails of the outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from athenaq.app import Service
from athenaq.config import Config
from athenaq.poller import Poller
from athenaq.states import QueryState
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_config, wait_for
from tests.histories import assert_legal_path
from tests.tcpproxy import TcpProxy

# Short, so the test is; the call's own deadline stays its default (10 s), which a
# blackholed stop would otherwise wait out.
CANCEL_WAIT = 1.0
# Scheduling and store round trips on a busy machine (CI runs three test environments
# on two cores), on top of what the design allows.
SLACK = 3.0
HELD = 'SELECT {n}\n-- double: {{"hold": true}}'
RUNS = 'SELECT {n}\n-- double: {{"run_ms": 300}}'


@pytest.fixture
async def proxy(double: AthenaDouble) -> AsyncIterator[TcpProxy]:
    """The double's Athena API and S3 behind one proxy."""
    async with TcpProxy("127.0.0.1", urlsplit(double.url).port or 80) as opened:
        yield opened


def cancel_config(db_url: str, endpoint_url: str, results_dir: Path, **athena: float) -> Config:
    config = make_config(db_url, endpoint_url, results_dir)
    return replace(
        config, athena=replace(config.athena, **{"cancel_wait_seconds": CANCEL_WAIT, **athena})
    )


@pytest.fixture
async def service(
    db_url: str,
    tmp_path: Path,
    proxy: TcpProxy,
    start_service: Callable[[Config], Awaitable[Service]],
) -> Service:
    endpoint = f"http://127.0.0.1:{proxy.port}"
    return await start_service(cancel_config(db_url, endpoint, tmp_path / "results"))


@pytest.fixture
def poller(service: Service) -> Poller:
    assert service.poller is not None
    return service.poller


@pytest.fixture
def client(service: Service) -> Client:
    return Client(service.url)


async def execution_id(client: Client, query_id: str) -> str:
    status = await client.wait_state(query_id, "RUNNING")
    found: str = status["athena_query_execution_id"]
    return found


async def cancel_answered_202(client: Client, query_id: str) -> float:
    """Cancel; assert the 202 "requested" answer; the seconds it took."""
    began = time.monotonic()
    response = await client.request("POST", f"/query/{query_id}/cancel")
    took = time.monotonic() - began
    assert response.code == 202, response.body
    assert body(response) == {"id": query_id, "state": "RUNNING", "cancel_requested": True}
    return took


@pytest.mark.parametrize("outage", ["refused", "blackholed"])
async def test_a_cancel_athena_cannot_take_answers_202_soon_and_the_poller_stops_it_later(
    client: Client,
    double: AthenaDouble,
    proxy: TcpProxy,
    poller: Poller,
    store: Store,
    outage: str,
) -> None:
    cancelled = await client.submit(HELD.format(n=0))
    others = [await client.submit(RUNS.format(n=n)) for n in range(1, 4)]
    stopped = await execution_id(client, cancelled)
    for query_id in others:
        await client.wait_state(query_id, "RUNNING", "SUCCEEDED")
    if outage == "refused":
        proxy.refuse()
        proxy.cut()
    else:
        proxy.blackhole()

    took = await cancel_answered_202(client, cancelled)
    # Within the cancel's wait, not the call's deadline (10 s): the stop is not confirmed.
    assert took < CANCEL_WAIT + SLACK, took
    print(f"{outage}: the cancel answered 202 in {took:.3f} s")
    status = await client.status(cancelled)
    assert (status["state"], status["cancel_requested"]) == ("RUNNING", True)
    # The outage lasts past the time the poller would send the stop again: it cannot.
    began, ticks = time.monotonic(), poller.ticks
    await wait_for(
        lambda: poller.ticks > ticks + 3 and time.monotonic() - began > poller.first_stop_retry,
        what="the outage to outlast the first stop's retry",
    )
    if outage == "refused":
        assert double.execution(stopped)["stop_calls"] == 0  # nothing reached Athena
    assert double.execution(stopped)["state"] == "RUNNING"

    healed = time.monotonic()
    proxy.heal()
    status = await client.wait_state(cancelled, "CANCELLED", "SUCCEEDED", "FAILED", timeout=30)
    recovery = time.monotonic() - healed
    assert (status["state"], status["state_reason"]) == ("CANCELLED", "cancelled by client")
    execution = double.execution(stopped)
    # Stopped at the engine, by the poller when the cancel's own stop never arrived.
    assert execution["state"] == "CANCELLED"
    assert execution["stop_calls"] >= 1
    # A tick's status call, the stop, the next tick's status call.
    assert recovery < 2 * poller.status_deadline + 3 * poller.interval_seconds + SLACK, recovery
    print(f"{outage}: CANCELLED {recovery:.3f} s after the heal, {execution['stop_calls']} stops")
    for query_id in others:
        await client.wait_state(query_id, "SUCCEEDED", "FAILED", timeout=30)
        assert (await client.status(query_id))["state"] == "SUCCEEDED"
    for query_id in [cancelled, *others]:
        assert_legal_path(
            query_id, [(h.from_state, h.to_state) for h in await store.history(query_id)]
        )


async def test_a_query_done_in_athena_before_its_pending_stop_keeps_its_outcome(
    client: Client, double: AthenaDouble, proxy: TcpProxy, poller: Poller, store: Store
) -> None:
    succeeding = await client.submit(HELD.format(n=0))
    failing = await client.submit(HELD.format(n=1))
    ids = {q: await execution_id(client, q) for q in (succeeding, failing)}
    proxy.refuse()
    proxy.cut()
    for query_id in ids:
        await cancel_answered_202(client, query_id)
    # Both end in Athena before any stop reaches it.
    double.release(ids[succeeding], "SUCCEEDED")
    double.release(ids[failing], "FAILED", "failed by the test")
    began = time.monotonic()
    await wait_for(
        lambda: time.monotonic() - began > poller.first_stop_retry,
        what="the first stop's retry to be due",
    )
    proxy.heal()
    done = await client.wait_state(succeeding, "SUCCEEDED", "CANCELLED", timeout=30)
    assert done["state"] == "SUCCEEDED"
    assert (await client.request("GET", f"/query/{succeeding}/results")).code == 200
    failed = await client.wait_state(failing, "FAILED", "CANCELLED", timeout=30)
    assert failed["state_reason"] == "failed by the test"
    # Athena reported them ended: the poller sent no stop.
    assert [double.execution(e)["stop_calls"] for e in ids.values()] == [0, 0]
    for query_id in ids:
        moves = [(h.from_state, h.to_state) for h in await store.history(query_id)]
        assert_legal_path(query_id, moves)
        assert QueryState.CANCELLED not in [to for _, to in moves], moves


async def test_a_stop_athena_is_slow_to_confirm_is_sent_again_with_backoff(
    db_url: str,
    double: AthenaDouble,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    # Athena takes the stop but confirms it only after 3 s: the cancel answers 202, and
    # the poller sends the stop again after the cancel's wait and a tick, then after
    # twice as long each time, not at every tick.
    service = await start_service(
        cancel_config(db_url, double.url, tmp_path / "results", cancel_wait_seconds=0.2)
    )
    poller = service.poller
    assert poller is not None
    client = Client(service.url)
    query_id = await client.submit('SELECT 1\n-- double: {"hold": true, "stop_ms": 3000}')
    stopped = await execution_id(client, query_id)
    began = time.monotonic()
    await cancel_answered_202(client, query_id)
    seen: list[float] = []  # when each stop after the cancel's own was seen at the engine

    def stops_seen() -> bool:
        calls = double.execution(stopped)["stop_calls"]
        seen.extend([time.monotonic() - began] * (calls - 1 - len(seen)))
        return calls >= 4

    await wait_for(stops_seen, what="the stop sent again three times")
    first = poller.first_stop_retry
    # Waits of first, then first and twice first (10% jitter) between the repeats.
    assert seen[2] >= first + 0.9 * (first + 2 * first), seen
    status = await client.wait_state(query_id, "CANCELLED", timeout=30)
    assert status["state_reason"] == "cancelled by client"
    calls = double.execution(stopped)["stop_calls"]
    print(f"slow stop: repeats seen at {[round(s, 3) for s in seen]} s, {calls} stops in all")
    # By the 3 s confirmation: 0.25, 0.5, 1.0, 2.0 s, not one per 50 ms tick.
    assert calls <= 6, calls


async def test_a_cancel_sent_twice_at_once_is_answered_within_one_wait(
    db_url: str,
    double: AthenaDouble,
    proxy: TcpProxy,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    # The second cancel waits for the first's hold on the query, then would wait for
    # Athena as long again: its wait counts from its own arrival instead.
    wait = 3.0
    endpoint = f"http://127.0.0.1:{proxy.port}"
    service = await start_service(
        cancel_config(db_url, endpoint, tmp_path / "results", cancel_wait_seconds=wait)
    )
    client = Client(service.url)
    query_id = await client.submit(HELD.format(n=0))
    stopped = await execution_id(client, query_id)
    proxy.refuse()
    proxy.cut()
    took = await asyncio.gather(*(cancel_answered_202(client, query_id) for _ in range(2)))
    print(f"two cancels at once answered 202 in {took[0]:.3f} and {took[1]:.3f} s")
    assert max(took) < 2 * wait - 0.5, took
    proxy.heal()
    status = await client.wait_state(query_id, "CANCELLED", timeout=30)
    assert status["state_reason"] == "cancelled by client"
    assert double.execution(stopped)["state"] == "CANCELLED"
