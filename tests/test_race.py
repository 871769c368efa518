"""Cancel racing the poller's completion, across two server processes sharing one database.

Whatever the interleaving, every query's history is a legal path of the state
table, a completed query is never cancelled, and the cancel's answer agrees
with where the query ends."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from athenaq.app import Service
from athenaq.config import Config
from athenaq.states import QueryState
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_config, wait_for
from tests.histories import assert_legal_path

# Every round is a fresh interleaving; tox.ini runs fewer where another environment of
# the matrix already runs the full count against the same store.
ROUNDS = int(os.environ.get("ATHENAQ_RACE_ROUNDS", "200"))
CONCURRENT = 25
# Where in a query's life its cancel lands: at once (QUEUED, maybe not sent yet), once
# athenaq saw it RUNNING, or once Athena has finished it (racing the results download).
CANCEL_POINTS = ("submitted", "RUNNING", "done in Athena")
# Every tenth query runs until it is stopped, so the cancelled outcome happens whatever
# the machine's load; the others race.
HELD_EVERY = 10


async def test_cancel_racing_completion_never_cancels_a_completed_query(
    db_url: str,
    double: AthenaDouble,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    config = make_config(db_url, double.url, tmp_path / "results", interval_seconds=0.02)
    services = [await start_service(config), await start_service(config)]
    clients = [Client(s.url) for s in services]
    store = await Store.connect(db_url)
    outcomes: dict[str, int] = {}

    async def one_round(n: int) -> None:
        rng = random.Random(n)
        submit_via, cancel_via = rng.choice(clients), rng.choice(clients)
        held = n % HELD_EVERY == 0
        script = '"hold": true' if held else f'"run_ms": {rng.randint(0, 600)}'
        sql = f'SELECT {n}\n-- double: {{{script}, "results_delay_ms": {rng.randint(0, 30)}}}'
        query_id = await submit_via.submit(sql)
        await reach(rng.choice(CANCEL_POINTS[:2] if held else CANCEL_POINTS), submit_via, query_id)
        response = await cancel_via.request("POST", f"/query/{query_id}/cancel")
        final = await submit_via.wait_state(
            query_id, "SUCCEEDED", "CANCELLED", "FAILED", timeout=30
        )
        key = f"{response.code} {final['state']}"
        outcomes[key] = outcomes.get(key, 0) + 1
        if response.code == 200:
            assert final["state"] == "CANCELLED"
        elif response.code == 409:
            assert body(response)["error"]["code"] == "query_finished"
            assert final["state"] == "SUCCEEDED"
        else:
            assert response.code == 202, response.body
            assert final["state"] in ("CANCELLED", "SUCCEEDED")
        if held:
            assert final["state"] == "CANCELLED", (query_id, response.code)
        moves = [(h.from_state, h.to_state) for h in await store.history(query_id)]
        assert_legal_path(query_id, moves)
        assert (QueryState.SUCCEEDED, QueryState.CANCELLED) not in moves, (query_id, moves)
        if final["state"] == "SUCCEEDED":
            results = await submit_via.request("GET", f"/query/{query_id}/results")
            assert results.code == 200
        else:
            # A download that lost to the cancel leaves no file behind.
            await wait_for(
                lambda: not list(Path(config.results.dir).glob(f"{query_id}.*")),
                what="no stray result file",
            )

    async def reach(point: str, client: Client, query_id: str) -> None:
        """Wait until the query is at `point` of its life, where the cancel then lands."""
        if point == "RUNNING":
            await client.wait_state(query_id, "RUNNING", "SUCCEEDED", "FAILED")
        elif point == "done in Athena":
            # Athena has finished it; athenaq may be storing its results: the race itself.
            async def done_in_athena() -> bool:
                execution_id = (await client.status(query_id))["athena_query_execution_id"]
                return bool(execution_id) and double.execution(execution_id)["state"] != "RUNNING"

            await wait_for(done_in_athena, what=f"{query_id} done in Athena")

    try:
        for start in range(0, ROUNDS, CONCURRENT):
            batch = range(start, min(start + CONCURRENT, ROUNDS))
            await asyncio.gather(*(one_round(n) for n in batch))
    finally:
        await store.close()
    print("cancel/complete outcomes:", dict(sorted(outcomes.items())))
    # The race is real only if both outcomes happened (a query finished in Athena before its
    # cancel always ends SUCCEEDED; a held one always ends CANCELLED).
    assert any(k.endswith("CANCELLED") for k in outcomes)
    assert any(k.endswith("SUCCEEDED") for k in outcomes)
