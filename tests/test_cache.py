"""athenaq's cache: `max_age_seconds` answers with the owner's fresh SUCCEEDED query of the
same SQL (200, cached) or joins its QUEUED or RUNNING one (202, joined), and neither starts
an Athena execution; counted at the scripted engine. Over HTTP to a real server."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from tornado.httpclient import HTTPResponse

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.config import Config
from athenaq.schemas import MAX_AGE_SECONDS
from athenaq.store import Store
from athenaq.store.cache import FRESH, UNDER_WAY
from athenaq.store.driver import Prepared
from athenaq.store.tables import queries
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_key, with_keys

StartService = Callable[..., Awaitable[Service]]
DONE = 'SELECT 42 AS answer\n-- double: {"columns": [["answer", "integer"]], "rows": [["42"]]}'
# The same query for athenaq's cache: spacing, comments and keyword case differ.
DONE_AGAIN = "select  42 as answer  -- the answer, asked again"
HELD = 'SELECT 7 AS seven -- double: {"hold": true}'


async def submit(client: Client, sql: str, max_age: Any = None, **headers: str) -> HTTPResponse:
    document: dict[str, Any] = {"query": sql}
    if max_age is not None:
        document["max_age_seconds"] = max_age
    return await client.request("POST", "/query", document, headers=headers)


def starts(double: AthenaDouble) -> int:
    return double.calls().get("StartQueryExecution", 0)


async def query_count(store: Store) -> int:
    async with store._engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(queries)) or 0)


async def set_columns(store: Store, query_id: str, **values: Any) -> None:
    async with store._engine.connect() as conn:
        await conn.execute(update(queries).where(queries.c.id == query_id).values(**values))


async def succeeded(client: Client, sql: str) -> str:
    """A query of `sql`, submitted and SUCCEEDED."""
    query_id = await client.submit(sql)
    await client.wait_state(query_id, "SUCCEEDED")
    return query_id


@pytest.mark.parametrize("value", [0, -1, 1.5, "60", True, [], {}, MAX_AGE_SECONDS + 1, 10**30])
async def test_max_age_seconds_must_be_a_positive_integer_up_to_seven_days(
    client: Client, store: Store, value: Any
) -> None:
    response = await submit(client, "SELECT 1", value)
    assert response.code == 400, response.body
    error = body(response)["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith("max_age_seconds: ")
    assert await query_count(store) == 0


async def test_max_age_seconds_null_or_at_its_limit_is_a_submit(
    client: Client, double: AthenaDouble
) -> None:
    for n, value in enumerate((None, MAX_AGE_SECONDS)):
        response = await client.request(
            "POST", "/query", {"query": f"SELECT {n}", "max_age_seconds": value}
        )
        assert response.code == 202, response.body
        assert set(body(response)) == {"id", "state"}


async def test_a_fresh_success_is_served_from_the_cache_and_starts_nothing(
    client: Client, store: Store, double: AthenaDouble
) -> None:
    first = await succeeded(client, DONE)
    assert starts(double) == 1

    response = await submit(client, DONE_AGAIN, 60)

    assert response.code == 200, response.body
    assert body(response) == {"id": first, "state": "SUCCEEDED", "cached": True}
    assert response.headers["Location"] == f"/query/{first}/status"
    assert "Idempotent-Replayed" not in response.headers
    assert starts(double) == 1
    assert await query_count(store) == 1
    results = await client.request("GET", f"/query/{first}/results")
    assert body(results)["rows"] == [["42"]]


async def test_a_query_under_way_is_joined_and_serves_the_cache_once_it_succeeded(
    client: Client, store: Store, double: AthenaDouble
) -> None:
    created = await submit(client, HELD, 60)
    assert created.code == 202
    assert set(body(created)) == {"id", "state"}
    query_id = body(created)["id"]

    joined = await submit(client, HELD, 60)  # QUEUED or RUNNING by now, whichever

    assert joined.code == 202, joined.body
    assert body(joined)["id"] == query_id
    assert body(joined)["joined"] is True
    assert body(joined)["state"] in ("QUEUED", "RUNNING")
    assert joined.headers["Location"] == f"/query/{query_id}/status"
    status = await client.wait_state(query_id, "RUNNING")
    assert body(await submit(client, HELD, 60)) == {
        "id": query_id,
        "state": "RUNNING",
        "joined": True,
    }
    assert starts(double) == 1
    double.release(status["athena_query_execution_id"])
    await client.wait_state(query_id, "SUCCEEDED")
    cached = await submit(client, HELD, 60)
    assert (cached.code, body(cached)) == (
        200,
        {"id": query_id, "state": "SUCCEEDED", "cached": True},
    )
    assert starts(double) == 1
    assert await query_count(store) == 1


@pytest.mark.parametrize("why", ["older than max_age_seconds", "removed by retention"])
async def test_results_too_old_or_removed_are_not_served(
    client: Client, store: Store, double: AthenaDouble, why: str
) -> None:
    first = await succeeded(client, DONE)
    if why == "removed by retention":
        await set_columns(store, first, results_expired_at=utcnow())
    else:
        # Its whole run a minute older, results stored 61 s ago: its times keep their
        # order (tests/conftest.py checks it).
        record = await store.get(first)
        assert record is not None and record.results_at is not None
        shift = utcnow() - timedelta(seconds=61) - record.results_at
        times = ("submitted_at", "started_at", "completed_at", "results_at")
        await set_columns(store, first, **{t: getattr(record, t) + shift for t in times})

    response = await submit(client, DONE_AGAIN, 60)

    assert response.code == 202, response.body
    document = body(response)
    assert set(document) == {"id", "state"} and document["id"] != first
    await client.wait_state(document["id"], "SUCCEEDED")
    assert starts(double) == 2
    if why == "older than max_age_seconds":
        # An older age takes it still: the youngest results are served.
        again = await submit(client, DONE, 3600)
        assert (again.code, body(again)["id"]) == (200, document["id"])


async def test_a_different_literal_is_a_different_query(
    client: Client, store: Store, double: AthenaDouble
) -> None:
    await succeeded(client, DONE)

    for sql in ("SELECT 43 AS answer", "SELECT '42' AS answer", 'SELECT 42 AS "ANSWER"'):
        response = await submit(client, sql, 3600)
        assert response.code == 202, (sql, response.body)
        assert set(body(response)) == {"id", "state"}
    assert await query_count(store) == 4


PARAMETERIZED = (
    "SELECT ? AS answer\n-- double: "
    '{"columns": [["answer", "varchar"]], "rows": [[{"parameter": 1}]]}'
)


async def test_parameters_database_workgroup_and_catalog_are_part_of_the_query(
    client: Client, store: Store, double: AthenaDouble
) -> None:
    response = await client.request(
        "POST", "/query", {"query": PARAMETERIZED, "parameters": ["'a'"]}
    )
    first = body(response)["id"]
    await client.wait_state(first, "SUCCEEDED")
    again = {"query": "select ? as answer -- again", "max_age_seconds": 60}

    for same in (
        {"parameters": ["'a'"]},
        # The config's context, named: the same context.
        {
            "parameters": ["'a'"],
            "database": "default",
            "workgroup": "primary",
            "catalog": "AwsDataCatalog",
        },
    ):
        response = await client.request("POST", "/query", {**again, **same})
        assert (response.code, body(response)["id"]) == (200, first), same
    for other in (
        {"parameters": ["'b'"]},
        {"parameters": ["'a' "]},
        {"parameters": ["'a'", "'a'"]},
        {},
        {"parameters": ["'a'"], "database": "sales"},
        {"parameters": ["'a'"], "workgroup": "reports"},
        {"parameters": ["'a'"], "catalog": "lakehouse"},
    ):
        response = await client.request("POST", "/query", {**again, **other})
        assert response.code == 202, (other, response.body)
        assert set(body(response)) == {"id", "state"}, other
    assert await query_count(store) == 8


async def test_every_submit_stores_its_cache_key(client: Client, store: Store) -> None:
    plain = await client.submit(DONE)
    again = await client.submit(DONE_AGAIN)  # without max_age_seconds: a query of its own
    other = await client.submit("SELECT 43 AS answer")

    keys = {}
    for query_id in (plain, again, other):
        record = await store.get(query_id)
        assert record is not None and record.cache_key is not None
        keys[query_id] = record.cache_key
    assert keys[plain] == keys[again] != keys[other]
    assert len(keys[plain]) == 64


async def test_a_query_being_cancelled_is_not_joined(client: Client, double: AthenaDouble) -> None:
    # Athena takes its time to confirm the stop: the cancel answers 202 and the query
    # stays RUNNING, its cancel requested.
    sql = 'SELECT 8 -- double: {"hold": true, "stop_ms": 60000}'
    query_id = await client.submit(sql)
    await client.wait_state(query_id, "RUNNING")
    cancel = await client.request("POST", f"/query/{query_id}/cancel")
    assert cancel.code == 202, cancel.body

    response = await submit(client, sql, 60)

    assert response.code == 202
    assert set(body(response)) == {"id", "state"}
    assert body(response)["id"] != query_id


async def test_owners_never_share_the_cache(
    config: Config, start_service: StartService, keys_store: Store, double: AthenaDouble
) -> None:
    service = await start_service(with_keys(config))
    alice = Client(service.url, key=await make_key(keys_store, "alice"))
    bob = Client(service.url, key=await make_key(keys_store, "bob"))
    done = await succeeded(alice, DONE)
    held = body(await submit(alice, HELD, 60))["id"]

    for sql, state in ((DONE, "SUCCEEDED"), (HELD, "RUNNING")):
        response = await submit(bob, sql, 3600)
        assert response.code == 202, response.body
        assert set(body(response)) == {"id", "state"}
        assert body(response)["id"] not in (done, held)
        assert (await alice.request("GET", f"/query/{body(response)['id']}/status")).code == 404
        await bob.wait_state(body(response)["id"], state)
    assert (await submit(alice, DONE, 3600)).code == 200
    assert body(await submit(alice, HELD, 60))["joined"] is True
    assert starts(double) == 4


async def explained(store: Store, statement: Any, params: dict[str, Any]) -> list[Any]:
    """The plan of one of the cache's statements as the store runs it: on MySQL/MariaDB
    as `ANALYZE` ran it (with the rows it read), on SQLite as planned."""
    async with store._engine.connect() as conn:
        prepared = Prepared(statement, conn.dialect, None)
        args = prepared.args(params)
        if conn.dialect.name == "sqlite":
            plan = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + prepared.sql, args)
            return [row[-1] for row in plan]
        plan = await conn.exec_driver_sql("ANALYZE FORMAT=JSON " + prepared.sql, args)
        return [json.loads(row[0]) for row in plan]


async def test_the_lookup_reads_the_cache_index_only_where_it_may_answer(db_url: str) -> None:
    store = await Store.connect(db_url, maxsize=2)
    now = utcnow()
    row = {
        "query_text": "SELECT 1",
        "database_name": "default",
        "workgroup": "primary",
        "run": 1,
        "version": 3,
        "owner": "reports",
        "cache_key": "k" * 64,
    }
    # A query asked for again and again: a day of runs a minute apart, a few under way,
    # and the owner's queries of other keys.
    rows = [
        {
            **row,
            "id": f"00000000-0000-4000-8000-{n:012d}",
            "state": "SUCCEEDED",
            "submitted_at": now - timedelta(minutes=n + 1),
            "results_at": now - timedelta(minutes=n),
            "updated_at": now,
        }
        for n in range(1, 1441)
    ]
    rows += [{**r, "id": r["id"].replace("-8000-", "-9000-"), "cache_key": "o" * 64} for r in rows]
    rows += [
        {
            **row,
            "id": f"00000000-0000-4000-a000-{n:012d}",
            "state": state,
            "submitted_at": now,
            "updated_at": now,
            "results_at": None,
        }
        for n, state in enumerate(["QUEUED", "RUNNING", "RUNNING"])
    ]
    try:
        async with store._engine.connect() as conn:
            await conn.execute(queries.insert(), rows)
        params = {"owner": "reports", "cache_key": "k" * 64}
        fresh = {**params, "fresh_since": now - timedelta(minutes=30)}
        found = await store.cached("reports", "k" * 64, now - timedelta(minutes=30))
        assert found is not None and found.id.endswith("000000000001")
        plans = [await explained(store, FRESH, fresh), await explained(store, UNDER_WAY, params)]
    finally:
        await store.close()
    if db_url.startswith("sqlite"):
        searched = "USING INDEX queries_cache (owner=? AND cache_key=? AND state=?"
        [fresh_plan], [under_way_plan] = plans
        assert searched + " AND results_at>?)" in fresh_plan, plans
        assert searched + ")" in under_way_plan, plans
        return
    tables = [plan["query_block"]["nested_loop"][0]["table"] for [plan] in plans]
    used = (["owner", "cache_key", "state", "results_at"], ["owner", "cache_key", "state"])
    for table, parts in zip(tables, used, strict=True):
        assert table["key"] == "queries_cache", table
        assert table["access_type"] == "range", table
        assert table["used_key_parts"] == parts, table
        # Rows the engine read: the youngest results, not the day of runs before them;
        # one query under way.
        assert table["r_rows"] == 1, table
