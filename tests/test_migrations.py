"""Schema revisions, on the database under test (MariaDB or SQLite, by ATHENAQ_TEST_DB_URL).

The databases of earlier releases come from tests/fixtures/release_25f9e7b/, written by
tests/fixtures/make_release_fixture.py running the release before schema revisions
(commit 25f9e7b) itself: its own service and store on SQLite, and its own scripted
Athena endpoint. The fixture keeps that release's exact DDL per database, every row it
wrote, its result files and what its API answered. A test here builds that database
with the release's DDL on the backend under test, loads the rows and the result files,
upgrades it with the real `athenaq migrate` command, and checks today's service answers
what the release answered. Loading rows into the release's DDL, rather than running the
old release in each test, keeps the tests fast and lets one fixture serve MariaDB too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncmy
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, insert, inspect

from athenaq.app import Service
from athenaq.config import Config
from athenaq.pricing import DEFAULT_PRICE_PER_TB_USD, cost_usd
from athenaq.states import QueryState, SubmitOptions
from athenaq.store import SchemaError, Store
from athenaq.store.database import open_engine, sqlite_path
from athenaq.store.deliveries import Callback
from athenaq.store.schema import MIGRATIONS, head
from athenaq.store.tables import metadata, queries
from tests.conftest import Client, _admin_params, make_config

FIXTURE = Path(__file__).parent / "fixtures" / "release_25f9e7b"
# Each test starts from a database with no schema, or writes an old release's itself,
# with the times that release gave its queries (a start it noticed after Athena's
# completion, for one): served as they are, never checked for today's order.
pytestmark = [
    pytest.mark.empty_database,
    pytest.mark.earlier_release_queries(
        *(row["id"] for row in json.loads((FIXTURE / "rows.json").read_text())["queries"])
    ),
]
# Nothing listens there: the service's Athena calls fail for a passing reason, and the
# queries the release left unfinished stay as they were.
NO_ATHENA = "http://127.0.0.1:9"

StartService = Callable[..., Awaitable[Service]]


def release(name: str) -> Any:
    return json.loads((FIXTURE / name).read_text())


def release_ddl(url: str, *, first_release: bool = False) -> list[str]:
    """The release's CREATE statements for `url`'s database; the first release's (no
    `results_source`) when asked."""
    backend = "sqlite" if url.startswith("sqlite") else "mysql"
    statements: list[str] = release("schema.json")[backend]
    if first_release:
        statements = [
            "\n".join(line for line in s.splitlines() if "results_source" not in line)
            for s in statements
        ]
    return statements


async def load_release_database(url: str, *, first_release: bool = False) -> None:
    """The release's database at `url`: its DDL, and every row it wrote."""
    statements = release_ddl(url, first_release=first_release)
    inserts = []
    for table, rows in release("rows.json").items():
        for row in rows:
            if first_release:
                row = {k: v for k, v in row.items() if k != "results_source"}
            inserts.append((table, list(row), list(row.values())))
    if url.startswith("sqlite"):

        def write() -> None:
            # closing(): a connection's own `with` commits but does not close it.
            with contextlib.closing(sqlite3.connect(sqlite_path(url))) as conn, conn:
                for statement in statements:
                    conn.execute(statement)
                for table, columns, values in inserts:
                    marks = ", ".join("?" for _ in columns)
                    conn.execute(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values
                    )

        await asyncio.to_thread(write)
        return
    conn = await asyncmy.connect(**_admin_params(url), db=url.rsplit("/", 1)[1], autocommit=True)
    try:
        async with conn.cursor() as cur:
            for statement in statements:
                await cur.execute(statement)
            for table, columns, values in inserts:
                marks = ", ".join("%s" for _ in columns)
                await cur.execute(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values
                )
    finally:
        await conn.ensure_closed()


# What the status shows of a query submitted before the submit's optional fields.
BEFORE_OPTIONS = {
    "catalog": "AwsDataCatalog",
    "parameters": None,
    "labels": None,
    "result_reuse_minutes": None,
    "reused_previous_result": None,
    "timeout_seconds": None,
    "timeout_at": None,
    "callback_url": None,
    "callback": None,
}


