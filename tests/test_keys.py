"""API keys: who may call which endpoint, whose queries each key sees, revocation across
processes, and that no key is ever written down. Over HTTP to the real service with
`auth.mode: api_keys`, on the database under test."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from athenaq.app import Service
from athenaq.config import Config
from athenaq.identity import (
    ADMIN,
    CANCEL,
    METRICS,
    READ,
    SUBMIT,
    key_hash,
)
from athenaq.main import main
from athenaq.store import Store
from tests.conftest import Client, body, config_with, make_key, with_keys
from tests.served import served, served_config

StartService = Callable[..., Awaitable[Service]]
RUNNING_SQL = 'SELECT 1 -- double: {"hold": true}'
DONE_SQL = 'SELECT 1 -- double: {"rows": [["1"]], "columns": [["x", "integer"]]}'


def code(response: Any) -> tuple[int, str | None]:
    document = body(response)
    return response.code, document.get("error", {}).get("code")


async def test_without_a_good_key_every_query_endpoint_answers_401(
    config: Config, start_service: StartService, keys_store: Store
) -> None:
    service = await start_service(with_keys(config))
    revoked = await make_key(keys_store, "gone")
    assert await keys_store.revoke_key("gone")
    query = "/query/00000000-0000-4000-8000-000000000000"
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer aq_not-a-key-anyone-made"},
        {"Authorization": f"Bearer {revoked}"},
    ):
        client = Client(service.url)
        for method, path in [
            ("POST", "/query"),
            ("GET", f"{query}/status"),
            ("GET", f"{query}/results"),
            ("POST", f"{query}/refresh"),
            ("POST", f"{query}/cancel"),
        ]:
            response = await client.request(
                method, path, {"query": "SELECT 1"} if path == "/query" else None, headers=headers
            )
            assert code(response) == (401, "unauthorized"), (headers, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), path
        # Liveness stays open.
        assert (await client.request("GET", "/health", headers=headers)).code == 200


async def test_each_scope_opens_its_endpoints_and_ownership_hides_others_queries(
    config: Config, start_service: StartService, keys_store: Store, double: Any
) -> None:
    service = await start_service(with_keys(config))
    keys = {
        "owner": await make_key(keys_store, "owner"),
        "other": await make_key(keys_store, "other"),
        "reader": await make_key(keys_store, "reader", frozenset({READ})),
        "submitter": await make_key(keys_store, "submitter", frozenset({SUBMIT})),
        "canceller": await make_key(keys_store, "canceller", frozenset({CANCEL})),
        "metrics": await make_key(keys_store, "metrics", frozenset({METRICS})),
        "admin-only": await make_key(keys_store, "admin-only", frozenset({ADMIN})),
        "admin": await make_key(keys_store, "admin", frozenset({ADMIN, READ, SUBMIT, CANCEL})),
    }
    owner = Client(service.url, key=keys["owner"])
    done = await owner.submit(DONE_SQL)
    await owner.wait_state(done, "SUCCEEDED")
    held = await owner.submit(RUNNING_SQL)
    await owner.wait_state(held, "RUNNING")
    assert (await owner.status(done))["owner"] == "owner"

    # (status of the finished query, its page, its CSV, refresh of the running one,
    # cancel of the finished one, a submit): each key's answer. Refresh of a running
    # query and cancel of a finished one answer 409 to whoever may see them, and change
    # nothing, so the table can be asked in any order.
    forbidden, hidden = (403, "forbidden"), (404, "not_found")
    seen = [(200, None), (200, None), (200, None), (409, "query_running"), (409, "query_finished")]
    expected = {
        "owner": [*seen, (202, None)],
        "other": [hidden, hidden, hidden, hidden, hidden, (202, None)],
        "reader": [hidden, hidden, hidden, forbidden, forbidden, forbidden],
        "submitter": [forbidden, forbidden, forbidden, hidden, forbidden, (202, None)],
        "canceller": [forbidden, forbidden, forbidden, forbidden, hidden, forbidden],
        "metrics": [forbidden] * 6,
        "admin-only": [forbidden] * 6,
        "admin": [*seen, (202, None)],
    }
    for name, answers in expected.items():
        client = Client(service.url, key=keys[name])
        got = []
        for method, path in [
            ("GET", f"/query/{done}/status"),
            ("GET", f"/query/{done}/results"),
            ("GET", f"/query/{done}/results?format=csv"),
            ("POST", f"/query/{held}/refresh"),
            ("POST", f"/query/{done}/cancel"),
        ]:
            response = await client.request(method, path)
            got.append((response.code, None) if response.code == 200 else code(response))
        response = await client.request("POST", "/query", {"query": "SELECT 1"})
        got.append(code(response) if response.code != 202 else (202, None))
        assert got == answers, name
    message = body(
        await Client(service.url, key=keys["reader"]).request("POST", "/query", {"query": "x"})
    )["error"]["message"]
    assert message == "this key lacks the scope query:submit"


async def test_a_revoke_on_one_process_refuses_the_key_at_once_on_another(
    config: Config,
    double: Any,
    db_url: str,
    tmp_path: Path,
    start_service: StartService,
    keys_store: Store,
) -> None:
    # Process A serves in this test's process; process B is the athenaq command.
    first = await start_service(with_keys(config))
    document = served_config(db_url, double.url)
    document["auth"] = {"mode": "api_keys"}
    with served(tmp_path, document) as second:
        key = await make_key(keys_store, "team")
        on_first = Client(first.url, key=key)
        on_second = Client(second.url, key=key)
        await second.serving()
        query_id = await on_first.submit("SELECT 1")
        assert (await on_second.status(query_id))["owner"] == "team"

        status, out, _ = await run_main(
            "keys", "revoke", "--config", str(second.config_path), "team"
        )
        assert (status, out) == (0, "revoked team\n")

        for client in (on_first, on_second):
            response = await client.request("GET", f"/query/{query_id}/status")
            assert code(response) == (401, "unauthorized")
            assert body(response)["error"]["message"] == "the API key was revoked"


async def test_transitions_record_who_caused_them(
    config: Config, start_service: StartService, keys_store: Store, double: Any
) -> None:
    service = await start_service(with_keys(config))
    alice = Client(service.url, key=await make_key(keys_store, "alice"))
    admin = Client(
        service.url, key=await make_key(keys_store, "root", frozenset({ADMIN, READ, CANCEL}))
    )
    query_id = await alice.submit(RUNNING_SQL)
    await alice.wait_state(query_id, "RUNNING")
    await admin.cancel(query_id)
    history = await keys_store.history(query_id)
    # The cancel holds the query's lock from the stop to its record: the poller cannot
    # record Athena's CANCELLED in between.
    assert [(t.to_state.value, t.by) for t in history] == [
        ("QUEUED", "alice"),
        ("RUNNING", "poller"),
        ("CANCELLED", "root"),
    ]
    # The admin sees alice's query; the status says whose it is.
    assert (await admin.status(query_id))["owner"] == "alice"


async def test_no_key_is_in_the_database_or_the_logs(
    config: Config,
    double: Any,
    start_service: StartService,
    keys_store: Store,
    db_url: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from athenaq.logs import setup_logging

    setup_logging()
    service = await start_service(with_keys(config))
    key = await make_key(keys_store, "secretive")
    client = Client(service.url, key=key)
    query_id = await client.submit(DONE_SQL)
    await client.wait_state(query_id, "SUCCEEDED")
    await client.request(
        "GET", f"/query/{query_id}/status", headers={"Authorization": "Bearer " + key + "x"}
    )
    await service.stop()
    logged = capfd.readouterr()
    lines = [json.loads(line) for line in logged.err.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["message"] == "request"]
    assert {line.get("user") for line in requests} >= {"secretive"}
    assert key not in logged.err and key not in logged.out
    assert key[3:20] not in logged.err
    dump = await database_text(keys_store)
    assert key not in dump and key[3:20] not in dump
    assert key_hash(key) in dump  # what is kept instead


async def database_text(store: Store) -> str:
    """Every row of every table, as text."""
    from sqlalchemy import select

    from athenaq.store.tables import metadata

    def read(conn: Any) -> str:
        return "\n".join(
            repr(tuple(row))
            for table in metadata.sorted_tables
            for row in conn.execute(select(table))
        )

    async with store._engine.connect() as conn:
        return await conn.run_sync(read)


async def run_main(*argv: str) -> tuple[int, str, str]:
    """`athenaq` in this process (in a thread, as it runs its own event loop). Its stderr
    is this process's for that time: it may hold other lines logged meanwhile."""
    import io

    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(list(argv))

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def test_athenaq_keys_create_list_and_revoke(
    db_url: str, tmp_path: Path, config: Config, start_service: StartService
) -> None:
    path = tmp_path / "config.json"
    document = config_with("database.url", db_url)
    document["sql"] = {"default_statements": ["SELECT", "WITH"]}
    path.write_text(json.dumps(document))
    keys = ["keys"]

    status, key, said = await run_main(
        *keys, "create", "--config", str(path), "--name", "bi", "--database", "sales",
        "--max-running", "3", "--scope", "query:read", "--scope", "query:submit",
    )  # fmt: skip

    assert status == 0, said
    key = key.strip()
    assert key.startswith("aq_") and len(key) >= 3 + 43
    assert "shown this once" in said
    status, listing, _ = await run_main(*keys, "list", "--config", str(path))
    assert status == 0
    header, row = listing.splitlines()
    assert header.split() == [
        "NAME", "SCOPES", "DATABASES", "WORKGROUPS", "STATEMENTS", "MAX_RUNNING",
        "DAILY_SCAN_BYTES", "CREATED", "REVOKED",
    ]  # fmt: skip
    assert row.split()[:7] == [
        "bi",
        "query:read,query:submit",
        "sales",
        "any",
        "SELECT,WITH",
        "3",
        "-",
    ]
    assert key not in listing and key_hash(key) not in listing
    service = await start_service(with_keys(config))
    client = Client(service.url, key=key)
    response = await client.request("POST", "/query", {"query": "SELECT 1"})
    assert code(response) == (403, "forbidden")
    assert body(response)["error"]["message"] == "this key may not query the database 'default'"

    assert (await run_main(*keys, "revoke", "--config", str(path), "bi"))[:2] == (0, "revoked bi\n")

    assert code(await client.request("GET", "/query/x/status"))[0] == 401
    status, listing, _ = await run_main(*keys, "list", "--config", str(path))
    assert listing.splitlines()[1].split()[-1] != "-"  # revoked at


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--name", "anonymous"], "athenaq keys: --name 'anonymous' is reserved\n"),
        (["--name", "poller"], "athenaq keys: --name 'poller' is reserved\n"),
        (["--name", "a b"], "athenaq keys: --name must be 1 to 64 of A-Z a-z 0-9 _ . @ - and"
         " start with a letter or digit\n"),
        (["--name", "x" * 65], "athenaq keys: --name must be 1 to 64"),
        (["--name", "ok", "--max-running", "0"], "athenaq keys: --max-running must be 1 or more\n"),
        (["--name", "ok", "--daily-scan-bytes", "-5"], "athenaq keys: --daily-scan-bytes must be"),
        (["--name", "ok", "--statements", " , "], "athenaq keys: --statements names no kind\n"),
        (["--name", "ok", "--statements", "SELECT,Bogus"], "athenaq keys: --statements: not a"
         " statement kind: BOGUS (the kinds: ALTER,CREATE,"),
        (["--name", "ok", "--database", " "], "athenaq keys: --database must not be empty\n"),
        (["--name", "taken"], "athenaq keys: a key named 'taken' exists or existed"),
    ],
)  # fmt: skip
async def test_athenaq_keys_create_refuses_what_it_cannot_make(
    db_url: str, tmp_path: Path, keys_store: Store, arguments: list[str], message: str
) -> None:
    await make_key(keys_store, "taken")
    assert await keys_store.revoke_key("taken")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_with("database.url", db_url)))

    status, out, err = await run_main("keys", "create", "--config", str(path), *arguments)

    assert (status, out) == (1, "")
    # Its own line: the service of another test may log to the same stderr meanwhile.
    assert any(line.startswith(message.rstrip("\n")) for line in err.splitlines()), err
    assert [key.name for key in await keys_store.list_keys()] == ["taken"]


