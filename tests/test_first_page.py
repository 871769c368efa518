"""Results small enough for their first GetQueryResults page are stored from that page
alone, with no S3 request, and are served exactly as the S3 path serves them; and a
poller tick that learns nothing new from Athena reads and writes nothing per query."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from athenaq.app import Service
from athenaq.config import Config
from athenaq.states import QueryState
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, wait_for

StartService = Callable[..., Awaitable[Service]]

COLUMNS = [["n", "integer"], ["s", "varchar"], ["d", "date"]]
# Quotes, commas, line ends, multi-byte characters, NULL and "" in a few rows.
ROWS: list[list[Any]] = [
    ["1", None, "2024-01-01"],
    ["2", "", None],
    ["3", 'say "hi", then\r\nbye', "2024-01-03"],
    [None, "é 中文 🎉", "2024-01-04"],
]


def scripted(**script: Any) -> str:
    return f"SELECT 1 -- double: {json.dumps(script)}"


def with_first_page(config: Config, rows: int, results_dir: Path) -> Config:
    results = dataclasses.replace(config.results, first_page_rows=rows, dir=str(results_dir))
    return dataclasses.replace(config, results=results)


async def finished(client: Client, query_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        status = await client.status(query_id)
        return status if status["state"] not in ("QUEUED", "RUNNING") else None

    status: dict[str, Any] = await wait_for(done, what=f"{query_id} finished")
    assert status["state"] == "SUCCEEDED", status
    return status


async def served(client: Client, query_id: str) -> tuple[Any, bytes, bytes]:
    """The query's results as a page, a CSV download and a JSON lines download."""
    page = await client.request("GET", f"/query/{query_id}/results")
    csv = await client.request("GET", f"/query/{query_id}/results?format=csv")
    jsonl = await client.request("GET", f"/query/{query_id}/results?format=jsonl")
    assert (page.code, csv.code, jsonl.code) == (200, 200, 200)
    document = {k: v for k, v in body(page).items() if k not in ("id", "results_at")}
    return document, csv.body, jsonl.body


def stored_files(results_dir: Path, query_id: str, execution_id: str) -> dict[str, bytes]:
    directory = results_dir / f"{query_id}.{execution_id}"
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("rows", [ROWS, []], ids=["rows", "no-rows"])
async def test_a_tiny_result_is_stored_from_its_first_page_as_s3_would_store_it(
    config: Config,
    double: AthenaDouble,
    start_service: StartService,
    tmp_path: Path,
    rows: list[list[Any]],
) -> None:
    sql = scripted(columns=COLUMNS, rows=rows)
    # The same result, once from its first page, once from S3 (first_page_rows 0).
    stored = {}
    for first_page_rows in (100, 0):
        results_dir = tmp_path / f"results-{first_page_rows}"
        service = await start_service(with_first_page(config, first_page_rows, results_dir))
        client = Client(service.url)
        before = double.calls()
        query_id = await client.submit(sql)
        status = await finished(client, query_id)
        calls = Counter(double.calls())
        calls.subtract(before)
        stored[first_page_rows] = (
            status,
            calls,
            await served(client, query_id),
            stored_files(results_dir, query_id, status["athena_query_execution_id"]),
        )
    page_status, page_calls, page_served, page_files = stored[100]
    s3_status, s3_calls, s3_served, s3_files = stored[0]
    assert (page_status["results_source"], s3_status["results_source"]) == ("api", "s3")
    assert page_status["row_count"] == s3_status["row_count"] == len(rows)
    # One Athena call for the whole result, and nothing asked of S3.
    assert page_calls["GetQueryResults"] == 1
    assert page_calls["GetObject"] == page_calls["HeadObject"] == 0
    assert s3_calls["GetObject"] == 1
    # Served identically, down to the bytes of the stored files.
    assert page_served == s3_served
    assert page_files == s3_files
    assert set(page_files) == {"columns.json", "rows.csv", "rows.idx"}
    page = page_served[0]
    assert page["columns"] == [{"name": n, "type": t} for n, t in COLUMNS]
    assert page["rows"] == rows


async def test_a_result_over_its_first_page_is_read_from_s3(
    config: Config, double: AthenaDouble, start_service: StartService, tmp_path: Path
) -> None:
    # A first page of 3 rows: the header and 2 rows. 2 rows fit it; 3 do not.
    service = await start_service(with_first_page(config, 3, tmp_path / "results"))
    client = Client(service.url)
    sources = {}
    for count in (2, 3):
        query_id = await client.submit(scripted(generate=count))
        status = await finished(client, query_id)
        assert status["row_count"] == count
        sources[count] = status["results_source"]
    assert sources == {2: "api", 3: "s3"}
    assert double.calls()["GetObject"] == 1


