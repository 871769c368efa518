"""Webhooks (API.md, "Submitting, finding and following queries"): each finished state
of a query with a callback_url POSTed there, signed, at least once, over HTTP from a
running service to a real receiver (tests/webhook_receiver.py) that verifies every
delivery's signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.config import Config, WebhooksConfig
from athenaq.states import QueryState, SubmitOptions
from athenaq.store import Store
from athenaq.store.deliveries import Callback
from athenaq.webhooks import sign
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, wait_for
from tests.served import served, served_config
from tests.webhook_receiver import Receiver, SignatureError, verify

StartService = Callable[..., Awaitable[Service]]
SECRET = "a webhook secret, long enough"
FAST = 'SELECT 1 AS n\n-- double: {"columns": [["n", "integer"]], "rows": [["1"]]}'
FAILING = 'SELECT * FROM gone\n-- double: {"fail": "TABLE_NOT_FOUND: Table gone does not exist"}'
HELD = 'SELECT 2\n-- double: {"hold": true}'


def with_webhooks(config: Config, **webhooks: Any) -> Config:
    """`config` sending webhooks to 127.0.0.1 (the receiver), quickly retried."""
    settings: dict[str, Any] = {
        "allowed_hosts": ("127.0.0.1",),
        "secret": SECRET,
        "timeout_seconds": 2.0,
        "first_retry_seconds": 0.05,
        **webhooks,
    }
    return replace(config, webhooks=WebhooksConfig(**settings))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    opened = Receiver(SECRET)
    await opened.start()
    yield opened
    await opened.stop()


async def submit(client: Client, sql: str, callback_url: str | None) -> str:
    response = await client.request("POST", "/query", {"query": sql, "callback_url": callback_url})
    assert response.code == 202, response.body
    query_id: str = body(response)["id"]
    return query_id


async def delivered_status(client: Client, query_id: str) -> dict[str, Any]:
    """The query's status once its current run's delivery is recorded as delivered."""

    async def done() -> dict[str, Any] | None:
        status = await client.status(query_id)
        callback = status["callback"]
        return status if callback and callback["delivered_at"] else None

    result: dict[str, Any] = await wait_for(done, what=f"{query_id}'s delivery")
    return result


def without_callback(status: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in status.items() if key != "callback"}


async def test_verify_refuses_a_tampered_body_an_old_signature_and_another_secret(
    receiver: Receiver,
) -> None:
    payload = b'{"id": "q", "state": "SUCCEEDED"}'
    now = int(time.time())
    header = sign(SECRET, payload, now)
    assert header == (
        f"t={now},v1="
        + hmac.new(SECRET.encode(), f"{now}.".encode() + payload, hashlib.sha256).hexdigest()
    )
    verify(SECRET, header, payload)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, header, payload.replace(b"SUCCEEDED", b"FAILED"))
    with pytest.raises(SignatureError, match="does not match"):
        verify("another secret, long enough", header, payload)
    with pytest.raises(SignatureError, match="malformed"):
        verify(SECRET, "v1=abc", payload)
    # Five minutes is the window: a delivery signed earlier is a replay.
    old = sign(SECRET, payload, now - 301)
    with pytest.raises(SignatureError, match="too long ago"):
        verify(SECRET, old, payload)
    verify(SECRET, sign(SECRET, payload, now - 299), payload)
    # The receiver itself refuses both over HTTP.
    client = Client(receiver.url(""))
    for header in (old, sign(SECRET, payload, now)):
        response = await client.request(
            "POST", "/hooks", raw=payload.replace(b"q", b"x"), headers={"Athenaq-Signature": header}
        )
        assert response.code == 400
    assert len(receiver.rejected) == 2 and not receiver.received


def test_the_verify_example_of_the_api_docs_is_the_receivers() -> None:
    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    section = text[text.index("## Webhooks") :]
    example = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    documented: dict[str, Any] = {}
    exec(compile(example, "docs/api.md", "exec"), documented)
    payload = b'{"id": "q", "state": "FAILED"}'
    now = int(time.time())
    documented["verify"](SECRET, sign(SECRET, payload, now), payload)
    for header, sent in (
        (sign(SECRET, payload, now), payload + b" "),
        (sign(SECRET, payload, now - 301), payload),
        ("t=1", payload),
    ):
        with pytest.raises(documented["SignatureError"]):
            documented["verify"](SECRET, header, sent)
    assert documented["TOLERANCE_SECONDS"] == 300


async def test_each_finished_state_is_delivered_with_its_status_and_a_refresh_again(
    double: AthenaDouble, config: Config, start_service: StartService, receiver: Receiver
) -> None:
    service = await start_service(with_webhooks(config))
    client = Client(service.url)
    url = receiver.url("/hooks?app=reports")
    succeeded = await submit(client, FAST, url)
    failed = await submit(client, FAILING, url)
    cancelled = await submit(client, HELD, url)
    plain = await submit(client, FAST, None)
    await client.wait_state(cancelled, "RUNNING")
    await client.cancel(cancelled)

    await wait_for(lambda: len(receiver.states()) == 3, what="three deliveries")
    assert receiver.states() == {
        (succeeded, "SUCCEEDED"),
        (failed, "FAILED"),
        (cancelled, "CANCELLED"),
    }
    statuses = {}
    for received in receiver.received:
        query_id = received.status["id"]
        status = statuses[query_id] = await delivered_status(client, query_id)
        # The body is the status of the finished run, as GET /query/<id>/status shows it.
        assert received.status == without_callback(status)
        assert received.path == "/hooks"
        assert received.headers["Content-Type"] == "application/json; charset=utf-8"
        assert received.headers["Athenaq-Delivery"] == f"{query_id}.1"
        assert status["callback"] == {
            "url": url,
            "delivered_at": status["callback"]["delivered_at"],
            "attempts": 1,
            "last_error": None,
        }
    assert statuses[failed]["state_reason"] == "TABLE_NOT_FOUND: Table gone does not exist"
    assert statuses[cancelled]["state_reason"] == "cancelled by client"
    await client.wait_state(plain, "SUCCEEDED")
    assert (await client.status(plain))["callback"] is None

    # A refresh is a new run, whose end is delivered too; until then its status shows the
    # new run's delivery, which has had no attempt.
    response = await client.request("POST", f"/query/{cancelled}/refresh")
    assert response.code == 202, response.body
    refreshed = await client.wait_state(cancelled, "RUNNING")
    assert refreshed["callback"] == {
        "url": url,
        "delivered_at": None,
        "attempts": 0,
        "last_error": None,
    }
    double.release(refreshed["athena_query_execution_id"])
    await wait_for(lambda: len(list(receiver.delivered())) == 4, what="the second run's delivery")
    second = receiver.received[-1]
    assert second.headers["Athenaq-Delivery"] == f"{cancelled}.2"
    status = await delivered_status(client, cancelled)
    assert second.status == without_callback(status)
    assert second.status["state"] == "SUCCEEDED"
    assert status["callback"]["attempts"] == 1
    assert not receiver.rejected


async def test_a_failed_attempt_is_tried_again_with_the_same_body(
    double: AthenaDouble, config: Config, start_service: StartService, receiver: Receiver
) -> None:
    service = await start_service(with_webhooks(config))
    client = Client(service.url)
    receiver.answers["/flaky"] = [500, 503]
    query_id = await submit(client, FAST, receiver.url("/flaky"))

    status = await delivered_status(client, query_id)

    assert status["callback"]["attempts"] == 3
    # The latest failure stays on record once delivered.
    assert status["callback"]["last_error"] == "HTTP 503"
    assert [r.answered for r in receiver.received] == [500, 503, 200]
    assert len({r.body for r in receiver.received}) == 1
    assert {r.headers["Athenaq-Delivery"] for r in receiver.received} == {f"{query_id}.1"}


async def test_a_redirect_fails_the_attempt_unfollowed_and_retry_hours_give_it_up(
    double: AthenaDouble, config: Config, start_service: StartService, receiver: Receiver
) -> None:
    # No retries at all: the first failure gives the delivery up.
    service = await start_service(with_webhooks(config, retry_hours=0))
    client = Client(service.url)
    receiver.answers["/moved"] = [302]
    query_id = await submit(client, FAST, receiver.url("/moved"))

    async def given_up() -> dict[str, Any] | None:
        callback = (await client.status(query_id))["callback"]
        return callback if callback["last_error"] else None

    callback = await wait_for(given_up, what="the delivery given up")
    assert callback["last_error"] == (
        "gave up after 1 attempt: HTTP 302 (redirects are not followed)"
    )
    assert (callback["attempts"], callback["delivered_at"]) == (1, None)
    assert [r.path for r in receiver.received] == ["/moved"]  # never /redirected


async def test_a_receiver_failing_for_longer_than_retry_hours_is_given_up(
    double: AthenaDouble, config: Config, start_service: StartService, receiver: Receiver
) -> None:
    # About a second of retries, every 50 ms doubling.
    service = await start_service(with_webhooks(config, retry_hours=1 / 3600))
    client = Client(service.url)
    receiver.answers["/down"] = [500] * 1000
    query_id = await submit(client, FAST, receiver.url("/down"))

    async def given_up() -> dict[str, Any] | None:
        callback = (await client.status(query_id))["callback"]
        error = callback["last_error"] or ""
        return callback if error.startswith("gave up") else None

    callback = await wait_for(given_up, what="the delivery given up")
    attempts = callback["attempts"]
    assert attempts >= 3
    assert callback["last_error"] == f"gave up after {attempts} attempts: HTTP 500"
    assert len(receiver.received) == attempts
    answered = len(receiver.received)
    # Given up means no more attempts.
    await client.wait_state(await submit(client, FAST, None), "SUCCEEDED")
    assert len(receiver.received) == answered


async def test_a_slow_receiver_holds_its_delivery_slots_and_nothing_else(
    double: AthenaDouble, config: Config, start_service: StartService, receiver: Receiver
) -> None:
    service = await start_service(with_webhooks(config, max_concurrent=2, timeout_seconds=60.0))
    client = Client(service.url)
    receiver.holding.add("/slow")
    slow = [await submit(client, FAST, receiver.url("/slow")) for _ in range(3)]
    await wait_for(lambda: len(receiver.held) == 2, what="both delivery slots held")

    # The poller goes on: queries finish while the receiver holds every slot, and their
    # statuses answer.
    others = [await submit(client, FAST, None) for _ in range(5)]
    for query_id in [*slow, *others]:
        await client.wait_state(query_id, "SUCCEEDED")
    assert len(receiver.held) == 2 and not receiver.received
    # The third delivery waits for a slot.
    waiting = [(await client.status(i))["callback"]["attempts"] for i in slow]
    assert sorted(waiting) == [0, 1, 1]

    receiver.release()
    for query_id in slow:
        await delivered_status(client, query_id)


async def test_an_attempt_without_an_answer_in_time_fails_and_is_tried_again(
    double: AthenaDouble, config: Config, start_service: StartService, receiver: Receiver
) -> None:
    service = await start_service(with_webhooks(config, timeout_seconds=0.3))
    client = Client(service.url)
    receiver.holding.add("/stuck")
    query_id = await submit(client, FAST, receiver.url("/stuck"))

    async def tried_again() -> dict[str, Any] | None:
        callback = (await client.status(query_id))["callback"]
        return callback if callback["attempts"] >= 2 and callback["last_error"] else None

    callback = await wait_for(tried_again, what="a second attempt")
    assert callback["last_error"] == "no answer within 0.3 s"
    assert callback["delivered_at"] is None
    receiver.release()
    await delivered_status(client, query_id)


async def test_a_delivery_cut_by_a_shutdown_is_sent_by_the_next_process_at_once(
    double: AthenaDouble,
    config: Config,
    db_url: str,
    start_service: StartService,
    receiver: Receiver,
) -> None:
    # A lease of three minutes, and no drain: the attempt the shutdown cuts is due again at
    # once, not when the lease ends.
    config = with_webhooks(config, timeout_seconds=60.0)
    config = replace(config, server=replace(config.server, drain_seconds=0))
    first = await start_service(config)
    receiver.holding.add("/hooks")
    query_id = await submit(Client(first.url), FAST, receiver.url("/hooks"))
    await wait_for(lambda: receiver.held, what="the delivery held")
    await first.stop()
    store = await Store.connect(db_url, maxsize=1)
    try:
        cut = await store.delivery(query_id, 1)
    finally:
        await store.close()
    assert cut is not None and cut.due_at is not None
    assert (cut.attempts, cut.delivered_at) == (1, None)
    assert cut.due_at <= utcnow()

    receiver.release()
    second = await start_service(config)
    status = await delivered_status(Client(second.url), query_id)
    assert status["callback"]["attempts"] == 2
    assert [r.answered for r in receiver.received] == [200]


async def test_a_host_taken_out_of_allowed_hosts_is_not_called_any_more(
    double: AthenaDouble, config: Config, start_service: StartService, receiver: Receiver
) -> None:
    first = await start_service(with_webhooks(config))
    query_id = await submit(Client(first.url), HELD, receiver.url("/hooks"))
    await Client(first.url).wait_state(query_id, "RUNNING")
    await first.stop()
    # Restarted with a config that no longer lists the receiver's host.
    second = await start_service(with_webhooks(config, allowed_hosts=("hooks.example.com",)))
    client = Client(second.url)
    status = await client.status(query_id)
    double.release(status["athena_query_execution_id"])

    async def refused() -> dict[str, Any] | None:
        callback = (await client.status(query_id))["callback"]
        return callback if callback["last_error"] else None

    callback = await wait_for(refused, what="the delivery refused")
    assert callback["last_error"] == (
        "gave up: the host '127.0.0.1' is not in webhooks.allowed_hosts"
    )
    assert callback["delivered_at"] is None
    assert not receiver.received and not receiver.held
    # And a new submit to it is refused at once.
    response = await client.request(
        "POST", "/query", {"query": FAST, "callback_url": receiver.url("/hooks")}
    )
    assert response.code == 400
    assert body(response)["error"]["message"] == (
        "callback_url: the host '127.0.0.1' is not in webhooks.allowed_hosts"
    )


async def test_a_delivery_is_sent_by_one_process_at_a_time_and_taken_over_after_its_lease(
    db_url: str,
) -> None:
    store = await Store.connect(db_url, maxsize=2)
    try:
        record = await store.create(
            "00000000-0000-4000-8000-0000000000aa",
            "SELECT 1",
            "default",
            "primary",
            "submitted",
            owner="anonymous",
            options=SubmitOptions(callback_url="http://127.0.0.1:9/hooks"),
        )
        callback = Callback(record.id, 1, QueryState.CANCELLED, "http://127.0.0.1:9/hooks", "{}")
        assert await store.transition(
            record, QueryState.CANCELLED, "cancelled", {}, by="test", callback=callback
        )
        [taken] = await store.take_deliveries("one", 0.3, 10)
        assert (taken.attempts, taken.sender, taken.body) == (1, "one", "{}")
        # Held by "one": nobody else takes it meanwhile.
        assert await store.take_deliveries("two", 0.3, 10) == []

        async def taken_over() -> list[Any]:
            return await store.take_deliveries("two", 30, 10)

        [again] = await wait_for(taken_over, what="the lease to end")
        assert (again.attempts, again.sender) == (2, "two")
        # The first attempt's failure, late, is not recorded over the second's.
        assert not await store.delivery_failed(taken, "HTTP 500", utcnow())
        assert await store.delivered(again)
        stored = await store.delivery(record.id, 1)
        assert stored is not None
        assert (stored.attempts, stored.last_error, stored.due_at) == (2, None, None)
        assert stored.delivered_at is not None
        assert await store.take_deliveries("three", 0.3, 10) == []
    finally:
        await store.close()


async def test_a_lost_compare_and_set_writes_no_delivery(db_url: str) -> None:
    store = await Store.connect(db_url, maxsize=2)
    try:
        record = await store.create(
            "00000000-0000-4000-8000-0000000000bb",
            "SELECT 1",
            "default",
            "primary",
            "submitted",
            owner="anonymous",
            options=SubmitOptions(callback_url="http://127.0.0.1:9/hooks"),
        )
        callback = Callback(record.id, 1, QueryState.FAILED, "http://127.0.0.1:9/hooks", "{}")
        assert await store.update(record, {"state_reason": "moved on"})
        assert not await store.transition(
            record, QueryState.FAILED, "failed", {}, by="test", callback=callback
        )
        assert await store.delivery(record.id, 1) is None
    finally:
        await store.close()


async def test_a_process_killed_mid_delivery_leaves_every_state_to_be_delivered_after_a_restart(
    double: AthenaDouble, db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    document = served_config(db_url, double.url)
    document["webhooks"] = {
        "allowed_hosts": ["127.0.0.1"],
        "secret": SECRET,
        # Held by a process for three timeouts: the restarted one takes over after that.
        "timeout_seconds": 1,
        "first_retry_seconds": 0.05,
    }
    receiver.holding.add("/hooks")
    url = receiver.url("/hooks")
    with served(tmp_path, document, name="first") as first:
        await first.serving()
        client = first.client
        ids = {
            await submit(client, FAST, url): "SUCCEEDED",
            await submit(client, FAILING, url): "FAILED",
        }
        held = await submit(client, HELD, url)
        await client.wait_state(held, "RUNNING")
        await client.cancel(held)
        ids[held] = "CANCELLED"
        for query_id, state in ids.items():
            await client.wait_state(query_id, state)
        # The receiver holds a delivery in hand, unanswered, when the process dies.
        await wait_for(lambda: receiver.held, what="a delivery held")
        first.kill()
    receiver.release()
    assert not receiver.states()

    document["server"]["port"] = served_config(db_url, double.url)["server"]["port"]
    with served(tmp_path, document, name="second") as second:
        await second.serving()
        await wait_for(lambda: len(receiver.states()) == 3, 30, "every state delivered")
        assert receiver.states() == set(ids.items())
        for query_id in ids:
            status = await delivered_status(second.client, query_id)
            assert status["callback"]["attempts"] >= 1
        logged = [line for line in second.lines() if line["message"] == "webhook delivered"]
        assert {line["query_id"] for line in logged} == set(ids)
    assert not receiver.rejected
    # Every body the receiver took is the status of the run it reports.
    for received in receiver.delivered():
        assert received.status["state"] == ids[received.status["id"]]
        assert json.loads(received.body) == received.status


async def test_a_delivery_row_is_due_from_the_move_and_kept_for_retry_hours(db_url: str) -> None:
    store = await Store.connect(db_url, maxsize=2)
    try:
        record = await store.create(
            "00000000-0000-4000-8000-0000000000cc",
            "SELECT 1",
            "default",
            "primary",
            "submitted",
            owner="anonymous",
            options=SubmitOptions(callback_url="http://127.0.0.1:9/hooks"),
        )
        before = utcnow()
        callback = Callback(record.id, 1, QueryState.SUCCEEDED, "http://127.0.0.1:9/h", "{}")
        assert await store.transition(
            record, QueryState.SUCCEEDED, "done", {}, by="test", callback=callback
        )
        stored = await store.delivery(record.id, 1)
        assert stored is not None
        assert stored.state == QueryState.SUCCEEDED
        assert before <= stored.created_at <= utcnow()
        assert stored.due_at == stored.created_at
        assert (stored.attempts, stored.delivered_at, stored.given_up_at) == (0, None, None)
        [taken] = await store.take_deliveries("one", 30, 10)
        retry_at = utcnow() + timedelta(hours=1)
        assert await store.delivery_failed(taken, "HTTP 500", retry_at)
        assert await store.take_deliveries("one", 30, 10) == []
        stored = await store.delivery(record.id, 1)
        assert stored is not None and stored.due_at == retry_at
        assert await store.delivery_failed(taken, "gave up: x", None)
        stored = await store.delivery(record.id, 1)
        assert stored is not None
        assert (stored.due_at, stored.last_error) == (None, "gave up: x")
        assert stored.given_up_at is not None
    finally:
        await store.close()
