"""athenaq.client against a running service over HTTP: every operation, its errors,
its retries of real 429s and 503s, and its downloads written whole or not at all.

Each test of both clients runs once with each (`flavour`); the blocking one runs in a
thread, as the service under test runs on the test's own loop."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from athenaq.app import Service
from athenaq.client import APIError, AsyncClient, Client, Retries, Unreachable, WaitTimeout
from athenaq.config import Config
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import free_port, held_submit, make_key, wait_for, with_keys
from tests.tcpproxy import TcpProxy

StartService = Callable[[Config], Awaitable[Service]]

# Real SQL for the local engine, scripting the test double in a comment, as in test_api.
FAST = (
    "SELECT * FROM (VALUES (1, NULL::VARCHAR), (2, '')) t(n, s) ORDER BY n\n-- double: "
    '{"columns": [["n","integer"],["s","varchar"]], "rows": [["1", null], ["2", ""]]}'
)
FAST_CSV = '"n","s"\n"1",\n"2",""\n'
HELD = 'SELECT count(*) FROM range(20000000000000)\n-- double: {"hold": true}'
FAILING = (
    "SELECT * FROM no_such_table\n-- double: "
    '{"fail": "TABLE_NOT_FOUND: Table no_such_table does not exist"}'
)
PARAMETER = (
    "SELECT s FROM (VALUES ('it''s'), ('other')) AS t(s) WHERE s = ?\n"
    '-- double: {"columns": [["s","varchar"]], "rows": [[{"parameter": 1}]]}'
)
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


class Flavoured:
    """`Client` or `AsyncClient`, called alike from an async test: `await
    athenaq("status", id)`, and `await athenaq.collect("list", ...)` for an iterator."""

    def __init__(self, flavour: str, url: str, key: str | None, **options: Any) -> None:
        self.flavour = flavour
        self.client: Client | AsyncClient = (
            Client(url, key, **options) if flavour == "sync" else AsyncClient(url, key, **options)
        )

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.client, name)
        if isinstance(self.client, Client):
            return await asyncio.to_thread(method, *args, **kwargs)
        return await method(*args, **kwargs)

    async def collect(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        items = getattr(self.client, name)(*args, **kwargs)
        if isinstance(self.client, Client):
            return await asyncio.to_thread(list, items)
        return [item async for item in items]

    async def close(self) -> None:
        if isinstance(self.client, Client):
            self.client.close()
        else:
            await self.client.aclose()


Connect = Callable[..., Flavoured]


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """Make clients of the test's flavour (`connect(url, key=None, **options)`), closed
    after the test."""
    made: list[Flavoured] = []

    def make(url: str, key: str | None = None, **options: Any) -> Flavoured:
        made.append(Flavoured(request.param, url, key, **options))
        return made[-1]

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def athenaq(service: Service, connect: Connect) -> Flavoured:
    return connect(service.url)


async def test_a_query_from_submit_to_its_results_pages_and_downloads(
    athenaq: Flavoured, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    seen: list[str] = []
    submitted = await athenaq("submit", FAST)
    assert submitted["state"] == "QUEUED" and submitted["replayed"] is False
    assert len(submitted["idempotency_key"]) == 36  # a UUID made for the submit

    status = await athenaq("wait", submitted["id"], on_status=lambda s: seen.append(s["state"]))

    assert status["id"] == submitted["id"] and status["state"] == "SUCCEEDED"
    assert status["row_count"] == 2 and status["statistics"]["data_scanned_bytes"] is not None
    assert seen[-1] == "SUCCEEDED" and set(seen) <= {"QUEUED", "RUNNING", "SUCCEEDED"}
    # A page of one row at a time, following each page's `next`.
    pages = await athenaq.collect("results", submitted["id"], page_size=1)
    assert [page["rows"] for page in pages] == [[["1", None]], [["2", ""]]]
    assert [page["offset"] for page in pages] == [0, 1] and pages[-1]["next"] is None
    assert pages[0]["columns"] == [
        {"name": "n", "type": "integer"},
        {"name": "s", "type": "varchar"},
    ]
    assert (await athenaq.collect("results", submitted["id"], offset=1))[0]["rows"] == [["2", ""]]
    # Downloads: the service's own CSV and JSON lines, byte for byte, with their progress.
    sizes: list[int] = []
    written = await athenaq(
        "download", submitted["id"], downloads / "out.csv", progress=sizes.append
    )
    assert (downloads / "out.csv").read_text() == FAST_CSV
    assert written == len(FAST_CSV) == sizes[-1]
    await athenaq("download", submitted["id"], str(downloads / "out.jsonl"), format="jsonl")
    lines = [json.loads(line) for line in (downloads / "out.jsonl").read_text().splitlines()]
    assert lines == [{"columns": pages[0]["columns"]}, ["1", None], ["2", ""]]
    stream = io.BytesIO()
    await athenaq("download", submitted["id"], stream)
    assert stream.getvalue().decode() == FAST_CSV
    # Nothing but the files asked for: no temporary file left beside them.
    assert sorted(p.name for p in downloads.iterdir()) == ["out.csv", "out.jsonl"]


async def test_every_submit_field_reaches_the_service(athenaq: Flavoured) -> None:
    submitted = await athenaq(
        "submit",
        PARAMETER,
        database="default",
        workgroup="primary",
        catalog="AwsDataCatalog",
        parameters=["'it''s'"],
        labels={"team": "growth", "run.id": "1"},
        result_reuse_minutes=60,
        timeout_seconds=600,
        max_age_seconds=None,
    )
    status = await athenaq("wait", submitted["id"], timeout=30)
    assert status["state"] == "SUCCEEDED", status["state_reason"]
    assert (status["database"], status["workgroup"], status["catalog"]) == (
        "default",
        "primary",
        "AwsDataCatalog",
    )
    assert status["parameters"] == ["'it''s'"] and status["labels"] == {
        "team": "growth",
        "run.id": "1",
    }
    assert (status["result_reuse_minutes"], status["timeout_seconds"]) == (60, 600)
    assert status["timeout_at"] is not None
    assert (await athenaq.collect("results", submitted["id"]))[0]["rows"] == [["it's"]]
    # The same SQL taking results up to an hour old: athenaq's cache answers, nothing starts.
    cached = await athenaq(
        "submit",
        PARAMETER,
        parameters=["'it''s'"],
        max_age_seconds=3600,
        catalog="AwsDataCatalog",
    )
    assert (cached["id"], cached["state"], cached.get("cached")) == (
        submitted["id"],
        "SUCCEEDED",
        True,
    )
    # A callback_url is sent too: this service allows no webhook host, and says so.
    with pytest.raises(APIError) as refused:
        await athenaq("submit", "SELECT 1", callback_url="https://hooks.example.com/athenaq")
    assert (refused.value.status, refused.value.code) == (400, "validation_error")
    assert refused.value.message.startswith("callback_url:")


async def test_the_same_idempotency_key_gets_the_first_answer_back(athenaq: Flavoured) -> None:
    first = await athenaq("submit", FAST, labels={"retry": "me"})
    again = await athenaq(
        "submit", FAST, labels={"retry": "me"}, idempotency_key=first["idempotency_key"]
    )
    assert again["id"] == first["id"] and again["replayed"] is True
    mine = await athenaq("submit", FAST, idempotency_key="my-own-key")
    assert mine["idempotency_key"] == "my-own-key" and mine["id"] != first["id"]
    with pytest.raises(APIError) as reused:
        await athenaq("submit", FAILING, idempotency_key="my-own-key")
    assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")
    assert len(await athenaq.collect("list", label=("retry", "me"))) == 1
    for query_id in (first["id"], mine["id"]):
        await athenaq("wait", query_id, timeout=30)


async def test_errors_carry_the_envelopes_code_message_status_and_state(
    athenaq: Flavoured, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(APIError) as missing:
        await athenaq("status", UNKNOWN_ID)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert UNKNOWN_ID in missing.value.message and "404 not_found" in str(missing.value)

    held = (await athenaq("submit", HELD))["id"]
    with pytest.raises(WaitTimeout) as waited:
        await athenaq("wait", held, timeout=1)
    assert waited.value.status["state"] in ("QUEUED", "RUNNING")
    with pytest.raises(APIError) as running:
        await athenaq.collect("results", held)
    assert (running.value.status, running.value.code) == (409, "query_running")
    assert running.value.state in ("QUEUED", "RUNNING") and running.value.retry_after is not None
    # A download refused leaves no file, and an existing one as it was.
    (downloads / "kept.csv").write_text("before")
    with pytest.raises(APIError):
        await athenaq("download", held, downloads / "kept.csv")
    with pytest.raises(APIError):
        await athenaq("download", held, downloads / "new.csv")
    assert [p.name for p in downloads.iterdir()] == ["kept.csv"]
    assert (downloads / "kept.csv").read_text() == "before"

    cancelled = await athenaq("cancel", held)
    assert cancelled["id"] == held and (
        cancelled["state"] == "CANCELLED" or cancelled["cancel_requested"]
    )
    assert (await athenaq("wait", held, timeout=30))["state"] == "CANCELLED"
    with pytest.raises(APIError) as again:
        await athenaq("cancel", held)
    assert (again.value.status, again.value.code, again.value.state) == (
        409,
        "query_cancelled",
        "CANCELLED",
    )

    failed = await athenaq("wait", (await athenaq("submit", FAILING))["id"], timeout=30)
    assert failed["state"] == "FAILED" and "no_such_table" in failed["state_reason"]
    with pytest.raises(APIError) as failing:
        await athenaq.collect("results", failed["id"])
    assert failing.value.code == "query_failed" and "no_such_table" in failing.value.message


async def test_refresh_history_listing_and_usage(athenaq: Flavoured) -> None:
    ids = [(await athenaq("submit", FAST, labels={"batch": "b"}))["id"] for _ in range(3)]
    failed = (await athenaq("submit", FAILING))["id"]
    for query_id in [*ids, failed]:
        await athenaq("wait", query_id, timeout=30)
    first = await athenaq("status", ids[0])

    refreshed = await athenaq("refresh", ids[0])
    assert refreshed == {"id": ids[0], "state": "QUEUED"}
    again = await athenaq("wait", ids[0], timeout=30)
    assert again["state"] == "SUCCEEDED"
    assert again["athena_query_execution_id"] != first["athena_query_execution_id"]
    history = await athenaq("history", ids[0])
    assert (history["transitions"][0]["run"], history["transitions"][0]["event"]) == (1, "submit")
    assert any(move["event"] == "refresh" and move["run"] == 2 for move in history["transitions"])

    # Two at a time: the cursor is followed until the last page.
    listed = await athenaq.collect("list", page_size=2)
    assert sorted(status["id"] for status in listed) == sorted([*ids, failed])
    assert [s["submitted_at"] for s in listed] == sorted(
        (s["submitted_at"] for s in listed), reverse=True
    )
    labelled = await athenaq.collect("list", label=("batch", "b"), page_size=1)
    assert sorted(status["id"] for status in labelled) == sorted(ids)
    assert [s["id"] for s in await athenaq.collect("list", state="FAILED")] == [failed]
    assert await athenaq.collect("list", since="2000-01-01", until="2000-01-02") == []

    usage = await athenaq("usage", group_by="workgroup")
    assert usage["groups"] == [
        {
            "key": "primary",
            "queries": 4,
            "succeeded": 3,
            "failed": 1,
            "cancelled": 0,
            "data_scanned_bytes": usage["groups"][0]["data_scanned_bytes"],
            "cost_usd": usage["groups"][0]["cost_usd"],
        }
    ]
    with pytest.raises(APIError) as bad:
        await athenaq("usage", group_by="month")
    assert bad.value.code == "validation_error"


async def test_with_keys_the_key_is_sent_and_a_missing_one_is_401(
    config: Config, keys_store: Store, start_service: StartService, connect: Connect
) -> None:
    service = await start_service(with_keys(config))
    key = await make_key(keys_store, "reports")
    keyed = connect(service.url, key)
    status = await keyed("wait", (await keyed("submit", FAST))["id"], timeout=30)
    assert status["owner"] == "reports"
    with pytest.raises(APIError) as anonymous:
        await connect(service.url)("status", status["id"])
    assert (anonymous.value.status, anonymous.value.code) == (401, "unauthorized")
    assert key not in str(anonymous.value)


async def test_a_429_is_retried_after_its_retry_after_and_a_retried_submit_starts_once(
    config: Config,
    keys_store: Store,
    start_service: StartService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The blocking client's pauses here, the asyncio client's in the 503 test below: the
    # retries themselves are one piece of code (athenaq.client.flows).
    caplog.set_level(logging.INFO, logger="athenaq.client")
    # 0.5 a second, a burst of one: the second request within 2 s is refused.
    service = await start_service(with_keys(config, requests_per_second=0.5))
    key = await make_key(keys_store, "busy")
    athenaq = Flavoured("sync", service.url, key)
    with pytest.raises(APIError):
        await athenaq("status", UNKNOWN_ID)  # takes the one token there is

    started = time.monotonic()
    submitted = await athenaq("submit", FAST, labels={"retried": "yes"})

    assert time.monotonic() - started >= 1.0  # Retry-After: 1 or 2, honoured
    assert any("429 rate_limited to POST /query" in r.getMessage() for r in caplog.records)
    assert submitted["replayed"] is False  # the refused attempt did nothing
    listed = await athenaq.collect("list", label=("retried", "yes"))
    assert [status["id"] for status in listed] == [submitted["id"]]
    # Retried too often: the 429 itself, with what it said.
    hurried = Flavoured("sync", service.url, key, retries=Retries(attempts=0))
    with pytest.raises(APIError) as limited:
        await hurried("status", submitted["id"])
    assert (limited.value.status, limited.value.code) == (429, "rate_limited")
    assert limited.value.retry_after is not None and limited.value.retry_after >= 1
    for client in (athenaq, hurried):
        await client.close()


async def test_a_503_overloaded_is_retried_until_the_load_is_gone(
    config: Config,
    start_service: StartService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="athenaq.client")
    service = await start_service(
        replace(config, server=replace(config.server, max_inflight_requests=1))
    )
    in_flight = service._ctx.in_flight  # type: ignore[union-attr]
    release = asyncio.Event()

    http = AsyncHTTPClient(force_instance=True)
    held = held_submit(http, service.url, release)
    await wait_for(lambda: in_flight.count == 1, what="a request in flight")
    async with AsyncClient(service.url) as athenaq:
        started = time.monotonic()
        cancel = asyncio.ensure_future(athenaq.cancel(UNKNOWN_ID))

        def retried() -> bool:
            return any("503 overloaded to POST" in r.getMessage() for r in caplog.records)

        await wait_for(retried, what="the cancel's 503 to be retried")
        release.set()
        assert (await held).code == 202
        with pytest.raises(APIError) as answered:
            await cancel
        # Sent again once the load was gone: answered for what it asked.
        assert (answered.value.status, answered.value.code) == (404, "not_found")
        assert time.monotonic() - started >= 1.0  # Retry-After: 1
    http.close()


async def test_a_download_cut_short_leaves_no_file(
    config: Config, double: AthenaDouble, start_service: StartService, tmp_path: Path
) -> None:
    service = await start_service(config)
    port = int(service.url.rsplit(":", 1)[1])
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    # Rows enough for several of the service's 256 KiB reads.
    sql = 'SELECT 1\n-- double: {"generate": 200000}'
    async with (
        TcpProxy("127.0.0.1", port) as proxy,
        AsyncClient(f"http://127.0.0.1:{proxy.port}") as athenaq,
    ):
        query_id = (await athenaq.submit(sql))["id"]
        assert (await athenaq.wait(query_id, timeout=30))["state"] == "SUCCEEDED"
        (downloads / "out.csv").write_text("the last download")

        def cut_after_the_first_bytes(received: int) -> None:
            proxy.cut()

        with pytest.raises(Unreachable) as cut:
            await athenaq.download(
                query_id, downloads / "out.csv", progress=cut_after_the_first_bytes
            )
        assert str(cut.value).startswith(f"no answer from http://127.0.0.1:{proxy.port}: ")
        assert [p.name for p in downloads.iterdir()] == ["out.csv"]
        assert (downloads / "out.csv").read_text() == "the last download"
        # Whole, it replaces the file.
        await athenaq.download(query_id, downloads / "out.csv")
    with (downloads / "out.csv").open() as whole:
        rows = list(csv.reader(whole))
    assert len(rows) == 200_001 and rows[1] == ["0", "row 0", ""]


async def test_nothing_listening_is_unreachable_and_names_no_credentials(connect: Connect) -> None:
    athenaq = connect(f"http://user:secret@127.0.0.1:{free_port()}", "aq_the-key")
    with pytest.raises(Unreachable) as unreachable:
        await athenaq("status", UNKNOWN_ID)
    message = str(unreachable.value)
    assert message.startswith("no answer from http://127.0.0.1:")
    assert "secret" not in message and "aq_the-key" not in message