def release_config(db_url: str, tmp_path: Path, **database: Any) -> tuple[Config, Path]:
    """A config whose results folder holds the release's result files, and its file."""
    results = tmp_path / "results"
    if not results.exists():
        shutil.copytree(FIXTURE / "results", results)
    config = make_config(db_url, NO_ATHENA, results)
    config = dataclasses.replace(config, database=dataclasses.replace(config.database, **database))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    return config, path


async def athenaq(*args: str) -> tuple[int, str, str]:
    """Run the `athenaq` command; its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "athenaq",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def nothing_to_do() -> str:
    """What `athenaq migrate` prints for a database already at this release's revision."""
    return f"athenaq migrate: the database is at revision {head()}; nothing to do\n"


async def schema_differences(url: str) -> list[Any]:
    """What alembic's autogenerate finds between the database and athenaq/store/tables.py."""
    engine = await open_engine(url, 1)
    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await engine.dispose()
    # SQLite reports an INTEGER PRIMARY KEY (the rowid, never NULL) as nullable when the
    # table says only that, as the releases' DDL did; SQLAlchemy writes NOT NULL for it.
    rowid = ("modify_nullable", None, "query_transitions", "seq")
    return [diff for diff in found if not (url.startswith("sqlite") and diff[0][:4] == rowid)]


async def test_a_release_database_is_upgraded_by_athenaq_migrate_and_served_unchanged(
    db_url: str, tmp_path: Path, start_service: StartService
) -> None:
    await load_release_database(db_url)
    config, path = release_config(db_url, tmp_path, migrate_on_start=False)

    code, out, err = await athenaq("migrate", "--config", str(path))

    assert code == 0, err
    assert out.splitlines() == [
        "athenaq migrate: adopted a database made before schema revisions",
        "athenaq migrate: applied revision 0001: The schema of the releases made before"
        " schema revisions; adopts their databases.",
        "athenaq migrate: applied revision 0002: API keys, the owner of each query, who"
        " caused each transition, scanned bytes per day.",
        "athenaq migrate: applied revision 0003: Leases: the process that polls each"
        " unfinished query and stores its results.",
        "athenaq migrate: applied revision 0004: Admission control: when each query's run"
        " took an Athena slot, and each owner's latest turn.",
        "athenaq migrate: applied revision 0005: The query API: Athena context, options,"
        " labels, idempotency keys, listing, cache, retention.",
        "athenaq migrate: applied revision 0006: The cache index ends with the time of the"
        " results: a lookup reads only young ones.",
        "athenaq migrate: applied revision 0007: Webhook deliveries: one per finished run of"
        " a query with a callback URL.",
    ]
    assert head() == "0007"
    assert await schema_differences(db_url) == []
    client = Client((await start_service(config)).url)
    answers = release("answers.json")
    assert {a["status"]["state"] for a in answers.values()} == {s.value for s in QueryState}
    refreshes = [t for t in release("rows.json")["query_transitions"] if t["to_state"] == "QUEUED"]
    assert sum(t["query_id"] == answers["refreshed"]["id"] for t in refreshes) == 3
    for name, answer in answers.items():
        status = await client.status(answer["id"])
        if status["state"] in ("QUEUED", "RUNNING"):
            # The service tried Athena again at start, and says why that failed.
            status["state_reason"] = answer["status"]["state_reason"]
        # Every query of the releases before keys belongs to "anonymous"; those before
        # the query API ran in Athena's default catalog, with none of its options, cost
        # what their bytes scanned cost, and have no expiry (no retention in this config).
        then = answer["status"]
        cost = cost_usd(
            then["statistics"]["data_scanned_bytes"],
            failed=then["state"] == QueryState.FAILED,
            price_per_tb_usd=DEFAULT_PRICE_PER_TB_USD,
        )
        assert status == {
            **then,
            "owner": "anonymous",
            **BEFORE_OPTIONS,
            "results_expires_at": None,
            "statistics": {**then["statistics"], "cost_usd": cost},
        }, name
        if "results" in answer:
            page = await client.request("GET", f"/query/{answer['id']}/results?limit=1000")
            assert json.loads(page.body) == answer["results"], name
    transitions = release("rows.json")["query_transitions"]
    store = await Store.connect(db_url, maxsize=1)
    try:
        for answer in answers.values():
            history = [
                {
                    "query_id": t.query_id,
                    "from_state": t.from_state and t.from_state.value,
                    "to_state": t.to_state.value,
                    "reason": t.reason,
                    "at": t.at.isoformat(sep=" ", timespec="microseconds"),
                    "by": t.by,
                }
                for t in await store.history(answer["id"])
            ]
            assert history == [
                # Nobody recorded who caused the releases' transitions.
                {**{k: v for k, v in t.items() if k != "seq"}, "by": None}
                for t in transitions
                if t["query_id"] == answer["id"]
            ]
    finally:
        await store.close()


