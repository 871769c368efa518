"""Fixtures that build upward: database -> Athena endpoint -> config -> running service -> fetch.

The store under test is named by ATHENAQ_TEST_DB_URL: the real MariaDB/MySQL server
(default: root on 127.0.0.1:3306), where each test gets a database of its own, made
and dropped here, or `sqlite://`, a SQLite file per test. A server that cannot be
reached fails the run, never skips.

The service's Athena endpoint is named by ATHENAQ_TEST_ATHENA: `double` (default), the
project's scripted endpoint, or `local`, the DuckDB engine of athenaq.local. A test that
asks for the `double` fixture always gets the double: it scripts what DuckDB cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import os
import random
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncmy
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from athenaq.app import Service
from athenaq.config import AuthConfig, Config, parse_config
from athenaq.identity import DEFAULT_SCOPES, Caller, key_hash, new_key
from athenaq.local import LocalEngine
from athenaq.logs import setup_logging
from athenaq.store import Store
from athenaq.store.tables import metadata
from tests.athena_double import AthenaDouble

# A config file as v1 wrote them: every key then required, none of the later optional ones.
V1_CONFIG: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 8080},
    "database": {"url": "mysql://root@127.0.0.1:3306/athenaq"},
    "athena": {
        "region": "us-east-1",
        "database": "default",
        "workgroup": "primary",
        "output_location": "s3://bucket/prefix/",
        "endpoint_url": None,
    },
    "s3": {"endpoint_url": None},
    "results": {"dir": "results"},
    "poller": {"interval_seconds": 1.0},
}
DELETE = object()


def config_with(path: str, value: Any) -> dict[str, Any]:
    """V1_CONFIG with the key at dotted `path` set to `value` (removed for DELETE)."""
    config: dict[str, Any] = json.loads(json.dumps(V1_CONFIG))
    *parents, key = path.split(".")
    section = config
    for parent in parents:
        section = section[parent]
    if value is DELETE:
        del section[key]
    else:
        section[key] = value
    return config


# Ports for servers a test starts in another process, below Linux's ephemeral range
# (32768 and up): a port the kernel handed out would be free again once this function
# closed its socket, and any connection made before the server binds it (the suites of
# a parallel CI make thousands) could take it as its own source port meanwhile.
_TEST_PORTS = range(20_000, 32_768)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for a server the test starts itself)."""
    for port in random.sample(_TEST_PORTS, 100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found among 100 tried")


DEFAULT_DB_URL = "mysql://root:@127.0.0.1:3306/athenaq_test"
POLL_SECONDS = 0.02

# The service's clients take credentials from the standard chain; any will do here.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


async def wait_for(
    condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
) -> Any:
    """Poll `condition` (plain or async) until it gives something truthy; fail after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


def _admin_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
    }


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "store: uses the store under test, so ATHENAQ_TEST_DB_URL can change it"
    )
    config.addinivalue_line(
        "markers", "empty_database: db_url is a database with no schema (a SQLite file not made)"
    )
    config.addinivalue_line(
        "markers", "endpoint: its Athena endpoint is the one ATHENAQ_TEST_ATHENA chooses"
    )
    config.addinivalue_line(
        "markers",
        "earlier_release_queries(*ids): queries an earlier release wrote, whose times the "
        "check of every query a test leaves (db_url) takes as that release gave them",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what the matrix's factors switch under it, from the fixtures it
    uses, so that a factor's environment runs only the tests it can change (tox.ini)."""
    for item in items:
        used = getattr(item, "fixturenames", ())
        if "db_url" in used:
            item.add_marker(pytest.mark.store)
        # athena_url gives the double whatever the variable says when the test asks for it.
        if "athena_url" in used and "double" not in used:
            item.add_marker(pytest.mark.endpoint)


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """ATHENAQ_TEST_SHARD=K/N keeps every Nth test of those selected, from the Kth, so N
    environments run one suite in parallel (tox.ini). Taken one in N rather than file by
    file, each shard gets a like share of every file's slow tests. After `-m` (trylast):
    the shards split what the environment selected."""
    shard = os.environ.get("ATHENAQ_TEST_SHARD")
    if not shard:
        return
    index, _, count = shard.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise pytest.UsageError(f"ATHENAQ_TEST_SHARD={shard!r}: expected K/N, 1 <= K <= N")
    kept = items[int(index) - 1 :: int(count)]
    taken = set(kept)
    config.hook.pytest_deselected(items=[item for item in items if item not in taken])
    items[:] = kept


@pytest.fixture(scope="session", autouse=True)
def json_logs() -> None:
    """The service's own log format, also in the output of failed tests."""
    setup_logging(level="DEBUG")


# Databases at the newest schema that a finished test left, emptied by the next one to
# take them: making and migrating a database costs about ten times more than emptying it.
_FREE_DATABASES: list[str] = []
_SQLITE_TEMPLATE: list[Path] = []

# A query's times in the order of its life: each one set is no earlier than the one set
# before it, whatever the clocks of Athena and athenaq say. Every query a test leaves in
# its database is checked (db_url), so a test that makes one out of order fails.
QUERY_TIMES = ("submitted_at", "started_at", "completed_at", "results_at")
_QUERY_TIMES_SQL = f"SELECT id, state, {', '.join(QUERY_TIMES)} FROM {{table}} ORDER BY id"


def times_out_of_order(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """A line for each query of `rows` (id, state and QUERY_TIMES) whose times break
    the order of its life."""
    bad = []
    for row in rows:
        times = [(name, row[name]) for name in QUERY_TIMES if row[name] is not None]
        for (earlier, before), (later, after) in itertools.pairwise(times):
            if after < before:
                bad.append(f"{row['id']} {row['state']}: {later} {after} < {earlier} {before}")
    return bad


def _sqlite_query_times(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        try:
            rows = conn.execute(_QUERY_TIMES_SQL.format(table="queries")).fetchall()
        except sqlite3.OperationalError:  # no schema (yet), or not this one
            return []
    fields = ("id", "state", *QUERY_TIMES)
    return [
        {
            name: datetime.fromisoformat(value) if name in QUERY_TIMES and value else value
            for name, value in zip(fields, row, strict=True)
        }
        for row in rows
    ]


async def _mysql_query_times(admin: asyncmy.Connection, name: str) -> list[dict[str, Any]]:
    async with admin.cursor() as cur:
        try:
            await cur.execute(_QUERY_TIMES_SQL.format(table=f"`{name}`.`queries`"))
        except asyncmy.errors.ProgrammingError:  # no schema (yet)
            return []
        rows = await cur.fetchall()
    await admin.commit()
    fields = ("id", "state", *QUERY_TIMES)
    return [dict(zip(fields, row, strict=True)) for row in rows]


def _check_times(request: pytest.FixtureRequest, rows: list[dict[str, Any]]) -> str | None:
    marker = request.node.get_closest_marker("earlier_release_queries")
    foreign = frozenset(marker.args if marker else ())
    bad = times_out_of_order(row for row in rows if row["id"] not in foreign)
    return f"queries with times out of order: {bad}" if bad else None


def assert_times_add_up(execution: Mapping[str, Any]) -> None:
    """An Athena endpoint's figures for a finished execution agree, as Athena's do: the
    time queued and the time run make the total, and the completion is the submission
    plus the total (to the millisecond), so the start a client takes from them (the
    submission plus the time queued) is never after the completion."""
    status, stats = execution["Status"], execution["Statistics"]
    queued = stats["QueryQueueTimeInMillis"]
    ran = stats["EngineExecutionTimeInMillis"]
    total = stats["TotalExecutionTimeInMillis"]
    assert queued >= 0 and ran >= 0 and queued + ran == total, stats
    took = status["CompletionDateTime"] - status["SubmissionDateTime"]
    assert abs(took - timedelta(milliseconds=total)) < timedelta(milliseconds=1), (took, total)


async def _empty_tables(admin: asyncmy.Connection, name: str) -> None:
    async with admin.cursor() as cur:
        for table in reversed(metadata.sorted_tables):
            await cur.execute(f"DELETE FROM `{name}`.`{table.name}`")
    await admin.commit()


async def _at_head(url: str) -> bool:
    store = await Store.connect(url, maxsize=1)
    try:
        await store.check_schema()
    except Exception:
        return False
    else:
        return True
    finally:
        await store.close()


async def _migrated(url: str) -> None:
    store = await Store.connect(url, maxsize=1)
    try:
        await store.create_schema()
    finally:
        await store.close()


@pytest.fixture(scope="session")
def _databases_dropped_at_exit() -> Iterator[None]:
    yield
    base = os.environ.get("ATHENAQ_TEST_DB_URL", DEFAULT_DB_URL)
    if base.startswith("sqlite") or not _FREE_DATABASES:
        return

    async def drop_all() -> None:
        admin = await asyncmy.connect(**_admin_params(base), connect_timeout=5)
        try:
            async with admin.cursor() as cur:
                for name in _FREE_DATABASES:
                    await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            await admin.ensure_closed()

    asyncio.run(drop_all())
    _FREE_DATABASES.clear()


@pytest.fixture
async def db_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _databases_dropped_at_exit: None,
) -> AsyncIterator[str]:
    """A database of the test's own on the test server, empty and at the newest schema;
    or, when ATHENAQ_TEST_DB_URL starts with sqlite, a SQLite file under tmp_path.

    A test marked `empty_database` gets one with no schema at all (a SQLite file not made
    yet), dropped after it. Any other is handed to a later test, emptied, unless the test
    left it at another revision."""
    base = os.environ.get("ATHENAQ_TEST_DB_URL", DEFAULT_DB_URL)
    empty = request.node.get_closest_marker("empty_database") is not None
    if base.startswith("sqlite"):
        path = tmp_path / "athenaq.db"
        if not empty:
            if not _SQLITE_TEMPLATE:
                template = tmp_path_factory.mktemp("sqlite-template") / "athenaq.db"
                await _migrated(f"sqlite:///{quote(str(template))}")
                _SQLITE_TEMPLATE.append(template)
            shutil.copyfile(_SQLITE_TEMPLATE[0], path)
        yield f"sqlite:///{quote(str(path))}"
        if failure := _check_times(request, _sqlite_query_times(path)):
            pytest.fail(failure)
        return
    parts = urlsplit(base)
    try:
        admin = await asyncmy.connect(**_admin_params(base), connect_timeout=5)
    except Exception as exc:
        pytest.fail(f"the test database server at {parts.hostname}:{parts.port} answers no: {exc}")
    try:
        if _FREE_DATABASES and not empty:
            name = _FREE_DATABASES.pop()
            await _empty_tables(admin, name)
        else:
            name = f"{parts.path.strip('/') or 'athenaq_test'}_{secrets.token_hex(4)}"
            async with admin.cursor() as cur:
                await cur.execute(f"CREATE DATABASE `{name}`")
            if not empty:
                await _migrated(urlunsplit(parts._replace(path=f"/{name}")))
        url = urlunsplit(parts._replace(path=f"/{name}"))
        yield url
        failure = _check_times(request, await _mysql_query_times(admin, name))
        if not empty and await _at_head(url):
            _FREE_DATABASES.append(name)
        else:
            async with admin.cursor() as cur:
                await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        if failure:
            pytest.fail(failure)
    finally:
        await admin.ensure_closed()


@pytest.fixture
def double() -> Iterator[AthenaDouble]:
    """The project's own Athena-compatible endpoint, scripted by the SQL it receives."""
    with AthenaDouble() as endpoint:
        yield endpoint


# CI runs three suites at once on two cores, where a store call can take seconds: past
# the service's 1.5 s deadline, a healthy test would see 503s. The tests of an outage
# give the service its real deadline themselves.
LOADED_STORE_TIMEOUT = 10.0


def make_config(
    db_url: str,
    endpoint_url: str,
    results_dir: Path,
    *,
    store_timeout: float = LOADED_STORE_TIMEOUT,
    **poller: Any,
) -> Config:
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "database": {"url": db_url, "timeout_seconds": store_timeout},
            "athena": {
                "region": "us-east-1",
                "database": "default",
                "workgroup": "primary",
                "output_location": "s3://athenaq-test/results/",
                "endpoint_url": endpoint_url,
            },
            "s3": {"endpoint_url": endpoint_url},
            "results": {"dir": str(results_dir)},
            "poller": {"interval_seconds": 0.05, **poller},
        }
    )


