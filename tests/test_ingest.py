"""Results ingested from the result object in S3, and the fall back to GetQueryResults,
through a running service over HTTP: the double (its Athena and S3 endpoint, whatever
ATHENAQ_TEST_ATHENA says, since these tests ask for it) scripts what S3 answers; the
local engine runs real SQL and serves real result objects. Every result here takes the S3
path, however small (`results.first_page_rows` 0): a result stored from its first
GetQueryResults page alone has its own tests (test_first_page.py)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from athenaq.app import Service
from athenaq.config import Config, S3Config
from athenaq.local import LocalEngine
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_config

StartService = Callable[[Config], Awaitable[Service]]

# A value over 10 MB of UTF-8 that puts a quote, a comma, a newline and multi-byte
# characters across every 1 MiB chunk boundary of the object.
BIG_UNIT = 'é,"\n🎉x'
BIG_TIMES = 1_100_000
TRICKY_ROWS: list[list[Any]] = [
    ["1", None],
    ["2", ""],
    ["3", 'say "hi"'],
    ["4", "a,b,c"],
    ["5", "line 1\nline 2\r\nline 3"],
    ["6", "é 中文 🎉"],
    ["7", '""'],
    ["8", ","],
    [None, "\n"],
    ["10", {"repeat": BIG_UNIT, "times": BIG_TIMES}],
]
TRICKY_EXPECTED = [["10", BIG_UNIT * BIG_TIMES] if row[0] == "10" else row for row in TRICKY_ROWS]
TRICKY_COLUMNS = [{"name": "n", "type": "integer"}, {"name": "s", "type": "varchar"}]


def from_s3(config: Config) -> Config:
    """`config`, with every result read from S3 (or its fall back), however small."""
    return dataclasses.replace(
        config, results=dataclasses.replace(config.results, first_page_rows=0)
    )


@pytest.fixture
def config(config: Config) -> Config:
    return from_s3(config)


def scripted(**script: Any) -> str:
    return f"SELECT 1 -- double: {json.dumps(script)}"


def generated_row(i: int) -> list[str | None]:
    """Row i of the double's `generate` result."""
    return [str(i), f"row {i}", None if i % 3 == 0 else ("" if i % 3 == 1 else "x")]


async def finished(client: Client, query_id: str) -> dict[str, Any]:
    status = await client.wait_state(query_id, "SUCCEEDED", "FAILED", "CANCELLED")
    assert status["state"] == "SUCCEEDED", status
    return status


async def results(client: Client, query_id: str) -> dict[str, Any]:
    response = await client.request("GET", f"/query/{query_id}/results")
    assert response.code == 200, response.body[:500]
    document: dict[str, Any] = body(response)
    return document


@pytest.mark.parametrize(
    ("s3", "source"), [(None, "s3"), ("denied", "api")], ids=["from-s3", "from-api"]
)
async def test_tricky_values_survive_either_path(
    client: Client, double: AthenaDouble, s3: str | None, source: str
) -> None:
    script: dict[str, Any] = {"columns": [["n", "integer"], ["s", "varchar"]], "rows": TRICKY_ROWS}
    if s3:
        script["s3"] = s3
    query_id = await client.submit(scripted(**script))
    status = await finished(client, query_id)
    assert status["results_source"] == source
    assert status["row_count"] == len(TRICKY_EXPECTED)
    document = await results(client, query_id)
    assert document["columns"] == TRICKY_COLUMNS
    assert document["rows"] == TRICKY_EXPECTED
    calls = double.calls()
    assert calls["GetObject"] == 1
    # From S3, GetQueryResults is asked only for the column types (one row).
    assert (calls["GetQueryResults"] == 1) == (source == "s3")


@pytest.mark.parametrize("s3", ["denied", "missing", "malformed"])
async def test_an_unreadable_object_falls_back_to_get_query_results(
    client: Client, double: AthenaDouble, s3: str
) -> None:
    # Over two pages of the S3 path: a cut-off object is seen only after rows were
    # written, so the write must start again from scratch.
    rows = 12_000
    query_id = await client.submit(scripted(generate=rows, s3=s3))
    status = await finished(client, query_id)
    assert status["results_source"] == "api"
    assert status["row_count"] == rows
    document = await results(client, query_id)
    assert document["columns"] == [
        {"name": "n", "type": "integer"},
        {"name": "label", "type": "varchar"},
        {"name": "maybe", "type": "varchar"},
    ]
    page = document["rows"]
    assert page and page == [generated_row(i) for i in range(len(page))]
    assert double.calls()["GetObject"] == 1


