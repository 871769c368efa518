"""Admission control: `athena.max_running` caps the executions athenaq has running in
Athena across every process sharing the store; beyond it queries wait QUEUED, say how
many wait ahead of them, and take freed slots in a fair order across owners. Athena's
throttling lowers the cap for a while."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from loguru import logger

from athenaq.admission import AdaptiveCap, Backlog, fair_order, places_ahead
from athenaq.app import Service
from athenaq.config import Config
from athenaq.states import QueryState
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, make_config, make_key, wait_for, with_keys

StartService = Callable[..., Awaitable[Service]]
HELD = 'SELECT {n} -- double: {{"hold": true}}'
RUNS = 'SELECT {n} -- double: {{"run_ms": 10}}'
INTERVAL = 0.02


def capped(config: Config, max_running: int) -> Config:
    return dataclasses.replace(
        config, athena=dataclasses.replace(config.athena, max_running=max_running)
    )


def query_of(token: str | None) -> str:
    """The query id in a start's ClientRequestToken, `athenaq-<id>-<run>`."""
    assert token is not None
    return token.removeprefix("athenaq-").rsplit("-", 1)[0]


async def release_all(double: AthenaDouble, count: int, timeout: float = 30) -> list[str]:
    """Let every execution end as soon as it starts, until `count` have; the executions
    in start order."""
    released: set[str] = set()

    def step() -> bool:
        for execution_id in double.executions():
            if execution_id not in released:
                double.release(execution_id)
                released.add(execution_id)
        return len(released) >= count

    await wait_for(step, timeout, f"{count} executions started")
    return list(double.executions())


async def all_succeeded(store: Store, ids: list[str], timeout: float = 90) -> None:
    async def done() -> bool:
        return not await store.unfinished()

    await wait_for(done, timeout, "every query finished")
    for query_id in ids:
        record = await store.get(query_id)
        assert record is not None
        assert record.state == QueryState.SUCCEEDED, (query_id, record.state_reason)


async def test_200_queries_of_3_owners_share_5_slots_in_turn(
    db_url: str, tmp_path: Path, start_service: StartService, keys_store: Store
) -> None:
    with AthenaDouble(max_running=5) as double:
        config = make_config(db_url, double.url, tmp_path / "results", interval_seconds=INTERVAL)
        service = await start_service(capped(with_keys(config), 5))
        clients = {n: Client(service.url, key=await make_key(keys_store, n)) for n in "abc"}
        # A's first five take the slots and hold them until every query is in: A's other
        # 145, then B's 40, then C's 10. Each of those runs 10 ms in Athena.
        first = [await clients["a"].submit(HELD.format(n=n)) for n in range(5)]
        await wait_for(lambda: len(double.executions()) == 5, what="five starts")
        owner_of = dict.fromkeys(first, "a")
        for name, count in (("a", 145), ("b", 40), ("c", 10)):
            ids = await asyncio.gather(
                *(clients[name].submit(RUNS.format(n=n)) for n in range(count))
            )
            owner_of.update(dict.fromkeys(ids, name))
        assert len(double.executions()) == 5
        for execution_id in double.executions():
            double.release(execution_id)
        await all_succeeded(keys_store, list(owner_of))
        order = [owner_of[query_of(token)] for token in double.executions().values()]

    # Athena never had more than 5 running: it refused no start for want of room.
    assert double.peak_active() == 5
    assert double.refused_starts() == 0
    assert double.calls()["StartQueryExecution"] == 200
    assert sorted(order) == sorted(owner_of.values())
    # The first five were A's, alone when they came; then B and C take their turns at
    # once rather than after A's 150: a third of the slots each while all three wait.
    assert order[:5] == ["a"] * 5
    following = order[5:20]
    assert following.count("b") >= 3, order
    assert following.count("c") >= 3, order
    last = {name: max(i for i, owner in enumerate(order) if owner == name) for name in "abc"}
    assert last["c"] < 50, order
    assert last["b"] < 120, order


