"""The Athena client's own settings, seen from the endpoint it calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiobotocore
import botocore
import pytest
from aiohttp import web

from athenaq.athena import Athena, _execution
from athenaq.config import AthenaConfig, S3Config


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[str]]]:
    """An endpoint answering every StartQueryExecution, keeping each one's User-Agent."""
    agents: list[str] = []

    async def start(request: web.Request) -> web.Response:
        agents.append(request.headers["User-Agent"])
        return web.json_response(
            {"QueryExecutionId": f"e-{len(agents)}"}, content_type="application/x-amz-json-1.1"
        )

    app = web.Application()
    app.router.add_post("/", start)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", agents
    finally:
        await runner.cleanup()


async def test_every_call_sends_the_same_user_agent_with_the_configured_app_id(
    recorder: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, agents = recorder
    monkeypatch.setenv("AWS_SDK_UA_APP_ID", "nightly-reports")
    config = AthenaConfig("us-east-1", "default", "primary", "s3://bucket/results/", url)
    async with Athena.open(config, S3Config(endpoint_url=None)) as athena:
        for run in (1, 2):
            await athena.start("SELECT 1", "default", "primary", f"athenaq-{'0' * 32}-{run}")
    assert len(agents) == 2
    assert agents[0] == agents[1]
    parts = agents[0].split()
    assert parts[0] == f"aiobotocore/{aiobotocore.__version__}"
    assert "app/nightly-reports" in parts
    assert parts.count(f"botocore/{botocore.__version__}") == 1


EXECUTION = {
    "QueryExecutionId": "e-1",
    "Query": "SELECT 1",
    "Status": {
        "State": "FAILED",
        "StateChangeReason": "line 1:8: bad",
        "AthenaError": {"ErrorCategory": 2, "ErrorMessage": "syntax"},
        "SubmissionDateTime": 1767225600.25,
        "CompletionDateTime": 1767225601,
    },
    "Statistics": {
        "DataScannedInBytes": 4096,
        "EngineExecutionTimeInMillis": 900,
        "QueryQueueTimeInMillis": 40,
        "TotalExecutionTimeInMillis": 1000,
        "ResultReuseInformation": {"ReusedPreviousResult": True},
    },
    "ResultConfiguration": {"OutputLocation": "s3://bucket/results/e-1.csv"},
}


async def test_status_answers_are_read_field_by_field_as_botocore_would() -> None:
    # The status calls' answers skip botocore's walk against the model: their timestamps
    # (seconds since the epoch) and fields are read by the client itself.
    async def answer(request: web.Request) -> web.Response:
        target = request.headers["X-Amz-Target"].rpartition(".")[2]
        body = (
            {
                "QueryExecutions": [EXECUTION],
                "UnprocessedQueryExecutionIds": [
                    {"QueryExecutionId": "e-2", "ErrorCode": "x", "ErrorMessage": "y"}
                ],
            }
            if target == "BatchGetQueryExecution"
            else {"QueryExecution": EXECUTION}
        )
        return web.json_response(body, content_type="application/x-amz-json-1.1")

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    config = AthenaConfig("us-east-1", "default", "primary", "s3://bucket/results/", url)
    try:
        async with Athena.open(config, S3Config(endpoint_url=None)) as athena:
            found, unprocessed = await athena.batch_get(["e-1", "e-2"])
            single = await athena.get("e-1")
    finally:
        await runner.cleanup()
    assert unprocessed == ["e-2"]
    for execution in (found[0], single):
        assert execution.execution_id == "e-1"
        assert execution.state == "FAILED"
        assert execution.reason == "line 1:8: bad: syntax"
        assert execution.submitted_at == datetime(2026, 1, 1, 0, 0, 0, 250000)
        assert execution.completed_at == datetime(2026, 1, 1, 0, 0, 1)
        # Athena's start: its submission plus its time in the queue.
        assert execution.started_at == datetime(2026, 1, 1, 0, 0, 0, 290000)
        assert execution.statistics == {
            "started_at": datetime(2026, 1, 1, 0, 0, 0, 290000),
            "completed_at": datetime(2026, 1, 1, 0, 0, 1),
            "data_scanned_bytes": 4096,
            "engine_execution_ms": 900,
            "queue_ms": 40,
            "total_execution_ms": 1000,
            "reused_previous_result": True,
        }
        assert execution.output_location == "s3://bucket/results/e-1.csv"


async def test_an_answer_without_result_reuse_information_says_nothing_of_it() -> None:
    raw = {**EXECUTION, "Statistics": {"DataScannedInBytes": 10}}
    assert _execution(raw).reused_previous_result is None
    assert _execution(raw).statistics["reused_previous_result"] is None
    reused = {**EXECUTION, "Statistics": {"ResultReuseInformation": {}}}
    assert _execution(reused).reused_previous_result is None


def test_the_start_is_athenas_own_only_once_the_execution_left_its_queue() -> None:
    """started_at is Athena's: submission plus queue time, never a guess. A queued
    execution, one that ended in the queue (all its time queue time), and an answer
    without the figures have none, and their statistics leave the record's start be."""

    def execution(state: str, **statistics: int) -> dict[str, Any]:
        return {
            **EXECUTION,
            "Status": {**EXECUTION["Status"], "State": state},
            "Statistics": statistics,
        }

    ran = _execution(execution("RUNNING", QueryQueueTimeInMillis=40))
    assert ran.started_at == datetime(2026, 1, 1, 0, 0, 0, 290000)
    assert ran.statistics["started_at"] == ran.started_at
    for unstarted in (
        execution("QUEUED", QueryQueueTimeInMillis=40),
        execution("CANCELLED", QueryQueueTimeInMillis=750, TotalExecutionTimeInMillis=750),
        execution("FAILED", QueryQueueTimeInMillis=750, TotalExecutionTimeInMillis=750),
        execution("SUCCEEDED"),
        {**execution("SUCCEEDED", QueryQueueTimeInMillis=40), "Status": {"State": "SUCCEEDED"}},
    ):
        assert _execution(unstarted).started_at is None, unstarted
        assert "started_at" not in _execution(unstarted).statistics
    # A reused result (nothing queued, nothing run) starts when it was submitted.
    reused = _execution(
        execution("SUCCEEDED", QueryQueueTimeInMillis=0, TotalExecutionTimeInMillis=0)
    )
    assert reused.started_at == datetime(2026, 1, 1, 0, 0, 0, 250000)


async def test_a_start_sends_the_context_parameters_and_result_reuse() -> None:
    """StartQueryExecution as Athena receives it: the catalog beside the database,
    ExecutionParameters apart from the SQL, and result reuse only when asked for."""
    bodies: list[dict[str, Any]] = []

    async def start(request: web.Request) -> web.Response:
        bodies.append(json.loads(await request.read()))
        return web.json_response(
            {"QueryExecutionId": f"e-{len(bodies)}"}, content_type="application/x-amz-json-1.1"
        )

    app = web.Application()
    app.router.add_post("/", start)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    config = AthenaConfig("us-east-1", "default", "primary", "s3://bucket/results/", url)
    token = f"athenaq-{'0' * 32}-1"
    try:
        async with Athena.open(config, S3Config(endpoint_url=None)) as athena:
            await athena.start(
                "SELECT * FROM t WHERE a = ? AND b = ?",
                "sales",
                "reports",
                token,
                catalog="lakehouse",
                parameters=("'it''s'", "42"),
                result_reuse_minutes=60,
            )
            await athena.start("SELECT 1", "default", "primary", token)
    finally:
        await runner.cleanup()
    assert bodies[0] == {
        "QueryString": "SELECT * FROM t WHERE a = ? AND b = ?",
        "ClientRequestToken": token,
        "QueryExecutionContext": {"Database": "sales", "Catalog": "lakehouse"},
        "WorkGroup": "reports",
        "ResultConfiguration": {"OutputLocation": "s3://bucket/results/"},
        "ExecutionParameters": ["'it''s'", "42"],
        "ResultReuseConfiguration": {
            "ResultReuseByAgeConfiguration": {"Enabled": True, "MaxAgeInMinutes": 60}
        },
    }
    assert bodies[1] == {
        "QueryString": "SELECT 1",
        "ClientRequestToken": token,
        "QueryExecutionContext": {"Database": "default"},
        "WorkGroup": "primary",
        "ResultConfiguration": {"OutputLocation": "s3://bucket/results/"},
    }
