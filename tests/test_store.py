"""The store against the database under test (MariaDB or SQLite, by ATHENAQ_TEST_DB_URL):
schema, compare-and-set, history, datetimes; and SQLite files shared by stores and processes,
which need no server and so run on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncmy
import pytest

from athenaq.states import QueryRecord, QueryState, SubmitOptions
from athenaq.store import Store
from athenaq.store.tables import query_labels
from tests.conftest import _admin_params

Q = QueryState

# Reads the ids on stdin, says "ready", and on the next line moves every one from that read
# to the state in argv[2]; prints the ids it won. Run twice at once, it races another process.
RACER = """
import asyncio, sys
from athenaq.states import QueryState
from athenaq.store import Store

async def race(url, target):
    store = await Store.connect(url)
    try:
        records = [await store.get(query_id) for query_id in sys.stdin.readline().split()]
        print("ready", flush=True)
        sys.stdin.readline()
        won = [
            r.id for r in records if await store.transition(r, target, target.value, {}, by="test")
        ]
        print(" ".join(won), flush=True)
    finally:
        await store.close()

asyncio.run(race(sys.argv[1], QueryState(sys.argv[2])))
"""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{quote(str(path))}"


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = await Store.connect(url)
    try:
        yield store
    finally:
        await store.close()


async def submit(store: Store) -> QueryRecord:
    return await store.create(
        str(uuid.uuid4()), "SELECT 1", "default", "primary", "submitted", owner="anonymous"
    )


@pytest.fixture
async def missing_db_url(db_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database that does not exist yet on the backend under test (a file in a folder still
    to be made, or a database the server lacks), dropped after the test."""
    if db_url.startswith("sqlite"):
        yield sqlite_url(tmp_path / "missing" / "athenaq.db")
        return
    fresh = f"{db_url}_fresh"
    yield fresh
    admin = await asyncmy.connect(**_admin_params(fresh))
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{urlsplit(fresh).path[1:]}`")
    finally:
        await admin.ensure_closed()


async def test_schema_creation_is_idempotent(db_url: str) -> None:
    async with opened(db_url) as store:
        await asyncio.gather(store.create_schema(), store.create_schema())
        await store.create_schema()
        assert await store.unfinished() == []


async def test_concurrent_transitions_from_the_same_read_let_exactly_one_win(db_url: str) -> None:
    async with opened(db_url) as store:
        await store.create_schema()
        record = await submit(store)
        outcomes = await asyncio.gather(
            store.transition(record, Q.CANCELLED, "cancel", {}, by="poller"),
            store.transition(record, Q.RUNNING, "run", {}, by="poller"),
            store.transition(record, Q.FAILED, "fail", {}, by="poller"),
        )
        assert sorted(outcomes) == [False, False, True]
        latest = await store.get(record.id)
        assert latest is not None
        assert latest.version == record.version + 1
        history = await store.history(record.id)
        assert [(h.from_state, h.to_state) for h in history] == [
            (None, Q.QUEUED),
            (Q.QUEUED, latest.state),
        ]
        # A stale read never wins, even when the state looks the same again.
        assert not await store.transition(record, latest.state, "stale", {}, by="poller")
        assert not await store.update(record, {"athena_execution_id": "stale"})


async def test_the_version_guards_where_the_state_cannot(db_url: str) -> None:
    async with opened(db_url) as store:
        await store.create_schema()
        record = await submit(store)
        # Two launches of one read: the state stays QUEUED, only the version tells them apart.
        sent = await asyncio.gather(
            store.update(record, {"athena_execution_id": "first"}),
            store.update(record, {"athena_execution_id": "second"}),
        )
        assert sorted(sent) == [False, True]
        latest = await store.get(record.id)
        assert latest is not None
        assert await store.transition(latest, Q.CANCELLED, "cancel", {}, by="poller")
        cancelled = await store.get(record.id)
        assert cancelled is not None
        assert await store.transition(cancelled, Q.QUEUED, "refresh", {}, by="poller")
        # QUEUED again, as in the first read, but three writes later.
        assert not await store.transition(record, Q.RUNNING, "stale", {}, by="poller")
        assert not await store.update(record, {"athena_execution_id": "stale"})
        final = await store.get(record.id)
        assert final is not None
        assert (final.state, final.version) == (Q.QUEUED, 3)


async def test_two_stores_sharing_a_database_cannot_both_win(db_url: str) -> None:
    async with opened(db_url) as first, opened(db_url) as second:
        await first.create_schema()
        record = await submit(first)
        running = await second.get(record.id)
        assert running is not None
        assert await second.transition(running, Q.RUNNING, "run", {}, by="poller")
        seen_by_first = await first.get(record.id)
        assert seen_by_first is not None and seen_by_first.state == Q.RUNNING
        wins = await asyncio.gather(
            first.transition(seen_by_first, Q.SUCCEEDED, "results stored", {}, by="poller"),
            second.transition(seen_by_first, Q.CANCELLED, "cancelled", {}, by="poller"),
        )
        assert wins.count(True) == 1
        assert len(await first.history(record.id)) == 3


async def test_a_missing_database_is_created(missing_db_url: str) -> None:
    async with opened(missing_db_url) as store:
        await store.create_schema()
        record = await submit(store)
    async with opened(missing_db_url) as reopened:
        assert await reopened.get(record.id) == record


async def test_datetimes_round_trip_naive_utc_with_microseconds(db_url: str) -> None:
    # After the submit, as a query's times are (tests/conftest.py checks their order).
    started = datetime(2124, 2, 29, 23, 59, 58, 123456)
    completed = datetime(2124, 3, 1)  # no microseconds must read back the same
    async with opened(db_url) as store:
        await store.create_schema()
        record = await submit(store)
        assert await store.update(record, {"started_at": started, "completed_at": completed})
        stored = await store.get(record.id)
        (created,) = await store.history(record.id)
    assert stored is not None
    assert (stored.started_at, stored.completed_at) == (started, completed)
    assert stored.submitted_at == created.at == record.submitted_at
    for value in (stored.submitted_at, stored.updated_at, created.at):
        assert isinstance(value, datetime) and value.tzinfo is None
    assert stored.updated_at >= record.updated_at


async def test_a_query_keeps_its_options_and_labels_as_submitted(db_url: str) -> None:
    options = SubmitOptions(
        catalog="lakehouse",
        parameters=("2026-12-01", "it's", ""),
        labels={"team": "growth", "report.id": "wk-49 ünïcode"},
        cache_key="c" * 64,
        result_reuse_minutes=60,
        timeout_seconds=90,
        callback_url="https://hooks.example.com/athenaq?x=1",
    )
    async with opened(db_url) as store:
        await store.create_schema()
        record = await store.create(
            str(uuid.uuid4()), "SELECT ?", "sales", "wg", "submitted", owner="o", options=options
        )
        stored = await store.get(record.id)
        plain = await submit(store)
        async with store._engine.connect() as conn:
            labels = (
                (await conn.execute(query_labels.select().order_by(query_labels.c.label_key)))
                .mappings()
                .all()
            )
    assert stored == record
    assert stored.catalog == "lakehouse"
    assert stored.parameters == ("2026-12-01", "it's", "")
    assert stored.labels == {"team": "growth", "report.id": "wk-49 ünïcode"}
    assert (stored.cache_key, stored.result_reuse_minutes) == ("c" * 64, 60)
    assert stored.timeout_seconds == 90
    assert stored.timeout_at == stored.submitted_at + timedelta(seconds=90)
    assert stored.callback_url == "https://hooks.example.com/athenaq?x=1"
    # Labels are rows too, with the owner and submit time the listing's indexes order by.
    assert [dict(row) for row in labels] == [
        {
            "query_id": record.id,
            "label_key": key,
            "label_value": value,
            "owner": "o",
            "submitted_at": record.submitted_at,
        }
        for key, value in sorted(options.labels.items())  # type: ignore[union-attr]
    ]
    # A plain submit: the default catalog, no options, no labels.
    assert (plain.catalog, plain.parameters, plain.labels, plain.timeout_at) == (
        "AwsDataCatalog",
        None,
        None,
        None,
    )


async def test_a_sqlite_file_is_in_wal_mode_with_datetimes_as_iso_text(tmp_path: Path) -> None:
    path = tmp_path / "athenaq.db"
    async with opened(sqlite_url(path)) as store:
        await store.create_schema()
        record = await submit(store)
        assert await store.update(record, {"completed_at": datetime(2024, 3, 1)})
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute(
            "SELECT completed_at, typeof(completed_at), typeof(submitted_at) FROM queries"
        ).fetchone() == ("2024-03-01 00:00:00.000000", "text", "text")


async def test_two_stores_on_one_sqlite_file_let_exactly_one_transition_win(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "shared.db")
    async with opened(url) as first, opened(url) as second:
        await first.create_schema()
        records = [await submit(first) for _ in range(20)]
        ran = await asyncio.gather(
            *(first.transition(record, Q.RUNNING, "run", {}, by="poller") for record in records),
            *(
                second.transition(record, Q.CANCELLED, "cancel", {}, by="poller")
                for record in records
            ),
        )
        for record, won_run, won_cancel in zip(
            records, ran[: len(records)], ran[len(records) :], strict=True
        ):
            assert won_run != won_cancel, record.id
            winner = Q.RUNNING if won_run else Q.CANCELLED
            history = await second.history(record.id)
            assert [(h.from_state, h.to_state) for h in history] == [
                (None, Q.QUEUED),
                (Q.QUEUED, winner),
            ]
            latest = await first.get(record.id)
            assert latest is not None
            assert (latest.state, latest.version) == (winner, 1)


async def test_two_processes_on_one_sqlite_file_let_exactly_one_transition_win(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "shared.db")
    async with opened(url) as store:
        await store.create_schema()
        records = [await submit(store) for _ in range(50)]
        ids = " ".join(record.id for record in records)
        racers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                RACER,
                url,
                target,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for target in (Q.RUNNING, Q.CANCELLED)
        ]
        for racer in racers:
            assert racer.stdin and racer.stdout
            racer.stdin.write(f"{ids}\n".encode())
            await racer.stdin.drain()
        for racer in racers:
            assert racer.stdout and await racer.stdout.readline() == b"ready\n"
        # Both have read every record before either writes: from here on they race.
        outputs = await asyncio.gather(*(racer.communicate(b"go\n") for racer in racers))
        assert [racer.returncode for racer in racers] == [0, 0]
        won = {
            target: set(output.split())
            for target, (output, _) in zip((Q.RUNNING, Q.CANCELLED), outputs, strict=True)
        }
        assert won[Q.RUNNING].isdisjoint(won[Q.CANCELLED])
        assert won[Q.RUNNING] | won[Q.CANCELLED] == {record.id.encode() for record in records}
        for target, ids_won in won.items():
            for query_id in ids_won:
                history = await store.history(query_id.decode())
                assert [(h.from_state, h.to_state) for h in history] == [
                    (None, Q.QUEUED),
                    (Q.QUEUED, target),
                ]


async def test_create_schema_runs_concurrently_from_two_stores_on_one_file(
    tmp_path: Path,
) -> None:
    for attempt in range(5):
        url = sqlite_url(tmp_path / f"start-{attempt}" / "athenaq.db")
        async with contextlib.AsyncExitStack() as stack:
            # Two processes starting at once: both open the missing file, then make the schema.
            first, second = await asyncio.gather(
                stack.enter_async_context(opened(url)), stack.enter_async_context(opened(url))
            )
            await asyncio.gather(first.create_schema(), second.create_schema())
            record = await submit(first)
            assert await second.get(record.id) == record
            assert await second.unfinished() == [record]
