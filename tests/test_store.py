"""The store against the real database: schema, compare-and-set, history."""

from __future__ import annotations

import asyncio
import uuid

from athenaq.machine import QueryState
from athenaq.store import Store

Q = QueryState


async def test_schema_creation_is_idempotent(db_url: str) -> None:
    store = await Store.connect(db_url)
    try:
        await asyncio.gather(store.create_schema(), store.create_schema())
        await store.create_schema()
        assert await store.unfinished() == []
    finally:
        await store.close()


async def test_concurrent_transitions_from_the_same_read_let_exactly_one_win(db_url: str) -> None:
    store = await Store.connect(db_url)
    try:
        await store.create_schema()
        record = await store.create(
            str(uuid.uuid4()), "SELECT 1", "default", "primary", "submitted"
        )
        outcomes = await asyncio.gather(
            store.transition(record, Q.CANCELLED, "cancel", {}),
            store.transition(record, Q.RUNNING, "run", {}),
            store.transition(record, Q.FAILED, "fail", {}),
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
        assert not await store.transition(record, latest.state, "stale", {})
        assert not await store.update(record, {"athena_execution_id": "stale"})
    finally:
        await store.close()


async def test_two_stores_sharing_a_database_cannot_both_win(db_url: str) -> None:
    first, second = await Store.connect(db_url), await Store.connect(db_url)
    try:
        await first.create_schema()
        record = await first.create(
            str(uuid.uuid4()), "SELECT 1", "default", "primary", "submitted"
        )
        running = await second.get(record.id)
        assert running is not None
        assert await second.transition(running, Q.RUNNING, "run", {})
        seen_by_first = await first.get(record.id)
        assert seen_by_first is not None and seen_by_first.state == Q.RUNNING
        wins = await asyncio.gather(
            first.transition(seen_by_first, Q.SUCCEEDED, "results stored", {}),
            second.transition(seen_by_first, Q.CANCELLED, "cancelled", {}),
        )
        assert wins.count(True) == 1
        assert len(await first.history(record.id)) == 3
    finally:
        await first.close()
        await second.close()


async def test_a_missing_database_is_created(db_url: str) -> None:
    fresh = db_url + "_fresh"
    store = await Store.connect(fresh)
    try:
        await store.create_schema()
        record = await store.create(str(uuid.uuid4()), "SELECT 1", "default", "primary", "new")
        assert await store.get(record.id) == record
    finally:
        async with store._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE `{fresh.rsplit('/', 1)[1]}`")
        await store.close()
