"""The Athena double, exercised only through a real aiobotocore Athena client."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiobotocore.session
import pytest
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from tests.athena_double import AthenaDouble
from tests.conftest import assert_times_add_up, wait_for

OUTPUT = "s3://results-bucket/athenaq/"


@pytest.fixture(scope="module")
def shared() -> Iterator[AthenaDouble]:
    with AthenaDouble() as served:
        yield served


@pytest.fixture
def endpoint(shared: AthenaDouble) -> AthenaDouble:
    """One double for the module (it starts in milliseconds, but why repeat it), reset
    before each test."""
    shared.reset()
    return shared


@asynccontextmanager
async def athena(url: str) -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "athena",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=AioConfig(retries={"total_max_attempts": 1}),
    ) as client:
        yield client


async def start(client: Any, sql: str, **extra: Any) -> str:
    params = {
        "QueryExecutionContext": {"Database": "db"},
        "ResultConfiguration": {"OutputLocation": OUTPUT},
        **extra,
    }
    reply = await client.start_query_execution(QueryString=sql, **params)
    return str(reply["QueryExecutionId"])


async def status(client: Any, qid: str) -> dict[str, Any]:
    reply = await client.get_query_execution(QueryExecutionId=qid)
    return dict(reply["QueryExecution"]["Status"])


async def wait_for_state(client: Any, qid: str, *states: str) -> str:
    """Poll until the query is in one of `states`; fails after 10 s."""

    async def reached() -> str | None:
        state = str((await status(client, qid))["State"])
        return state if state in states else None

    found: str = await wait_for(reached, timeout=10, what=f"{qid} in {states}")
    return found


async def test_scripted_timeline(endpoint: AthenaDouble) -> None:
    sql = 'SELECT 1 -- double: {"queue_ms": 150, "run_ms": 150, "scanned_bytes": 77}'
    order = ["QUEUED", "RUNNING", "SUCCEEDED"]
    async with athena(endpoint.url) as client:
        qid = await start(client, sql, WorkGroup="wg1")
        # A busy machine may miss a phase between two calls; what it sees keeps the order.
        seen: list[str] = []

        async def succeeded() -> bool:
            seen.append(str((await status(client, qid))["State"]))
            return seen[-1] == "SUCCEEDED"

        await wait_for(succeeded, timeout=10, what=f"{qid} SUCCEEDED")
        assert seen == sorted(seen, key=order.index)
        execution = (await client.get_query_execution(QueryExecutionId=qid))["QueryExecution"]
    assert execution["Query"] == sql and execution["WorkGroup"] == "wg1"
    assert execution["ResultConfiguration"]["OutputLocation"] == f"{OUTPUT}{qid}.csv"
    assert execution["QueryExecutionContext"] == {"Database": "db"}
    stats, st = execution["Statistics"], execution["Status"]
    assert stats["DataScannedInBytes"] == 77
    assert stats["QueryQueueTimeInMillis"] == 150
    assert stats["TotalExecutionTimeInMillis"] == 300
    assert st["CompletionDateTime"] > st["SubmissionDateTime"]  # both parsed as datetimes
    assert "AthenaError" not in st
    assert_times_add_up(execution)


async def test_paging_generated_rows(endpoint: AthenaDouble) -> None:
    async with athena(endpoint.url) as client:
        qid = await start(client, 'SELECT * FROM t -- double: {"generate": 2500}')
        pages, token = [], None
        while True:
            args: dict[str, str] = {"NextToken": token} if token else {}
            page = await client.get_query_results(QueryExecutionId=qid, MaxResults=1000, **args)
            pages.append(page["ResultSet"]["Rows"])
            token = page.get("NextToken")
            if token is None:
                break
        columns = page["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]
    assert [len(p) for p in pages] == [1000, 1000, 501]  # header counts toward MaxResults
    assert pages[0][0] == {"Data": [{"VarCharValue": n} for n in ("n", "label", "maybe")]}
    rows = [r["Data"] for p in pages for r in p][1:]
    assert len(rows) == 2500
    assert rows[0] == [{"VarCharValue": "0"}, {"VarCharValue": "row 0"}, {}]  # NULL
    assert rows[1][2] == {"VarCharValue": ""}  # empty string, not NULL
    assert rows[2] == [{"VarCharValue": "2"}, {"VarCharValue": "row 2"}, {"VarCharValue": "x"}]
    assert rows[2499] == [{"VarCharValue": "2499"}, {"VarCharValue": "row 2499"}, {}]
    assert [(c["Name"], c["Type"]) for c in columns] == [
        ("n", "integer"),
        ("label", "varchar"),
        ("maybe", "varchar"),
    ]


async def test_explicit_result_and_not_finished(endpoint: AthenaDouble) -> None:
    script = {
        "columns": [["id", "bigint"], ["name", "varchar"]],
        "rows": [[1, "a"], [None, "b"]],
        "run_ms": 5000,
    }
    async with athena(endpoint.url) as client:
        qid = await start(client, f"SELECT 2\n-- double: {json.dumps(script)}\n")
        with pytest.raises(ClientError) as err:
            await client.get_query_results(QueryExecutionId=qid)
        endpoint.release(qid)
        rows = (await client.get_query_results(QueryExecutionId=qid))["ResultSet"]["Rows"]
    assert err.value.response["Error"]["Code"] == "InvalidRequestException"
    assert "Current state: RUNNING" in err.value.response["Error"]["Message"]
    assert [r["Data"] for r in rows] == [
        [{"VarCharValue": "id"}, {"VarCharValue": "name"}],
        [{"VarCharValue": "1"}, {"VarCharValue": "a"}],
        [{}, {"VarCharValue": "b"}],
    ]


async def test_batch_get_and_list(endpoint: AthenaDouble) -> None:
    async with athena(endpoint.url) as client:
        ids = [await start(client, f"SELECT {i}") for i in range(3)]
        reply = await client.batch_get_query_execution(QueryExecutionIds=[*ids, "nope"])
        listed = await client.list_query_executions(MaxResults=2)
        rest = await client.list_query_executions(MaxResults=2, NextToken=listed["NextToken"])
        with pytest.raises(ClientError) as err:
            await client.get_query_execution(QueryExecutionId="nope")
    assert [e["QueryExecutionId"] for e in reply["QueryExecutions"]] == ids
    assert {e["Status"]["State"] for e in reply["QueryExecutions"]} == {"SUCCEEDED"}
    [missing] = reply["UnprocessedQueryExecutionIds"]
    assert missing["QueryExecutionId"] == "nope" and missing["ErrorCode"]
    assert listed["QueryExecutionIds"] + rest["QueryExecutionIds"] == ids[::-1]
    assert "NextToken" not in rest
    assert err.value.response["Error"]["Message"] == "QueryExecution nope was not found"


async def test_batch_disabled_answers_unknown_operation() -> None:
    with AthenaDouble(batch=False) as plain:
        async with athena(plain.url) as client:
            qid = await start(client, "SELECT 1")
            with pytest.raises(ClientError) as err:
                await client.batch_get_query_execution(QueryExecutionIds=[qid])
    assert err.value.response["Error"]["Code"] == "UnknownOperationException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_stop_held_and_finished(endpoint: AthenaDouble) -> None:
    async with athena(endpoint.url) as client:
        held = await start(client, 'SELECT 1 -- double: {"hold": true}')
        done = await start(client, "SELECT 1")
        assert await wait_for_state(client, done, "SUCCEEDED") == "SUCCEEDED"
        assert (await status(client, held))["State"] == "RUNNING"
        assert await client.stop_query_execution(QueryExecutionId=held) is not None
        await client.stop_query_execution(QueryExecutionId=done)
        assert (await status(client, held))["State"] == "CANCELLED"
        assert (await status(client, done))["State"] == "SUCCEEDED"
    assert endpoint.execution(held)["stop_calls"] == 1
    assert endpoint.execution(done) == {
        "state": "SUCCEEDED",
        "stop_calls": 1,
        "sql": "SELECT 1",
        "status_reads": 2,  # one by wait_for_state, one after the stop
        "parameters": None,
        "catalog": None,
        "reused": False,
    }
    async with athena(endpoint.url) as client:
        for stopped in (held, done):
            answer = await client.get_query_execution(QueryExecutionId=stopped)
            assert_times_add_up(answer["QueryExecution"])


async def test_fail_directive(endpoint: AthenaDouble) -> None:
    async with athena(endpoint.url) as client:
        qid = await start(client, 'SELECT x -- double: {"run_ms": 30, "fail": "COLUMN_NOT_FOUND"}')
        await wait_for_state(client, qid, "FAILED")
        st = await status(client, qid)
        with pytest.raises(ClientError) as err:
            await client.get_query_results(QueryExecutionId=qid)
    assert st["StateChangeReason"] == "COLUMN_NOT_FOUND"
    assert st["AthenaError"] == {
        "ErrorCategory": 2,
        "ErrorType": 1001,
        "Retryable": False,
        "ErrorMessage": "COLUMN_NOT_FOUND",
    }
    assert err.value.response["Error"]["Code"] == "InvalidRequestException"


async def test_start_errors(endpoint: AthenaDouble) -> None:
    sql = 'SELECT 1 -- double: {"start_throttle": 2}'
    async with athena(endpoint.url) as client:
        for _ in range(2):
            with pytest.raises(ClientError) as err:
                await start(client, sql)
            assert err.value.response["Error"]["Code"] == "TooManyRequestsException"
            assert err.value.response["Reason"] == "CONCURRENT_QUERY_LIMIT_EXCEEDED"
        assert await start(client, sql)  # the third call goes through
        with pytest.raises(ClientError) as bad:
            await start(client, 'SELEC -- double: {"start_invalid": "line 1:1: mismatched"}')
    assert bad.value.response["Error"] == {
        "Code": "InvalidRequestException",
        "Message": "line 1:1: mismatched",
    }
    assert endpoint.calls()["StartQueryExecution"] == 4


async def test_max_running_throttles() -> None:
    with AthenaDouble(max_running=1) as limited:
        async with athena(limited.url) as client:
            first = await start(client, 'SELECT 1 -- double: {"hold": true}')
            with pytest.raises(ClientError) as err:
                await start(client, "SELECT 2")
            limited.release(first)
            assert await start(client, "SELECT 2")
    assert err.value.response["Error"]["Code"] == "TooManyRequestsException"


async def test_client_request_token_is_idempotent(endpoint: AthenaDouble) -> None:
    token = "t" * 40
    async with athena(endpoint.url) as client:
        first = await start(client, "SELECT 1", ClientRequestToken=token)
        again = await start(client, "SELECT 1", ClientRequestToken=token)
        other = await start(client, "SELECT 1")  # botocore fills in a fresh token
        listed = (await client.list_query_executions())["QueryExecutionIds"]
    assert first == again != other
    assert sorted(listed) == sorted([first, other])


async def test_start_stall_holds_the_answer_of_the_start_that_made_the_execution(
    endpoint: AthenaDouble,
) -> None:
    token = "s" * 40
    sql = 'SELECT 1 -- double: {"start_stall_ms": 60000}'
    async with athena(endpoint.url) as client:
        held = asyncio.ensure_future(start(client, sql, ClientRequestToken=token))

        async def made() -> bool:
            return len(endpoint.executions()) == 1

        await wait_for(made, what="the stalled start to make its execution")
        assert not held.done()
        # The same token again (a takeover's start) is answered at once, with it.
        again = await start(client, sql, ClientRequestToken=token)
        held.cancel()
    assert endpoint.executions() == {again: token}


async def test_release_calls_and_reset(endpoint: AthenaDouble) -> None:
    async with athena(endpoint.url) as client:
        held = await start(client, 'SELECT 1 -- double: {"queue_ms": 20, "hold": true}')
        failed = await start(client, 'SELECT 2 -- double: {"hold": true}')
        await wait_for_state(client, held, "RUNNING")
        assert endpoint.release(held) == "SUCCEEDED"
        assert endpoint.release(failed, "FAILED", "boom") == "FAILED"
        assert (await status(client, held))["State"] == "SUCCEEDED"
        st = await status(client, failed)
    assert st["StateChangeReason"] == "boom" and st["AthenaError"]["ErrorMessage"] == "boom"
    assert endpoint.execution(held)["state"] == "SUCCEEDED"
    calls = endpoint.calls()
    assert calls["StartQueryExecution"] == 2 and calls["GetQueryExecution"] >= 3
    with pytest.raises(KeyError):
        endpoint.release("nope")
    with pytest.raises(ValueError):
        endpoint.release(held, "X")
    endpoint.reset()
    assert endpoint.calls() == {}


async def test_results_delay_and_endpoint_delay() -> None:
    with AthenaDouble(delay_ms=50) as slow:
        async with athena(slow.url) as client:
            qid = await start(client, 'SELECT 1 -- double: {"results_delay_ms": 1000}')
            began = time.monotonic()
            # Concurrent calls overlap: the delay must not block the double's loop. One
            # after the other they would take 4 x 1.05 s; the bound leaves a loaded
            # machine seconds of slack and still tells the two apart.
            await asyncio.gather(
                *(client.get_query_results(QueryExecutionId=qid) for _ in range(4))
            )
            elapsed = time.monotonic() - began
    assert 1.05 <= elapsed < 3.0


async def test_runs_as_a_program() -> None:
    script = Path(__file__).with_name("athena_double.py")
    with subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--no-batch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as program:
        try:
            assert program.stdout is not None
            line = program.stdout.readline()
            assert line.startswith("listening on http://127.0.0.1:")
            async with athena(line.split()[-1]) as client:
                qid = await start(client, "SELECT 1")
                with pytest.raises(ClientError) as err:  # --no-batch
                    await client.batch_get_query_execution(QueryExecutionIds=[qid])
        finally:
            program.send_signal(signal.SIGTERM)
        assert program.wait(5) == 0
    assert err.value.response["Error"]["Code"] == "UnknownOperationException"


def cells(page: dict[str, Any]) -> list[list[str | None]]:
    return [[d.get("VarCharValue") for d in row["Data"]] for row in page["ResultSet"]["Rows"]]


PARAMETERIZED = (
    "SELECT s, n FROM t WHERE s = ? AND n = ?\n-- double: "
    '{"columns": [["s", "varchar"], ["n", "integer"]], '
    '"rows": [[{"parameter": 1}, {"parameter": 2}]]}'
)


async def test_execution_parameters_are_checked_and_their_values_scripted(
    endpoint: AthenaDouble,
) -> None:
    async with athena(endpoint.url) as client:
        qid = await start(client, PARAMETERIZED, ExecutionParameters=["'it''s; DROP t'", "42"])
        assert await wait_for_state(client, qid, "SUCCEEDED", "FAILED") == "SUCCEEDED"
        page = await client.get_query_results(QueryExecutionId=qid)
        execution = (await client.get_query_execution(QueryExecutionId=qid))["QueryExecution"]
        # As Athena fails them: a count of values other than the placeholders', a value
        # that is not a literal (a string without its quotes).
        failed = {
            "too few": await start(client, PARAMETERIZED, ExecutionParameters=["'x'"]),
            "none": await start(client, PARAMETERIZED),
            "unquoted": await start(client, PARAMETERIZED, ExecutionParameters=["x", "1"]),
        }
        reasons = {}
        for name, failing in failed.items():
            assert await wait_for_state(client, failing, "SUCCEEDED", "FAILED") == "FAILED"
            reasons[name] = (await status(client, failing))["StateChangeReason"]
    assert cells(page) == [["s", "n"], ["it's; DROP t", "42"]]
    assert execution["ExecutionParameters"] == ["'it''s; DROP t'", "42"]
    assert endpoint.execution(qid)["parameters"] == ("'it''s; DROP t'", "42")
    assert reasons == {
        "too few": "INVALID_PARAMETER_USAGE: Incorrect number of parameters: expected 2"
        " but found 1",
        "none": "INVALID_PARAMETER_USAGE: Incorrect number of parameters: expected 2 but found 0",
        "unquoted": "SYNTAX_ERROR: execution parameter 1 is not a literal: 'x' (a string is"
        " written in single quotes: 'text')",
    }


REUSE = {"ResultReuseConfiguration": {"ResultReuseByAgeConfiguration": {"Enabled": True}}}


async def test_a_repeat_within_the_reuse_age_reuses_the_result(endpoint: AthenaDouble) -> None:
    sql = 'SELECT 1 -- double: {"run_ms": 50, "scanned_bytes": 5000}'
    async with athena(endpoint.url) as client:
        plain = await start(client, sql)
        await wait_for_state(client, plain, "SUCCEEDED")
        again = await start(client, sql, **REUSE)
        other_database = await start(
            client, sql, QueryExecutionContext={"Database": "other"}, **REUSE
        )
        unasked = await start(client, sql)
        executions = {
            qid: (await client.get_query_execution(QueryExecutionId=qid))["QueryExecution"]
            for qid in (plain, again, other_database, unasked)
        }
        for qid in (other_database, unasked):
            await wait_for_state(client, qid, "SUCCEEDED")
        reused_page = await client.get_query_results(QueryExecutionId=again)
    reused = executions[again]
    assert reused["Status"]["State"] == "SUCCEEDED"  # at once: nothing ran
    assert reused["Statistics"]["ResultReuseInformation"] == {"ReusedPreviousResult": True}
    assert reused["Statistics"]["DataScannedInBytes"] == 0
    assert reused["ResultConfiguration"] == executions[plain]["ResultConfiguration"]
    assert reused["ResultReuseConfiguration"] == {
        "ResultReuseByAgeConfiguration": {"Enabled": True, "MaxAgeInMinutes": 60}
    }
    assert cells(reused_page) == [["_col0"], ["1"]]
    for ran in (plain, other_database, unasked):
        assert executions[ran]["Statistics"]["ResultReuseInformation"] == {
            "ReusedPreviousResult": False
        }
    assert [endpoint.execution(q)["reused"] for q in (plain, again, other_database)] == [
        False,
        True,
        False,
    ]


async def test_an_unknown_catalog_fails_the_query() -> None:
    with AthenaDouble(catalogs=["AwsDataCatalog", "lakehouse"]) as double:
        async with athena(double.url) as client:
            known = await start(
                client, "SELECT 1", QueryExecutionContext={"Database": "db", "Catalog": "LakeHouse"}
            )
            default = await start(
                client,
                "SELECT 1",
                QueryExecutionContext={"Database": "db", "Catalog": "awsdatacatalog"},
            )
            unknown = await start(
                client, "SELECT 1", QueryExecutionContext={"Database": "db", "Catalog": "hive"}
            )
            states = [
                await wait_for_state(client, q, "SUCCEEDED", "FAILED")
                for q in (known, default, unknown)
            ]
            failed = await status(client, unknown)
    assert states == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert failed["StateChangeReason"] == "CATALOG_NOT_FOUND: Catalog 'hive' does not exist"
    assert failed["AthenaError"]["ErrorCategory"] == 2


async def test_a_repeated_token_with_other_parameters_is_refused(endpoint: AthenaDouble) -> None:
    token = "t" * 40
    async with athena(endpoint.url) as client:
        first = await start(client, PARAMETERIZED, ClientRequestToken=token,
                            ExecutionParameters=["'a'", "1"])  # fmt: skip
        again = await start(client, PARAMETERIZED, ClientRequestToken=token,
                            ExecutionParameters=["'a'", "1"])  # fmt: skip
        with pytest.raises(ClientError) as refused:
            await start(client, PARAMETERIZED, ClientRequestToken=token,
                        ExecutionParameters=["'b'", "1"])  # fmt: skip
    assert first == again
    assert refused.value.response["Error"]["Code"] == "InvalidRequestException"
