"""Leases: with several processes on one database, each unfinished query is polled, and
its results stored, by one process at a time; a process that stops hands its queries
over at once, and one that dies loses them after `poller.lease_seconds`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from athenaq.app import Service
from athenaq.config import Config
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, make_config, wait_for
from tests.served import served, served_config

StartService = Callable[..., Awaitable[Service]]
INTERVAL = 0.05
QUERIES = 60


def leased(config: Config, lease_seconds: float = 5.0) -> Config:
    # Room in Athena for every query a test holds running (athena.max_running).
    return dataclasses.replace(
        config,
        poller=dataclasses.replace(config.poller, lease_seconds=lease_seconds),
        athena=dataclasses.replace(config.athena, max_running=QUERIES),
    )


async def test_three_processes_poll_and_download_each_query_once(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    config = leased(make_config(db_url, double.url, tmp_path, interval_seconds=INTERVAL))
    fleet = [await start_service(config) for _ in range(3)]
    clients = [Client(s.url) for s in fleet]
    held = await asyncio.gather(
        *(clients[n % 3].submit(f'SELECT {n} -- double: {{"hold": true}}') for n in range(QUERIES))
    )
    running = [await clients[0].wait_state(i, "RUNNING") for i in held]
    executions = [str(status["athena_query_execution_id"]) for status in running]
    store = await Store.connect(db_url, maxsize=1)
    try:
        holders = {i: (await store.get(i)).lease_holder for i in held}  # type: ignore[union-attr]
        reads_before = [int(double.execution(e)["status_reads"]) for e in executions]
        ticks_before = {s.lease.holder: s.poller.ticks for s in fleet}  # type: ignore[union-attr]

        # Ten ticks of every process, whose each asks about the queries it holds.
        await wait_for(
            lambda: all(s.poller.ticks >= ticks_before[s.lease.holder] + 10 for s in fleet),  # type: ignore[union-attr]
            what="ten ticks of each process",
        )

        ticks = {s.lease.holder: s.poller.ticks - ticks_before[s.lease.holder] for s in fleet}  # type: ignore[union-attr]
        reads = [
            int(double.execution(e)["status_reads"]) - before
            for e, before in zip(executions, reads_before, strict=True)
        ]
        assert {i: (await store.get(i)).lease_holder for i in held} == holders  # type: ignore[union-attr]
    finally:
        await store.close()
    # Each query is asked about at its holder's ticks only (one more for a tick under way
    # at each end), not at the ticks of all three.
    for query_id, count in zip(held, reads, strict=True):
        assert count <= ticks[holders[query_id]] + 2, (count, ticks)
    assert sum(reads) < sum(ticks.values()) * QUERIES / 2
    for execution in executions:
        double.release(execution)
    for query_id in held:
        await clients[0].wait_state(query_id, "SUCCEEDED")
    # One start per query, one download per query (the one-row result read once, from
    # its first GetQueryResults page).
    calls = double.calls()
    assert calls["StartQueryExecution"] == QUERIES
    assert calls["GetQueryResults"] == QUERIES


async def test_a_stopping_process_hands_its_queries_over_at_once(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    # Leases far longer than the test: only the release can hand the query over.
    config = leased(make_config(db_url, double.url, tmp_path, interval_seconds=INTERVAL), 3600)
    first, second = await start_service(config), await start_service(config)
    query_id = await Client(first.url).submit('SELECT 1 -- double: {"hold": true}')
    running = await Client(first.url).wait_state(query_id, "RUNNING")
    store = await Store.connect(db_url, maxsize=1)
    try:
        assert (await store.get(query_id)).lease_holder == first.lease.holder  # type: ignore[union-attr]
        await first.stop()
        # Released: nobody holds it, or the second process claimed it already.
        assert (await store.get(query_id)).lease_holder != first.lease.holder  # type: ignore[union-attr]

        async def taken() -> bool:
            record = await store.get(query_id)
            return record is not None and record.lease_holder == second.lease.holder

        await wait_for(taken, timeout=5, what="the second process to claim the query")
    finally:
        await store.close()
    double.release(str(running["athena_query_execution_id"]))
    await Client(second.url).wait_state(query_id, "SUCCEEDED")
    assert double.calls()["GetQueryResults"] == 1  # stored once, from its first page


async def test_the_queries_of_a_process_killed_are_taken_over_after_the_lease(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    lease_seconds = 1.0
    document = served_config(
        db_url, double.url, interval_seconds=INTERVAL, lease_seconds=lease_seconds
    )
    with served(tmp_path, document) as doomed:
        await doomed.serving()
        client = doomed.client
        held = [await client.submit(f'SELECT {n} -- double: {{"hold": true}}') for n in range(5)]
        running = [await client.wait_state(i, "RUNNING") for i in held]
        doomed.kill()
    # Nobody polls them now; a process that starts takes them once their leases end.
    killed_at = time.monotonic()
    heir = await start_service(
        leased(make_config(db_url, double.url, tmp_path / "results", interval_seconds=INTERVAL),
               lease_seconds)
    )  # fmt: skip
    store = await Store.connect(db_url, maxsize=1)
    try:

        async def all_taken() -> bool:
            records = [await store.get(i) for i in held]
            return all(r is not None and r.lease_holder == heir.lease.holder for r in records)

        await wait_for(all_taken, timeout=10, what="the heir to take every query over")
        # After the lease, not after the 30 s default: ticks of a loaded machine are slow.
        assert time.monotonic() - killed_at <= lease_seconds + 4.0
    finally:
        await store.close()
    for status in running:
        double.release(str(status["athena_query_execution_id"]))
    client = Client(heir.url)
    for query_id in held:
        await client.wait_state(query_id, "SUCCEEDED")
    # One execution per query: the heir polled the executions it found, started none.
    assert double.calls()["StartQueryExecution"] == len(held)
