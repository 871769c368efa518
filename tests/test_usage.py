"""What queries cost over HTTP: `statistics.cost_usd` in each status (Athena's billing
of the bytes scanned, at the configured price) and `GET /usage` (counts, bytes and the
sum of each query's rounded cost, by owner, day or workgroup)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from urllib.parse import urlencode

import pytest

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.config import Config
from athenaq.identity import ADMIN, READ
from athenaq.pricing import MIB
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_key, with_keys
from tests.test_listing import HELD, assert_400, listed, scanning

StartService = Callable[..., Awaitable[Service]]
TB = 2**40


def cost(billed_mib: int, price: float = 5.0) -> float:
    return price * billed_mib / 2**20


@pytest.mark.parametrize(
    ("sql", "state", "expected"),
    [
        # Rounded up to the MiB, with a 10 MiB minimum.
        (scanning(1), "SUCCEEDED", cost(10)),
        (scanning(10 * MIB), "SUCCEEDED", cost(10)),
        (scanning(10 * MIB + 1), "SUCCEEDED", cost(11)),
        (scanning(3 * TB + 1), "SUCCEEDED", cost(3 * 2**20 + 1)),
        # Nothing scanned (DDL), nothing charged; a failed query is not charged.
        (scanning(0), "SUCCEEDED", 0.0),
        (scanning(20 * MIB, fail="HIVE_CURSOR_ERROR: bad file"), "FAILED", 0.0),
    ],
)
async def test_the_status_shows_athenas_price_for_the_bytes_scanned(
    client: Client, double: AthenaDouble, sql: str, state: str, expected: float
) -> None:
    query_id = await client.submit(sql)
    status = await client.wait_state(query_id, state)
    assert status["statistics"]["cost_usd"] == expected


async def test_the_cost_is_null_until_known_and_a_cancel_is_charged(
    client: Client, double: AthenaDouble
) -> None:
    query_id = await client.submit(scanning(25 * MIB + 5, hold=True))
    running = await client.wait_state(query_id, "RUNNING")
    assert running["statistics"]["data_scanned_bytes"] is None
    assert running["statistics"]["cost_usd"] is None
    cancelled = await client.cancel(query_id)
    assert cancelled["statistics"]["cost_usd"] == cost(26)


async def test_the_price_comes_from_the_config(
    config: Config, start_service: StartService, double: AthenaDouble
) -> None:
    athena = replace(config.athena, price_per_tb_usd=6.75)
    client = Client((await start_service(replace(config, athena=athena))).url)
    query_id = await client.submit(scanning(100 * MIB))
    status = await client.wait_state(query_id, "SUCCEEDED")
    assert status["statistics"]["cost_usd"] == cost(100, 6.75)
    assert body(await client.request("GET", "/usage"))["groups"][0]["cost_usd"] == cost(100, 6.75)


async def test_usage_sums_each_querys_rounded_cost_by_owner_day_and_workgroup(
    config: Config, start_service: StartService, keys_store: Store, double: AthenaDouble
) -> None:
    service = await start_service(with_keys(config))
    alice = Client(service.url, key=await make_key(keys_store, "alice"))
    bob = Client(service.url, key=await make_key(keys_store, "bob"))
    admin = Client(service.url, key=await make_key(keys_store, "root", frozenset({ADMIN, READ})))
    # alice: 1 B (billed 10 MiB), 10 MiB + 1 (11), a failure (0) and a cancel (3 MiB: 10).
    # bob: 0 B (0), 1 MiB + 1 (10), and one still running (unknown: 0).
    plan = {
        alice: [
            (scanning(1), "SUCCEEDED"),
            (scanning(10 * MIB + 1), "SUCCEEDED"),
            (scanning(7 * MIB, fail="boom"), "FAILED"),
            (scanning(3 * MIB, hold=True), "RUNNING"),
        ],
        bob: [
            (scanning(0), "SUCCEEDED"),
            (scanning(MIB + 1), "SUCCEEDED"),
            (HELD, "RUNNING"),
        ],
    }
    for client, queries in plan.items():
        for sql, state in queries:
            await client.wait_state(await client.submit(sql), state)
    alices = await listed(alice, "/queries")
    await alice.cancel(alices[0]["id"])  # the held one: cancelled, charged

    alice_usage = {
        "key": "alice",
        "queries": 4,
        "succeeded": 2,
        "failed": 1,
        "cancelled": 1,
        "data_scanned_bytes": 1 + 10 * MIB + 1 + 7 * MIB + 3 * MIB,
        "cost_usd": cost(10 + 11 + 10),
    }
    bob_usage = {
        "key": "bob",
        "queries": 3,
        "succeeded": 2,
        "failed": 0,
        "cancelled": 0,
        "data_scanned_bytes": MIB + 1,
        "cost_usd": cost(10),
    }
    assert body(await alice.request("GET", "/usage")) == {"groups": [alice_usage]}
    assert body(await bob.request("GET", "/usage?group_by=owner")) == {"groups": [bob_usage]}
    assert body(await admin.request("GET", "/usage")) == {"groups": [alice_usage, bob_usage]}

    today = utcnow().date().isoformat()
    total = {
        "queries": 7,
        "succeeded": 4,
        "failed": 1,
        "cancelled": 1,
        "data_scanned_bytes": alice_usage["data_scanned_bytes"] + bob_usage["data_scanned_bytes"],
        "cost_usd": cost(10 + 11 + 10 + 10),
    }
    for group_by, key in (("day", today), ("workgroup", "primary")):
        document = body(await admin.request("GET", f"/usage?group_by={group_by}"))
        assert document == {"groups": [{"key": key, **total}]}, group_by
    # The time range is of the submits: since inclusive, until exclusive.
    first = (await listed(alice, "/queries"))[-1]["submitted_at"]
    document = body(await alice.request("GET", f"/usage?until={first}"))
    assert document == {"groups": []}
    document = body(await admin.request("GET", "/usage?" + urlencode({"since": first})))
    assert [group["queries"] for group in document["groups"]] == [4, 3]
    assert body(await admin.request("GET", "/usage?since=2999-01-01")) == {"groups": []}


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("group_by=month", "group_by"),
        ("group_by=owner&group_by=day", "group_by"),
        ("since=now", "since"),
        ("since=2026-12-02&until=2026-12-01", "since"),
        ("owner=alice", "owner"),
    ],
)
async def test_a_bad_usage_parameter_is_a_400_naming_it(
    client: Client, query: str, parameter: str
) -> None:
    assert_400(await client.request("GET", f"/usage?{query}"), parameter)
