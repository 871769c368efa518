"""Retention (`results.retention_days`): expired result files are removed in the
background, a query whose results expired answers 410 until a refresh, a reader is never
cut short, and processes sweeping together remove each result once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from athenaq.app import Service
from athenaq.clock import isoformat, utcnow
from athenaq.config import Config
from athenaq.errors import ResultsExpired
from athenaq.identity import anonymous
from athenaq.lookup import Lookup
from athenaq.results import ResultFiles, ResultReader
from athenaq.retention import Retention, pass_seconds
from athenaq.store import Store
from athenaq.tasks import TaskRegistry
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, wait_for
from tests.test_results_api import (
    GENERATED_COLUMNS,
    dechunk,
    expected_csv,
    generated,
    generated_row,
    succeeded,
)

StartService = Callable[..., Awaitable[Service]]
DONE = 'SELECT 1 -- double: {"rows": [["1"]], "columns": [["x", "integer"]]}'
HELD = 'SELECT 1 -- double: {"hold": true}'
# Expired as soon as stored: under a tenth of a millisecond.
AT_ONCE_DAYS = 1e-9


def keeping(config: Config, days: float | None) -> Config:
    return replace(config, results=replace(config.results, retention_days=days))


def result_dirs(config: Config, query_id: str) -> list[Path]:
    return list(Path(config.results.dir).glob(f"{query_id}.*"))


def parsed(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z"))


async def sweeper(db_url: str, config: Config, keep: timedelta = timedelta(0)) -> Retention:
    """Retention as another process runs it, over the same store and results folder;
    `keep` 0: every stored result is expired."""
    store = await Store.connect(db_url, maxsize=2)
    return Retention(store, ResultFiles(config.results.dir), TaskRegistry(), keep=keep, interval=1)


class GatedFiles(ResultFiles):
    """The results folder, whose `open` waits until the test lets it go on: a reader that
    has read its query's state and not opened the files yet."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.opening = asyncio.Event()
        self.go_on = asyncio.Event()

    async def open(self, query_id: str, execution_id: str) -> ResultReader:
        self.opening.set()
        await self.go_on.wait()
        return await super().open(query_id, execution_id)


async def test_the_status_shows_when_the_results_expire(
    config: Config, start_service: StartService, double: AthenaDouble
) -> None:
    client = Client((await start_service(keeping(config, 1.5))).url)
    query_id = await client.submit(DONE)
    status = await client.wait_state(query_id, "SUCCEEDED")
    expires = parsed(status["results_expires_at"])
    assert expires - parsed(status["results_at"]) == timedelta(days=1.5)
    assert (await client.request("GET", f"/query/{query_id}/results")).code == 200
    # None while there are no results.
    held = await client.submit(HELD)
    assert (await client.wait_state(held, "RUNNING"))["results_expires_at"] is None


def test_passes_are_a_minute_apart_at_most_a_tenth_of_the_retention_below() -> None:
    assert pass_seconds(timedelta(days=30), 1.0) == 60
    assert pass_seconds(timedelta(seconds=100), 1.0) == 10
    assert pass_seconds(timedelta(seconds=1), 0.5) == 0.5


async def test_expired_results_answer_410_until_a_refresh_brings_them_back(
    config: Config, start_service: StartService, double: AthenaDouble
) -> None:
    service = await start_service(keeping(config, AT_ONCE_DAYS))
    client = Client(service.url)
    query_id = await client.submit(DONE)
    await client.wait_state(query_id, "SUCCEEDED")

    async def gone() -> bool:
        response = await client.request("GET", f"/query/{query_id}/results")
        return response.code == 410

    await wait_for(gone, what="the retention pass")
    for path in ("results", "results?format=csv"):
        response = await client.request("GET", f"/query/{query_id}/{path}")
        assert response.code == 410
        document = body(response)
        assert document["error"]["code"] == "results_expired"
        assert "refresh" in document["error"]["message"]
        assert document["state"] == "SUCCEEDED"
    assert result_dirs(config, query_id) == []
    status = await client.status(query_id)
    assert status["state"] == "SUCCEEDED"
    assert status["results_expires_at"] <= isoformat(utcnow())

    # Without retention now (the same store and folder), a refresh brings them back.
    await service.stop()
    client = Client((await start_service(config)).url)
    assert (await client.request("POST", f"/query/{query_id}/refresh")).code == 202
    status = await client.wait_state(query_id, "SUCCEEDED")
    assert status["results_expires_at"] is None
    response = await client.request("GET", f"/query/{query_id}/results")
    assert response.code == 200 and body(response)["rows"] == [["1"]]


