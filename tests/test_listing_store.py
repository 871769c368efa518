"""The store's listing, usage and retention statements against the database under test
(MariaDB or SQLite, by ATHENAQ_TEST_DB_URL): the index each walks (EXPLAIN), a keyset
over many queries of one instant, each query's cost rounded in SQL as in Python, and
retention's compare-and-set."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Select, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from athenaq.pricing import MIB, TB, billed_mib
from athenaq.states import QueryState
from athenaq.store import Store
from athenaq.store.database import open_engine
from athenaq.store.driver import Prepared
from athenaq.store.listing import (
    EXPIRED_SINCE,
    GROUPS,
    TO_EXPIRE,
    Position,
    QueryFilter,
    page_params,
    page_statement,
    usage_statement,
)
from athenaq.store.tables import queries, query_labels

Q = QueryState
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456)
OWNERS = ("alice", "bob", "carol")


def row(query_id: str, owner: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "id": query_id,
        "query_text": "SELECT 1",
        "database_name": "default",
        "workgroup": "primary",
        "state": Q.SUCCEEDED.value,
        "run": 1,
        "submitted_at": at,
        "version": 0,
        "updated_at": at,
        "owner": owner,
        # Every row of one insert names the same columns.
        "athena_execution_id": None,
        "results_at": None,
        "results_expired_at": None,
        "data_scanned_bytes": None,
        **fields,
    }


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    opened = await open_engine(db_url, 2, 10)
    yield opened
    await opened.dispose()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = await Store.connect(db_url, maxsize=2)
    yield opened
    await opened.close()


async def insert_rows(
    engine: AsyncEngine, rows: list[dict[str, Any]], labels: list[dict[str, Any]] = ()
) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(queries), rows)
        if labels:
            await conn.execute(insert(query_labels), list(labels))


async def plan(engine: AsyncEngine, statement: Select[Any], params: dict[str, Any]) -> str:
    """The database's plan for `statement` with `params`, as one text."""
    prepared = Prepared(statement, engine.dialect, sorted(params))
    prefix = "EXPLAIN " if engine.dialect.name == "mysql" else "EXPLAIN QUERY PLAN "
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql(prefix + prepared.sql, prepared.args(params))
        return "\n".join(" ".join(str(v) for v in r) for r in result.fetchall())


async def many(engine: AsyncEngine, count: int = 300) -> None:
    """`count` queries of three owners a second apart, in every state, a quarter labelled,
    with statistics the database knows (so its optimizer sees a table, not a few rows)."""
    rows, labels = [], []
    states = list(Q)
    for i in range(count):
        query_id, owner, at = str(uuid.uuid4()), OWNERS[i % 3], T0 + timedelta(seconds=i)
        rows.append(row(query_id, owner, at, state=states[i % len(states)].value))
        if i % 4 == 0:
            labels.append(
                {
                    "query_id": query_id,
                    "label_key": "team",
                    "label_value": f"t{i % 8}",
                    "owner": owner,
                    "submitted_at": at,
                }
            )
    await insert_rows(engine, rows, labels)
    async with engine.begin() as conn:
        if engine.dialect.name == "mysql":
            await conn.exec_driver_sql("ANALYZE TABLE queries, query_labels")
        else:
            await conn.exec_driver_sql("ANALYZE")


@pytest.mark.parametrize(
    ("owner", "state", "label", "index"),
    [
        (None, None, None, "queries_submitted"),
        (None, Q.SUCCEEDED, None, "queries_submitted"),
        ("bob", None, None, "queries_owner_submitted"),
        ("bob", Q.SUCCEEDED, None, "queries_owner_state_submitted"),
        (None, None, ("team", "t4"), "query_labels_label"),
        (None, Q.FAILED, ("team", "t4"), "query_labels_label"),
        ("bob", None, ("team", "t4"), "query_labels_owner"),
        ("bob", Q.FAILED, ("team", "t4"), "query_labels_owner"),
    ],
)
async def test_each_page_walks_its_index_newest_first(
    engine: AsyncEngine,
    store: Store,
    owner: str | None,
    state: QueryState | None,
    label: tuple[str, str] | None,
    index: str,
) -> None:
    await many(engine)
    for time_range, after in [(False, False), (False, True), (True, False), (True, True)]:
        where = QueryFilter(
            owner=owner,
            state=state,
            label=label,
            since=T0 + timedelta(seconds=10) if time_range else None,
            until=T0 + timedelta(seconds=250) if time_range else None,
        )
        position = Position(T0 + timedelta(seconds=150), "8") if after else None
        text = await plan(engine, page_statement(where, after), page_params(where, position, 51))
        walks = {index}
        if engine.dialect.name == "sqlite" and owner and state and time_range and not label:
            # SQLite's estimates of the two owner indexes tie under a time range, and it
            # takes the one it meets first, in the order the indexes were made (a set's
            # order in SQLAlchemy, so it changes from one database to the next): with
            # the owner's index the state is checked on the walk.
            walks.add("queries_owner_submitted")
        assert any(walked in text for walked in walks), text
        # Walked in order: no sort of what it found (MariaDB's filesort, SQLite's B-tree).
        assert "filesort" not in text and "TEMP B-TREE" not in text, text
        if label is not None:
            # Each label's query is read by its primary key.
            assert "PRIMARY" in text or "sqlite_autoindex_queries_1" in text, text
        found = await store.list_queries(where, position, 51)
        assert found
        times = [r.submitted_at for r in found]
        assert times == sorted(times, reverse=True)
        assert all(owner is None or r.owner == owner for r in found)
        assert all(state is None or r.state == state for r in found)
        if position is not None:
            assert all(r.submitted_at <= position.submitted_at for r in found)


