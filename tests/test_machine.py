"""The state table, next_state, the per-id lock and batches of writes, without I/O."""

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
from athenaq.tasks import Batches, KeyedLock

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


class Writes:
    """A `Batches` writer whose writes each wait until the test lets them end."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        # By batch (from 0): its write's end, once the write has begun.
        self._begun: dict[int, asyncio.Future[asyncio.Future[None]]] = {}

    async def __call__(self, items: list[int]) -> list[str]:
        self.batches.append(items)
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot(len(self.batches) - 1).set_result(end)
        await end
        if any(item < 0 for item in items):
            raise ValueError(f"cannot write {items}")
        return [f"{item} written" for item in items]

    async def begun(self, batch: int) -> None:
        """Wait until the write of the `batch`-th batch has begun."""
        await asyncio.wait_for(asyncio.shield(self._slot(batch)), timeout=5)

    async def end(self, batch: int) -> None:
        """Let the write of the `batch`-th batch end, once it has begun."""
        await self.begun(batch)
        self._slot(batch).result().set_result(None)

    def _slot(self, batch: int) -> asyncio.Future[asyncio.Future[None]]:
        if batch not in self._begun:
            self._begun[batch] = asyncio.get_running_loop().create_future()
        return self._begun[batch]


async def _handed_in(batches: Batches[int, str], items: range) -> list[asyncio.Task[str]]:
    """Each item handed in by a task of its own, in order, all of them waiting."""
    tasks = [asyncio.ensure_future(batches(item)) for item in items]
    for _ in items:
        await asyncio.sleep(0)  # each task hands its item in at its first step
    return tasks


async def test_batches_write_what_came_meanwhile_together_next() -> None:
    writes = Writes()
    batches = Batches(writes, size=3)
    first = await _handed_in(batches, range(1))
    rest = await _handed_in(batches, range(1, 6))
    # The first item is written at once, alone; the others wait for it.
    assert writes.batches == [[0]]
    for batch in range(3):
        await writes.end(batch)
    assert await asyncio.gather(*first, *rest) == [f"{item} written" for item in range(6)]
    assert writes.batches == [[0], [1, 2, 3], [4, 5]]
    # Nothing being written: the next item is written at once again.
    later = await _handed_in(batches, range(6, 7))
    await writes.end(3)
    assert await later[0] == "6 written"
    assert writes.batches[3:] == [[6]]


async def test_batches_skip_an_item_whose_caller_gave_up() -> None:
    writes = Writes()
    batches = Batches(writes, size=10)
    first = await _handed_in(batches, range(1))
    rest = await _handed_in(batches, range(1, 4))
    rest[0].cancel()
    await writes.end(0)
    await writes.end(1)
    assert await first[0] == "0 written"
    assert await asyncio.gather(*rest[1:]) == ["2 written", "3 written"]
    assert rest[0].cancelled()
    assert writes.batches == [[0], [2, 3]]


async def test_a_writer_cut_short_hands_its_batch_on_and_errors_reach_every_caller() -> None:
    writes = Writes()
    batches = Batches(writes, size=3)
    first = await _handed_in(batches, range(1))
    rest = await _handed_in(batches, range(1, 4))
    await writes.end(0)
    # Item 1's task writes [1, 2, 3] and is cut mid-write: the others of its batch are
    # written by the next in line.
    await writes.begun(1)
    rest[0].cancel()
    await writes.begun(2)
    failing = await _handed_in(batches, range(-2, 0))
    await writes.end(2)
    assert await asyncio.gather(*rest[1:]) == ["2 written", "3 written"]
    # A write that fails: every caller of its batch gets the error.
    await writes.end(3)
    for task in failing:
        with pytest.raises(ValueError, match="cannot write"):
            await task
    assert writes.batches == [[0], [1, 2, 3], [2, 3], [-2, -1]]
    assert await first[0] == "0 written"
    assert rest[0].cancelled()
    # Batches go on after a failed one.
    after = await _handed_in(batches, range(7, 8))
    await writes.end(4)
    assert await after[0] == "7 written"