async def test_a_first_release_database_gains_results_source_and_keeps_its_rows(
    db_url: str,
) -> None:
    await load_release_database(db_url, first_release=True)
    store = await Store.connect(db_url, maxsize=2)
    try:
        change = await store.create_schema()
        assert (change.before, change.after) == (None, head())
        assert "adopted a database made before schema revisions" in change.steps
        assert await schema_differences(db_url) == []
        for row in release("rows.json")["queries"]:
            stored = await store.get(row["id"])
            assert stored is not None
            assert stored.results_source is None
            assert stored.version == row["version"]
            assert stored.submitted_at.isoformat(sep=" ") == row["submitted_at"]
            assert await store.update(stored, {"results_source": "s3"})
    finally:
        await store.close()


async def test_athenaq_migrate_is_idempotent(db_url: str, tmp_path: Path) -> None:
    _, path = release_config(db_url, tmp_path)
    first = await athenaq("migrate", "--config", str(path))
    again = await athenaq("migrate", "--config", str(path))
    assert first[:2] == (0, f"athenaq migrate: created the schema at revision {head()}\n")
    assert again[:2] == (0, nothing_to_do())
    assert await schema_differences(db_url) == []


async def test_a_server_not_migrating_on_start_refuses_a_database_behind(
    db_url: str, tmp_path: Path, start_service: StartService
) -> None:
    await load_release_database(db_url)
    config, path = release_config(db_url, tmp_path, migrate_on_start=False)

    code, _, err = await athenaq("serve", "--config", str(path))

    assert code == 1
    (line,) = err.splitlines()
    logged = json.loads(line)
    assert logged["message"] == "could not start"
    assert "run `athenaq migrate`" in logged["error"]
    with pytest.raises(SchemaError, match="at no schema revision"):
        await start_service(config)
    # Nothing was changed: the database is still the release's, and migrates as one.
    assert (await athenaq("migrate", "--config", str(path)))[1].startswith(
        "athenaq migrate: adopted"
    )
    await start_service(config)


async def test_the_revisions_make_the_tables_the_store_defines(db_url: str) -> None:
    # A fresh database is made from tables.py and stamped; here the revisions run instead,
    # from nothing, and must give the same schema.
    engine = await open_engine(db_url, 1)
    try:

        def upgrade(sync: Connection) -> None:
            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = sync
            command.upgrade(config, "head")

        async with engine.connect() as conn:
            await conn.run_sync(upgrade)
    finally:
        await engine.dispose()
    assert await schema_differences(db_url) == []


async def upgrade_to(url: str, revision: str) -> None:
    """Run the revisions up to `revision` on the database at `url`."""
    engine = await open_engine(url, 1)
    try:

        def upgrade(sync: Connection) -> None:
            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = sync
            command.upgrade(config, revision)

        async with engine.connect() as conn:
            await conn.run_sync(upgrade)
    finally:
        await engine.dispose()


