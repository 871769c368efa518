"""The submit's optional fields (API.md, "Submitting, finding and following queries"):
their checks, what the status shows of them, and what the Athena endpoints make of them,
over HTTP against a running service. The checks ask for the test double (they do not
depend on the endpoint); what the endpoint makes of the fields runs against whichever
ATHENAQ_TEST_ATHENA chooses, the double or the local engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from athenaq.app import Service
from athenaq.config import Config, WebhooksConfig
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_key, with_keys

StartService = Callable[..., Awaitable[Service]]
SECRET = "s" * 32

# Real SQL for the local engine, with the test double's script in a comment (see test_api).
FAST = 'SELECT 1 AS n\n-- double: {"columns": [["n", "integer"]], "rows": [["1"]]}'


def error_of(response: Any) -> tuple[int, str, str]:
    document = body(response)
    return response.code, document["error"]["code"], document["error"]["message"]


# Each invalid value of each field: a 400 validation_error whose message starts with the
# field's name (an item of a list by its index).
INVALID = [
    ("database", "", "database"),
    ("database", "d" * 256, "database"),
    ("database", 5, "database"),
    ("workgroup", "", "workgroup"),
    ("workgroup", "no spaces", "workgroup"),
    ("workgroup", "w" * 129, "workgroup"),
    ("workgroup", "primary\n", "workgroup"),
    ("workgroup", ["primary"], "workgroup"),
    ("catalog", "", "catalog"),
    ("catalog", "c" * 257, "catalog"),
    ("catalog", "line\nbreak", "catalog"),
    ("catalog", {"name": "x"}, "catalog"),
    ("parameters", "'x'", "parameters"),
    ("parameters", {"0": "x"}, "parameters"),
    ("parameters", ["1", 2], "parameters[1]"),
    ("parameters", [None], "parameters[0]"),
    ("parameters", [""], "parameters[0]"),
    ("parameters", ["1", "x" * 1025], "parameters[1]"),
    ("parameters", ["1"] * 101, "parameters"),
    ("labels", ["team"], "labels"),
    ("labels", "team=x", "labels"),
    ("labels", {"Team": "x"}, "labels"),
    ("labels", {"": "x"}, "labels"),
    ("labels", {"k" * 64: "x"}, "labels"),
    ("labels", {"a b": "x"}, "labels"),
    ("labels", {"team": 1}, "labels"),
    ("labels", {"team": None}, "labels"),
    ("labels", {"team": "v" * 257}, "labels"),
    ("labels", {f"k{i}": "v" for i in range(11)}, "labels"),
    ("result_reuse_minutes", 0, "result_reuse_minutes"),
    ("result_reuse_minutes", 10_081, "result_reuse_minutes"),
    ("result_reuse_minutes", 1.5, "result_reuse_minutes"),
    ("result_reuse_minutes", "60", "result_reuse_minutes"),
    ("result_reuse_minutes", True, "result_reuse_minutes"),
    ("timeout_seconds", 0, "timeout_seconds"),
    ("timeout_seconds", -5, "timeout_seconds"),
    ("timeout_seconds", 86_401, "timeout_seconds"),
    ("timeout_seconds", 30.5, "timeout_seconds"),
    ("timeout_seconds", 1e300, "timeout_seconds"),
    ("timeout_seconds", "30", "timeout_seconds"),
    ("callback_url", "hooks.example.com/x", "callback_url"),
    ("callback_url", "ftp://hooks.example.com/x", "callback_url"),
    ("callback_url", "https://", "callback_url"),
    ("callback_url", "https://user:pw@hooks.example.com/x", "callback_url"),
    ("callback_url", "https://hooks.example.com:port/x", "callback_url"),
    ("callback_url", "https://hooks.example.com/a b", "callback_url"),
    ("callback_url", "https://hooks.example.com/" + "x" * 2048, "callback_url"),
    ("callback_url", 5, "callback_url"),
    # A well-formed URL to a host webhooks.allowed_hosts does not list.
    ("callback_url", "https://elsewhere.example.com/x", "callback_url"),
    ("callback_url", "http://169.254.169.254/latest/meta-data/", "callback_url"),
]


@pytest.mark.parametrize(("field", "value", "named"), INVALID)
async def test_each_invalid_field_is_a_400_that_names_it(
    double: AthenaDouble,
    config: Config,
    start_service: StartService,
    keys_store: Store,
    field: str,
    value: Any,
    named: str,
) -> None:
    webhooks = WebhooksConfig(allowed_hosts=("hooks.example.com",), secret=SECRET)
    service = await start_service(replace(config, webhooks=webhooks))
    client = Client(service.url)
    response = await client.request("POST", "/query", {"query": FAST, field: value})
    status, code, message = error_of(response)
    assert (status, code) == (400, "validation_error"), message
    assert message.startswith(f"{named}: "), message
    assert len(await keys_store.unfinished()) == 0


async def test_a_callback_url_is_refused_while_no_host_is_allowed(
    double: AthenaDouble, client: Client
) -> None:
    response = await client.request(
        "POST", "/query", {"query": FAST, "callback_url": "https://hooks.example.com/x"}
    )
    status, code, message = error_of(response)
    assert (status, code) == (400, "validation_error")
    assert message == "callback_url: webhooks are off here (webhooks.allowed_hosts is empty)"


async def test_null_or_empty_optional_fields_are_as_if_left_out(
    double: AthenaDouble, client: Client
) -> None:
    nulls = dict.fromkeys(
        [
            "database",
            "workgroup",
            "catalog",
            "parameters",
            "labels",
            "result_reuse_minutes",
            "timeout_seconds",
            "callback_url",
        ]
    )
    for extra in ({}, nulls, {"parameters": [], "labels": {}}):
        response = await client.request("POST", "/query", {"query": FAST, **extra})
        assert response.code == 202, response.body
        status = await client.status(body(response)["id"])
        assert (status["database"], status["workgroup"], status["catalog"]) == (
            "default",
            "primary",
            "AwsDataCatalog",
        )
        assert [status[k] for k in nulls if k not in ("database", "workgroup", "catalog")] == [
            None
        ] * 5


async def test_an_integer_written_with_a_zero_fraction_is_that_integer(
    double: AthenaDouble, client: Client
) -> None:
    # JSON does not tell 30 from 30.0, nor does JSON Schema's "integer" (the OpenAPI
    # document's): a client whose encoder writes 30.0 means 30.
    fields = {"timeout_seconds": 30.0, "result_reuse_minutes": 60.0, "max_age_seconds": 5.0}
    response = await client.request("POST", "/query", {"query": FAST, **fields})
    assert response.code == 202, response.body
    status = await client.status(body(response)["id"])
    assert (status["timeout_seconds"], status["result_reuse_minutes"]) == (30, 60)
    assert isinstance(status["timeout_seconds"], int)


async def test_the_status_shows_the_fields_as_submitted(
    double: AthenaDouble, config: Config, start_service: StartService
) -> None:
    webhooks = WebhooksConfig(allowed_hosts=("hooks.example.com",), secret=SECRET)
    service = await start_service(replace(config, webhooks=webhooks))
    client = Client(service.url)
    fields = {
        "database": "sales",
        "workgroup": "reports.v2",
        "catalog": "AwsDataCatalog",
        "parameters": ["'it''s'", "42"],
        "labels": {"team": "growth", "report.id": "wk-49 ünïcode", "empty": ""},
        "result_reuse_minutes": 10_080,
        "timeout_seconds": 86_400,
        "callback_url": "https://HOOKS.example.com:8443/athenaq?x=1",
    }
    response = await client.request("POST", "/query", {"query": FAST, **fields})
    assert response.code == 202, response.body
    status = await client.status(body(response)["id"])
    assert {key: status[key] for key in fields} == fields
    assert status["reused_previous_result"] is None  # not known before Athena says


async def test_the_config_gives_the_database_workgroup_and_catalog_a_submit_leaves_out(
    double: AthenaDouble, config: Config, start_service: StartService
) -> None:
    athena = replace(config.athena, database="lake", workgroup="etl", catalog="lakehouse")
    service = await start_service(replace(config, athena=athena))
    client = Client(service.url)
    query_id = await client.submit(FAST)
    status = await client.status(query_id)
    assert (status["database"], status["workgroup"], status["catalog"]) == (
        "lake",
        "etl",
        "lakehouse",
    )


async def test_a_key_limited_to_databases_and_workgroups_is_held_to_the_ones_used(
    double: AthenaDouble, config: Config, start_service: StartService, keys_store: Store
) -> None:
    service = await start_service(with_keys(config))
    key = await make_key(
        keys_store,
        "bi",
        databases=frozenset({"sales"}),
        workgroups=frozenset({"primary", "reports"}),
    )
    client = Client(service.url, key=key)

    # The config's database, which the key lacks, when the submit names none.
    response = await client.request("POST", "/query", {"query": FAST})
    assert error_of(response) == (403, "forbidden", "this key may not query the database 'default'")
    response = await client.request("POST", "/query", {"query": FAST, "database": "hr"})
    assert error_of(response) == (403, "forbidden", "this key may not query the database 'hr'")
    response = await client.request(
        "POST", "/query", {"query": FAST, "database": "sales", "workgroup": "adhoc"}
    )
    assert error_of(response) == (403, "forbidden", "this key may not use the workgroup 'adhoc'")
    assert len(await keys_store.unfinished()) == 0

    response = await client.request(
        "POST", "/query", {"query": FAST, "database": "sales", "workgroup": "reports"}
    )
    assert response.code == 202, response.body
    status = await client.status(body(response)["id"])
    assert (status["database"], status["workgroup"]) == ("sales", "reports")
    # A refresh is held to the query's own database and workgroup, which the key allows.
    await client.wait_state(status["id"], "SUCCEEDED", "FAILED")
    refreshed = await client.request("POST", f"/query/{status['id']}/refresh")
    assert refreshed.code == 202, refreshed.body


# The rows hold a quote, and a value that would end the statement if it were pasted in.
PARAMETERIZED = (
    "SELECT n, s FROM (VALUES (1, 'it''s'), (2, '''; DROP TABLE t; --'), (3, 'x')) t(n, s)"
    " WHERE s = ? OR n = ? ORDER BY n\n-- double: "
    '{"columns": [["n", "integer"], ["s", "varchar"]], "rows": [[{"parameter": 2}, '
    '{"parameter": 1}]]}'
)


async def test_parameters_reach_the_engine_as_values(client: Client) -> None:
    found = {}
    for value in ("'it''s'", "'''; DROP TABLE t; --'"):
        response = await client.request(
            "POST", "/query", {"query": PARAMETERIZED, "parameters": [value, "-1"]}
        )
        assert response.code == 202, response.body
        query_id = body(response)["id"]
        status = await client.wait_state(query_id, "SUCCEEDED", "FAILED")
        assert status["state"] == "SUCCEEDED", status["state_reason"]
        assert status["parameters"] == [value, "-1"]
        results = body(await client.request("GET", f"/query/{query_id}/results"))
        found[value] = results["rows"]
    # The local engine finds the row holding the value; the double returns the values
    # its script selects (the parameters, as literals read).
    assert found["'it''s'"] in ([["1", "it's"]], [["-1", "it's"]])
    assert found["'''; DROP TABLE t; --'"] in (
        [["2", "'; DROP TABLE t; --"]],
        [["-1", "'; DROP TABLE t; --"]],
    )


async def test_a_parameter_count_other_than_the_placeholders_fails_the_query(
    client: Client,
) -> None:
    response = await client.request(
        "POST", "/query", {"query": PARAMETERIZED, "parameters": ["'x'"]}
    )
    assert response.code == 202, response.body
    status = await client.wait_state(body(response)["id"], "SUCCEEDED", "FAILED")
    assert status["state"] == "FAILED"
    assert "Incorrect number of parameters: expected 2 but found 1" in status["state_reason"]


async def test_a_repeat_within_result_reuse_minutes_reports_the_reused_result(
    client: Client,
) -> None:
    submit = {"query": PARAMETERIZED, "parameters": ["'x'", "3"], "result_reuse_minutes": 5}
    statuses, rows = [], []
    for _ in range(2):
        response = await client.request("POST", "/query", submit)
        assert response.code == 202, response.body
        status = await client.wait_state(body(response)["id"], "SUCCEEDED", "FAILED")
        statuses.append(status)
        results = await client.request("GET", f"/query/{status['id']}/results")
        rows.append(body(results)["rows"])
    first, repeat = statuses
    assert (first["state"], repeat["state"]) == ("SUCCEEDED", "SUCCEEDED")
    assert (first["reused_previous_result"], repeat["reused_previous_result"]) == (False, True)
    assert repeat["result_reuse_minutes"] == 5
    assert repeat["statistics"]["data_scanned_bytes"] == 0
    assert repeat["athena_query_execution_id"] != first["athena_query_execution_id"]
    assert rows[0] == rows[1] == [["3", "x"]]


async def test_the_repeat_runs_nothing_in_the_double(double: AthenaDouble, client: Client) -> None:
    submit = {"query": FAST, "result_reuse_minutes": 60}
    ids = []
    for _ in range(2):
        response = await client.request("POST", "/query", submit)
        ids.append(body(response)["id"])
        await client.wait_state(ids[-1], "SUCCEEDED")
    executions = [(await client.status(i))["athena_query_execution_id"] for i in ids]
    assert [double.execution(e)["reused"] for e in executions] == [False, True]


async def test_an_unknown_catalog_fails_the_query_as_athena_does(client: Client) -> None:
    response = await client.request("POST", "/query", {"query": FAST, "catalog": "no_such"})
    assert response.code == 202, response.body
    status = await client.wait_state(body(response)["id"], "SUCCEEDED", "FAILED")
    assert status["state"] == "FAILED"
    assert status["catalog"] == "no_such"
    assert "CATALOG_NOT_FOUND: Catalog 'no_such' does not exist" in status["state_reason"]