async def test_a_reader_that_read_the_state_before_the_removal_gets_410(
    config: Config, start_service: StartService, double: AthenaDouble, db_url: str
) -> None:
    client = Client((await start_service(config)).url)
    query_id = await succeeded(client, DONE)
    store = await Store.connect(db_url, maxsize=2)
    retention = await sweeper(db_url, config)
    try:
        files = GatedFiles(config.results.dir)
        reading = asyncio.ensure_future(
            Lookup(store, files).open_results(query_id, anonymous(None))
        )
        await asyncio.wait_for(files.opening.wait(), 10)
        assert await retention.sweep() == 1
        files.go_on.set()
        with pytest.raises(ResultsExpired):
            await reading
    finally:
        await store.close()
        await retention.store.close()
    assert (await client.request("GET", f"/query/{query_id}/results")).code == 410


async def test_a_download_under_way_when_its_files_are_removed_ends_whole(
    config: Config, start_service: StartService, double: AthenaDouble, db_url: str
) -> None:
    client = Client((await start_service(config)).url)
    rows = 20_000
    query_id = await succeeded(client, generated(rows))
    url = urlsplit(client.base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /query/{query_id}/results?format=csv HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    received = bytearray()
    retention = await sweeper(db_url, config)
    try:
        # The answer has begun: the server opened the files before it sent a byte.
        while b"\r\n\r\n" not in received:
            received += await reader.read(4096)
        assert await retention.sweep() == 1
        assert result_dirs(config, query_id) == []
        while data := await reader.read(65536):
            received += data
    finally:
        writer.close()
        await retention.store.close()
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert dechunk(rest) == expected_csv(GENERATED_COLUMNS, [generated_row(i) for i in range(rows)])
    assert (await client.request("GET", f"/query/{query_id}/results")).code == 410


async def test_a_removal_cut_short_is_finished_by_a_later_pass(
    config: Config, start_service: StartService, double: AthenaDouble, db_url: str
) -> None:
    client = Client((await start_service(config)).url)
    query_id = await succeeded(client, DONE)
    execution_id = (await client.status(query_id))["athena_query_execution_id"]
    # A process marked the results removed, then died before it removed the files.
    retention = await sweeper(db_url, config, keep=timedelta(days=365))
    try:
        assert await retention.store.expire_results(query_id, execution_id)
        assert not await retention.store.expire_results(query_id, execution_id)
        assert (await client.request("GET", f"/query/{query_id}/results")).code == 410
        assert len(result_dirs(config, query_id)) == 1
        # Another process's first pass looks back a day for removals left undone.
        assert await retention.sweep() == 0
        assert result_dirs(config, query_id) == []
    finally:
        await retention.store.close()


async def test_processes_sweeping_together_remove_each_result_once(
    config: Config, start_service: StartService, double: AthenaDouble, db_url: str
) -> None:
    client = Client((await start_service(config)).url)
    queries = [await client.submit(DONE) for _ in range(12)]
    for query_id in queries:
        await client.wait_state(query_id, "SUCCEEDED")
    first, second = await sweeper(db_url, config), await sweeper(db_url, config)
    try:
        removed = await asyncio.gather(first.sweep(), second.sweep())
        assert sum(removed) == len(queries)
        assert await first.sweep() == 0
    finally:
        await first.store.close()
        await second.store.close()
    for query_id in queries:
        assert result_dirs(config, query_id) == []
        response = await client.request("GET", f"/query/{query_id}/results")
        assert body(response)["error"]["code"] == "results_expired"