async def test_a_large_result_from_s3_is_whole_and_in_order(
    client: Client, double: AthenaDouble
) -> None:
    rows = 12_345
    query_id = await client.submit(scripted(generate=rows))
    status = await finished(client, query_id)
    assert (status["results_source"], status["row_count"]) == ("s3", rows)
    page = (await results(client, query_id))["rows"]
    assert page and page == [generated_row(i) for i in range(len(page))]
    assert double.calls()["GetQueryResults"] == 1


async def test_a_zero_row_result_from_s3(client: Client, double: AthenaDouble) -> None:
    query_id = await client.submit(scripted(columns=[["n", "integer"]], rows=[]))
    status = await finished(client, query_id)
    assert (status["results_source"], status["row_count"]) == ("s3", 0)
    document = await results(client, query_id)
    assert document["columns"] == [{"name": "n", "type": "integer"}]
    assert document["rows"] == []


async def test_refresh_clears_the_results_source(client: Client, double: AthenaDouble) -> None:
    query_id = await client.submit(scripted(hold=True))
    first = await client.wait_state(query_id, "RUNNING")
    assert first["results_source"] is None
    double.release(first["athena_query_execution_id"])
    assert (await finished(client, query_id))["results_source"] == "s3"

    response = await client.request("POST", f"/query/{query_id}/refresh")
    assert response.code == 202, response.body
    refreshed = await client.status(query_id)
    assert refreshed["state"] in ("QUEUED", "RUNNING")
    assert refreshed["results_source"] is None and refreshed["row_count"] is None

    second = await client.wait_state(query_id, "RUNNING")
    double.release(second["athena_query_execution_id"])
    assert (await finished(client, query_id))["results_source"] == "s3"


# -- real SQL on the local engine -------------------------------------------------------

TRICKY_SQL = (
    "SELECT * FROM (VALUES"
    " (1, NULL::VARCHAR), (2, ''), (3, 'say \"hi\"'), (4, 'a,b,c'),"
    " (5, 'line 1' || chr(10) || 'line 2' || chr(13) || chr(10) || 'line 3'),"
    " (6, 'é 中文 🎉'), (7, '\"\"'), (8, ','), (NULL, chr(10)),"
    f" (10, repeat('é,\"' || chr(10) || '🎉x', {BIG_TIMES}))"
    ") t(n, s) ORDER BY n NULLS LAST"
)
TRICKY_SQL_EXPECTED = [TRICKY_EXPECTED[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 8)]


@pytest.fixture
async def engine(tmp_path: Path) -> Any:
    local = LocalEngine(tmp_path / "engine")
    await local.start()
    yield local
    await local.stop()


@pytest.mark.parametrize("source", ["s3", "api"])
async def test_real_sql_round_trip_either_path(
    engine: LocalEngine,
    double: AthenaDouble,
    db_url: str,
    tmp_path: Path,
    start_service: StartService,
    source: str,
) -> None:
    config = from_s3(make_config(db_url, engine.url, tmp_path / "results"))
    if source == "api":
        # An S3 endpoint that has no such object: the service must read through Athena.
        config = dataclasses.replace(config, s3=S3Config(endpoint_url=double.url))
    client = Client((await start_service(config)).url)
    query_id = await client.submit(TRICKY_SQL)
    status = await finished(client, query_id)
    assert status["results_source"] == source
    document = await results(client, query_id)
    assert [c["name"] for c in document["columns"]] == ["n", "s"]
    assert document["rows"] == TRICKY_SQL_EXPECTED


async def test_real_sql_zero_rows_from_s3(
    engine: LocalEngine, db_url: str, tmp_path: Path, start_service: StartService
) -> None:
    config = from_s3(make_config(db_url, engine.url, tmp_path / "results"))
    client = Client((await start_service(config)).url)
    query_id = await client.submit("SELECT 1 AS n WHERE false")
    status = await finished(client, query_id)
    assert (status["results_source"], status["row_count"]) == ("s3", 0)
    assert (await results(client, query_id))["rows"] == []