async def test_a_waiting_query_says_how_many_wait_ahead_of_it(
    config: Config, double: AthenaDouble, start_service: StartService, keys_store: Store
) -> None:
    service = await start_service(capped(with_keys(config), 2))
    a = Client(service.url, key=await make_key(keys_store, "a"))
    b = Client(service.url, key=await make_key(keys_store, "b"))
    a1, a2 = [await a.submit(HELD.format(n=n)) for n in (1, 2)]
    running = [await a.wait_state(i, "RUNNING") for i in (a1, a2)]
    a3, a4 = [await a.submit(HELD.format(n=n)) for n in (3, 4)]
    b1 = await b.submit(HELD.format(n=5))

    async def reasons() -> dict[str, str | None]:
        statuses = [await a.status(a3), await a.status(a4), await b.status(b1)]
        for status in statuses:
            assert status["state"] == "QUEUED"
            assert status["athena_query_execution_id"] is None
        return {s["id"]: s["state_reason"] for s in statuses}

    # A holds both slots: B's one query goes first, then A's in their order.
    assert await reasons() == {
        b1: "waiting for an Athena slot: 0 ahead",
        a3: "waiting for an Athena slot: 1 ahead",
        a4: "waiting for an Athena slot: 2 ahead",
    }
    assert len(double.executions()) == 2

    double.release(running[0]["athena_query_execution_id"])
    b_running = await b.wait_state(b1, "RUNNING")
    assert b_running["state_reason"] is None
    assert (await a.status(a3))["state_reason"] == "waiting for an Athena slot: 0 ahead"
    assert (await a.status(a4))["state_reason"] == "waiting for an Athena slot: 1 ahead"
    # A waiting query is cancelled at once, never sent; the one behind it moves up.
    await a.cancel(a3)
    assert (await a.status(a4))["state_reason"] == "waiting for an Athena slot: 0 ahead"

    double.release(running[1]["athena_query_execution_id"])
    a4_running = await a.wait_state(a4, "RUNNING")
    double.release(b_running["athena_query_execution_id"])
    double.release(a4_running["athena_query_execution_id"])
    await all_succeeded(keys_store, [a1, a2, a4, b1])
    assert len(double.executions()) == 4


async def test_two_processes_share_the_cap(
    db_url: str, tmp_path: Path, start_service: StartService
) -> None:
    with AthenaDouble(max_running=3) as double:
        config = make_config(db_url, double.url, tmp_path / "results", interval_seconds=INTERVAL)
        fleet = [await start_service(capped(config, 3)) for _ in range(2)]
        clients = [Client(s.url) for s in fleet]
        ids = await asyncio.gather(*(clients[n % 2].submit(HELD.format(n=n)) for n in range(12)))
        await wait_for(lambda: len(double.executions()) == 3, what="three starts")
        ticks = [s.poller.ticks for s in fleet]  # type: ignore[union-attr]
        await wait_for(
            lambda: all(s.poller.ticks >= t + 5 for s, t in zip(fleet, ticks, strict=True)),  # type: ignore[union-attr]
            what="five more ticks of each process",
        )
        # Each process holds queries that wait, and neither started one beyond the cap.
        assert len(double.executions()) == 3
        statuses = [await clients[0].status(i) for i in ids]
        waiting = [s for s in statuses if s["state"] == "QUEUED"]
        assert len(waiting) == 9
        assert sorted(s["state_reason"] for s in waiting) == [
            f"waiting for an Athena slot: {n} ahead" for n in range(9)
        ]

        await release_all(double, 12)
        store = await Store.connect(db_url, maxsize=1)
        try:
            await all_succeeded(store, list(ids))
        finally:
            await store.close()
    assert double.peak_active() == 3
    assert double.refused_starts() == 0
    assert double.calls()["StartQueryExecution"] == 12


