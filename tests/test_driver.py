"""The store's operations on the driver connection, cancelled at every point they can
be: a cancel leaves a transition whole or undone, never half, and the connection it cut
is not pooled (the next reads on the pool answer right)."""

from __future__ import annotations

import asyncio

from athenaq.states import QueryState
from athenaq.store import Store

# Event-loop turns to let an operation run before it is cancelled: from before its
# checkout into its statements, so cancels land while one awaits the database's answer.
CANCEL_POINTS = range(12)


async def test_a_cancelled_transition_is_whole_or_undone_and_the_pool_stays_sound(
    db_url: str,
) -> None:
    store = await Store.connect(db_url)
    try:
        await store.create_schema()
        for turns in CANCEL_POINTS:
            record = await store.create(
                f"00000000-0000-4000-8000-{turns:012d}",
                "SELECT 1",
                "default",
                "primary",
                "submitted",
                owner="anonymous",
            )
            moving = asyncio.ensure_future(
                store.transition(record, QueryState.RUNNING, "started", {}, by="test")
            )
            for _ in range(turns):
                await asyncio.sleep(0)  # not a wait: it picks where the cancel lands
            moving.cancel()
            done = await asyncio.gather(moving, return_exceptions=True)
            after = await store.get(record.id)
            assert after is not None
            history = await store.history(record.id)
            if after.state == QueryState.RUNNING:
                assert after.version == 1 and len(history) == 2, (turns, done)
            else:
                assert after.state == QueryState.QUEUED, (turns, done)
                assert after.version == 0 and len(history) == 1, (turns, done)
            # Every connection of the pool answers its own statement, none a cut one's.
            reads = await asyncio.gather(*(store.get(record.id) for _ in range(20)))
            assert all(read == after for read in reads)
    finally:
        await store.close()
