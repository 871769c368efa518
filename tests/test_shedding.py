"""Load shedding: past server.max_inflight_requests a request is answered 503 overloaded
at once, before its body, its key or the store; /health, /ready and /metrics are never
shed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from athenaq.app import Service
from athenaq.config import Config as ServiceConfig
from athenaq.config import ConfigError, parse_config
from athenaq.identity import METRICS
from athenaq.store import Store
from tests.conftest import (
    V1_CONFIG,
    Client,
    body,
    config_with,
    held_submit,
    make_key,
    wait_for,
    with_keys,
)

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
JSON = {"Content-Type": "application/json"}


def shedding_at(config: ServiceConfig, limit: int) -> ServiceConfig:
    return replace(config, server=replace(config.server, max_inflight_requests=limit))


def assert_overloaded(response: HTTPResponse) -> None:
    assert response.code == 503, response.body
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Content-Type"].startswith("application/json")
    assert body(response) == {
        "error": {"code": "overloaded", "message": "too many requests in flight; try again"}
    }


@pytest.fixture
async def http() -> AsyncIterator[AsyncHTTPClient]:
    """An HTTP client with room for hundreds of requests at once (the shared one has 10)."""
    client = AsyncHTTPClient(force_instance=True, max_clients=400)
    yield client
    client.close()


def test_the_limit_is_a_positive_integer_with_a_default() -> None:
    # A v1 file, which has no such key, starts with the default.
    assert parse_config(V1_CONFIG).server.max_inflight_requests == 256
    assert (
        parse_config(config_with("server.max_inflight_requests", 5)).server.max_inflight_requests
        == 5
    )
    for bad in (0, -1, 2.5, "10", None, True):
        with pytest.raises(ConfigError, match=r"^server\.max_inflight_requests: "):
            parse_config(config_with("server.max_inflight_requests", bad))


async def test_past_the_limit_requests_are_shed_at_once_and_pass_again_after(
    config: ServiceConfig,
    keys_store: Store,
    start_service: Callable[[ServiceConfig], Awaitable[Service]],
    http: AsyncHTTPClient,
) -> None:
    key = await make_key(keys_store, "app")
    scraper = await make_key(keys_store, "prometheus", frozenset({METRICS}))
    service = await start_service(shedding_at(with_keys(config), 2))
    client = Client(service.url, key=key)
    in_flight = service._ctx.in_flight  # type: ignore[union-attr]
    release = asyncio.Event()

    # Two submits whose bodies stop half-way: under way, counted, until released.
    held = [held_submit(http, service.url, release, client.headers) for _ in range(2)]
    await wait_for(lambda: in_flight.count == 2, what="two requests in flight")

    started = time.monotonic()
    assert_overloaded(await client.request("GET", f"/query/{UNKNOWN_ID}/status"))
    assert_overloaded(await client.request("POST", "/query", {"query": "SELECT 2"}))
    # Shed before the key is looked up: no key is no 401 here.
    assert_overloaded(await Client(service.url).request("GET", f"/query/{UNKNOWN_ID}/status"))
    assert time.monotonic() - started < 1.0
    # Shed before the body is read: the answer comes on the headers alone.
    url = urlsplit(service.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        b"POST /query HTTP/1.1\r\nHost: athenaq\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 503 ")
    # The load balancer's and the monitoring's questions are still answered.
    health = await client.request("GET", "/health")
    assert (health.code, body(health)) == (200, {"status": "ok"})
    ready = await client.request("GET", "/ready")
    assert (ready.code, body(ready)["status"]) == (200, "ready")
    metrics = await Client(service.url, key=scraper).request("GET", "/metrics")
    assert metrics.code == 200, metrics.body
    assert b"\nathenaq_leases_held " in metrics.body

    release.set()
    for response in await asyncio.gather(*held):
        assert response.code == 202, response.body
        await client.wait_state(body(response)["id"], "SUCCEEDED")
    await wait_for(lambda: in_flight.count == 0, what="the held requests to end")
    assert (await client.request("GET", f"/query/{UNKNOWN_ID}/status")).code == 404
    await client.wait_state(await client.submit("SELECT 3"), "SUCCEEDED")


async def test_a_burst_is_answered_quickly_with_202_or_503(
    config: ServiceConfig,
    start_service: Callable[[ServiceConfig], Awaitable[Service]],
    http: AsyncHTTPClient,
) -> None:
    service = await start_service(shedding_at(config, 20))
    client = Client(service.url)

    async def submit(i: int) -> tuple[HTTPResponse, float]:
        started = time.monotonic()
        response = await http.fetch(
            service.url + "/query",
            method="POST",
            headers=JSON,
            body=json.dumps({"query": f"SELECT {i}"}),
            raise_error=False,
            request_timeout=30,
        )
        return response, time.monotonic() - started

    started = time.monotonic()
    answers = await asyncio.gather(*(submit(i) for i in range(300)))
    burst_seconds = time.monotonic() - started
    accepted = [response for response, _ in answers if response.code == 202]
    shed = [(response, seconds) for response, seconds in answers if response.code != 202]
    for response, _ in shed:
        assert_overloaded(response)  # never a timeout (599) or a 500
    assert accepted, "nothing was accepted"
    assert shed, "nothing was shed"
    slowest_shed = max(seconds for _, seconds in shed)
    figures: dict[str, Any] = {
        "accepted": len(accepted),
        "shed": len(shed),
        "burst_s": round(burst_seconds, 2),
        "slowest_shed_s": round(slowest_shed, 2),
    }
    assert slowest_shed < 5.0, figures
    for response in accepted:
        await client.wait_state(body(response)["id"], "SUCCEEDED", timeout=60)
