"""athenaq-local through the real aiobotocore Athena and S3 clients, on real DuckDB SQL."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from athenaq.local import LocalEngine
from tests.conftest import assert_times_add_up, wait_for

# Far more rows than any machine counts within a test's lifetime: it runs until stopped.
LONG_SQL = "SELECT count(*) FROM range(20000000000000)"
FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
TRICKY_SQL = (
    "SELECT NULL::VARCHAR AS n, '' AS e, 'say \"hi\"' AS q, 'a,b' AS c, "
    "E'line1\\nline2' AS nl, 'héllo ☃ 😀' AS u, 42 AS i, true AS b, DATE '2024-01-02' AS d, "
    "TIMESTAMP '2024-01-02 03:04:05.678' AS ts, 1.5::DECIMAL(5, 2) AS dec"
)
TRICKY_CSV = (
    '"n","e","q","c","nl","u","i","b","d","ts","dec"\n'
    ',"","say ""hi""","a,b","line1\nline2","héllo ☃ 😀","42","true","2024-01-02",'
    '"2024-01-02 03:04:05.678","1.50"\n'
).encode()
TRICKY_ROW = [
    None,
    "",
    'say "hi"',
    "a,b",
    "line1\nline2",
    "héllo ☃ 😀",
    "42",
    "true",
    "2024-01-02",
    "2024-01-02 03:04:05.678",
    "1.50",
]


@pytest.fixture
def engine_options() -> dict[str, Any]:
    """Overridden by tests that need another engine (parametrize `engine_options`)."""
    return {"max_running": 64}


@pytest.fixture
async def engine(tmp_path: Path, engine_options: dict[str, Any]) -> AsyncIterator[LocalEngine]:
    local = LocalEngine(tmp_path / "data", **engine_options)
    await local.start()
    yield local
    await local.stop()


def client_options(url: str) -> dict[str, Any]:
    return {
        "region_name": "us-east-1",
        "endpoint_url": url,
        "aws_access_key_id": "x",
        "aws_secret_access_key": "x",
        "config": AioConfig(
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
            max_pool_connections=60,
        ),
    }


@pytest.fixture
async def athena(engine: LocalEngine) -> AsyncIterator[Any]:
    async with get_session().create_client("athena", **client_options(engine.url)) as client:
        yield client


@pytest.fixture
async def s3(engine: LocalEngine) -> AsyncIterator[Any]:
    async with get_session().create_client("s3", **client_options(engine.url)) as client:
        yield client


async def start(athena: Any, sql: str, **params: Any) -> str:
    response = await athena.start_query_execution(QueryString=sql, **params)
    query_id: str = response["QueryExecutionId"]
    return query_id


async def wait_state(
    athena: Any, query_id: str, states: frozenset[str] | set[str], timeout: float = 15
) -> dict[str, Any]:
    """The execution once its state is one of `states`; fails after `timeout` seconds."""

    async def reached() -> dict[str, Any] | None:
        response = await athena.get_query_execution(QueryExecutionId=query_id)
        execution: dict[str, Any] = response["QueryExecution"]
        return execution if execution["Status"]["State"] in states else None

    found: dict[str, Any] = await wait_for(reached, timeout, f"{query_id} in {states}")
    return found


async def run(athena: Any, sql: str, **params: Any) -> dict[str, Any]:
    return await wait_state(athena, await start(athena, sql, **params), FINAL)


def cells(page: dict[str, Any]) -> list[list[str | None]]:
    return [[d.get("VarCharValue") for d in row["Data"]] for row in page["ResultSet"]["Rows"]]


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