async def test_the_usage_and_retention_reads_use_their_indexes(engine: AsyncEngine) -> None:
    await many(engine)
    for group_by in GROUPS:
        text = await plan(
            engine,
            usage_statement(group_by, True, True, True),
            {"owner": "bob", "since": T0, "until": T0 + timedelta(days=1)},
        )
        assert "queries_owner_submitted" in text, text
    text = await plan(engine, TO_EXPIRE, {"cutoff": T0, "limit": 200})
    assert "queries_results_expiry" in text, text
    text = await plan(engine, EXPIRED_SINCE, {"since": T0})
    assert "queries_results_expiry" in text, text


async def test_a_keyset_over_many_queries_of_one_instant_lists_each_once(
    engine: AsyncEngine, store: Store
) -> None:
    # Submits of one microsecond (processes on several hosts can make them): the id
    # orders them.
    same = [str(uuid.uuid4()) for _ in range(25)]
    older = [str(uuid.uuid4()) for _ in range(5)]
    await insert_rows(
        engine,
        [row(i, "alice", T0) for i in same]
        + [row(i, "alice", T0 - timedelta(microseconds=1)) for i in older],
    )
    where = QueryFilter(owner="alice")
    found: list[str] = []
    position = None
    while True:
        page = await store.list_queries(where, position, 4)
        found += [r.id for r in page]
        if len(page) < 4:
            break
        position = Position(page[-1].submitted_at, page[-1].id)
    assert found == sorted(same, reverse=True) + sorted(older, reverse=True)
    # The microseconds survive the round trip through the store.
    assert (await store.list_queries(where, None, 1))[0].submitted_at == T0


async def test_each_query_is_billed_in_sql_as_in_python(engine: AsyncEngine, store: Store) -> None:
    scanned: list[tuple[str, int | None]] = [
        (Q.SUCCEEDED.value, 1),
        (Q.SUCCEEDED.value, MIB - 1),
        (Q.SUCCEEDED.value, MIB),
        (Q.SUCCEEDED.value, MIB + 1),
        (Q.SUCCEEDED.value, 10 * MIB),
        (Q.SUCCEEDED.value, 10 * MIB + 1),
        (Q.SUCCEEDED.value, 123 * MIB + 456),
        (Q.SUCCEEDED.value, 5 * TB - 1),
        (Q.SUCCEEDED.value, 0),
        (Q.CANCELLED.value, 3 * MIB),
        (Q.FAILED.value, 50 * MIB),
        (Q.RUNNING.value, None),
    ]
    await insert_rows(
        engine,
        [
            row(str(uuid.uuid4()), f"owner{n}", T0, state=state, data_scanned_bytes=size)
            for n, (state, size) in enumerate(scanned)
        ],
    )
    groups = {group.key: group for group in await store.usage("owner", owner=None)}
    for n, (state, size) in enumerate(scanned):
        expected = 0 if size is None else billed_mib(size, failed=state == Q.FAILED.value)
        assert groups[f"owner{n}"].billed_mib == expected, (state, size)
        assert groups[f"owner{n}"].data_scanned_bytes == (size or 0)
    (everyone,) = await store.usage("workgroup", owner=None)
    assert everyone.billed_mib == sum(
        0 if size is None else billed_mib(size, failed=state == Q.FAILED.value)
        for state, size in scanned
    )
    assert (everyone.queries, everyone.succeeded, everyone.failed, everyone.cancelled) == (
        12,
        9,
        1,
        1,
    )
    (day,) = await store.usage("day", owner=None, since=T0, until=T0 + timedelta(seconds=1))
    assert day.key == T0.date().isoformat()


async def test_retention_marks_a_run_once_and_never_another_run(
    engine: AsyncEngine, store: Store
) -> None:
    stored = {
        name: str(uuid.uuid4()) for name in ("oldest", "older", "recent", "refreshed", "marked")
    }
    await insert_rows(
        engine,
        [
            row(stored["oldest"], "a", T0, athena_execution_id="e1", results_at=T0),
            row(
                stored["older"],
                "a",
                T0,
                athena_execution_id="e2",
                results_at=T0 + timedelta(hours=1),
            ),
            row(
                stored["recent"],
                "a",
                T0,
                athena_execution_id="e3",
                results_at=T0 + timedelta(days=9),
            ),
            # Refreshed since: QUEUED again, its run's results gone with it.
            row(stored["refreshed"], "a", T0, state=Q.QUEUED.value),
            row(
                stored["marked"],
                "a",
                T0,
                athena_execution_id="e5",
                results_at=T0,
                results_expired_at=T0 + timedelta(days=1),
            ),
        ],
    )
    cutoff = T0 + timedelta(days=1)
    assert await store.results_to_expire(cutoff, 10) == [
        (stored["oldest"], "e1"),
        (stored["older"], "e2"),
    ]
    assert await store.results_to_expire(cutoff, 1) == [(stored["oldest"], "e1")]
    # Another run of the query (refreshed and run again meanwhile) is not marked.
    assert not await store.expire_results(stored["oldest"], "another-execution")
    assert await store.expire_results(stored["oldest"], "e1")
    assert not await store.expire_results(stored["oldest"], "e1")
    assert not await store.expire_results(stored["refreshed"], "e4")
    record = await store.get(stored["oldest"])
    assert record is not None and record.results_expired_at is not None
    assert record.version == 0  # nothing of its state moved
    assert await store.results_to_expire(cutoff, 10) == [(stored["older"], "e2")]
    assert sorted(await store.results_expired_since(cutoff)) == sorted(
        [(stored["oldest"], "e1"), (stored["marked"], "e5")]
    )
