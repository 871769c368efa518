"""The poller: it asks Athena about every running query, in batches where it can, and
one query's download never holds up the others."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from athenaq.app import Service
from athenaq.config import Config
from athenaq.poller import bounded
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_config, wait_for

HELD = 'SELECT {n}\n-- double: {{"hold": true}}'


async def test_the_backend_polls_athena_for_running_queries(
    client: Client, double: AthenaDouble
) -> None:
    ids = [await client.submit(HELD.format(n=n)) for n in range(3)]
    statuses = [await client.wait_state(i, "RUNNING") for i in ids]
    before = double.calls().get("BatchGetQueryExecution", 0)
    await wait_for(
        lambda: double.calls().get("BatchGetQueryExecution", 0) >= before + 3,
        what="three more status polls",
    )
    assert double.calls().get("GetQueryExecution", 0) == 0  # batched, not one call per query
    double.release(statuses[1]["athena_query_execution_id"])
    await client.wait_state(ids[1], "SUCCEEDED")
    assert (await client.status(ids[0]))["state"] == "RUNNING"


async def test_without_batch_support_it_asks_per_query(
    db_url: str, tmp_path: Path, start_service: Callable[[Config], Awaitable[Service]]
) -> None:
    # batch=False: the endpoint answers UnknownOperationException, as AWS does for an
    # operation it lacks.
    with AthenaDouble(batch=False) as endpoint:
        service = await start_service(make_config(db_url, endpoint.url, tmp_path))
        assert service.poller is not None
        poller = service.poller
        client = Client(service.url)
        ids = [await client.submit(f'SELECT {n}\n-- double: {{"run_ms": 200}}') for n in range(3)]
        for query_id in ids:
            await client.wait_state(query_id, "SUCCEEDED")
        held = await client.submit(HELD.format(n=9))
        await client.wait_state(held, "RUNNING")
        ticks, asked = poller.ticks, endpoint.calls()["GetQueryExecution"]
        await wait_for(lambda: poller.ticks >= ticks + 10, what="ten more ticks")
        calls = endpoint.calls()
        assert calls["GetQueryExecution"] >= asked + 9  # per id at every tick
        # Remembered for the endpoint: the batch call is never tried again.
        assert calls.get("BatchGetQueryExecution", 0) == 1
        assert poller.athena.has_batch is False
        await service.stop()


async def test_more_than_fifty_queries_run_at_once(
    config: Config, double: AthenaDouble, start_service: Callable[[Config], Awaitable[Service]]
) -> None:
    # Room in Athena for all of them (athena.max_running is 20 by default).
    athena = dataclasses.replace(config.athena, max_running=60)
    service = await start_service(dataclasses.replace(config, athena=athena))
    client = Client(service.url)
    ids = await asyncio.gather(*(client.submit(HELD.format(n=n)) for n in range(60)))

    async def all_running() -> list[dict] | None:
        statuses = [await client.status(i) for i in ids]
        return statuses if all(s["state"] == "RUNNING" for s in statuses) else None

    statuses = await wait_for(all_running, timeout=60, what="60 queries RUNNING together")
    for status in statuses:
        double.release(status["athena_query_execution_id"])
    for query_id in ids:
        await client.wait_state(query_id, "SUCCEEDED", timeout=60)
    assert double.calls().get("GetQueryExecution", 0) == 0


async def test_a_slow_download_does_not_delay_other_queries(
    client: Client, double: AthenaDouble
) -> None:
    slow = await client.submit('SELECT 1\n-- double: {"results_delay_ms": 4000}')
    await client.wait_state(slow, "RUNNING")
    fast = await client.submit("SELECT 2")
    await client.wait_state(fast, "SUCCEEDED", timeout=3)
    assert (await client.status(slow))["state"] == "RUNNING"
    await client.wait_state(slow, "SUCCEEDED", timeout=20)


async def test_throttled_starts_stay_queued_until_athena_has_room(
    db_url: str, tmp_path: Path, start_service: Callable[[Config], Awaitable[Service]]
) -> None:
    with AthenaDouble(max_running=2) as endpoint:
        service = await start_service(make_config(db_url, endpoint.url, tmp_path))
        client = Client(service.url)
        ids = [await client.submit(HELD.format(n=n)) for n in range(3)]

        async def two_running() -> list[dict] | None:
            # Which two get Athena's slots depends on how the starts interleave.
            statuses = [await client.status(i) for i in ids]
            return statuses if [s["state"] for s in statuses].count("RUNNING") == 2 else None

        statuses = await wait_for(two_running, what="two queries RUNNING")
        running = [s for s in statuses if s["state"] == "RUNNING"]
        (waiting,) = [s for s in statuses if s["state"] != "RUNNING"]
        await wait_for(
            lambda: endpoint.calls().get("StartQueryExecution", 0) >= 4,
            what="a throttled start",
        )

        async def says_why() -> dict | None:
            status = await client.status(waiting["id"])
            return status if status["state_reason"] else None

        # Still QUEUED, unsent, and its status says why.
        waiting = await wait_for(says_why, what="a reason for the wait")
        assert waiting["state"] == "QUEUED"
        assert waiting["athena_query_execution_id"] is None
        assert waiting["state_reason"].startswith("not sent to Athena yet, trying again")
        assert "TooManyRequestsException" in waiting["state_reason"]
        response = await client.request("POST", f"/query/{running[0]['id']}/cancel")
        assert body(response)["state"] == "CANCELLED"
        endpoint.release(running[1]["athena_query_execution_id"])
        status = await client.wait_state(waiting["id"], "RUNNING", timeout=30)
        assert status["athena_query_execution_id"] is not None
        assert status["state_reason"] is None
        # Stopped while its endpoint still answers: a poll in flight to a closed endpoint
        # would hold the stop for the length of the client's retries.
        await service.stop()


class _CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its turns (each run of its ready callbacks)."""

    turns = 0

    def _run_once(self) -> None:
        self.turns += 1
        super()._run_once()  # type: ignore[misc]


def test_workers_share_the_loops_turns() -> None:
    """Ten workers whose works hold the loop 3 ms each, as ten Athena answers that come
    together do: at most two works run in one turn of the loop (5 ms shared, then the
    next work waits for the next turn), where workers yielding each on its own let all
    ten run in one."""
    loop = _CountingLoop()
    started: list[int] = []

    async def work() -> None:
        started.append(loop.turns)
        until = time.perf_counter() + 0.003
        while time.perf_counter() < until:
            pass  # no await: the work holds the loop

    try:
        assert loop.run_until_complete(bounded((work() for _ in range(40)), 10)) is None
    finally:
        loop.close()
    assert len(started) == 40
    per_turn = Counter(started)
    assert max(per_turn.values()) <= 2, per_turn