async def test_paging_2500_rows(athena: Any) -> None:
    execution = await run(
        athena,
        "SELECT i::INTEGER AS i, 'row ' || i AS label, "
        "CASE WHEN i % 3 = 0 THEN NULL ELSE i / 2 END AS half FROM range(2500) t(i) ORDER BY i",
    )
    assert execution["Status"]["State"] == "SUCCEEDED"
    pages, token = [], None
    while True:
        params = {"NextToken": token} if token else {}
        page = await athena.get_query_results(
            QueryExecutionId=execution["QueryExecutionId"], MaxResults=1000, **params
        )
        pages.append(page)
        token = page.get("NextToken")
        if token is None:
            break
    assert [len(p["ResultSet"]["Rows"]) for p in pages] == [1000, 1000, 501]
    info = pages[0]["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]
    assert [(c["Name"], c["Type"]) for c in info] == [
        ("i", "integer"),
        ("label", "varchar"),
        ("half", "double"),
    ]
    rows = [row for page in pages for row in cells(page)]
    assert rows[0] == ["i", "label", "half"]
    assert rows[1:] == [
        [str(i), f"row {i}", None if i % 3 == 0 else repr(i / 2)] for i in range(2500)
    ]


async def test_small_pages_and_a_bad_token(athena: Any) -> None:
    execution = await run(athena, "SELECT 'x' || i AS v FROM range(5) t(i) ORDER BY i")
    query_id = execution["QueryExecutionId"]
    first = await athena.get_query_results(QueryExecutionId=query_id, MaxResults=2)
    assert cells(first) == [["v"], ["x0"]]
    second = await athena.get_query_results(
        QueryExecutionId=query_id, MaxResults=4, NextToken=first["NextToken"]
    )
    assert cells(second) == [["x1"], ["x2"], ["x3"], ["x4"]]
    assert "NextToken" not in second
    with pytest.raises(ClientError) as caught:
        await athena.get_query_results(QueryExecutionId=query_id, NextToken="bm90IGEgdG9rZW4=")
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"


async def test_tricky_values_in_results_and_in_the_csv_object(athena: Any, s3: Any) -> None:
    execution = await run(athena, TRICKY_SQL)
    assert execution["Status"]["State"] == "SUCCEEDED"
    assert execution["Statistics"]["DataScannedInBytes"] == len(TRICKY_CSV)
    page = await athena.get_query_results(QueryExecutionId=execution["QueryExecutionId"])
    assert cells(page)[1] == TRICKY_ROW
    assert page["ResultSet"]["Rows"][1]["Data"][0] == {}  # NULL is an empty Datum
    info = page["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]
    assert [c["Type"] for c in info] == [
        "varchar",
        "varchar",
        "varchar",
        "varchar",
        "varchar",
        "varchar",
        "integer",
        "boolean",
        "date",
        "timestamp",
        "decimal",
    ]
    assert (info[-1]["Precision"], info[-1]["Scale"]) == (5, 2)

    bucket, key = split_s3_uri(execution["ResultConfiguration"]["OutputLocation"])
    assert key == f"results/{execution['QueryExecutionId']}.csv"
    whole = await s3.get_object(Bucket=bucket, Key=key)
    assert await whole["Body"].read() == TRICKY_CSV
    assert whole["ContentLength"] == len(TRICKY_CSV)
    assert whole["ContentType"] == "text/csv"

    part = await s3.get_object(Bucket=bucket, Key=key, Range="bytes=10-29")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 10-29/{len(TRICKY_CSV)}"
    assert await part["Body"].read() == TRICKY_CSV[10:30]
    tail = await s3.get_object(Bucket=bucket, Key=key, Range="bytes=-7")
    assert await tail["Body"].read() == TRICKY_CSV[-7:]

    head = await s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(TRICKY_CSV)
    assert head["ETag"] == whole["ETag"]
    assert head["LastModified"] == whole["LastModified"]


async def test_s3_errors(athena: Any, s3: Any) -> None:
    execution = await run(athena, "SELECT 1 AS one")
    bucket, key = split_s3_uri(execution["ResultConfiguration"]["OutputLocation"])
    with pytest.raises(s3.exceptions.NoSuchKey):
        await s3.get_object(Bucket=bucket, Key="results/missing.csv")
    with pytest.raises(ClientError) as caught:
        await s3.head_object(Bucket=bucket, Key="results/missing.csv")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as caught:
        await s3.get_object(Bucket=bucket, Key=key, Range="bytes=1000-2000")
    assert caught.value.response["Error"]["Code"] == "InvalidRange"
    with pytest.raises(ClientError) as caught:
        await s3.list_objects_v2(Bucket=bucket)
    assert caught.value.response["Error"]["Code"] == "NotImplemented"


async def test_bad_sql_fails_with_duckdbs_reason(athena: Any) -> None:
    execution = await run(athena, "SELEC 1")
    status = execution["Status"]
    assert status["State"] == "FAILED"
    assert "syntax error" in status["StateChangeReason"]
    assert status["AthenaError"] == {
        "ErrorCategory": 2,
        "ErrorType": 1100,
        "Retryable": False,
        "ErrorMessage": status["StateChangeReason"],
    }
    assert status["CompletionDateTime"] >= status["SubmissionDateTime"]
    assert_times_add_up(execution)
    with pytest.raises(ClientError) as caught:
        await athena.get_query_results(QueryExecutionId=execution["QueryExecutionId"])
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"


async def test_stop_cancels_a_running_query_and_spares_a_finished_one(athena: Any) -> None:
    query_id = await start(athena, LONG_SQL)
    await wait_state(athena, query_id, {"RUNNING"})
    await athena.stop_query_execution(QueryExecutionId=query_id)
    execution = await wait_state(athena, query_id, FINAL, timeout=5)
    assert execution["Status"]["State"] == "CANCELLED"
    assert execution["Status"]["StateChangeReason"] == "Query cancelled by user"
    stats = execution["Statistics"]
    assert stats["TotalExecutionTimeInMillis"] >= stats["EngineExecutionTimeInMillis"] > 0
    assert_times_add_up(execution)

    finished = await run(athena, "SELECT 1")
    assert_times_add_up(finished)
    await athena.stop_query_execution(QueryExecutionId=finished["QueryExecutionId"])
    again = await athena.get_query_execution(QueryExecutionId=finished["QueryExecutionId"])
    assert again["QueryExecution"]["Status"]["State"] == "SUCCEEDED"


@pytest.mark.parametrize("engine_options", [{"max_running": 3, "workers": 1}])
async def test_stop_cancels_a_queued_query(athena: Any) -> None:
    running = await start(athena, LONG_SQL)
    await wait_state(athena, running, {"RUNNING"})
    queued = await start(athena, "SELECT 1")  # the only worker is busy
    assert (await wait_state(athena, queued, {"QUEUED"}))["Status"]["State"] == "QUEUED"
    await athena.stop_query_execution(QueryExecutionId=queued)
    stopped = await wait_state(athena, queued, FINAL)
    assert stopped["Status"]["State"] == "CANCELLED"
    assert_times_add_up(stopped)  # all of it queued: it never ran
    assert stopped["Statistics"]["EngineExecutionTimeInMillis"] == 0
    await athena.stop_query_execution(QueryExecutionId=running)
    assert (await wait_state(athena, running, FINAL))["Status"]["State"] == "CANCELLED"


@pytest.mark.parametrize("engine_options", [{"max_running": 2}])
async def test_throttles_over_max_running(athena: Any) -> None:
    long_ids = [await start(athena, LONG_SQL) for _ in range(2)]
    with pytest.raises(athena.exceptions.TooManyRequestsException) as caught:
        await start(athena, "SELECT 1")
    assert caught.value.response["Reason"] == "CONCURRENT_QUERY_LIMIT_EXCEEDED"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    for query_id in long_ids:
        await athena.stop_query_execution(QueryExecutionId=query_id)
    for query_id in long_ids:
        assert (await wait_state(athena, query_id, FINAL))["Status"]["State"] == "CANCELLED"
    assert (await run(athena, "SELECT 1"))["Status"]["State"] == "SUCCEEDED"


async def test_fifty_queries_in_parallel(athena: Any) -> None:
    executions = await asyncio.gather(
        *(
            run(athena, f"SELECT {n} AS n, sum(i) AS s FROM range({n * 1000}) t(i)")
            for n in range(50)
        )
    )
    assert {e["Status"]["State"] for e in executions} == {"SUCCEEDED"}
    pages = await asyncio.gather(
        *(athena.get_query_results(QueryExecutionId=e["QueryExecutionId"]) for e in executions)
    )
    for n, page in enumerate(pages):
        total = sum(range(n * 1000))
        assert cells(page) == [["n", "s"], [str(n), None if n == 0 else str(total)]]


async def test_client_request_token_is_idempotent(athena: Any) -> None:
    token = "t" * 40
    first = await start(athena, "SELECT 1", ClientRequestToken=token)
    assert await start(athena, "SELECT 1", ClientRequestToken=token) == first
    other = await start(athena, "SELECT 1")  # botocore makes a fresh token
    assert other != first
    # The repeated token ran nothing: the engine holds two queries, not three.
    listed = (await athena.list_query_executions())["QueryExecutionIds"]
    assert sorted(listed) == sorted([first, other])
    with pytest.raises(athena.exceptions.InvalidRequestException):
        await start(athena, "SELECT 2", ClientRequestToken=token)
    for query_id in (first, other):  # nothing left running (and logging) after the test
        await wait_state(athena, query_id, FINAL)


async def test_batch_get_reports_unknown_ids(athena: Any) -> None:
    known = (await run(athena, "SELECT 1"))["QueryExecutionId"]
    response = await athena.batch_get_query_execution(QueryExecutionIds=[known, "no-such-id"])
    assert [e["QueryExecutionId"] for e in response["QueryExecutions"]] == [known]
    [unknown] = response["UnprocessedQueryExecutionIds"]
    assert unknown["QueryExecutionId"] == "no-such-id"
    assert unknown["ErrorCode"] == "INVALID_INPUT"
    with pytest.raises(athena.exceptions.InvalidRequestException) as caught:
        await athena.get_query_execution(QueryExecutionId="no-such-id")
    assert caught.value.response["AthenaErrorCode"] == "INVALID_INPUT"


async def test_list_pages_newest_first_per_workgroup(athena: Any) -> None:
    ids = [await start(athena, f"SELECT {n}", WorkGroup="team") for n in range(5)]
    elsewhere = await start(athena, "SELECT 'elsewhere'")
    listed, token = [], None
    while True:
        params = {"NextToken": token} if token else {}
        page = await athena.list_query_executions(WorkGroup="team", MaxResults=2, **params)
        listed += page["QueryExecutionIds"]
        token = page.get("NextToken")
        if token is None:
            break
    assert listed == ids[::-1]
    for query_id in [*ids, elsewhere]:
        await wait_state(athena, query_id, FINAL)


async def test_output_location_maps_onto_the_data_folder(
    athena: Any, s3: Any, engine: LocalEngine
) -> None:
    execution = await run(
        athena,
        "SELECT 7 AS seven",
        QueryExecutionContext={"Database": "default"},
        ResultConfiguration={"OutputLocation": "s3://my-bucket/some/prefix"},
    )
    query_id = execution["QueryExecutionId"]
    location = f"s3://my-bucket/some/prefix/{query_id}.csv"
    assert execution["ResultConfiguration"]["OutputLocation"] == location
    assert execution["QueryExecutionContext"] == {"Database": "default"}
    path = engine.data_dir / "my-bucket" / "some" / "prefix" / f"{query_id}.csv"
    assert path.read_bytes() == b'"seven"\n"7"\n'
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    with pytest.raises(athena.exceptions.InvalidRequestException):
        await start(athena, "SELECT 1", ResultConfiguration={"OutputLocation": "/tmp/x/"})


async def test_tables_persist_across_queries(athena: Any) -> None:
    created = await run(athena, "CREATE TABLE t AS SELECT * FROM range(3) r(x)")
    assert created["Status"]["State"] == "SUCCEEDED"
    assert created["StatementType"] == "DDL"
    execution = await run(athena, "SELECT sum(x) AS total FROM t")
    page = await athena.get_query_results(QueryExecutionId=execution["QueryExecutionId"])
    assert cells(page) == [["total"], ["3"]]


async def test_stopping_the_engine_interrupts_running_queries(tmp_path: Path) -> None:
    local = LocalEngine(tmp_path / "data", workers=2)
    await local.start()
    async with get_session().create_client("athena", **client_options(local.url)) as athena:
        query_id = await start(athena, LONG_SQL)
        await wait_state(athena, query_id, {"RUNNING"})
        await asyncio.wait_for(local.stop(), 10)


async def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "athenaq.local.main",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ").strip()
        async with get_session().create_client("athena", **client_options(url)) as athena:
            assert (await run(athena, "SELECT 1"))["Status"]["State"] == "SUCCEEDED"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_execution_parameters_are_bound_as_literals_never_pasted(athena: Any) -> None:
    table = (
        "CREATE TABLE notes AS SELECT * FROM (VALUES (1, 'it''s', DATE '2026-01-01'), "
        "(2, '''; DROP TABLE notes; --', DATE '2026-02-01'), (3, 'plain', DATE '2026-03-01'))"
        " v(n, s, d)"
    )
    assert (await run(athena, table))["Status"]["State"] == "SUCCEEDED"
    # A `?` inside a string or a comment is no placeholder.
    sql = "SELECT n, s, '?' AS q FROM notes WHERE s = ? OR (n = ? AND d >= ?) -- ? ORDER BY n"
    answers = {}
    for name, parameters in {
        "quote": ["'it''s'", "0", "DATE '2027-01-01'"],
        "injection": ["'''; DROP TABLE notes; --'", "0", "DATE '2027-01-01'"],
        "typed": ["'none'", "3", "DATE '2026-02-15'"],
    }.items():
        execution = await run(athena, sql, ExecutionParameters=parameters)
        assert execution["Status"]["State"] == "SUCCEEDED", execution["Status"]
        assert execution["ExecutionParameters"] == parameters
        page = await athena.get_query_results(QueryExecutionId=execution["QueryExecutionId"])
        answers[name] = cells(page)[1:]
    assert answers == {
        "quote": [["1", "it's", "?"]],
        "injection": [["2", "'; DROP TABLE notes; --", "?"]],
        "typed": [["3", "plain", "?"]],
    }
    count = await run(athena, "SELECT count(*) FROM notes")
    assert cells(await athena.get_query_results(QueryExecutionId=count["QueryExecutionId"])) == [
        ["count_star()"],
        ["3"],
    ]
    # As Athena fails them: a value that is not a literal, a count other than the `?`s'.
    reasons = {}
    for name, parameters in {
        "unquoted": ["it", "0", "NULL"],
        "expression": ["'a' || 'b'", "0", "NULL"],
        "bad date": ["'a'", "0", "DATE '2026-13-01'"],
        "too many": ["'a'", "0", "NULL", "1"],
    }.items():
        execution = await run(athena, sql, ExecutionParameters=parameters)
        assert execution["Status"]["State"] == "FAILED"
        assert execution["Status"]["AthenaError"]["ErrorCategory"] == 2
        reasons[name] = execution["Status"]["StateChangeReason"]
    none = await run(athena, "SELECT 1 WHERE 1 = ?")
    assert reasons == {
        "unquoted": "SYNTAX_ERROR: execution parameter 1 is not a literal: 'it' (a string is"
        " written in single quotes: 'text')",
        "expression": "SYNTAX_ERROR: execution parameter 1 is not a literal: \"'a' || 'b'\""
        " (a string is written in single quotes: 'text')",
        "bad date": "INVALID_LITERAL: execution parameter 3: '2026-13-01' is not a valid DATE",
        "too many": "INVALID_PARAMETER_USAGE: Incorrect number of parameters: expected 3 but"
        " found 4",
    }
    assert none["Status"]["StateChangeReason"] == (
        "INVALID_PARAMETER_USAGE: Incorrect number of parameters: expected 1 but found 0"
    )


REUSE = {"ResultReuseConfiguration": {"ResultReuseByAgeConfiguration": {"Enabled": True}}}


async def test_a_repeat_within_the_reuse_age_reuses_the_result_and_runs_nothing(
    athena: Any,
) -> None:
    assert (await run(athena, "CREATE SEQUENCE ticks"))["Status"]["State"] == "SUCCEEDED"
    # Each run of the SQL takes the sequence's next value: a reused result shows an old one.
    sql = "SELECT nextval('ticks') AS tick WHERE ? = 1"
    first = await run(athena, sql, ExecutionParameters=["1"], **REUSE)
    again = await run(athena, sql, ExecutionParameters=["1"], **REUSE)
    other_parameters = await run(athena, sql, ExecutionParameters=["1.0"], **REUSE)
    unasked = await run(athena, sql, ExecutionParameters=["1"])
    other_catalog = await run(
        athena,
        sql,
        ExecutionParameters=["1"],
        QueryExecutionContext={"Catalog": "AwsDataCatalog"},
        **REUSE,
    )
    ticks = {}
    for name, execution in {
        "first": first,
        "again": again,
        "other parameters": other_parameters,
        "unasked": unasked,
        "other catalog": other_catalog,
    }.items():
        assert execution["Status"]["State"] == "SUCCEEDED"
        page = await athena.get_query_results(QueryExecutionId=execution["QueryExecutionId"])
        reused = execution["Statistics"]["ResultReuseInformation"]["ReusedPreviousResult"]
        ticks[name] = (cells(page)[1][0], reused)
    assert ticks == {
        "first": ("1", False),
        "again": ("1", True),
        "other parameters": ("2", False),
        "unasked": ("3", False),
        # The default catalog named is the one left out: the same context, whose newest
        # result is the run without reuse.
        "other catalog": ("3", True),
    }
    assert again["Statistics"]["DataScannedInBytes"] == 0
    assert again["ResultConfiguration"] == first["ResultConfiguration"]
    assert again["QueryExecutionId"] != first["QueryExecutionId"]
    # Never the result of a statement other than a query.
    created = [await run(athena, "CREATE TABLE IF NOT EXISTS once (n INT)", **REUSE) for _ in "ab"]
    assert [e["Statistics"]["ResultReuseInformation"] for e in created] == [
        {"ReusedPreviousResult": False}
    ] * 2


async def test_the_catalog_resolves_names_and_an_unknown_one_fails(athena: Any) -> None:
    assert (await run(athena, "ATTACH ':memory:' AS lakehouse"))["Status"]["State"] == "SUCCEEDED"
    made = await run(athena, "CREATE TABLE lakehouse.main.sales AS SELECT 7 AS total")
    assert made["Status"]["State"] == "SUCCEEDED"
    there = await run(
        athena, "SELECT total FROM sales", QueryExecutionContext={"Catalog": "LakeHouse"}
    )
    assert cells(await athena.get_query_results(QueryExecutionId=there["QueryExecutionId"])) == [
        ["total"],
        ["7"],
    ]
    assert there["QueryExecutionContext"] == {"Catalog": "LakeHouse"}
    # The default catalog does not see it; an unknown one fails the query.
    default = await run(athena, "SELECT total FROM sales")
    assert default["Status"]["State"] == "FAILED"
    unknown = await run(athena, "SELECT 1", QueryExecutionContext={"Catalog": "hive_lake"})
    assert unknown["Status"]["State"] == "FAILED"
    assert unknown["Status"]["StateChangeReason"] == (
        "CATALOG_NOT_FOUND: Catalog 'hive_lake' does not exist"
    )


async def test_a_repeated_token_must_repeat_the_parameters(athena: Any) -> None:
    token = "p" * 40
    sql = "SELECT ? AS v"
    first = await start(athena, sql, ClientRequestToken=token, ExecutionParameters=["1"])
    assert await start(athena, sql, ClientRequestToken=token, ExecutionParameters=["1"]) == first
    with pytest.raises(athena.exceptions.InvalidRequestException):
        await start(athena, sql, ClientRequestToken=token, ExecutionParameters=["2"])
    await wait_state(athena, first, FINAL)