async def test_a_tick_that_learns_nothing_reads_and_writes_nothing_per_query(
    config: Config, double: AthenaDouble, start_service: StartService, db_url: str
) -> None:
    held = 120  # three batches of status calls
    # Every one of them running in Athena at once: admission control lets them all in.
    service = await start_service(
        dataclasses.replace(config, athena=dataclasses.replace(config.athena, max_running=held))
    )
    client = Client(service.url)
    ids = [await client.submit(scripted(hold=True)) for _ in range(held)]

    async def all_running() -> bool:
        states = [(await client.status(i))["state"] for i in ids]
        return states == ["RUNNING"] * held

    await wait_for(all_running, what="every query RUNNING")
    execution_id = (await client.status(ids[0]))["athena_query_execution_id"]
    # What the store is asked per query from here on, by the poller and its machine.
    store = service._store
    assert store is not None
    asked: Counter[str] = Counter()
    for name in ("get", "update", "transition"):
        method = getattr(store, name)

        def counting(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            asked[_name] += 1
            return _method(*args, **kw)

        setattr(store, name, counting)
    poller = service.poller
    assert poller is not None
    ticks, batches = poller.ticks, double.calls()["BatchGetQueryExecution"]
    await wait_for(lambda: poller.ticks >= ticks + 4, what="four more ticks")
    assert asked == Counter()
    # Each tick did ask Athena about every query.
    assert double.calls()["BatchGetQueryExecution"] - batches >= 3 * 3
    # A change is a write, and no read: the claim's record is the one compare-and-set on.
    # (Watched through a store of its own: a status request would read the service's.)
    double.release(execution_id)
    watcher = await Store.connect(db_url, maxsize=1)
    try:

        async def succeeded() -> bool:
            record = await watcher.get(ids[0])
            return record is not None and record.state == QueryState.SUCCEEDED

        await wait_for(succeeded, what="the released query SUCCEEDED")
    finally:
        await watcher.close()
    assert asked == Counter({"transition": 1}), asked


async def test_tiny_results_do_not_wait_behind_large_downloads(
    config: Config, double: AthenaDouble, start_service: StartService, db_url: str
) -> None:
    # One download slot, and one store slot: two large results held mid-download (one in
    # the download slot, one waiting for it) give their store slots back meanwhile.
    poller = dataclasses.replace(config.poller, max_concurrent_downloads=1, max_concurrent_stores=1)
    service = await start_service(dataclasses.replace(config, poller=poller))
    client = Client(service.url)
    large = [await client.submit(scripted(generate=5000, s3_stall_after=1000)) for _ in range(2)]
    watcher = await Store.connect(db_url, maxsize=1)
    try:

        async def downloading() -> list[str] | None:
            records = [await watcher.get(i) for i in large]
            executions = [r.athena_execution_id for r in records if r and r.athena_execution_id]
            held = len(executions) == 2 and any(double.s3_held(e) for e in executions)
            return executions if held else None

        executions = await wait_for(downloading, what="a large result's download held")
        tiny = [await client.submit(scripted(columns=COLUMNS, rows=ROWS)) for _ in range(3)]
        for query_id in tiny:
            assert (await finished(client, query_id))["results_source"] == "api"
        # Meanwhile the large ones have not moved.
        assert [(await client.status(i))["state"] for i in large] == ["RUNNING"] * 2
        for execution_id in executions:
            double.release_s3(execution_id)
        for query_id in large:
            assert (await finished(client, query_id))["row_count"] == 5000
    finally:
        await watcher.close()


async def test_tiny_results_finishing_together_move_to_succeeded_in_batches(
    config: Config, double: AthenaDouble, start_service: StartService, tmp_path: Path
) -> None:
    count = 40
    service = await start_service(
        dataclasses.replace(config, athena=dataclasses.replace(config.athena, max_running=count))
    )
    client = Client(service.url)
    ids = [
        await client.submit(scripted(columns=COLUMNS, rows=ROWS, hold=True)) for _ in range(count)
    ]

    async def all_running() -> bool:
        return [(await client.status(i))["state"] for i in ids] == ["RUNNING"] * count

    await wait_for(all_running, what="every query RUNNING")
    store = service._store
    assert store is not None
    batches: list[int] = []
    transitions = store.transitions

    def counting(batch: Any, **kw: Any) -> Any:
        batches.append(len(batch))
        return transitions(batch, **kw)

    store.transitions = counting
    double.engine.release_all()
    for query_id in ids:
        status = await finished(client, query_id)
        assert (status["row_count"], status["results_source"]) == (len(ROWS), "api")
    # Every move written in a batch, and batches of several, so fewer transactions than
    # results.
    assert sum(batches) == count
    assert len(batches) < count and max(batches) > 1, batches
