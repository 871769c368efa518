"""A restart loses nothing: queries QUEUED and RUNNING at shutdown finish under the next process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from athenaq.app import Service
from athenaq.config import Config
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_config, wait_for


async def test_queries_survive_a_restart(
    db_url: str, tmp_path: Path, start_service: Callable[[Config], Awaitable[Service]]
) -> None:
    with AthenaDouble(max_running=2) as endpoint:
        config = make_config(db_url, endpoint.url, tmp_path / "results")
        first = await start_service(config)
        before = Client(first.url)
        held = [
            await before.submit(f'SELECT {n}\n-- double: {{"hold": true, "generate": 5}}')
            for n in range(2)
        ]
        running = [await before.wait_state(i, "RUNNING") for i in held]
        # Athena has no room left: these stay QUEUED, not yet sent.
        queued = [
            await before.submit(f'SELECT {n}\n-- double: {{"run_ms": 100, "generate": 7}}')
            for n in range(2, 4)
        ]
        await wait_for(
            lambda: endpoint.calls().get("StartQueryExecution", 0) >= 3,
            what="a throttled start",
        )
        for query_id in queued:
            status = await before.status(query_id)
            assert status["state"] == "QUEUED"
            assert status["athena_query_execution_id"] is None
        await first.stop()

        for status in running:
            endpoint.release(status["athena_query_execution_id"])
        second = await start_service(config)
        after = Client(second.url)
        for query_id, rows in [(held[0], 5), (held[1], 5), (queued[0], 7), (queued[1], 7)]:
            await after.wait_state(query_id, "SUCCEEDED", timeout=60)
            results = body(await after.request("GET", f"/query/{query_id}/results"))
            assert results["row_count"] == rows
            assert len(results["rows"]) == rows
        await second.stop()
