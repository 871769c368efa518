"""A crash in the middle of an ingest leaves no file the service would serve, and the
restarted service ingests again.

The server runs as a real process (`python -m athenaq --config ...`, as an operator runs
it) and is killed with SIGKILL while it reads a query's result object from S3: the
double sends the first `s3_stall_after` bytes of the object and holds the rest until
the test releases it, so the kill lands mid-ingest every time, with no timing involved.
"""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import Any

from athenaq.results import TEMP_PREFIX
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, wait_for
from tests.served import Served, served_config
from tests.test_ingest import generated_row

ROWS = 120_000  # about 3 MB of CSV in the result object
STALL_AFTER = 1_500_000  # bytes of it sent before the double holds the rest
PAGE = 10_000  # rows per results page (MAX_PAGE_ROWS)


def start_server(name: str, tmp_path: Path, db_url: str, endpoint: str) -> Served:
    """`python -m athenaq --config <name>.json` (the first releases' form of the command)."""
    # The killed process's lease on the query ends soon after it: the next one takes the
    # query over then.
    document = served_config(db_url, endpoint, lease_seconds=1.0)
    return Served(
        tmp_path, document, name=name, command=["-m", "athenaq", "--config", f"{name}.json"]
    )


def entries(results: Path) -> list[str]:
    return sorted(p.name for p in results.iterdir()) if results.is_dir() else []


async def all_rows(client: Client, query_id: str) -> tuple[list[Any], list[list[str | None]]]:
    """Every row of the query's results, page by page, following `next`."""
    path: str | None = f"/query/{query_id}/results?offset=0&limit={PAGE}"
    columns: list[Any] = []
    rows: list[list[str | None]] = []
    while path is not None:
        response = await client.request("GET", path)
        assert response.code == 200, response.body[:500]
        page = body(response)
        assert page["row_count"] == ROWS and page["offset"] == len(rows)
        columns = page["columns"]
        rows.extend(page["rows"])
        path = page["next"]
    return columns, rows


async def test_a_crash_mid_ingest_leaves_nothing_served_and_the_restart_ingests_again(
    db_url: str, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    sql = f"SELECT n -- double: {json.dumps({'generate': ROWS, 's3_stall_after': STALL_AFTER})}"
    servers: list[Served] = []
    with AthenaDouble() as endpoint:
        try:
            # 1. The first process starts the ingest, which stalls mid-object.
            first = start_server("first", tmp_path, db_url, endpoint.url)
            servers.append(first)
            await first.serving()
            query_id = await first.client.submit(sql)

            async def execution_id() -> str | None:
                found: str | None = (await first.client.status(query_id))[
                    "athena_query_execution_id"
                ]
                return found

            execution: str = await wait_for(execution_id, what="the query to reach Athena")

            def ingesting() -> bool:
                # Any entry: a result written under its final name is caught just below.
                return bool(entries(results)) and endpoint.s3_held(execution) == 1

            await wait_for(ingesting, what="the ingest to write files, held mid-object")
            assert all(name.startswith(TEMP_PREFIX) for name in entries(results)), entries(results)
            assert endpoint.calls().get("GetObject", 0) >= 1
            assert first.process.poll() is None, first.log_tail()

            # 2. A crash, not a stop.
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(10) == -signal.SIGKILL

            left = entries(results)
            assert left, "the killed ingest left no temporary directory"
            assert all(name.startswith(TEMP_PREFIX) for name in left), left
            assert not (results / f"{query_id}.{execution}").exists()
            store = await Store.connect(db_url, maxsize=1)
            try:
                record = await store.get(query_id)
            finally:
                await store.close()
            assert record is not None
            assert record.state != "SUCCEEDED"
            # Athena said SUCCEEDED; the results were being stored (docs/internals.md, States).
            assert record.state == "RUNNING"
            assert record.athena_execution_id == execution
            assert record.results_at is None and record.row_count is None

            # 3. The object is served whole from now on; a new process takes over.
            endpoint.release_s3(execution)
            second = start_server("second", tmp_path, db_url, endpoint.url)
            servers.append(second)
            await second.serving()
            client = second.client
            status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", "CANCELLED")
            assert status["state"] == "SUCCEEDED", (status, second.log_tail())
            assert status["athena_query_execution_id"] == execution  # the same execution,
            assert endpoint.calls().get("StartQueryExecution") == 1  # not run again,
            assert endpoint.calls().get("GetObject", 0) >= 2  # but read again from S3
            assert status["results_source"] == "s3"
            assert status["row_count"] == ROWS

            # The start removed what the crash left; only the whole result is there.
            assert entries(results) == [f"{query_id}.{execution}"]

            columns, rows = await all_rows(client, query_id)
            assert [c["name"] for c in columns] == ["n", "label", "maybe"]
            assert len(rows) == ROWS
            assert rows[:3] == [["0", "row 0", None], ["1", "row 1", ""], ["2", "row 2", "x"]]
            assert rows[-1] == generated_row(ROWS - 1)
            assert rows == [generated_row(i) for i in range(ROWS)]

            # 4. A clean stop, while the endpoint still answers.
            assert await second.stop() == 0, second.log_tail()
        finally:
            for server in servers:
                with contextlib.suppress(Exception):
                    server.close()
