"""Finding queries again over HTTP: `GET /queries` (filters, the keyset cursor while other
submits land, whose queries a key sees) and `GET /query/<id>/history`."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.config import Config
from athenaq.identity import ADMIN, CANCEL, READ, SUBMIT
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_key, wait_for, with_keys

StartService = Callable[..., Awaitable[Service]]
DONE = 'SELECT 1 -- double: {"rows": [["1"]], "columns": [["x", "integer"]]}'
HELD = 'SELECT 1 -- double: {"hold": true}'


def scanning(scanned_bytes: int, **script: Any) -> str:
    """SQL the double runs, reporting `scanned_bytes` scanned."""
    return "SELECT 1 -- double: " + json.dumps({"scanned_bytes": scanned_bytes, **script})


def assert_400(response: Any, parameter: str) -> None:
    assert response.code == 400, (response.code, response.body)
    error = body(response)["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith(f"{parameter}: "), error["message"]


async def listed(client: Client, path: str) -> list[dict[str, Any]]:
    """Every query of a listing, following `next` to the end."""
    found: list[dict[str, Any]] = []
    following: str | None = path
    while following is not None:
        response = await client.request("GET", following)
        assert response.code == 200, response.body
        document = body(response)
        found += document["queries"]
        following = document["next"]
    return found


def ids(statuses: list[dict[str, Any]]) -> list[str]:
    return [status["id"] for status in statuses]


async def labelled(client: Client, labels: dict[str, str]) -> str:
    """A query submitted with `labels`."""
    response = await client.request("POST", "/query", {"query": DONE, "labels": labels})
    assert response.code == 202, response.body
    query_id: str = body(response)["id"]
    return query_id


# -- GET /queries ---------------------------------------------------------------------


async def test_pages_newest_first_with_no_repeat_nor_gap_while_queries_are_submitted(
    client: Client, double: AthenaDouble
) -> None:
    before = [await client.submit(DONE) for _ in range(40)]
    submitting = True
    during: list[str] = []

    async def submit_meanwhile() -> None:
        while submitting:
            during.append(await client.submit(DONE))

    others = asyncio.ensure_future(submit_meanwhile())
    try:
        seen: list[dict[str, Any]] = []
        following: str | None = "/queries?limit=7"
        pages = 0
        while following is not None:
            # Each page waits for a submit that landed after the previous one.
            landed = len(during)
            await wait_for(lambda landed=landed: len(during) > landed, what="a submit")
            document = body(await client.request("GET", following))
            assert len(document["queries"]) <= 7
            seen += document["queries"]
            following = document["next"]
            pages += 1
    finally:
        submitting = False
        await others
    assert pages >= 6
    # Nothing repeats, nothing that was there before the first page is missing, and the
    # order is newest first throughout. The queries submitted meanwhile are newer than
    # the first page: only those that landed before it are listed.
    assert len(ids(seen)) == len(set(ids(seen)))
    assert set(before) <= set(ids(seen))
    assert set(ids(seen)) <= set(before) | set(during)
    assert len(set(during) - set(ids(seen))) >= pages - 1
    keys = [(status["submitted_at"], status["id"]) for status in seen]
    assert keys == sorted(keys, reverse=True)
    assert ids(seen)[-40:] == before[::-1]


async def test_the_limit_bounds_a_page_and_the_last_page_has_no_next(
    client: Client, double: AthenaDouble
) -> None:
    submitted = [await client.submit(DONE) for _ in range(5)]
    document = body(await client.request("GET", "/queries"))
    assert ids(document["queries"]) == submitted[::-1]
    assert document["next"] is None
    document = body(await client.request("GET", "/queries?limit=2"))
    assert ids(document["queries"]) == submitted[:2:-1]
    path, query = document["next"].split("?")
    assert path == "/queries"
    assert [name for name, _ in parse_qsl(query)] == ["limit", "cursor"]
    assert ids(await listed(client, "/queries?limit=2")) == submitted[::-1]
    assert ids(await listed(client, "/queries?limit=5")) == submitted[::-1]
    # Each status object is the one GET /query/<id>/status shows.
    status = await client.wait_state(submitted[0], "SUCCEEDED")
    listing = await listed(client, "/queries?limit=500")
    assert listing[-1] == status


async def test_filters_by_state_label_and_time(client: Client, double: AthenaDouble) -> None:
    done = await client.submit(DONE)
    await client.wait_state(done, "SUCCEEDED")
    held = await client.submit(HELD)
    await client.wait_state(held, "RUNNING")
    red = await labelled(client, {"team": "red", "env": "prod:eu"})
    blue = await labelled(client, {"team": "blue"})
    red_again = await labelled(client, {"team": "red"})
    for query_id in (red, blue, red_again):
        await client.wait_state(query_id, "SUCCEEDED")

    assert ids(await listed(client, "/queries?state=RUNNING")) == [held]
    assert set(ids(await listed(client, "/queries?state=SUCCEEDED"))) == {
        done,
        red,
        blue,
        red_again,
    }
    assert ids(await listed(client, "/queries?label=team:red&limit=1")) == [red_again, red]
    # The value is all after the first colon.
    assert ids(await listed(client, "/queries?label=env:prod:eu")) == [red]
    assert ids(await listed(client, "/queries?label=team:green")) == []
    assert ids(await listed(client, "/queries?label=team:blue&state=SUCCEEDED")) == [blue]
    assert ids(await listed(client, "/queries?label=team:blue&state=FAILED")) == []

    statuses = {status["id"]: status for status in await listed(client, "/queries")}
    held_at = statuses[held]["submitted_at"]
    after_held = statuses[red]["submitted_at"]
    # since is inclusive, until exclusive.
    assert ids(await listed(client, f"/queries?since={held_at}")) == [red_again, blue, red, held]
    assert ids(await listed(client, f"/queries?until={held_at}")) == [done]
    window = urlencode({"since": held_at, "until": after_held, "label": "team:red"})
    assert ids(await listed(client, f"/queries?{window}")) == []
    window = urlencode({"since": held_at, "until": after_held})
    assert ids(await listed(client, f"/queries?{window}&limit=1")) == [held]
    # A date alone is midnight UTC; an offset is taken into UTC.
    tomorrow = (utcnow() + timedelta(days=1)).date().isoformat()
    assert len(await listed(client, f"/queries?until={tomorrow}")) == 5
    assert await listed(client, f"/queries?since={tomorrow}") == []
    at = datetime.fromisoformat(held_at.removesuffix("Z"))
    shifted = (at + timedelta(hours=2)).isoformat(timespec="milliseconds") + "+02:00"
    assert ids(await listed(client, "/queries?" + urlencode({"until": shifted}))) == [done]
    # Unencoded, the + of an offset arrives as a space: taken as the + it was.
    assert ids(await listed(client, f"/queries?until={shifted}")) == [done]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("state=DONE", "state"),
        ("state=succeeded", "state"),
        ("label=team", "label"),
        ("label=Team:red", "label"),
        ("label=:red", "label"),
        ("label=team:" + "x" * 257, "label"),
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("since=2026-12-02T10:00:00Z&until=2026-12-02T09:59:59Z", "since"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("limit=ten", "limit"),
        ("owner=", "owner"),
        ("owner=no%20spaces", "owner"),
        ("cursor=", "cursor"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=" + "A" * 600, "cursor"),
        ("state=QUEUED&state=RUNNING", "state"),
        ("limit=1&limit=1", "limit"),
        ("since=%ff", "since"),
        ("offset=10", "offset"),
    ],
)
async def test_each_bad_parameter_is_a_400_naming_it(
    client: Client, query: str, parameter: str
) -> None:
    assert_400(await client.request("GET", f"/queries?{query}"), parameter)


async def test_a_cursor_altered_or_sent_with_other_filters_is_a_400(
    client: Client, double: AthenaDouble
) -> None:
    for _ in range(3):
        await client.submit(DONE)
    following = body(await client.request("GET", "/queries?since=2020-01-01&limit=1"))["next"]
    parameters = dict(parse_qsl(urlsplit(following).query))
    assert parameters["since"] == "2020-01-01T00:00:00.000000Z"
    assert (await client.request("GET", following)).code == 200
    # The same cursor under other filters, or with its filter dropped.
    for name, value in [("state", "FAILED"), ("label", "team:red"), ("since", "2020-01-02")]:
        other = urlencode({**parameters, name: value})
        assert_400(await client.request("GET", f"/queries?{other}"), "cursor")
    dropped = urlencode({k: v for k, v in parameters.items() if k != "since"})
    assert_400(await client.request("GET", f"/queries?{dropped}"), "cursor")
    # The same filter in another form is the same listing.
    same = urlencode({**parameters, "since": "2020-01-01T01:00:00+01:00"})
    assert (await client.request("GET", f"/queries?{same}")).code == 200
    # A character changed, or the position forged with the check left as it was.
    token = parameters["cursor"]
    changed = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    assert_400(
        await client.request("GET", "/queries?" + urlencode({**parameters, "cursor": changed})),
        "cursor",
    )
    at, _, check = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps([at, str(uuid.uuid4()), check]).encode())
    assert_400(
        await client.request(
            "GET", "/queries?" + urlencode({**parameters, "cursor": forged.decode()})
        ),
        "cursor",
    )
    # Another limit is no other listing: the cursor goes on.
    longer = urlencode({**parameters, "limit": "10"})
    assert len(body(await client.request("GET", f"/queries?{longer}"))["queries"]) == 2


async def test_a_key_lists_its_own_queries_and_an_admin_everyones(
    config: Config, start_service: StartService, keys_store: Store, double: AthenaDouble
) -> None:
    service = await start_service(with_keys(config))
    alice = Client(service.url, key=await make_key(keys_store, "alice"))
    bob = Client(service.url, key=await make_key(keys_store, "bob"))
    admin = Client(service.url, key=await make_key(keys_store, "root", frozenset({ADMIN, READ})))
    blind = Client(service.url, key=await make_key(keys_store, "blind", frozenset({SUBMIT})))
    alices = [await alice.submit(DONE) for _ in range(3)]
    bobs = [await bob.submit(DONE) for _ in range(2)]
    bob_red = await labelled(bob, {"team": "red"})
    alice_red = await labelled(alice, {"team": "red"})

    assert ids(await listed(alice, "/queries")) == [alice_red, *alices[::-1]]
    assert ids(await listed(alice, "/queries?owner=alice&limit=2")) == [alice_red, *alices[::-1]]
    assert ids(await listed(bob, "/queries?label=team:red")) == [bob_red]
    response = await alice.request("GET", "/queries?owner=bob")
    assert response.code == 403 and body(response)["error"]["code"] == "forbidden"
    assert body(response)["error"]["message"].startswith("owner: ")
    response = await blind.request("GET", "/queries")
    assert response.code == 403 and "query:read" in body(response)["error"]["message"]

    everyone = [alice_red, bob_red, *bobs[::-1], *alices[::-1]]
    assert ids(await listed(admin, "/queries?limit=2")) == everyone
    assert ids(await listed(admin, "/queries?owner=bob")) == [bob_red, *bobs[::-1]]
    assert ids(await listed(admin, "/queries?label=team:red&limit=1")) == [alice_red, bob_red]
    assert ids(await listed(admin, "/queries?label=team:red&owner=alice")) == [alice_red]
    assert await listed(admin, "/queries?owner=nobody") == []
    assert {s["owner"] for s in await listed(admin, "/queries")} == {"alice", "bob"}


async def test_a_waiting_query_is_listed_with_its_place(
    config: Config, start_service: StartService, double: AthenaDouble
) -> None:
    service = await start_service(replace(config, athena=replace(config.athena, max_running=1)))
    client = Client(service.url)
    running = await client.submit(HELD)
    await client.wait_state(running, "RUNNING")
    first, second = await client.submit(HELD), await client.submit(HELD)
    listing = {s["id"]: s for s in await listed(client, "/queries")}
    assert listing[second]["state_reason"] == "waiting for an Athena slot: 1 ahead"
    assert listing[first]["state_reason"] == "waiting for an Athena slot: 0 ahead"
    assert listing[running]["state_reason"] is None
    assert listing[second] == await client.status(second)


# -- GET /query/<id>/history ----------------------------------------------------------


async def test_history_shows_every_run_oldest_first(
    config: Config, start_service: StartService, keys_store: Store, double: AthenaDouble
) -> None:
    service = await start_service(with_keys(config))
    alice = Client(
        service.url, key=await make_key(keys_store, "alice", frozenset({SUBMIT, READ, CANCEL}))
    )
    bob = Client(service.url, key=await make_key(keys_store, "bob"))
    admin = Client(service.url, key=await make_key(keys_store, "root", frozenset({ADMIN, READ})))
    query_id = await alice.submit(DONE)
    await alice.wait_state(query_id, "SUCCEEDED")
    assert (await alice.request("POST", f"/query/{query_id}/refresh")).code == 202
    await alice.wait_state(query_id, "SUCCEEDED")

    response = await alice.request("GET", f"/query/{query_id}/history")
    assert response.code == 200
    document = body(response)
    assert document["id"] == query_id
    moves = [(t["run"], t["from"], t["to"], t["event"], t["by"]) for t in document["transitions"]]
    assert moves == [
        (1, None, "QUEUED", "submit", "alice"),
        (1, "QUEUED", "RUNNING", "run", "poller"),
        (1, "RUNNING", "SUCCEEDED", "succeed", "poller"),
        (2, "SUCCEEDED", "QUEUED", "refresh", "alice"),
        (2, "QUEUED", "RUNNING", "run", "poller"),
        (2, "RUNNING", "SUCCEEDED", "succeed", "poller"),
    ]
    assert set(document["transitions"][0]) == {"run", "from", "to", "event", "reason", "by", "at"}
    assert [t["reason"] for t in document["transitions"]][::3] == ["submitted", "refresh"]
    times = [t["at"] for t in document["transitions"]]
    assert times == sorted(times)
    assert document["transitions"][0]["at"] == (await alice.status(query_id))["submitted_at"]

    # A cancel and a failure, each its own event.
    held = await alice.submit(HELD)
    await alice.wait_state(held, "RUNNING")
    await alice.cancel(held)
    failing = await alice.submit(scanning(1, fail="TABLE_NOT_FOUND: no such table"))
    await alice.wait_state(failing, "FAILED")
    for query, (last_event, reason) in {
        held: ("cancel", "cancelled by client"),
        failing: ("fail", "TABLE_NOT_FOUND: no such table"),
    }.items():
        last = body(await alice.request("GET", f"/query/{query}/history"))["transitions"][-1]
        assert (last["event"], last["reason"]) == (last_event, reason)

    # Another owner's query is not there for bob; an admin sees it.
    response = await bob.request("GET", f"/query/{query_id}/history")
    assert response.code == 404 and body(response)["error"]["code"] == "not_found"
    assert body(await admin.request("GET", f"/query/{query_id}/history")) == document
    for segment in (str(uuid.uuid4()), "not-a-uuid"):
        assert (await alice.request("GET", f"/query/{segment}/history")).code == 404