@pytest.fixture
async def athena_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of the Athena endpoint the service under test talks to."""
    endpoint = os.environ.get("ATHENAQ_TEST_ATHENA", "double")
    if endpoint not in ("double", "local"):
        pytest.fail(f"ATHENAQ_TEST_ATHENA must be double or local, not {endpoint!r}")
    if endpoint == "double" or "double" in request.fixturenames:
        double: AthenaDouble = request.getfixturevalue("double")
        yield double.url
        return
    engine = LocalEngine(tmp_path / "engine")
    yield await engine.start()
    await engine.stop()


@pytest.fixture
def config(db_url: str, athena_url: str, tmp_path: Path) -> Config:
    return make_config(db_url, athena_url, tmp_path / "results")


class Client:
    """HTTP to a running service; every answer's body decoded as JSON."""

    def __init__(self, base_url: str, *, key: str | None = None) -> None:
        self.base_url = base_url
        self.http = AsyncHTTPClient()
        # Sent with every request: the API key, when the service wants one.
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> HTTPResponse:
        headers = {**self.headers, **(headers or {})}
        if body is not None:
            raw = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **headers}
        if raw is None and method == "POST":
            raw = b""
        return await self.http.fetch(
            self.base_url + path,
            method=method,
            body=raw,
            headers=headers,
            raise_error=False,
            request_timeout=30,
            allow_nonstandard_methods=True,
        )

    async def submit(self, sql: str) -> str:
        response = await self.request("POST", "/query", {"query": sql})
        assert response.code == 202, response.body
        query_id: str = json.loads(response.body)["id"]
        return query_id

    async def status(self, query_id: str) -> dict[str, Any]:
        response = await self.request("GET", f"/query/{query_id}/status")
        assert response.code == 200, response.body
        status: dict[str, Any] = json.loads(response.body)
        return status

    async def cancel(self, query_id: str) -> dict[str, Any]:
        """Cancel, and wait for CANCELLED when Athena confirms the stop after a 202."""
        response = await self.request("POST", f"/query/{query_id}/cancel")
        assert response.code in (200, 202), response.body
        return await self.wait_state(query_id, "CANCELLED")

    async def wait_state(
        self, query_id: str, *states: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            status = await self.status(query_id)
            return status if status["state"] in states else None

        result: dict[str, Any] = await wait_for(reached, timeout, f"{query_id} in {states}")
        return result


def body(response: HTTPResponse) -> Any:
    return json.loads(response.body)


def held_submit(
    http: AsyncHTTPClient, url: str, release: asyncio.Event, headers: dict[str, str] | None = None
) -> asyncio.Future[HTTPResponse]:
    """A submit to the service at `url` whose body stops half-way until `release` is set:
    a request under way, counted in flight, for as long as the test wants."""

    async def body_held_until_release(write: Callable[[bytes], Awaitable[None]]) -> None:
        await write(b'{"query": "SELECT 1')
        await release.wait()
        await write(b'"}')

    return asyncio.ensure_future(
        http.fetch(
            url + "/query",
            method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
            body_producer=body_held_until_release,
            raise_error=False,
            request_timeout=30,
        )
    )


@pytest.fixture
async def start_service() -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Start services on free ports; every one still running is stopped after the test."""
    running: list[Service] = []

    async def start(config: Config, **options: Any) -> Service:
        service = Service(replace(config), **options)
        await service.start()
        running.append(service)
        return service

    yield start
    for service in running:
        await service.stop()


@pytest.fixture
async def service(config: Config, start_service: Callable[[Config], Awaitable[Service]]) -> Service:
    return await start_service(config)


@pytest.fixture
def client(service: Service) -> Client:
    return Client(service.url)


@pytest.fixture
async def store(db_url: str, service: Service) -> AsyncIterator[Store]:
    """A second connection to the service's database, for reading the history."""
    opened = await Store.connect(db_url, maxsize=2)
    yield opened
    await opened.close()


def with_keys(config: Config, **auth: Any) -> Config:
    """`config` with `auth.mode: api_keys` (and the other `auth` keys given)."""
    return replace(config, auth=AuthConfig(mode="api_keys", **auth))


@pytest.fixture
async def keys_store(db_url: str) -> AsyncIterator[Store]:
    """The database under test, at the newest schema, for making keys and reading back."""
    opened = await Store.connect(db_url, maxsize=2)
    await opened.create_schema()
    yield opened
    await opened.close()


async def make_key(
    store: Store, name: str, scopes: frozenset[str] = DEFAULT_SCOPES, **limits: Any
) -> str:
    """A new key named `name` in `store`, as `athenaq keys create` makes one."""
    key = new_key()
    await store.add_key(Caller(name, scopes, **limits), key_hash(key))
    return key
