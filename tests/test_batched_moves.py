"""Several queries moved in one transaction (Store.transitions, Machine.apply_all, and the
results storer's batches of SUCCEEDED moves), against the store under test: a batch
writes what the moves one by one would, in a fixed number of statements; a query another
writer changed meanwhile is left as that writer made it; a batch cut short writes
nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from athenaq.athena import Athena
from athenaq.clock import utcnow
from athenaq.ingest import Ingest
from athenaq.machine import Machine, Step
from athenaq.results import ResultFiles
from athenaq.states import Event, Lease, QueryRecord, QueryState, SubmitOptions
from athenaq.store import Store
from athenaq.store.moves import Move
from athenaq.storing import ResultsStorer
from tests.athena_double import AthenaDouble
from tests.conftest import make_config

Q = QueryState
SCANNED = 1000


@pytest.fixture
def store(keys_store: Store) -> Store:
    """The database under test, at the newest schema."""
    return keys_store


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """What each statement the store sends meanwhile is: its verb and its table."""
    seen: list[str] = []

    def record(sql: str) -> None:
        verb, *words = sql.split()
        if verb == "SELECT":
            seen.append(f"SELECT {words[words.index('FROM') + 1]}")
        elif verb in ("INSERT", "UPDATE"):
            seen.append(f"{verb} {words[1] if verb == 'INSERT' else words[0]}")
        else:
            seen.append(verb)

    store._driver.on_statement = record
    try:
        yield seen
    finally:
        store._driver.on_statement = None


async def running(
    store: Store, owner: str = "owner", callback_url: str | None = None
) -> QueryRecord:
    """A new query, sent to Athena and RUNNING there, as read now."""
    options = SubmitOptions(callback_url=callback_url)
    made = await store.create(
        str(uuid.uuid4()), "SELECT 1", "db", "wg", "submitted", owner=owner, options=options
    )
    assert await store.update(made, {"athena_execution_id": f"e-{made.id}"})
    sent = await store.get(made.id)
    assert sent is not None
    ran = {"started_at": utcnow()}
    assert await store.transition(sent, Q.RUNNING, "Athena reports RUNNING", ran, by="poller")
    record = await store.get(made.id)
    assert record is not None
    return record


def stored(record: QueryRecord, rows: int) -> Move:
    """The move of `record` to SUCCEEDED, its results stored, as the storer makes it."""
    now = utcnow()
    changes = {
        "completed_at": now,
        "results_at": now,
        "row_count": rows,
        "results_source": "api",
        "data_scanned_bytes": SCANNED * (rows + 1),
    }
    return Move(record, Q.SUCCEEDED, "results stored", changes)


async def moves_of(store: Store, query_id: str) -> list[tuple[Q | None, Q, str | None]]:
    return [(h.from_state, h.to_state, h.by) for h in await store.history(query_id)]


async def test_a_batch_is_one_update_one_upsert_per_owner_one_insert(store: Store) -> None:
    records = [await running(store, "a") for _ in range(4)] + [
        await running(store, "b") for _ in range(2)
    ]
    batch = [stored(record, rows) for rows, record in enumerate(records)]
    with statements(store) as seen:
        written = await store.transitions(batch, by="poller")
    assert written == [True] * 6
    assert seen == [
        "BEGIN",
        "UPDATE queries",
        "INSERT daily_usage",
        "INSERT daily_usage",
        "INSERT query_transitions",
        "COMMIT",
    ]
    for rows, record in enumerate(records):
        now = await store.get(record.id)
        assert now is not None
        assert (now.state, now.version, now.row_count) == (Q.SUCCEEDED, record.version + 1, rows)
        assert (now.results_source, now.data_scanned_bytes) == ("api", SCANNED * (rows + 1))
        assert now.started_at == record.started_at  # a column no move set keeps its value
        assert now.state_reason is None
        assert (await moves_of(store, record.id))[-1] == (Q.RUNNING, Q.SUCCEEDED, "poller")
    assert await store.scanned_today("a") == SCANNED * (1 + 2 + 3 + 4)
    assert await store.scanned_today("b") == SCANNED * (5 + 6)


async def test_a_query_changed_meanwhile_is_left_as_its_writer_made_it(store: Store) -> None:
    records = [await running(store) for _ in range(4)]
    # Since they were read: a cancel asked for the second, the third ended CANCELLED.
    asked = utcnow()
    assert await store.update(records[1], {"cancel_requested_at": asked})
    reason = {"state_reason": "cancelled by client"}
    assert await store.transition(records[2], Q.CANCELLED, "cancelled", reason, by="client")
    batch = [stored(record, 1) for record in records]
    with statements(store) as seen:
        written = await store.transitions(batch, by="poller")
    assert written == [True, False, False, True]
    # The guards did not all hold: undone, the versions read, the others written again.
    assert seen == [
        "BEGIN",
        "UPDATE queries",
        "ROLLBACK",
        "SELECT queries",
        "BEGIN",
        "UPDATE queries",
        "INSERT daily_usage",
        "INSERT query_transitions",
        "COMMIT",
    ]
    asked_for = await store.get(records[1].id)
    assert asked_for is not None
    assert (asked_for.state, asked_for.version) == (Q.RUNNING, records[1].version + 1)
    assert asked_for.cancel_requested_at is not None and asked_for.row_count is None
    cancelled = await store.get(records[2].id)
    assert cancelled is not None
    assert (cancelled.state, cancelled.state_reason) == (Q.CANCELLED, "cancelled by client")
    assert cancelled.row_count is None
    assert Q.SUCCEEDED not in [to for _, to, _ in await moves_of(store, records[1].id)]
    assert (await moves_of(store, records[2].id))[-1] == (Q.RUNNING, Q.CANCELLED, "client")
    assert await store.scanned_today("owner") == 2 * SCANNED * 2
    # Every guard lost: nothing written, and no second try.
    with statements(store) as seen:
        assert await store.transitions(batch[1:3], by="poller") == [False, False]
    assert seen == ["BEGIN", "UPDATE queries", "ROLLBACK", "SELECT queries"]


async def test_a_batch_cut_short_writes_nothing_and_is_written_again_whole(store: Store) -> None:
    records = [await running(store) for _ in range(3)]
    batch = [stored(record, 2) for record in records]
    writing = asyncio.ensure_future(store.transitions(batch, by="poller"))

    def cut(sql: str) -> None:
        # The process dies, or its task is cut, with the rows updated and the history
        # not written yet.
        if sql.startswith("INSERT INTO query_transitions"):
            writing.cancel()

    store._driver.on_statement = cut
    try:
        with pytest.raises(asyncio.CancelledError):
            await writing
    finally:
        store._driver.on_statement = None
    for record in records:
        assert await store.get(record.id) == record
    assert await store.scanned_today("owner") == 0
    # The next process stores the results again: the same moves all win.
    assert await store.transitions(batch, by="poller") == [True] * 3
    for record in records:
        assert [to for _, to, _ in await moves_of(store, record.id)].count(Q.SUCCEEDED) == 1
    assert await store.scanned_today("owner") == 3 * SCANNED * 3


async def test_batches_racing_single_moves_let_exactly_one_writer_win_each_query(
    store: Store, db_url: str
) -> None:
    records = [await running(store) for _ in range(20)]
    other = await Store.connect(db_url, maxsize=4)
    try:
        batches = [records[start : start + 5] for start in range(0, 20, 5)]
        outcomes = await asyncio.gather(
            *(store.transitions([stored(r, 1) for r in batch], by="poller") for batch in batches),
            *(other.transition(r, Q.CANCELLED, "cancelled", {}, by="client") for r in records),
        )
    finally:
        await other.close()
    succeeded = [won for batch in outcomes[: len(batches)] for won in batch]
    cancelled = outcomes[len(batches) :]
    for record, won, lost in zip(records, succeeded, cancelled, strict=True):
        assert won != lost, record.id
        final = await store.get(record.id)
        assert final is not None
        assert final.state == (Q.SUCCEEDED if won else Q.CANCELLED)
        assert [to for _, to, _ in await moves_of(store, record.id)] == [
            Q.QUEUED,
            Q.RUNNING,
            final.state,
        ]
    assert await store.scanned_today("owner") == SCANNED * 2 * sum(succeeded)


async def test_apply_all_tells_every_move_and_writes_its_times_in_order_and_webhook(
    store: Store,
) -> None:
    moved: list[QueryRecord] = []
    machine = Machine(store, lease=Lease("test", 30), moved=moved.append)
    hooked = await running(store, callback_url="https://hooks.example.com/done")
    plain = await running(store)
    changed = await running(store)
    assert await store.update(changed, {"cancel_requested_at": utcnow()})
    # Athena's clock a minute behind athenaq's: its completion before the start athenaq saw.
    early = utcnow() - timedelta(minutes=1)
    changes = {"completed_at": early, "row_count": 3, "results_source": "api"}
    steps = [
        Step(record, Event.SUCCEED, "results stored", {**changes, "results_at": utcnow()})
        for record in (hooked, plain, changed)
    ]
    after = await machine.apply_all(steps, by="poller")
    assert [record is not None for record in after] == [True, True, False]
    assert [record.id for record in moved] == [hooked.id, plain.id]
    assert moved == after[:2]
    for record in moved:
        now = await store.get(record.id)
        assert now is not None
        assert (now.state, now.version) == (record.state, record.version)
        assert (now.state, now.version) == (Q.SUCCEEDED, hooked.version + 1)
        assert now.started_at is not None and now.completed_at is not None
        assert now.results_at is not None
        assert now.submitted_at <= now.started_at <= now.completed_at <= now.results_at
        assert now.completed_at == record.completed_at
    delivery = await store.delivery(hooked.id, 1)
    assert delivery is not None and delivery.state == Q.SUCCEEDED
    assert json.loads(delivery.body)["state"] == "SUCCEEDED"
    assert json.loads(delivery.body)["row_count"] == 3
    assert await store.delivery(plain.id, 1) is None
    assert await store.delivery(changed.id, 1) is None


def scripted(n: int) -> str:
    script = {"columns": [["n", "integer"]], "rows": [[str(n)]], "scanned_bytes": SCANNED}
    return f"SELECT {n} -- double: {json.dumps(script)}"


async def test_stored_results_move_in_batches_and_a_query_changed_meanwhile_keeps_its_change(
    store: Store, double: AthenaDouble, db_url: str, tmp_path: Path
) -> None:
    config = make_config(db_url, double.url, tmp_path / "results")
    results = ResultFiles(config.results.dir)
    results.prepare()
    moved: list[QueryRecord] = []
    machine = Machine(store, lease=Lease("test", 30), moved=moved.append)
    async with Athena.open(config.athena, config.s3) as athena:
        storer = ResultsStorer(
            machine, store, results, Ingest(athena, results), store_retry=timedelta(minutes=1)
        )
        known: list[QueryRecord] = []
        for n in range(8):
            made = await store.create(
                str(uuid.uuid4()), scripted(n), "default", "primary", "new", owner="o"
            )
            execution_id = await athena.start(scripted(n), "default", "primary", f"token-{made.id}")
            assert await store.update(made, {"athena_execution_id": execution_id})
            sent = await store.get(made.id)
            assert sent is not None
            running_record = await machine.apply(
                sent, Event.RUN, by="poller", changes={"started_at": utcnow()}
            )
            assert running_record is not None
            known.append(running_record)
        executions = [await athena.get(r.athena_execution_id or "") for r in known]
        assert [e.state for e in executions] == ["SUCCEEDED"] * 8
        # Since the poller read them: a cancel asked for the third; the fourth ended
        # CANCELLED and the fifth SUCCEEDED, by other writers.
        asked, cancelled, done = known[2], known[3], known[4]
        assert await store.update(asked, {"cancel_requested_at": utcnow()})
        assert await store.transition(cancelled, Q.CANCELLED, "cancelled", {}, by="client")
        other = {
            "results_at": utcnow(),
            "row_count": 1,
            "results_source": "s3",
            "data_scanned_bytes": SCANNED,
        }
        assert await store.transition(done, Q.SUCCEEDED, "results stored", other, by="poller")
        moved.clear()
        outcomes = await asyncio.gather(
            *(
                storer.store_results(record.id, execution, record)
                for record, execution in zip(known, executions, strict=True)
            )
        )
    assert outcomes == [True] * 8
    for record in known:
        final = await store.get(record.id)
        assert final is not None
        directory = results.path(record.id, record.athena_execution_id or "")
        if record is cancelled:
            assert final.state == Q.CANCELLED
            assert not directory.exists()  # a result nobody will read
            continue
        assert final.state == Q.SUCCEEDED
        assert directory.is_dir()
        assert [to for _, to, _ in await moves_of(store, record.id)].count(Q.SUCCEEDED) == 1
        if record is done:
            assert (final.version, final.results_source) == (done.version + 1, "s3")
        else:
            assert (final.row_count, final.results_source) == (1, "api")
        if record is asked:
            assert final.cancel_requested_at is not None  # kept, the move made on it
    assert sorted(r.id for r in moved) == sorted(r.id for r in known if r not in (cancelled, done))
    # Bytes counted once per run that ended: none for the cancelled one.
    assert await store.scanned_today("o") == SCANNED * 7
