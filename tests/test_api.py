"""Every row of API.md's endpoint table, over HTTP against a running service."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body

# Each query is real SQL for the local engine and carries the script of the test double
# in a comment, so the same test runs against either endpoint.
FAST = (
    "SELECT * FROM (VALUES (1, NULL::VARCHAR), (2, '')) t(n, s) ORDER BY n\n-- double: "
    '{"columns": [["n","integer"],["s","varchar"]], "rows": [["1", null], ["2", ""]]}'
)
HELD = 'SELECT count(*) FROM range(20000000000000)\n-- double: {"hold": true}'
FAILING = (
    "SELECT * FROM no_such_table\n-- double: "
    '{"fail": "TABLE_NOT_FOUND: Table no_such_table does not exist"}'
)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def assert_error(response, status: int, code: str, state: str | None = None) -> dict:
    assert response.code == status, (response.code, response.body)
    assert response.headers["Content-Type"].startswith("application/json")
    document = body(response)
    assert document["error"]["code"] == code
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]
    if state is not None:
        assert document["state"] == state
    return document


async def count_queries(store: Store) -> int:
    return len(await store.unfinished())


# -- POST /query ------------------------------------------------------------------------


async def test_submit_answers_202_with_location_and_runs_to_succeeded(client: Client) -> None:
    response = await client.request("POST", "/query", {"query": FAST})
    assert response.code == 202
    document = body(response)
    assert set(document) == {"id", "state"}
    assert UUID.match(document["id"])
    assert document["state"] == "QUEUED"
    assert response.headers["Location"] == f"/query/{document['id']}/status"
    status = await client.wait_state(document["id"], "SUCCEEDED")
    assert status["query"] == FAST


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code", "names"),
    [
        (b"{not json", "application/json", 400, "invalid_json", None),
        (b"\xff\xfe", "application/json", 400, "invalid_json", None),
        (b"", "application/json", 400, "invalid_json", None),
        (b"{}", "application/json", 400, "validation_error", "query"),
        (b'{"query": ""}', "application/json", 400, "validation_error", "query"),
        (b'{"query": "   "}', "application/json", 400, "validation_error", "query"),
        (b'{"query": 5}', "application/json", 400, "validation_error", "query"),
        (b'{"query": null}', "application/json", 400, "validation_error", "query"),
        (
            b'{"query": "SELECT 1", "extra": 1}',
            "application/json",
            400,
            "validation_error",
            "extra",
        ),
        (b'["SELECT 1"]', "application/json", 400, "validation_error", "object"),
        (b'{"query": "SELECT 1"}', "text/plain", 415, "unsupported_media_type", None),
        (
            b'{"query": "SELECT 1"}',
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
            None,
        ),
    ],
)
async def test_submit_rejects_bad_input_and_creates_nothing(
    client: Client,
    store: Store,
    raw: bytes,
    content_type: str,
    status: int,
    code: str,
    names: str | None,
) -> None:
    response = await client.request(
        "POST", "/query", raw=raw, headers={"Content-Type": content_type}
    )
    document = assert_error(response, status, code)
    if names:
        assert names in document["error"]["message"]
    assert await count_queries(store) == 0


async def test_submit_without_content_type_is_415(client: Client, store: Store) -> None:
    response = await client.request("POST", "/query", raw=b'{"query": "SELECT 1"}')
    assert_error(response, 415, "unsupported_media_type")
    assert await count_queries(store) == 0


async def test_query_over_athena_limit_is_413(client: Client, store: Store) -> None:
    exactly = "S" * 262_144
    over = "S" * 262_145
    response = await client.request("POST", "/query", {"query": over})
    assert "query" in assert_error(response, 413, "payload_too_large")["error"]["message"]
    multibyte = "é" * 131_073  # 262,146 bytes in UTF-8, under the limit in characters
    assert_error(
        await client.request("POST", "/query", {"query": multibyte}), 413, "payload_too_large"
    )
    assert await count_queries(store) == 0
    response = await client.request("POST", "/query", {"query": exactly})
    assert response.code == 202


async def test_body_over_one_mib_is_413(client: Client, store: Store) -> None:
    raw = json.dumps({"query": "SELECT 1", "pad": "x" * (1024 * 1024)}).encode()
    response = await client.request(
        "POST", "/query", raw=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")
    assert await count_queries(store) == 0


# -- GET /query/<id>/status -------------------------------------------------------------


async def test_status_has_every_field(client: Client) -> None:
    query_id = await client.submit(FAST)
    status = await client.wait_state(query_id, "SUCCEEDED")
    assert status["id"] == query_id
    assert status["state_reason"] is None
    assert status["database"] == "default"
    assert status["workgroup"] == "primary"
    assert status["athena_query_execution_id"]
    for key in ("submitted_at", "completed_at", "results_at"):
        assert ISO_Z.match(status[key]), (key, status[key])
    # No retention in this config: the results are kept until a refresh.
    assert status["results_expires_at"] is None
    statistics = dict(status["statistics"])
    cost = statistics.pop("cost_usd")
    assert set(statistics) == {
        "data_scanned_bytes",
        "engine_execution_ms",
        "queue_ms",
        "total_execution_ms",
    }
    assert all(isinstance(v, int) and v >= 0 for v in statistics.values())
    assert isinstance(cost, int | float) and cost >= 0


@pytest.mark.parametrize("action", ["status", "results", "refresh", "cancel"])
@pytest.mark.parametrize(
    "segment", [str(uuid.uuid4()), "not-a-uuid", str(uuid.uuid4()).upper(), "..%2F..%2Fetc"]
)
async def test_unknown_or_malformed_id_is_404(client: Client, action: str, segment: str) -> None:
    method = "GET" if action in ("status", "results") else "POST"
    response = await client.request(method, f"/query/{segment}/{action}")
    assert_error(response, 404, "not_found")


async def test_unknown_route_and_wrong_method_are_json(client: Client) -> None:
    assert_error(await client.request("GET", "/nope"), 404, "not_found")
    assert_error(await client.request("GET", "/query"), 405, "method_not_allowed")
    query_id = await client.submit(FAST)
    response = await client.request("DELETE", f"/query/{query_id}/status")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET"


# -- GET /query/<id>/results ------------------------------------------------------------


async def test_results_keep_null_distinct_from_empty_and_skip_the_header(client: Client) -> None:
    query_id = await client.submit(FAST)
    await client.wait_state(query_id, "SUCCEEDED")
    response = await client.request("GET", f"/query/{query_id}/results")
    assert response.code == 200
    document = body(response)
    assert document["id"] == query_id
    assert document["state"] == "SUCCEEDED"
    assert ISO_Z.match(document["results_at"])
    assert document["columns"] == [
        {"name": "n", "type": "integer"},
        {"name": "s", "type": "varchar"},
    ]
    assert document["rows"] == [["1", None], ["2", ""]]
    assert document["row_count"] == 2


async def test_results_of_a_running_query_are_409_with_retry_after(client: Client) -> None:
    query_id = await client.submit(HELD)
    await client.wait_state(query_id, "RUNNING")
    response = await client.request("GET", f"/query/{query_id}/results")
    assert_error(response, 409, "query_running", state="RUNNING")
    assert int(response.headers["Retry-After"]) >= 1


async def test_results_of_a_queued_query_are_409(client: Client, double: AthenaDouble) -> None:
    query_id = await client.submit('SELECT 4\n-- double: {"queue_ms": 600000}')
    status = await client.wait_state(query_id, "QUEUED")
    assert status["state"] == "QUEUED"
    response = await client.request("GET", f"/query/{query_id}/results")
    assert_error(response, 409, "query_running", state="QUEUED")


async def test_results_of_a_cancelled_query_are_409(client: Client) -> None:
    query_id = await client.submit(HELD)
    await client.wait_state(query_id, "RUNNING")
    await client.cancel(query_id)
    response = await client.request("GET", f"/query/{query_id}/results")
    assert_error(response, 409, "query_cancelled", state="CANCELLED")


async def test_failed_query_says_why(client: Client) -> None:
    query_id = await client.submit(FAILING)
    status = await client.wait_state(query_id, "FAILED")
    assert "no_such_table" in status["state_reason"]
    response = await client.request("GET", f"/query/{query_id}/results")
    document = assert_error(response, 409, "query_failed", state="FAILED")
    assert "no_such_table" in document["error"]["message"]


async def test_query_athena_refuses_at_start_fails(client: Client, double: AthenaDouble) -> None:
    query_id = await client.submit(
        'SELEC 5\n-- double: {"start_invalid": "line 1:1: mismatched input"}'
    )
    status = await client.wait_state(query_id, "FAILED")
    assert "mismatched input" in status["state_reason"]
    assert status["athena_query_execution_id"] is None


# -- POST /query/<id>/refresh -----------------------------------------------------------


async def test_refresh_of_a_running_query_is_409(client: Client) -> None:
    query_id = await client.submit(HELD)
    await client.wait_state(query_id, "RUNNING")
    response = await client.request("POST", f"/query/{query_id}/refresh")
    assert_error(response, 409, "query_running", state="RUNNING")
    assert (await client.status(query_id))["state"] == "RUNNING"


async def test_refresh_removes_old_results_and_runs_again(client: Client, config) -> None:
    query_id = await client.submit(FAST)
    before = await client.wait_state(query_id, "SUCCEEDED")
    results_dir = config.results.dir
    old_files = list(Path(results_dir).glob(f"{query_id}.*"))
    assert len(old_files) == 1
    response = await client.request("POST", f"/query/{query_id}/refresh")
    assert response.code == 202
    assert body(response) == {"id": query_id, "state": "QUEUED"}
    assert not old_files[0].exists()
    after = await client.wait_state(query_id, "SUCCEEDED")
    assert after["athena_query_execution_id"] != before["athena_query_execution_id"]
    assert after["results_at"] > before["results_at"]
    results = body(await client.request("GET", f"/query/{query_id}/results"))
    assert results["rows"] == [["1", None], ["2", ""]]


async def test_refresh_of_failed_and_cancelled_queries_is_allowed(client: Client) -> None:
    failed = await client.submit(FAILING)
    await client.wait_state(failed, "FAILED")
    response = await client.request("POST", f"/query/{failed}/refresh")
    assert response.code == 202
    await client.wait_state(failed, "FAILED")
    cancelled = await client.submit(HELD)
    await client.wait_state(cancelled, "RUNNING")
    await client.cancel(cancelled)
    response = await client.request("POST", f"/query/{cancelled}/refresh")
    assert body(response) == {"id": cancelled, "state": "QUEUED"}
    status = await client.wait_state(cancelled, "RUNNING")
    assert status["state_reason"] is None


# -- POST /query/<id>/cancel ------------------------------------------------------------


async def test_cancel_of_a_running_query_stops_it_in_athena(
    client: Client, double: AthenaDouble
) -> None:
    query_id = await client.submit(HELD)
    status = await client.wait_state(query_id, "RUNNING")
    response = await client.request("POST", f"/query/{query_id}/cancel")
    assert response.code == 200
    assert body(response) == {"id": query_id, "state": "CANCELLED"}
    execution = double.execution(status["athena_query_execution_id"])
    assert execution["state"] == "CANCELLED"
    assert execution["stop_calls"] == 1
    status = await client.status(query_id)
    assert status["state"] == "CANCELLED"
    assert status["state_reason"] == "cancelled by client"


async def test_cancel_twice_is_409_cancelled(client: Client, double: AthenaDouble) -> None:
    query_id = await client.submit(HELD)
    await client.wait_state(query_id, "RUNNING")
    await client.request("POST", f"/query/{query_id}/cancel")
    response = await client.request("POST", f"/query/{query_id}/cancel")
    assert_error(response, 409, "query_cancelled", state="CANCELLED")
    assert double.calls()["StopQueryExecution"] == 1


@pytest.mark.parametrize(("sql", "state"), [(FAST, "SUCCEEDED"), (FAILING, "FAILED")])
async def test_cancel_of_a_finished_query_is_409_and_changes_nothing(
    client: Client, double: AthenaDouble, sql: str, state: str
) -> None:
    query_id = await client.submit(sql)
    before = await client.wait_state(query_id, state)
    response = await client.request("POST", f"/query/{query_id}/cancel")
    assert_error(response, 409, "query_finished", state=state)
    assert await client.status(query_id) == before
    assert double.calls().get("StopQueryExecution", 0) == 0
    if state == "SUCCEEDED":
        assert (await client.request("GET", f"/query/{query_id}/results")).code == 200


async def test_cancel_not_yet_confirmed_answers_202_and_the_poller_finishes_it(
    client: Client, double: AthenaDouble
) -> None:
    # A query whose stop Athena takes a while to confirm: it stays RUNNING after the stop call.
    query_id = await client.submit('SELECT 6\n-- double: {"hold": true, "stop_ms": 3000}')
    await client.wait_state(query_id, "RUNNING")
    response = await client.request("POST", f"/query/{query_id}/cancel")
    assert response.code == 202
    assert body(response) == {"id": query_id, "state": "RUNNING", "cancel_requested": True}
    status = await client.wait_state(query_id, "CANCELLED")
    assert status["state_reason"] == "cancelled by client"


async def test_health_is_open(client: Client) -> None:
    response = await client.request("GET", "/health")
    assert response.code == 200
    assert body(response) == {"status": "ok"}


async def test_results_over_several_athena_pages_are_stored_whole(client: Client) -> None:
    query_id = await client.submit(
        "SELECT i::INTEGER AS n, 'row ' || i AS label,"
        " CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE 'x' END AS maybe"
        ' FROM range(2500) t(i) ORDER BY i\n-- double: {"generate": 2500}'
    )
    await client.wait_state(query_id, "SUCCEEDED")
    # One page of the maximum size holds them all (the default page is 1,000 rows).
    document = body(await client.request("GET", f"/query/{query_id}/results?limit=10000"))
    assert document["row_count"] == 2500
    assert document["columns"][0] == {"name": "n", "type": "integer"}
    assert [row[0] for row in document["rows"]] == [str(i) for i in range(2500)]
    assert document["rows"][3] == ["3", "row 3", None]
    assert document["rows"][4] == ["4", "row 4", ""]
