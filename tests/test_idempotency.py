"""The Idempotency-Key header of `POST /query`: a retry within 24 hours gets the first
answer's query again and starts nothing; another request with the key answers 422; keys
sent at once, by one process or several, make one query; they hold across a restart and
are purged once expired. Over HTTP to real servers on the store under test."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from tornado.httpclient import HTTPResponse
from tornado.httputil import HTTPHeaders

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.config import Config
from athenaq.purger import KeyPurger
from athenaq.states import Idempotency, QueryRecord
from athenaq.store import Store
from athenaq.store.database import begin_statement
from athenaq.store.idempotent import IdempotencyKeyTaken
from athenaq.store.tables import idempotency_keys, queries
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_key, wait_for, with_keys
from tests.served import served, served_config

StartService = Callable[..., Awaitable[Service]]
DONE = 'SELECT 42 AS answer\n-- double: {"columns": [["answer", "integer"]], "rows": [["42"]]}'
HELD = 'SELECT 7 AS seven -- double: {"hold": true}'
# Rounds of two POSTs with one key; tox.ini runs fewer where another environment of the
# matrix already runs the full count against the same store.
ROUNDS = min(int(os.environ.get("ATHENAQ_RACE_ROUNDS", "200")), 50)
AT_ONCE = 40
# Requests waiting on one key held by a transaction that rolls back.
WAITERS = 4


async def post(
    client: Client, document: Any, key: str | None = None, **headers: str
) -> HTTPResponse:
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.request("POST", "/query", document, headers=headers)


def starts(double: AthenaDouble) -> int:
    return double.calls().get("StartQueryExecution", 0)


async def query_count(store: Store) -> int:
    async with store._engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(queries)) or 0)


async def key_rows(store: Store) -> list[dict[str, Any]]:
    async with store._engine.connect() as conn:
        rows = await conn.execute(select(idempotency_keys).order_by(idempotency_keys.c.created_at))
        return [dict(row) for row in rows.mappings()]


def replayed(response: HTTPResponse) -> bool:
    return response.headers.get("Idempotent-Replayed") == "true"


@pytest.mark.parametrize("key", ["", " ", "k" * 256, "clé", "tab\there", "é" * 10], ids=repr)
async def test_the_key_must_be_1_to_255_printable_ascii_characters(
    client: Client, store: Store, key: str
) -> None:
    response = await client.http.fetch(
        client.base_url + "/query",
        method="POST",
        body=json.dumps({"query": "SELECT 1"}).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
        raise_error=False,
    )
    assert response.code == 400, response.body
    error = body(response)["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith("Idempotency-Key: ")
    assert await query_count(store) == 0


async def test_the_key_given_twice_is_refused(client: Client, store: Store) -> None:
    headers = HTTPHeaders({"Content-Type": "application/json"})
    headers.add("Idempotency-Key", "one")
    headers.add("Idempotency-Key", "two")
    response = await client.http.fetch(
        client.base_url + "/query",
        method="POST",
        body=b'{"query": "SELECT 1"}',
        headers=headers,
        raise_error=False,
    )
    assert response.code == 400
    assert body(response)["error"]["message"] == "Idempotency-Key: given more than once"
    assert await query_count(store) == 0


async def test_a_retry_gets_the_first_answers_query_again_and_starts_nothing(
    client: Client, store: Store, double: AthenaDouble
) -> None:
    key = "order-2026-12-06/42 retry ok"  # printable ASCII, spaces and slashes included
    first = await post(client, {"query": DONE}, key)
    assert first.code == 202
    assert not replayed(first)
    query_id = body(first)["id"]
    assert body(first) == {"id": query_id, "state": "QUEUED"}

    again = await post(client, {"query": DONE}, key)

    assert again.code == 202
    assert replayed(again)
    assert body(again)["id"] == query_id
    assert set(body(again)) == {"id", "state"}
    assert again.headers["Location"] == f"/query/{query_id}/status"
    await client.wait_state(query_id, "SUCCEEDED")
    # The query as it is now; the same request written otherwise is the same request.
    spaced = b'{ "max_age_seconds" : null,\n  "query" : ' + json.dumps(DONE).encode() + b"}"
    later = await client.request(
        "POST",
        "/query",
        raw=spaced,
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    )
    assert (later.code, body(later)) == (202, {"id": query_id, "state": "SUCCEEDED"})
    assert replayed(later)
    assert starts(double) == 1
    assert await query_count(store) == 1


async def test_the_key_with_another_request_answers_422(client: Client, store: Store) -> None:
    first = await post(client, {"query": DONE}, "k1")
    assert first.code == 202

    for other in (
        {"query": DONE + " "},
        {"query": "SELECT 43"},
        {"query": DONE, "max_age_seconds": 60},
    ):
        response = await post(client, other, "k1")
        assert response.code == 422, (other, response.body)
        error = body(response)["error"]
        assert error["code"] == "idempotency_key_reused"
        assert "Idempotency-Key" in error["message"]
    assert await query_count(store) == 1
    # Another key is another request.
    assert (await post(client, {"query": "SELECT 43"}, "k2")).code == 202
    assert await query_count(store) == 2


async def test_a_cached_or_joined_answer_is_replayed_as_it_was(
    client: Client, store: Store, double: AthenaDouble
) -> None:
    done = await client.submit(DONE)
    await client.wait_state(done, "SUCCEEDED")
    held = await client.submit(HELD)
    await client.wait_state(held, "RUNNING")  # so both answers see one state

    cached = [await post(client, {"query": DONE, "max_age_seconds": 60}, "c") for _ in "12"]
    joined = [await post(client, {"query": HELD, "max_age_seconds": 60}, "j") for _ in "12"]

    for first, again in (cached, joined):
        assert (again.code, body(again)) == (first.code, body(first))
        assert not replayed(first) and replayed(again)
    assert (cached[0].code, body(cached[0])) == (
        200,
        {"id": done, "state": "SUCCEEDED", "cached": True},
    )
    assert joined[0].code == 202
    assert (body(joined[0])["id"], body(joined[0])["joined"]) == (held, True)
    assert await query_count(store) == 2
    assert [(row["query_id"], row["status_code"]) for row in await key_rows(store)] == [
        (done, 200),
        (held, 202),
    ]
    assert starts(double) == 2


async def test_keys_are_each_owners_own(
    config: Config, start_service: StartService, keys_store: Store, double: AthenaDouble
) -> None:
    service = await start_service(with_keys(config))
    alice = Client(service.url, key=await make_key(keys_store, "alice"))
    bob = Client(service.url, key=await make_key(keys_store, "bob"))

    mine = await post(alice, {"query": DONE}, "shared")
    theirs = await post(bob, {"query": DONE}, "shared")
    other = await post(bob, {"query": "SELECT 43"}, "shared")

    assert (mine.code, theirs.code, other.code) == (202, 202, 422)
    assert body(mine)["id"] != body(theirs)["id"]
    assert not replayed(theirs)
    assert await query_count(keys_store) == 2


@pytest.mark.parametrize("owner", ["anonymous", "a key with max_running"])
async def test_posts_at_once_with_one_key_make_one_query(
    config: Config,
    start_service: StartService,
    keys_store: Store,
    double: AthenaDouble,
    owner: str,
) -> None:
    if owner == "anonymous":
        client = Client((await start_service(config)).url)
    else:
        # The owner's submits take turns at its key's row, the key's insert among them
        # (a limit the test never reaches).
        service = await start_service(with_keys(config))
        limited = await make_key(keys_store, "limited", max_running=ROUNDS + 10)
        client = Client(service.url, key=limited)

    answers = await asyncio.gather(
        *(post(client, {"query": DONE}, "burst") for _ in range(AT_ONCE))
    )

    assert sorted({a.code for a in answers}) == [202], [a.body for a in answers]
    assert len({body(a)["id"] for a in answers}) == 1
    assert sum(not replayed(a) for a in answers) == 1
    await client.wait_state(body(answers[0])["id"], "SUCCEEDED")
    assert await query_count(keys_store) == 1
    assert starts(double) == 1

    async def one_round(n: int) -> None:
        pair = await asyncio.gather(
            *(post(client, {"query": f"SELECT {n}"}, f"round-{n}") for _ in "ab")
        )
        assert [a.code for a in pair] == [202, 202], [a.body for a in pair]
        assert body(pair[0])["id"] == body(pair[1])["id"], n
        assert sorted(replayed(a) for a in pair) == [False, True], n

    for start in range(0, ROUNDS, 25):
        await asyncio.gather(*(one_round(n) for n in range(start, min(start + 25, ROUNDS))))
    assert await query_count(keys_store) == 1 + ROUNDS


async def test_two_processes_with_one_key_make_one_query(
    db_url: str, double: AthenaDouble, tmp_path: Path
) -> None:
    with (
        served(tmp_path / "a", _folder(tmp_path / "a", db_url, double)) as a,
        served(tmp_path / "b", _folder(tmp_path / "b", db_url, double)) as b,
    ):
        processes = [a, b]
        await asyncio.gather(a.serving(), b.serving())
        answers = await asyncio.gather(
            *(post(p.client, {"query": DONE}, "fleet") for p in processes for _ in range(10))
        )
        assert sorted({a.code for a in answers}) == [202], [a.body for a in answers]
        assert len({body(a)["id"] for a in answers}) == 1
        assert sum(not replayed(a) for a in answers) == 1
        await a.client.wait_state(body(answers[0])["id"], "SUCCEEDED")
        store = await Store.connect(db_url, maxsize=1)
        try:
            assert await query_count(store) == 1
        finally:
            await store.close()
        assert starts(double) == 1
        for process in processes:
            assert await process.stop() == 0
            assert "Traceback" not in process.text()


def _folder(folder: Path, db_url: str, double: AthenaDouble) -> dict[str, Any]:
    folder.mkdir()
    return served_config(db_url, double.url)


async def test_a_key_holds_across_a_restart(
    config: Config, start_service: StartService, store: Store, double: AthenaDouble
) -> None:
    first = await start_service(config)
    answer = await post(Client(first.url), {"query": DONE}, "across")
    assert answer.code == 202
    await first.stop()

    second = Client((await start_service(config)).url)
    again = await post(second, {"query": DONE}, "across")
    other = await post(second, {"query": "SELECT 43"}, "across")

    assert (again.code, body(again)["id"], replayed(again)) == (202, body(answer)["id"], True)
    assert other.code == 422
    assert await query_count(store) == 1


async def test_an_expired_key_is_a_new_key(client: Client, store: Store) -> None:
    first = await post(client, {"query": DONE}, "old")
    async with store._engine.connect() as conn:
        await conn.execute(
            update(idempotency_keys).values(created_at=utcnow() - timedelta(hours=24, seconds=1))
        )

    # Another request, which within 24 hours would be refused.
    response = await post(client, {"query": "SELECT 43"}, "old")

    assert response.code == 202, response.body
    assert not replayed(response)
    assert body(response)["id"] != body(first)["id"]
    [row] = await key_rows(store)
    assert row["query_id"] == body(response)["id"]
    assert replayed(await post(client, {"query": "SELECT 43"}, "old"))


async def test_an_error_answer_is_not_kept(
    config: Config, start_service: StartService, keys_store: Store, double: AthenaDouble
) -> None:
    service = await start_service(with_keys(config))
    client = Client(service.url, key=await make_key(keys_store, "one", max_running=1))
    held = await client.submit(HELD)

    refused = await post(client, {"query": DONE}, "later")
    assert refused.code == 429

    execution = (await client.wait_state(held, "RUNNING"))["athena_query_execution_id"]
    double.release(execution)
    await client.wait_state(held, "SUCCEEDED")
    accepted = await post(client, {"query": DONE}, "later")
    assert accepted.code == 202
    assert not replayed(accepted)


async def test_expired_keys_are_purged_in_batches_oldest_first(db_url: str) -> None:
    store = await Store.connect(db_url, maxsize=2)
    now = utcnow()

    async def add(**ages: timedelta) -> None:
        async with store._engine.connect() as conn:
            await conn.execute(
                insert(idempotency_keys),
                [
                    {
                        "owner": "o",
                        "idempotency_key": name,
                        "request_hash": "h" * 64,
                        "query_id": "00000000-0000-4000-8000-000000000000",
                        "status_code": 202,
                        "created_at": now - age,
                    }
                    for name, age in ages.items()
                ],
            )

    async def names() -> list[str]:
        return [row["idempotency_key"] for row in await key_rows(store)]

    try:
        await add(
            young=timedelta(hours=23), **{f"old-{n}": timedelta(hours=29 - n) for n in range(5)}
        )
        assert await store.purge_idempotency_keys(now - timedelta(hours=24), 2) == 2
        assert await names() == ["old-2", "old-3", "old-4", "young"]
        assert await KeyPurger(store).purge() == 3
        assert await names() == ["young"]
        assert await KeyPurger(store).purge() == 0
        # In the background, every interval.
        purger = KeyPurger(store, interval_seconds=0.05)
        purger.start()
        try:
            await add(again=timedelta(hours=24, seconds=1))

            async def purged() -> bool:
                return await names() == ["young"]

            await wait_for(purged, what="the expired key purged")
        finally:
            await purger.stop()
    finally:
        await store.close()


async def test_requests_waiting_on_a_key_whose_first_request_rolled_back_make_one_query(
    db_url: str,
) -> None:
    """On MariaDB the waiters of a key hold shared locks on it; when the transaction they
    wait for rolls back, InnoDB makes one of them a deadlock's victim: it runs again."""
    # A connection for each waiter, the holder, and the look at the waits.
    store = await Store.connect(db_url, maxsize=WAITERS + 2, call_timeout=30)
    key = Idempotency("rolled back", "h" * 64)
    row = {
        "owner": "o",
        "idempotency_key": key.key,
        "request_hash": key.request_hash,
        "query_id": "00000000-0000-4000-8000-000000000000",
        "status_code": 202,
        "created_at": utcnow(),
    }
    try:
        async with store._engine.connect() as holder:
            await holder.exec_driver_sql(begin_statement(holder.dialect))
            await holder.execute(insert(idempotency_keys), row)
            creates = [
                asyncio.ensure_future(
                    store.create(
                        str(uuid.uuid4()),
                        "SELECT 1",
                        "d",
                        "w",
                        "submitted",
                        owner="o",
                        idempotency=key,
                    )
                )
                for _ in range(WAITERS)
            ]
            if holder.dialect.name == "mysql":
                await wait_for(lambda: lock_waits(store, WAITERS), what="the waiters")
            await holder.exec_driver_sql("ROLLBACK")
        outcomes = await asyncio.gather(*creates, return_exceptions=True)
        made = [o for o in outcomes if isinstance(o, QueryRecord)]
        taken = [o for o in outcomes if isinstance(o, IdempotencyKeyTaken)]
        assert len(made) == 1 and len(taken) == WAITERS - 1, outcomes
        assert {t.first.query_id for t in taken} == {made[0].id}
        assert await query_count(store) == 1
    finally:
        await store.close()


async def lock_waits(store: Store, count: int) -> bool:
    """Whether `count` connections to the store's database are inserting an idempotency
    key (which waits while another transaction holds it). The process list, rather than
    InnoDB's list of transactions: that one is cached, and refreshed only once not read
    for 0.1 s."""
    async with store._engine.connect() as conn:
        inserting = await conn.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
            " AND COMMAND = 'Query' AND INFO LIKE 'INSERT INTO idempotency_keys%%'"
        )
        return int(inserting.scalar() or 0) >= count
