"""The state table, next_state and the per-id lock, without I/O."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from athenaq.states import (
    LEGAL_MOVES,
    TRANSITIONS,
    Event,
    IllegalTransition,
    QueryState,
    next_state,
)
from athenaq.tasks import KeyedLock

Q = QueryState
# API.md's legal transitions, written out independently of the table under test.
API_MOVES = {
    (Q.QUEUED, Q.RUNNING),
    (Q.QUEUED, Q.SUCCEEDED),
    (Q.QUEUED, Q.FAILED),
    (Q.QUEUED, Q.CANCELLED),
    (Q.RUNNING, Q.SUCCEEDED),
    (Q.RUNNING, Q.FAILED),
    (Q.RUNNING, Q.CANCELLED),
    (Q.SUCCEEDED, Q.QUEUED),
    (Q.FAILED, Q.QUEUED),
    (Q.CANCELLED, Q.QUEUED),
}


def test_the_table_allows_exactly_the_moves_of_the_api() -> None:
    assert LEGAL_MOVES == API_MOVES


@pytest.mark.parametrize(("state", "event"), list(itertools.product(QueryState, Event)))
def test_next_state_follows_the_table_or_raises(state: QueryState, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert (state, next_state(state, event)) in API_MOVES
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, event)


@pytest.mark.parametrize("state", [Q.SUCCEEDED, Q.FAILED])
def test_a_completed_query_can_never_be_cancelled(state: QueryState) -> None:
    with pytest.raises(IllegalTransition):
        next_state(state, Event.CANCEL)


async def test_keyed_lock_serializes_one_key_and_is_dropped_when_idle() -> None:
    lock = KeyedLock()
    inside = 0
    most_inside = 0

    async def critical() -> None:
        nonlocal inside, most_inside
        async with lock("a"):
            inside += 1
            most_inside = max(most_inside, inside)
            await asyncio.sleep(0)  # hand the loop to the others while holding the lock
            inside -= 1

    await asyncio.gather(*(critical() for _ in range(20)))
    assert most_inside == 1
    assert len(lock) == 0


async def test_keyed_lock_lets_other_keys_through() -> None:
    lock = KeyedLock()
    async with lock("a"):
        await asyncio.wait_for(_enter(lock, "b"), timeout=1)


async def _enter(lock: KeyedLock, key: str) -> None:
    async with lock(key):
        pass
