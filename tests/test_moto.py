"""The service against moto's Athena in server mode, for what moto does: submit, poll
(moto has no BatchGetQueryExecution, so the poller falls back per id), results with
NULL, a cancel that moto confirms, and the submit's catalog and parameters (which moto
keeps but does not apply)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiobotocore.session
import pytest
from aiobotocore.config import AioConfig
from moto.server import ThreadedMotoServer
from tornado.httpclient import AsyncHTTPClient

from athenaq.app import Service
from athenaq.config import Config
from tests.conftest import Client, body, make_config


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


async def moto_api(url: str, path: str, document: dict) -> None:
    response = await AsyncHTTPClient().fetch(url + path, method="POST", body=json.dumps(document))
    assert response.code in (200, 201)


@pytest.fixture
async def moto_client(
    moto_url: str,
    db_url: str,
    tmp_path: Path,
    start_service: Callable[[Config], Awaitable[Service]],
) -> Client:
    service = await start_service(make_config(db_url, moto_url, tmp_path / "results"))
    return Client(service.url)


async def test_round_trip_against_moto(moto_url: str, moto_client: Client) -> None:
    rows = [["id", "name"], ["1", "alpha"], ["2", None], ["3", ""]]
    await moto_api(
        moto_url,
        "/moto-api/static/athena/query-results",
        {
            "account_id": "123456789012",
            "region": "us-east-1",
            "results": [
                {
                    "rows": [
                        {"Data": [{} if v is None else {"VarCharValue": v} for v in row]}
                        for row in rows
                    ],
                    "column_info": [
                        {"Name": "id", "Type": "integer"},
                        {"Name": "name", "Type": "varchar"},
                    ],
                }
            ],
        },
    )
    query_id = await moto_client.submit("SELECT id, name FROM things")
    status = await moto_client.wait_state(query_id, "SUCCEEDED")
    assert status["athena_query_execution_id"]
    results = body(await moto_client.request("GET", f"/query/{query_id}/results"))
    assert results["columns"] == [
        {"name": "id", "type": "integer"},
        {"name": "name", "type": "varchar"},
    ]
    assert results["rows"] == [["1", "alpha"], ["2", None], ["3", ""]]
    assert results["row_count"] == 3


async def test_cancel_of_a_running_query_against_moto(moto_url: str, moto_client: Client) -> None:
    # moto holds each state for this many status reads: long enough to cancel in RUNNING.
    await moto_api(
        moto_url,
        "/moto-api/state-manager/set-transition",
        {"model_name": "athena::execution", "transition": {"progression": "manual", "times": 5}},
    )
    try:
        query_id = await moto_client.submit("SELECT 1")
        await moto_client.wait_state(query_id, "RUNNING")
        response = await moto_client.request("POST", f"/query/{query_id}/cancel")
        assert response.code == 200, response.body
        assert body(response) == {"id": query_id, "state": "CANCELLED"}
        response = await moto_client.request("GET", f"/query/{query_id}/results")
        assert body(response)["error"]["code"] == "query_cancelled"
    finally:
        await moto_api(
            moto_url,
            "/moto-api/state-manager/unset-transition",
            {"model_name": "athena::execution"},
        )


async def test_the_submit_fields_reach_moto(moto_url: str, moto_client: Client) -> None:
    """moto keeps the catalog and the ExecutionParameters it is sent, but substitutes
    nothing (its results are seeded) and never reuses a result: ReusedPreviousResult is
    always false there."""
    submit = {
        "query": "SELECT id FROM things WHERE name = ?",
        "database": "sales",
        "catalog": "AwsDataCatalog",
        "parameters": ["'alpha'"],
        "labels": {"team": "growth"},
        "result_reuse_minutes": 60,
    }
    ids = []
    for _ in range(2):
        response = await moto_client.request("POST", "/query", submit)
        assert response.code == 202, response.body
        ids.append(body(response)["id"])
    statuses = [await moto_client.wait_state(query_id, "SUCCEEDED") for query_id in ids]
    assert [s["reused_previous_result"] for s in statuses] == [False, False]
    assert statuses[0]["labels"] == {"team": "growth"}
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "athena",
        region_name="us-east-1",
        endpoint_url=moto_url,
        config=AioConfig(retries={"total_max_attempts": 1}),
    ) as athena:
        answer = await athena.get_query_execution(
            QueryExecutionId=statuses[0]["athena_query_execution_id"]
        )
    execution = answer["QueryExecution"]
    assert execution["ExecutionParameters"] == ["'alpha'"]
    assert execution["QueryExecutionContext"] == {"Database": "sales", "Catalog": "AwsDataCatalog"}