async def test_queries_sent_before_admission_control_hold_slots_after_the_upgrade(
    db_url: str,
) -> None:
    await upgrade_to(db_url, "0003")
    submitted = datetime(2026, 12, 1, 12, 0, 0, 123456)
    rows = {
        "00000000-0000-4000-8000-000000000001": ("RUNNING", "e-running"),
        "00000000-0000-4000-8000-000000000002": ("QUEUED", "e-sent"),
        "00000000-0000-4000-8000-000000000003": ("QUEUED", None),
        "00000000-0000-4000-8000-000000000004": ("SUCCEEDED", "e-done"),
    }
    engine = await open_engine(db_url, 1)
    try:
        async with engine.begin() as conn:
            for n, (query_id, (state, execution)) in enumerate(rows.items()):
                # The columns of revision 0003: no admitted_at yet.
                await conn.execute(
                    insert(queries),
                    {
                        "id": query_id,
                        "query_text": "SELECT 1",
                        "database_name": "default",
                        "workgroup": "primary",
                        "state": state,
                        "athena_execution_id": execution,
                        "submitted_at": submitted + timedelta(seconds=n),
                        "updated_at": submitted,
                    },
                )
    finally:
        await engine.dispose()
    store = await Store.connect(db_url, maxsize=2)
    try:
        change = await store.create_schema()
        assert change.steps[0] == (
            "applied revision 0004: Admission control: when each query's run took an Athena"
            " slot, and each owner's latest turn."
        )
        assert await schema_differences(db_url) == []
        admitted = {}
        for query_id in rows:
            record = await store.get(query_id)
            assert record is not None
            admitted[query_id] = record.admitted_at is not None
        # The two sent to Athena hold slots; the one not sent waits; a finished one holds none.
        assert list(admitted.values()) == [True, True, False, False]
        waiting = list(rows)[2]
        # Of three slots, the two sent hold two: the one left goes to the waiting query.
        assert await store.admit(3) == [(waiting, None)]
        assert await store.admit(3) == []
        record = await store.get(waiting)
        assert record is not None and record.admitted_at is not None
    finally:
        await store.close()


async def test_queries_of_the_release_before_the_query_api_keep_their_rows_and_gain_its_defaults(
    db_url: str,
) -> None:
    await upgrade_to(db_url, "0004")
    submitted = datetime(2026, 12, 5, 9, 0, 0, 654321)
    engine = await open_engine(db_url, 1)
    try:
        async with engine.begin() as conn:
            # The columns of revision 0004: no catalog, options or labels yet.
            await conn.execute(
                insert(queries),
                {
                    "id": "00000000-0000-4000-8000-000000000005",
                    "query_text": "SELECT 5",
                    "database_name": "sales",
                    "workgroup": "analysts",
                    "state": "SUCCEEDED",
                    "athena_execution_id": "e-5",
                    "submitted_at": submitted,
                    "results_at": submitted + timedelta(seconds=2),
                    "row_count": 1,
                    "version": 3,
                    "updated_at": submitted,
                    "owner": "reports",
                    "admitted_at": submitted,
                },
            )
    finally:
        await engine.dispose()
    store = await Store.connect(db_url, maxsize=2)
    try:
        change = await store.create_schema()
        assert change.steps[0] == (
            "applied revision 0005: The query API: Athena context, options, labels,"
            " idempotency keys, listing, cache, retention."
        )
        assert await schema_differences(db_url) == []
        record = await store.get("00000000-0000-4000-8000-000000000005")
        assert record is not None
        assert (record.query_text, record.database_name, record.workgroup) == (
            "SELECT 5",
            "sales",
            "analysts",
        )
        assert (record.state, record.version, record.owner) == (
            QueryState.SUCCEEDED,
            3,
            "reports",
        )
        assert (record.submitted_at, record.row_count) == (submitted, 1)
        assert record.catalog == "AwsDataCatalog"
        assert (record.parameters, record.labels, record.cache_key) == (None, None, None)
        assert (record.timeout_seconds, record.timeout_at, record.callback_url) == (
            None,
            None,
            None,
        )
        assert (record.reused_previous_result, record.results_expired_at) == (None, None)
    finally:
        await store.close()


