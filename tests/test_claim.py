"""The poller's claim scales with change: over queries nothing changed it reads only their
versions and writes nothing, and a process renews its leases once half spent, never
letting them lapse while it runs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.states import QueryState
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, make_config, wait_for

StartService = Callable[..., Awaitable[Service]]
Q = QueryState


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = await Store.connect(db_url, maxsize=2)
    await opened.create_schema()
    yield opened
    await opened.close()


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """The SQL statements a claim runs meanwhile beyond its read of the versions (made
    on the driver's connection): its updates of leases and its reads of whole rows."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    engine = store._sync
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def whole_row_reads(seen: list[str]) -> list[str]:
    return [s for s in seen if s.startswith("SELECT") and "query_text" in s]


async def lease_of(store: Store, query_id: str) -> tuple[str | None, datetime | None]:
    record = await store.get(query_id)
    assert record is not None
    return record.lease_holder, record.lease_expires_at


async def test_a_claim_reads_whole_only_the_rows_that_changed(store: Store) -> None:
    made = [
        await store.create(f"q{n}", f"SELECT {n}", "db", "wg", "submitted", owner="o")
        for n in range(5)
    ]
    first = await store.claim("a", 30, {}, renew=False)
    assert [r.id for r in first] == [r.id for r in made]
    assert {r.lease_holder for r in first} == {"a"}
    held = {r.id: r for r in first}

    # Nothing changed, leases not renewed: only the read of the versions, no write.
    with statements(store) as seen:
        again = await store.claim("a", 30, held, renew=False)
    assert all(r is held[r.id] for r in again) and len(again) == 5
    assert seen == []

    # Renewing writes the leases, and still reads no row whole.
    before = await lease_of(store, "q0")
    with statements(store) as seen:
        renewed = await store.claim("a", 60, held, renew=True)
    assert all(r is held[r.id] for r in renewed) and len(renewed) == 5
    assert any(s.startswith("UPDATE") for s in seen)
    assert whole_row_reads(seen) == []
    after = await lease_of(store, "q0")
    assert after[0] == "a" and after[1] is not None and before[1] is not None
    assert after[1] > before[1]

    # Changes: q0 admitted (no version change), q1 updated, q2 cancelled, q3 handed to
    # another process; q4 unchanged.
    assert [query_id for query_id, _ in await store.admit(1)] == ["q0"]
    assert await store.update(held["q1"], {"state_reason": "changed"})
    assert await store.transition(held["q2"], Q.CANCELLED, "cancelled", {}, by="test")
    await store.release("a", keep={"q0", "q1", "q2", "q4"})
    assert [r.id for r in await store.claim("b", 30, {})] == ["q3"]
    with statements(store) as seen:
        changed = await store.claim("a", 30, held, renew=False)
    assert [r.id for r in changed] == ["q0", "q1", "q4"]
    assert changed[2] is held["q4"]
    assert changed[0].admitted_at is not None and changed[0].version == held["q0"].version
    assert changed[1].state_reason == "changed" and changed[1].version == held["q1"].version + 1
    assert not any(s.startswith("UPDATE") for s in seen)
    assert len(whole_row_reads(seen)) == 1


async def test_leases_are_renewed_once_half_spent_and_never_lapse(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    # A lease of 1.5 s: renewed at its half, 0.75 s, it outlasts a tick held up to that
    # long by a loaded machine (0.6 s let one lapse in a CI run beside four suites).
    interval, lease = 0.05, 1.5
    config = make_config(db_url, double.url, tmp_path, interval_seconds=interval)
    config = dataclasses.replace(
        config, poller=dataclasses.replace(config.poller, lease_seconds=lease)
    )
    holder, other = await start_service(config), await start_service(config)
    client = Client(holder.url)
    ids = [await client.submit('SELECT 1 -- double: {"hold": true}') for _ in range(3)]
    for query_id in ids:
        await client.wait_state(query_id, "RUNNING")
    assert holder.poller is not None and other.poller is not None
    watcher = await Store.connect(db_url, maxsize=1)
    try:
        ticks = seen = holder.poller.ticks
        expiries: set[datetime] = set()
        ended = time.monotonic() + 4 * lease
        while time.monotonic() < ended:
            # Looked at once per tick of the holder: a lease can lapse only between them.
            await wait_for(lambda seen=seen: holder.poller.ticks > seen, what="the next tick")
            seen = holder.poller.ticks
            for query_id in ids:
                read_at = utcnow()
                owner, expires = await lease_of(watcher, query_id)
                # Held by the process that took the submit, and never lapsed: the other
                # process, ticking too, would take it over otherwise.
                assert owner == holder.lease.holder
                assert expires is not None and expires > read_at, (expires, read_at)
            expiries.add(expires)
        ticks = holder.poller.ticks - ticks
    finally:
        await watcher.close()
    # Renewed every half lease (about 8 times in 4 leases), not at every tick.
    assert 3 <= len(expiries) <= 12, (len(expiries), ticks)
    assert ticks >= 2 * len(expiries), (len(expiries), ticks)
    assert other.poller.ticks > 0


async def test_a_tick_over_unchanged_queries_issues_no_update(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    config = make_config(db_url, double.url, tmp_path, interval_seconds=0.05)
    service = await start_service(config)
    client = Client(service.url)
    ids = [await client.submit('SELECT 1 -- double: {"hold": true}') for _ in range(3)]
    for query_id in ids:
        await client.wait_state(query_id, "RUNNING")
    store, poller = service._store, service.poller
    assert store is not None and poller is not None
    # The claim after the moves to RUNNING reads those rows again; from then on, with
    # the lease (30 s) renewed at the first tick, the ticks write nothing.
    ticks = poller.ticks
    await wait_for(lambda: poller.ticks >= ticks + 2, what="two more ticks")
    with statements(store) as seen:
        ticks = poller.ticks
        await wait_for(lambda: poller.ticks >= ticks + 4, what="four more ticks")
    assert seen == []