async def test_athena_throttling_lowers_the_cap_and_every_query_still_runs(
    db_url: str, tmp_path: Path, start_service: StartService
) -> None:
    # Athena has room for 2 where athenaq is allowed 8.
    with AthenaDouble(max_running=2) as double:
        config = make_config(db_url, double.url, tmp_path / "results", interval_seconds=INTERVAL)
        service = await start_service(capped(config, 8))
        client = Client(service.url)
        ids = await asyncio.gather(
            *(client.submit(f'SELECT {n} -- double: {{"run_ms": 50}}') for n in range(12))
        )
        store = await Store.connect(db_url, maxsize=1)
        try:
            await all_succeeded(store, list(ids))
        finally:
            await store.close()
        assert service.poller is not None
        cap = service.poller.launcher.cap
    assert double.refused_starts() > 0
    assert cap.lowest <= 4
    assert len(double.executions()) == 12


def test_the_fair_order_fills_the_owners_with_fewest_slots_first_then_in_turn() -> None:
    backlogs = {
        "a": Backlog(admitted=5, waiting=500, oldest=1, turn=9),
        "b": Backlog(admitted=0, waiting=1, oldest=3),
        "c": Backlog(admitted=1, waiting=10, oldest=2, turn=8),
        "d": Backlog(admitted=2, waiting=0, turn=7),
    }
    # b's one first, then c up to a's level, then a and c in turn.
    assert fair_order(backlogs, 1) == ["b"]
    assert fair_order(backlogs, 5) == ["b", "c", "c", "c", "c"]
    assert fair_order(backlogs, 8) == ["b", "c", "c", "c", "c", "a", "c", "a"]
    assert fair_order(backlogs, 0) == []
    assert fair_order({"a": Backlog(0, 2, 1)}, 5) == ["a", "a"]
    # Level owners: the one whose latest slot is older goes first, whoever waited longer.
    level = {"x": Backlog(0, 5, oldest=1, turn=7), "y": Backlog(0, 5, oldest=2, turn=3)}
    assert fair_order(level, 4) == ["y", "x", "y", "x"]


def test_places_ahead_agree_with_the_fair_order() -> None:
    generator = random.Random(7)
    for _ in range(300):
        backlogs = {
            f"o{n}": Backlog(
                admitted=generator.randrange(4),
                waiting=generator.randrange(5),
                oldest=generator.randrange(3),
                turn=generator.randrange(3),
            )
            for n in range(generator.randrange(1, 5))
        }
        order = fair_order(backlogs, sum(b.waiting for b in backlogs.values()))
        for owner, backlog in backlogs.items():
            places = [i for i, o in enumerate(order) if o == owner]
            assert len(places) == backlog.waiting
            for rank in range(backlog.waiting):
                assert places_ahead(backlogs, owner, rank) == places[rank], (backlogs, owner)


def test_throttling_halves_the_cap_once_per_round_and_quiet_raises_it() -> None:
    now = [0.0]
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        cap = AdaptiveCap(20, hold_seconds=1, quiet_seconds=10, clock=lambda: now[0])
        cap.throttled()
        cap.throttled()  # the same round's
        assert cap.value == 10
        now[0] = 1.5
        cap.throttled()
        assert cap.value == 5
        for step in range(2, 5):
            now[0] = step
            cap.throttled()
        assert cap.value == 1
        assert cap.lowest == 1
        now[0] = 15.0  # 11 s without a throttle: one step up
        assert cap.value == 2
        now[0] = 44.0  # three more quiet intervals
        assert cap.value == 5
        now[0] = 1000.0
        assert cap.value == 20
        assert cap.value == 20
    finally:
        logger.remove(sink)
    lowered = [w for w in warnings if "lowered" in w]
    raised = [w for w in warnings if "raised" in w]
    assert len(lowered) == 4  # 20 -> 10 -> 5 -> 2 -> 1: once per change
    assert len(raised) == 3
