"""Three processes on one store, two of them killed (kill -9) at once while their queries
are at every point of a query's life: nothing is lost or stuck, each run is one execution
at the engine, every history is a legal path, and the survivor takes the queries over
within `poller.lease_seconds` plus one tick.

tests/test_leases.py kills one process whose queries all run, and tests/test_handover.py
cuts one start; here the two processes killed hold queries at each point of POINTS when
they die, all at once, and a third one (in this process) is left to take them over."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from athenaq.app import Service
from athenaq.states import QueryRecord, QueryState
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import make_config, wait_for
from tests.histories import assert_legal_path
from tests.served import Served, served, served_config

StartService = Callable[..., Awaitable[Service]]
INTERVAL = 0.05
LEASE_SECONDS = 1.0
# A loaded CI machine (suites in parallel on two cores) can be a second or two late at a
# tick, or at the test's own reads of the store.
TAKEOVER_SLACK = 3.0
EACH = 2  # queries per point per process killed
# Each point's script for the engine; `{n}` keeps every SQL text apart (the engine
# matches a repeated token against it).
POINTS = {
    # Not sent yet: waiting for a slot, as the others hold every one (athena.max_running).
    "unsent": '"run_ms": 50',
    # Sent, and the execution made, but its answer held until the process is gone: the
    # execution id was never recorded.
    "start cut": '"start_stall_ms": 60000, "run_ms": 50',
    # Sent; QUEUED in Athena as in athenaq.
    "queued": '"queue_ms": 600000, "hold": true',
    "running": '"hold": true',
    # Done in Athena, its result half read from S3.
    "ingesting": '"generate": 5000, "s3_stall_after": 1000',
}
ROWS = {"ingesting": 5000}
# Athena slots: those the points but "unsent" take.
SLOTS = (len(POINTS) - 1) * 2 * EACH
# Longer than the test: the cut start and the held S3 read wait for the kill, not for the
# call's deadline, however slow a loaded machine makes the test.
DOOMED_CALL_TIMEOUT = 120.0


def served_document(db_url: str, double: AthenaDouble) -> dict[str, Any]:
    """A config for a process to kill, on a port of its own; its results in `results`
    beside it, as the survivor's."""
    document = served_config(
        db_url, double.url, interval_seconds=INTERVAL, lease_seconds=LEASE_SECONDS
    )
    document["athena"].update(max_running=SLOTS, call_timeout_seconds=DOOMED_CALL_TIMEOUT)
    return document


def script(point: str, n: int) -> str:
    return f"SELECT {n} -- double: {{{POINTS[point]}}}"


async def test_two_of_three_processes_killed_at_every_point_lose_nothing(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    # One results folder for the three, as operations.md asks of a fleet.
    results = tmp_path / "results"
    config = make_config(db_url, double.url, results, interval_seconds=INTERVAL)
    survivor = await start_service(
        dataclasses.replace(
            config,
            poller=dataclasses.replace(config.poller, lease_seconds=LEASE_SECONDS),
            athena=dataclasses.replace(config.athena, max_running=SLOTS),
        )
    )
    store = await Store.connect(db_url, maxsize=2)
    with (
        served(tmp_path, served_document(db_url, double), name="a") as a,
        served(tmp_path, served_document(db_url, double), name="b") as b,
    ):
        try:
            await asyncio.gather(a.serving(), b.serving())
            doomed = (a, b)
            points: dict[str, str] = {}  # query id -> its point
            holder: dict[str, Served] = {}  # query id -> the process that took it

            async def submit(point: str) -> None:
                for process in doomed:
                    for _ in range(EACH):
                        query_id = await process.client.submit(script(point, len(points)))
                        points[query_id], holder[query_id] = point, process

            for point in ("start cut", "queued", "running", "ingesting"):
                await submit(point)

            async def records() -> dict[str, QueryRecord]:
                found = {i: await store.get(i) for i in points}
                return {i: r for i, r in found.items() if r is not None}

            def at_point(record: QueryRecord, tokens: set[str | None]) -> bool:
                point, execution_id = points[record.id], record.athena_execution_id
                if point == "unsent":
                    return record.admitted_at is None and execution_id is None
                if point == "start cut":
                    return execution_id is None and f"athenaq-{record.id}-1" in tokens
                if point == "queued":
                    return record.state is QueryState.QUEUED and execution_id is not None
                if point == "running":
                    return record.state is QueryState.RUNNING
                return execution_id is not None and double.s3_held(execution_id) > 0

            async def all_at_their_points() -> bool:
                tokens = set(double.executions().values())
                found = await records()
                return len(found) == len(points) and all(
                    at_point(r, tokens) for r in found.values()
                )

            await wait_for(all_at_their_points, what="the queries at their points")
            # Every slot is taken: these wait, QUEUED, until the held ones end.
            await submit("unsent")
            await wait_for(all_at_their_points, what="the unsent queries waiting")

            killed_at: dict[Served, float] = {}
            for process in doomed:
                process.kill()
                killed_at[process] = time.monotonic()
            before = await records()
            # Still at their points, and held by the processes now dead.
            tokens = set(double.executions().values())
            assert all(at_point(r, tokens) for r in before.values())
            assert not {r.lease_holder for r in before.values()} & {survivor.lease.holder}

            taken_at: dict[str, float] = {}

            async def all_taken() -> bool:
                for query_id, record in (await records()).items():
                    if query_id not in taken_at and record.lease_holder == survivor.lease.holder:
                        taken_at[query_id] = time.monotonic()
                return taken_at.keys() == points.keys()

            await wait_for(all_taken, timeout=30, what="the survivor to take every query over")
            takeover = max(taken_at[i] - killed_at[holder[i]] for i in points)
            print(f"{len(points)} queries taken over {takeover:.2f} s after the kills")
            assert takeover <= LEASE_SECONDS + INTERVAL + TAKEOVER_SLACK

            # Let every query go on to its end; the unsent take the slots freed.
            for query_id, record in before.items():
                if points[query_id] == "ingesting":
                    double.release_s3(str(record.athena_execution_id))
                elif points[query_id] in ("queued", "running"):
                    double.release(str(record.athena_execution_id))

            async def all_finished() -> dict[str, QueryRecord] | None:
                found = await records()
                return found if all(r.state.is_finished for r in found.values()) else None

            final = await wait_for(all_finished, timeout=30, what="every query to finish")
            histories = {i: await store.history(i) for i in points}
            unfinished = await store.unfinished()
        finally:
            await store.close()

    # 0 lost, 0 stuck: every query ended as its script says, the ingested ones whole.
    assert final.keys() == points.keys() and not unfinished
    assert {r.state for r in final.values()} == {QueryState.SUCCEEDED}
    for query_id, record in final.items():
        assert record.row_count == ROWS.get(points[query_id], 1), (points[query_id], record)
    # One execution per (query, run) at the engine, and the one each query records.
    executions = double.executions()
    assert sorted(str(t) for t in executions.values()) == sorted(f"athenaq-{i}-1" for i in points)
    assert {r.athena_execution_id: f"athenaq-{i}-1" for i, r in final.items()} == executions
    for query_id, history in histories.items():
        assert_legal_path(query_id, [(h.from_state, h.to_state) for h in history])
