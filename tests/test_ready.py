"""GET /ready tells the truth about the store, the results folder and the poller, within
about a second whatever hangs; GET /health stays liveness only."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest
from tornado.httpclient import HTTPResponse

from athenaq.app import Service
from athenaq.config import Config, DatabaseConfig
from tests.conftest import Client, body, wait_for, with_keys
from tests.tcpproxy import TcpProxy

ALL_OK = {"store": "ok", "results": "ok", "poller": "ok"}
# What /ready may take with a part hanging (the contract's bound for an answer).
ANSWER_SECONDS = 2.0


async def ready(client: Client) -> tuple[HTTPResponse, float]:
    started = time.monotonic()
    response = await client.request("GET", "/ready")
    return response, time.monotonic() - started


async def assert_ready(client: Client) -> None:
    response, _ = await ready(client)
    assert response.code == 200, response.body
    assert body(response) == {"status": "ready", "checks": ALL_OK}
    assert "Retry-After" not in response.headers


async def wait_ready(client: Client) -> None:
    async def is_ready() -> bool:
        return (await ready(client))[0].code == 200

    await wait_for(is_ready, what="/ready to answer 200 again")
    await assert_ready(client)


async def wait_unavailable(client: Client, failing: str) -> dict[str, str]:
    """The checks once /ready answers 503 naming `failing`; every answer on the way came
    within ANSWER_SECONDS, and /health answered 200 meanwhile."""

    async def unavailable() -> dict[str, str] | None:
        response, seconds = await ready(client)
        assert seconds < ANSWER_SECONDS, f"/ready took {seconds:.2f} s"
        assert (await client.request("GET", "/health")).code == 200
        if response.code == 200:
            return None
        assert response.code == 503, response.body
        assert response.headers["Retry-After"] == "1"
        answer: dict[str, Any] = body(response)
        assert answer["status"] == "unavailable"
        assert set(answer["checks"]) == set(ALL_OK)
        checks: dict[str, str] = answer["checks"]
        return checks if checks[failing] != "ok" else None

    checks: dict[str, str] = await wait_for(unavailable, what=f"/ready to name {failing}")
    return checks


async def test_ready_when_every_part_works(client: Client) -> None:
    await assert_ready(client)
    assert body(await client.request("GET", "/health")) == {"status": "ok"}


async def test_ready_and_health_need_no_key_when_keys_are_on(
    config: Config, start_service: Callable[[Config], Awaitable[Service]]
) -> None:
    service = await start_service(with_keys(config))
    client = Client(service.url)
    assert (await client.request("GET", "/query/nope/status")).code == 401
    await assert_ready(client)
    assert (await client.request("GET", "/health")).code == 200


# -- the store --------------------------------------------------------------------------


@dataclass
class StoreOutage:
    """Ways to make the service's store stop answering (each given the service's client),
    and to heal it."""

    url: str
    ways: dict[str, Callable[[Client], Awaitable[None]]]
    heal: Callable[[], Awaitable[None]]


@pytest.fixture
async def store_outage(db_url: str) -> AsyncIterator[StoreOutage]:
    """MySQL through a TCP proxy that refuses or blackholes (the server itself is never
    touched). SQLite, which a `SELECT 1` never reads, locked by another process: a write
    of the service's waits for the lock holding its one connection, as every request
    then would."""
    if db_url.startswith("sqlite"):
        yield SqliteLock(db_url).outage()
        return
    parts = urlsplit(db_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 3306) as proxy:
        user = parts.netloc.rpartition("@")[0]
        proxied = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))

        async def refuse(_: Client) -> None:
            proxy.refuse()
            proxy.cut()

        async def blackhole(_: Client) -> None:
            proxy.blackhole()

        async def heal() -> None:
            proxy.heal()

        yield StoreOutage(proxied, {"refused": refuse, "blackholed": blackhole}, heal)


class SqliteLock:
    def __init__(self, url: str) -> None:
        self.path = unquote(urlsplit(url).path)[1:]
        self.url = url
        self.holder: sqlite3.Connection | None = None
        self.write: asyncio.Future[HTTPResponse] | None = None

    def outage(self) -> StoreOutage:
        return StoreOutage(self.url, {"locked": self.lock}, self.unlock)

    async def lock(self, client: Client) -> None:
        holder = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        self.holder = holder

        def begin() -> bool:
            try:
                holder.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False  # the service is writing: the next try takes it
            return True

        await wait_for(begin, what="the SQLite write lock")
        self.write = asyncio.ensure_future(client.request("POST", "/query", {"query": "SELECT 1"}))

    async def unlock(self) -> None:
        if self.holder is not None:
            self.holder.close()
        if self.write is not None:
            assert (await self.write).code == 202


async def test_not_ready_while_the_store_does_not_answer_and_ready_once_it_does(
    config: Config,
    start_service: Callable[[Config], Awaitable[Service]],
    store_outage: StoreOutage,
) -> None:
    database = DatabaseConfig(url=store_outage.url, pool_size=config.database.pool_size)
    service = await start_service(replace(config, database=database))
    client = Client(service.url)
    await assert_ready(client)
    for way, start in store_outage.ways.items():
        await start(client)
        checks = await wait_unavailable(client, "store")
        # A short reason, naming neither the server nor the file.
        assert checks["store"] in ("no answer within 1 s", "failed: OperationalError"), way
        assert checks["results"] == "ok"
        for secret in ("127.0.0.1", "root", "sqlite", "athenaq_test", str(Path.cwd())):
            assert secret not in checks["store"]
        await store_outage.heal()
        await wait_ready(client)


# -- the results folder -----------------------------------------------------------------


async def test_not_ready_while_the_results_folder_takes_no_file(
    client: Client, config: Config, tmp_path: Path
) -> None:
    results = Path(config.results.dir)
    await assert_ready(client)
    # Root writes through any mode bits: a regular file where the folder was stops it.
    moved = tmp_path / "moved-results"
    results.rename(moved)
    results.write_bytes(b"")
    checks = await wait_unavailable(client, "results")
    assert checks == {"store": "ok", "results": "Not a directory", "poller": "ok"}
    results.unlink()
    moved.rename(results)
    await wait_ready(client)
    # The check leaves nothing behind.
    assert not [p for p in results.iterdir() if p.name.startswith(".partial-")]


# -- the poller -------------------------------------------------------------------------


async def test_not_ready_while_the_poller_does_not_tick(client: Client, service: Service) -> None:
    poller = service.poller
    assert poller is not None
    await assert_ready(client)
    await poller.stop()
    checks = await wait_unavailable(client, "poller")
    assert checks["poller"].startswith("the latest tick ended ")
    assert (checks["store"], checks["results"]) == ("ok", "ok")
    poller.start()
    await wait_ready(client)
