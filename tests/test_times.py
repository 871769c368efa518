"""A query's times, as a user can trust them: submitted_at <= started_at <= completed_at
<= results_at wherever each is set, the start Athena's own (its submission plus its time
queued), Athena's times kept within what athenaq saw when its clock differs. (Every
query the suite makes is checked for the order in tests/conftest.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from athenaq.athena import Execution
from athenaq.clock import in_order, utcnow
from athenaq.machine import Machine
from athenaq.states import Event, Lease, QueryState
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, times_out_of_order, wait_for

Q = QueryState
T0 = datetime(2026, 12, 2, 18, 14, 21)


def t(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


@pytest.mark.parametrize(
    ("later", "now", "expected"),
    [
        # In order already: kept as they are.
        ([t(100), t(300), t(400)], t(500), [t(100), t(300), t(400)]),
        # A start athenaq noticed after Athena's completion: the start comes back to it.
        ([t(400), t(300), t(450)], t(500), [t(300), t(300), t(450)]),
        # Athena's clock ahead of athenaq's: its completion, after the results were
        # stored, comes back to them; so does its start.
        ([t(2300), t(2400), t(450)], t(500), [t(450), t(450), t(450)]),
        # Athena's clock behind athenaq's: times before the submit go up to it.
        ([t(-700), t(-600), t(400)], t(500), [t(0), t(0), t(400)]),
        # Unset times are skipped, and stay unset; nothing is after now.
        ([None, t(800), None], t(500), [None, t(500), None]),
        ([t(200), None, None], t(500), [t(200), None, None]),
        ([None, None, None], t(500), [None, None, None]),
        # A submit by a process whose clock is ahead of this one's: the order wins over
        # this one's now.
        ([t(-100), t(-50), None], t(-200), [t(0), t(0), None]),
    ],
)
def test_in_order_keeps_a_querys_times_in_the_order_of_its_life(
    later: list[datetime | None], now: datetime, expected: list[datetime | None]
) -> None:
    assert in_order(t(0), later, now) == expected


def test_the_suites_check_names_every_query_out_of_order() -> None:
    rows = [
        {"id": "a", "state": "SUCCEEDED", "submitted_at": t(0), "started_at": t(1),
         "completed_at": t(2), "results_at": t(3)},
        {"id": "b", "state": "SUCCEEDED", "submitted_at": t(0), "started_at": t(5),
         "completed_at": t(2), "results_at": t(6)},
        {"id": "c", "state": "FAILED", "submitted_at": t(9), "started_at": None,
         "completed_at": t(8), "results_at": None},
    ]  # fmt: skip
    bad = times_out_of_order(rows)
    assert [line.split()[0] for line in bad] == ["b", "c"]


@pytest.fixture
async def machine(db_url: str) -> AsyncIterator[Machine]:
    store = await Store.connect(db_url, maxsize=2)
    await store.create_schema()
    yield Machine(store, lease=Lease("test", 30))
    await store.close()


def athena_says(state: str, submitted: datetime, queue_ms: int, total_ms: int) -> Execution:
    return Execution(
        execution_id="e-1",
        state=state,
        reason=None,
        submitted_at=submitted,
        completed_at=submitted + timedelta(milliseconds=total_ms) if state != "RUNNING" else None,
        data_scanned_bytes=10,
        engine_execution_ms=total_ms - queue_ms,
        queue_ms=queue_ms,
        total_execution_ms=total_ms,
    )


@pytest.mark.parametrize("skew", [timedelta(seconds=-30), timedelta(0), timedelta(seconds=30)])
async def test_the_machine_writes_athenas_times_in_order_whatever_its_clock(
    machine: Machine, skew: timedelta
) -> None:
    """A query run by an Athena whose clock is half a minute behind athenaq's, with it,
    or half a minute ahead: its start and completion are Athena's where they fit between
    athenaq's submit and the moment athenaq learned of them, and moved to the nearest
    bound where they do not."""
    store = machine.store
    record = await store.create("q-1", "SELECT 1", "db", "wg", "submitted", owner="o")
    record = await machine.store.get("q-1")
    assert record is not None
    assert await store.update(record, {"athena_execution_id": "e-1"})
    submitted = utcnow() + skew  # Athena's submission, on its clock
    # Athena tells of a start and an end once they have happened (by its clock).
    await wait_for(lambda: utcnow() + skew > submitted + timedelta(milliseconds=100))
    running = await machine.observe("q-1", athena_says("RUNNING", submitted, 40, 40))
    assert running is None
    ran = await store.get("q-1")
    assert ran is not None and ran.state == Q.RUNNING and ran.started_at is not None
    done = athena_says("SUCCEEDED", submitted, 40, 90)
    stored = await machine.observe("q-1", done)
    assert stored is not None
    changes = {**done.statistics, "results_at": utcnow(), "row_count": 1, "results_source": "api"}
    assert await machine.apply(stored, Event.SUCCEED, by="poller", changes=changes)
    final = await store.get("q-1")
    assert final is not None and final.state == Q.SUCCEEDED
    times = [final.submitted_at, final.started_at, final.completed_at, final.results_at]
    assert times == sorted(times), times
    if skew == timedelta(0):
        # Athena's own, untouched: its start is its submission plus its time queued.
        assert final.started_at == submitted + timedelta(milliseconds=40)
        assert final.completed_at == submitted + timedelta(milliseconds=90)
    elif skew > timedelta(0):
        # Ahead: nothing can be later than the results athenaq stored.
        assert final.started_at == final.completed_at == final.results_at
    else:
        # Behind: nothing can be earlier than athenaq's submit.
        assert final.started_at == final.completed_at == final.submitted_at
    assert not times_out_of_order([{"id": final.id, "state": final.state, **{
        "submitted_at": final.submitted_at, "started_at": final.started_at,
        "completed_at": final.completed_at, "results_at": final.results_at}}])  # fmt: skip


async def test_a_query_ended_without_athenas_completion_takes_athenaqs(machine: Machine) -> None:
    store = machine.store
    record = await store.create("q-2", "SELECT 1", "db", "wg", "submitted", owner="o")
    before = utcnow()
    failed = await machine.apply(record, Event.FAIL, by="poller", reason="lost")
    assert failed is not None and failed.completed_at is not None
    assert before <= failed.completed_at <= utcnow()
    stored = await store.get("q-2")
    assert stored is not None and stored.completed_at == failed.completed_at


async def test_a_status_shows_athenas_start_between_the_submit_and_the_end(
    double: AthenaDouble, client: Client
) -> None:
    """The start is when Athena began to run the query (its submission plus the 300 ms
    it was queued), not when athenaq noticed: the run of 200 ms comes after it."""
    query_id = await client.submit('SELECT 1 -- double: {"queue_ms": 300, "run_ms": 200}')
    status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", "CANCELLED")
    assert status["state"] == "SUCCEEDED"
    times = [
        datetime.fromisoformat(status[name].removesuffix("Z"))
        for name in ("submitted_at", "started_at", "completed_at", "results_at")
    ]
    assert times == sorted(times), times
    submitted, started, completed, _ = times
    assert started - submitted >= timedelta(milliseconds=300)
    # Athena's figures to the millisecond (the status shows times to the millisecond).
    assert abs(completed - started - timedelta(milliseconds=200)) <= timedelta(milliseconds=2)
    assert status["statistics"]["queue_ms"] == 300
