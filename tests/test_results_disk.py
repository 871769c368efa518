"""A results disk that is full or cannot be written keeps the query RUNNING, with a
state_reason that says why, while the same execution's results are tried again; once
the disk heals the query SUCCEEDS without a new Athena execution, and only after
`results.store_retry_minutes` since the first failure does it end FAILED.

The disk fails in two ways a test can undo: a regular file where the results folder
must be (every write fails at once, ENOTDIR), and a server process started under a file
size limit (RLIMIT_FSIZE), lifted later from outside, so that writes fail part way
through the result (EFBIG), as on a disk that fills up.
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.config import Config
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_config, wait_for
from tests.served import Served, served_config
from tests.test_ingest import generated_row

ROWS = 40
SQL = f"SELECT n -- double: {json.dumps({'generate': ROWS})}"
RETRYING = re.compile(r"^results could not be stored since (\S+Z), trying again: (.+)$")


def break_folder(results: Path) -> None:
    """A regular file where the (empty) results folder was: no result can be written."""
    results.rmdir()
    results.write_text("not a folder\n")


def heal_folder(results: Path) -> None:
    results.unlink()
    results.mkdir()


def retrying_since(status: dict[str, Any]) -> str | None:
    """The first failure's time a RUNNING query's state_reason names, if it waits to
    store its results again."""
    found = RETRYING.match(status["state_reason"] or "")
    return found[1] if status["state"] == "RUNNING" and found else None


async def wait_retrying(client: Client, query_id: str) -> dict[str, Any]:
    async def retrying() -> dict[str, Any] | None:
        status = await client.status(query_id)
        assert status["state"] in ("QUEUED", "RUNNING"), status
        return status if retrying_since(status) else None

    found: dict[str, Any] = await wait_for(retrying, what="the results to wait for a retry")
    return found


async def all_rows(client: Client, query_id: str) -> list[list[str | None]]:
    response = await client.request("GET", f"/query/{query_id}/results?offset=0&limit=10000")
    assert response.code == 200, response.body[:500]
    rows: list[list[str | None]] = body(response)["rows"]
    return rows


def entries(results: Path) -> list[str]:
    return sorted(p.name for p in results.iterdir())


def with_retry(config: Config, minutes: float) -> Config:
    return replace(config, results=replace(config.results, store_retry_minutes=minutes))


async def test_an_unwritable_folder_keeps_the_query_running_until_it_heals(
    db_url: str,
    tmp_path: Path,
    double: AthenaDouble,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    results = tmp_path / "results"
    service = await start_service(make_config(db_url, double.url, results))
    client = Client(service.url)
    break_folder(results)
    query_id = await client.submit(SQL)

    status = await wait_retrying(client, query_id)
    assert status["state"] == "RUNNING"
    assert status["results_at"] is None and status["row_count"] is None
    error = RETRYING.match(status["state_reason"])
    assert error is not None and error[2].startswith("[Errno 20] Not a directory"), status
    since = retrying_since(status)
    response = await client.request("GET", f"/query/{query_id}/results")
    assert response.code == 409
    assert body(response)["error"]["code"] == "query_running"

    # Each attempt asks Athena for the columns once; the reason keeps the first failure.
    attempts = double.calls()["GetQueryResults"]
    await wait_for(
        lambda: double.calls()["GetQueryResults"] >= attempts + 2, what="two more attempts"
    )
    status = await client.status(query_id)
    assert status["state"] == "RUNNING" and retrying_since(status) == since, status

    heal_folder(results)
    status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", "CANCELLED")
    assert status["state"] == "SUCCEEDED", status
    assert status["state_reason"] is None
    assert status["row_count"] == ROWS
    assert await all_rows(client, query_id) == [generated_row(i) for i in range(ROWS)]
    # The same execution's results, read again: Athena ran the query once.
    assert double.calls()["StartQueryExecution"] == 1
    assert entries(results) == [f"{query_id}.{status['athena_query_execution_id']}"]


async def test_past_store_retry_minutes_the_query_fails_naming_the_error(
    db_url: str,
    tmp_path: Path,
    double: AthenaDouble,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    results = tmp_path / "results"
    config = with_retry(make_config(db_url, double.url, results), 0.01)
    service = await start_service(config)
    client = Client(service.url)
    break_folder(results)
    query_id = await client.submit(SQL)

    status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", "CANCELLED")
    assert status["state"] == "FAILED", status
    reason = status["state_reason"]
    found = re.match(r"^results could not be stored since (\S+Z): \[Errno 20\] Not a dir", reason)
    assert found is not None, reason
    # Tried again, with waits doubling from one interval (0.05 s): at 0, 0.05, 0.15, 0.35
    # and 0.75 s, give or take 10%; at every tick it would be some 13 attempts.
    assert 2 <= double.calls()["GetQueryResults"] <= 6
    # RUNNING until the retry time had passed since the first failure, then FAILED.
    store = await Store.connect(db_url, maxsize=1)
    try:
        history = await store.history(query_id)
    finally:
        await store.close()
    assert [(t.from_state, t.to_state) for t in history[-2:]] == [
        ("QUEUED", "RUNNING"),
        ("RUNNING", "FAILED"),
    ]
    first_failure = datetime.fromisoformat(found[1]).replace(tzinfo=None)
    assert history[-1].at - first_failure >= timedelta(minutes=0.01)
    response = await client.request("GET", f"/query/{query_id}/results")
    assert response.code == 409
    assert body(response)["error"]["code"] == "query_failed"
    assert body(response)["error"]["message"].endswith(reason)


# `python -m athenaq ...` under a file size limit from its first instant: writes past it
# fail with EFBIG (Python ignores SIGXFSZ), as on a disk that is full.
LIMITED_START = """
import resource, sys
from athenaq.main import run
size = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
run()
"""
FILE_SIZE_LIMIT = 1024 * 1024
BIG_ROWS = 100_000  # about 2.5 MB of CSV: over the limit
BIG_SQL = f"SELECT n -- double: {json.dumps({'generate': BIG_ROWS})}"


class LimitedServer(Served):
    """athenaq in its own process, its files limited to FILE_SIZE_LIMIT bytes until the
    test lifts the limit."""

    def __init__(
        self, name: str, tmp_path: Path, db_url: str, endpoint: str, retry_minutes: float = 60
    ) -> None:
        document = served_config(db_url, endpoint)
        document["results"] = {"dir": "results", "store_retry_minutes": retry_minutes}
        limited = ["-c", LIMITED_START, str(FILE_SIZE_LIMIT), "--config", f"{name}.json"]
        super().__init__(tmp_path, document, name=name, command=limited)

    def lift_limit(self) -> None:
        """The disk is freed: writes of any size go through again."""
        hard = resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (hard, hard))


@contextlib.contextmanager
def servers() -> Iterator[list[LimitedServer]]:
    started: list[LimitedServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.close()


async def test_a_disk_full_mid_write_then_freed_the_query_succeeds(
    db_url: str, tmp_path: Path, double: AthenaDouble
) -> None:
    results = tmp_path / "results"
    with servers() as started:
        server = LimitedServer("server", tmp_path, db_url, double.url)
        started.append(server)
        await server.serving()
        client = server.client
        query_id = await client.submit(BIG_SQL)

        status = await wait_retrying(client, query_id)
        assert status["state_reason"].endswith("[Errno 27] File too large"), status
        assert double.calls().get("GetObject", 0) >= 1  # it failed part way through
        response = await client.request("GET", f"/query/{query_id}/results?limit=1")
        assert response.code == 409, server.log_tail()
        assert body(response)["error"]["code"] == "query_running"

        server.lift_limit()
        status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", "CANCELLED")
        assert status["state"] == "SUCCEEDED", (status, server.log_tail())
        assert status["state_reason"] is None
        assert status["row_count"] == BIG_ROWS
        assert double.calls()["StartQueryExecution"] == 1
        response = await client.request("GET", f"/query/{query_id}/results?format=csv")
        assert response.code == 200
        lines = response.body.decode().splitlines()
        assert len(lines) == BIG_ROWS + 1
        assert lines[-1] == f'"{BIG_ROWS - 1}","row {BIG_ROWS - 1}",'
        # Every failed attempt removed its partial files: only the whole result is left.
        assert entries(results) == [f"{query_id}.{status['athena_query_execution_id']}"]
        assert await server.stop() == 0, server.log_tail()


async def test_a_restart_keeps_retrying_and_keeps_the_first_failure_time(
    db_url: str, tmp_path: Path, double: AthenaDouble
) -> None:
    with servers() as started:
        first = LimitedServer("first", tmp_path, db_url, double.url)
        started.append(first)
        await first.serving()
        query_id = await first.client.submit(BIG_SQL)
        since = retrying_since(await wait_retrying(first.client, query_id))
        assert since is not None
        assert await first.stop() == 0, first.log_tail()

        # The disk still full after a restart: the next process tries again, and the
        # reason still names the first failure.
        attempts = double.calls()["GetObject"]
        second = LimitedServer("second", tmp_path, db_url, double.url)
        started.append(second)
        await second.serving()
        await wait_for(
            lambda: double.calls()["GetObject"] >= attempts + 2, what="attempts after restart"
        )
        status = await second.client.status(query_id)
        assert status["state"] == "RUNNING" and retrying_since(status) == since, status
        assert await second.stop() == 0, second.log_tail()

        # A process whose retry time has passed since that first failure fails the query
        # at its first attempt: no restart gave it a new deadline.
        first_failure = datetime.fromisoformat(since).replace(tzinfo=None)
        await wait_for(
            lambda: utcnow() - first_failure > timedelta(minutes=0.01),
            what="0.6 s since the first failure",
        )
        attempts = double.calls()["GetObject"]
        third = LimitedServer("third", tmp_path, db_url, double.url, retry_minutes=0.01)
        started.append(third)
        await third.serving()
        status = await third.client.wait_state(query_id, "SUCCEEDED", "FAILED", "CANCELLED")
        assert status["state"] == "FAILED", status
        assert status["state_reason"] == f"results could not be stored since {since}: " + (
            "[Errno 27] File too large"
        )
        assert double.calls()["GetObject"] == attempts + 1
        assert double.calls()["StartQueryExecution"] == 1
        assert await third.stop() == 0, third.log_tail()