async def test_athenaq_keys_revoke_of_an_unknown_name_fails(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_with("database.url", db_url)))
    status, out, err = await run_main("keys", "revoke", "--config", str(path), "nobody")
    assert (status, out) == (1, "")
    # The last line: making the schema of a new database may log a driver warning first.
    assert err.splitlines()[-1] == "athenaq keys: no unrevoked key is named 'nobody'"


async def test_a_key_limited_to_statement_kinds_submits_only_those(
    config: Config, double: Any, start_service: StartService, keys_store: Store
) -> None:
    service = await start_service(with_keys(config))
    reader = Client(
        service.url, key=await make_key(keys_store, "reader", statements=frozenset({"SELECT"}))
    )
    anything = Client(service.url, key=await make_key(keys_store, "anything"))
    refused = {
        "INSERT INTO t SELECT 1": "INSERT statements are not allowed for this key",
        "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a": "INSERT statements are not",
        "-- just a read\nDROP TABLE t": "DROP statements are not allowed",
        "SELECT 1; DROP TABLE t": "the SQL holds 2 statements",
        "SELEKT 1 FROM": "the SQL could not be read",
    }
    for sql, message in refused.items():
        response = await reader.request("POST", "/query", {"query": sql})
        assert code(response) == (403, "statement_not_allowed"), sql
        assert body(response)["error"]["message"].startswith(message), sql
    assert await keys_store.unfinished() == []

    # A read passes, its comments and strings count for nothing.
    done = await reader.submit("SELECT 'x; DROP TABLE t' -- ; DROP TABLE t")
    await reader.wait_state(done, "SUCCEEDED")
    # A key without a list sends any text to Athena, which answers for it.
    failed = await anything.submit('SELEKT 1 FROM -- double: {"fail": "syntax error"}')
    assert (await anything.wait_state(failed, "FAILED"))["state_reason"] == "syntax error"
