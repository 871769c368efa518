"""A key's limits: unfinished queries (across processes), bytes scanned per UTC day, and
requests per second; each answers its 429 with Retry-After, and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from athenaq.app import Service
from athenaq.config import Config
from athenaq.ratelimit import RateLimiter
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_key, with_keys

StartService = Callable[..., Awaitable[Service]]
HELD = 'SELECT 1 -- double: {"hold": true}'


async def test_max_running_holds_across_processes(
    config: Config, double: AthenaDouble, start_service: StartService, keys_store: Store
) -> None:
    first = await start_service(with_keys(config))
    second = await start_service(with_keys(config))
    key = await make_key(keys_store, "capped", max_running=2)
    clients = [Client(first.url, key=key), Client(second.url, key=key)]

    answers = await asyncio.gather(
        *(clients[i % 2].request("POST", "/query", {"query": HELD}) for i in range(8))
    )

    accepted = [body(a)["id"] for a in answers if a.code == 202]
    refused = [a for a in answers if a.code != 202]
    assert len(accepted) == 2, [a.code for a in answers]
    for answer in refused:
        assert answer.code == 429
        assert body(answer)["error"]["code"] == "too_many_queries"
        assert int(answer.headers["Retry-After"]) >= 1
    # A refused submit left nothing behind.
    assert len(await keys_store.unfinished()) == 2
    # Another key is not held by this one's limit.
    other = Client(first.url, key=await make_key(keys_store, "free"))
    await other.submit("SELECT 1")
    # Once one of them finishes, a place is free again.
    await clients[0].cancel(accepted[0])
    await clients[1].submit(HELD)


async def test_a_refresh_counts_against_max_running(
    config: Config, double: AthenaDouble, start_service: StartService, keys_store: Store
) -> None:
    service = await start_service(with_keys(config))
    client = Client(service.url, key=await make_key(keys_store, "one", max_running=1))
    done = await client.submit("SELECT 1")
    await client.wait_state(done, "SUCCEEDED")
    await client.submit(HELD)

    response = await client.request("POST", f"/query/{done}/refresh")

    assert response.code == 429
    assert body(response)["error"]["code"] == "too_many_queries"
    assert (await client.status(done))["state"] == "SUCCEEDED"


async def test_the_daily_scan_quota_refuses_once_reached(
    config: Config, double: AthenaDouble, start_service: StartService, keys_store: Store
) -> None:
    service = await start_service(with_keys(config))
    client = Client(service.url, key=await make_key(keys_store, "scanner", daily_scan_bytes=4096))
    first = await client.submit('SELECT 1 -- double: {"scanned_bytes": 3000}')
    await client.wait_state(first, "SUCCEEDED")
    second = await client.submit('SELECT 2 -- double: {"scanned_bytes": 3000}')
    await client.wait_state(second, "SUCCEEDED")
    assert await keys_store.scanned_today("scanner") == 6000

    for method, path, document in [
        ("POST", "/query", {"query": "SELECT 3"}),
        ("POST", f"/query/{first}/refresh", None),
    ]:
        response = await client.request(method, path, document)
        assert response.code == 429, path
        assert body(response)["error"]["code"] == "quota_exceeded"
        assert 1 <= int(response.headers["Retry-After"]) <= 86_401
    # Reading is not limited by the quota.
    assert (await client.status(first))["state"] == "SUCCEEDED"
    # Another key's day is its own.
    other = Client(service.url, key=await make_key(keys_store, "other", daily_scan_bytes=4096))
    await other.submit("SELECT 1")


async def test_requests_per_second_answers_429_rate_limited_per_key(
    config: Config, double: AthenaDouble, start_service: StartService, keys_store: Store
) -> None:
    # 0.1 per second, a burst of one: a second request within 10 s is over the limit.
    service = await start_service(with_keys(config, requests_per_second=0.1))
    busy = Client(service.url, key=await make_key(keys_store, "busy"))
    calm = Client(service.url, key=await make_key(keys_store, "calm"))
    query_id = await busy.submit("SELECT 1")

    response = await busy.request("GET", f"/query/{query_id}/status")

    assert response.code == 429
    assert body(response)["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    assert (await calm.request("GET", "/health")).code == 200
    assert (await calm.request("GET", f"/query/{query_id}/status")).code == 404


def test_a_token_bucket_refills_at_its_rate_up_to_twice_it() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(4)] == [0, 0, 0, 0]  # the burst: 2 x 2
    assert limiter.take("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("k") == 0
    assert limiter.take("other") == 0
    now[0] += 100  # a long pause refills to the burst, never beyond
    assert [limiter.take("k") for _ in range(5)][-1] == pytest.approx(0.5)