async def test_the_cache_index_gains_the_time_of_the_results(db_url: str) -> None:
    await upgrade_to(db_url, "0005")
    store = await Store.connect(db_url, maxsize=2)
    try:
        record = await store.create(
            "00000000-0000-4000-8000-000000000006",
            "SELECT 6",
            "default",
            "primary",
            "submitted",
            owner="reports",
            options=SubmitOptions(cache_key="c" * 64),
        )
        change = await store.create_schema()
        assert change.steps[0] == (
            "applied revision 0006: The cache index ends with the time of the results: a"
            " lookup reads only young ones."
        )
        assert await schema_differences(db_url) == []
        engine = await open_engine(db_url, 1)
        try:
            async with engine.connect() as conn:
                indexes = await conn.run_sync(lambda sync: inspect(sync).get_indexes("queries"))
        finally:
            await engine.dispose()
        [cache] = [index for index in indexes if index["name"] == "queries_cache"]
        assert cache["column_names"] == ["owner", "cache_key", "state", "results_at"]
        assert await store.get(record.id) == record
        assert await store.cached("reports", "c" * 64, datetime(2026, 1, 1)) == record
    finally:
        await store.close()


async def test_queries_of_the_release_before_webhooks_keep_their_rows_and_deliver_from_then_on(
    db_url: str,
) -> None:
    await upgrade_to(db_url, "0006")
    submitted = datetime(2026, 12, 6, 10, 0, 0, 111111)
    url = "https://hooks.example.com/athenaq"
    engine = await open_engine(db_url, 1)
    try:
        async with engine.begin() as conn:
            # The columns of revision 0006: a finished query with a callback_url (never
            # delivered: no release sent webhooks) and an unfinished one.
            for n, state in enumerate(("SUCCEEDED", "RUNNING")):
                await conn.execute(
                    insert(queries),
                    {
                        "id": f"00000000-0000-4000-8000-00000000000{n + 7}",
                        "query_text": f"SELECT {n}",
                        "database_name": "default",
                        "workgroup": "primary",
                        "state": state,
                        "athena_execution_id": f"e-{n}",
                        "submitted_at": submitted,
                        "version": 2,
                        "updated_at": submitted,
                        "owner": "reports",
                        "admitted_at": submitted,
                        "callback_url": url,
                    },
                )
    finally:
        await engine.dispose()
    store = await Store.connect(db_url, maxsize=2)
    try:
        change = await store.create_schema()
        assert change.steps == (
            "applied revision 0007: Webhook deliveries: one per finished run of a query with"
            " a callback URL.",
        )
        assert await schema_differences(db_url) == []
        finished = await store.get("00000000-0000-4000-8000-000000000007")
        running = await store.get("00000000-0000-4000-8000-000000000008")
        assert finished is not None and running is not None
        assert (finished.state, finished.version, finished.callback_url) == (
            QueryState.SUCCEEDED,
            2,
            url,
        )
        # Nothing to deliver for what finished before the upgrade.
        assert await store.delivery(finished.id, 1) is None
        assert await store.take_deliveries("me", 30, 10) == []
        # A run that finishes after it gets its delivery with the move.
        callback = Callback(running.id, 1, QueryState.FAILED, url, '{"state": "FAILED"}')
        assert await store.transition(
            running, QueryState.FAILED, "failed", {}, by="poller", callback=callback
        )
        [taken] = await store.take_deliveries("me", 30, 10)
        assert (taken.query_id, taken.run, taken.state, taken.url, taken.body) == (
            running.id,
            1,
            QueryState.FAILED,
            url,
            '{"state": "FAILED"}',
        )
    finally:
        await store.close()


@pytest.mark.parametrize("database", ["empty", "release"])
async def test_processes_starting_together_make_or_adopt_the_schema_once(
    db_url: str, tmp_path: Path, database: str
) -> None:
    if database == "release":
        await load_release_database(db_url)
    _, path = release_config(db_url, tmp_path)
    runs = await asyncio.gather(*(athenaq("migrate", "--config", str(path)) for _ in range(4)))
    assert [code for code, _, _ in runs] == [0] * 4, runs
    (did,) = [out for _, out, _ in runs if out != nothing_to_do()]
    assert ("created the schema" if database == "empty" else "adopted") in did
    assert await schema_differences(db_url) == []
