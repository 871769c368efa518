"""GET /metrics: the Prometheus text format, scraped over HTTP and read with Prometheus's
own parser: every metric is there, the counters move with a real round trip, the
queries-by-state gauge is the store's, and the scope `metrics` guards it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPResponse

from athenaq.app import Service
from athenaq.config import Config
from athenaq.identity import METRICS
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, make_key, wait_for, with_keys

# Every family a scrape has, whatever the process did before (process_* and python_* are
# prometheus_client's own).
FAMILIES = {
    "athenaq_queries": "gauge",
    "athenaq_admission_waiting": "gauge",
    "athenaq_store_figures_age_seconds": "gauge",
    "athenaq_leases_held": "gauge",
    "athenaq_poll_lag_seconds": "gauge",
    "athenaq_poll_tick_duration_seconds": "histogram",
    "athenaq_transitions": "counter",
    "athenaq_athena_call_duration_seconds": "histogram",
    "athenaq_ingest_bytes": "counter",
    "athenaq_ingest_duration_seconds": "histogram",
    "athenaq_http_request_duration_seconds": "histogram",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "python_info": "gauge",
}
STATUS_ROUTE = "/query/([^/]+)/status"
RESULTS_ROUTE = "/query/([^/]+)/results"
STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def scripted(**script: Any) -> str:
    return f"SELECT 1 -- double: {json.dumps(script)}"


@dataclass
class Scrape:
    """A scrape as Prometheus reads it: each sample's value by name and labels."""

    types: dict[str, str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` that have `labels` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def label_values(self) -> set[str]:
        return {value for _, labels in self.samples for _, value in labels}


async def scrape(client: Client) -> Scrape:
    response = await client.request("GET", "/metrics")
    assert response.code == 200, response.body
    return parsed(response)


def parsed(response: HTTPResponse) -> Scrape:
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return Scrape(types, samples)


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def succeeded(client: Client, sql: str) -> str:
    query_id = await client.submit(sql)
    status = await client.wait_state(query_id, "SUCCEEDED", "FAILED")
    assert status["state"] == "SUCCEEDED", status
    return query_id


async def download(client: Client, query_id: str) -> bytes:
    response = await client.request("GET", f"/query/{query_id}/results?format=csv")
    assert response.code == 200, response.body
    return response.body


async def test_a_round_trip_moves_the_counters_and_no_id_becomes_a_label(
    double: AthenaDouble, service: Service, client: Client
) -> None:
    before = await scrape(client)
    assert before.types.items() >= FAMILIES.items()

    # One result from each source: its first page, the object in S3, GetQueryResults
    # page by page (the object missing).
    sources = {
        "first_page": scripted(columns=[["n", "integer"]], rows=[["1"], ["2"]]),
        "s3": scripted(generate=300),
        "get_query_results": scripted(generate=300, s3="missing"),
    }
    ids = {source: await succeeded(client, sql) for source, sql in sources.items()}
    csv = {source: await download(client, query_id) for source, query_id in ids.items()}
    page = await client.request("GET", f"/query/{ids['s3']}/results?limit=5")
    assert page.code == 200
    nowhere = await client.request("GET", f"/nowhere/{ids['s3']}")
    assert nowhere.code == 404
    after = await scrape(client)

    for event in ("submit", "run", "succeed"):
        assert moved(before, after, "athenaq_transitions_total", event=event) == 3, event
    calls = "athenaq_athena_call_duration_seconds_count"
    assert moved(before, after, calls, operation="start_query_execution", outcome="ok") == 3
    assert moved(before, after, calls, operation="batch_get_query_execution", outcome="ok") >= 1
    # A first page each, and the second source's pages.
    assert moved(before, after, calls, operation="get_query_results", outcome="ok") >= 4
    assert moved(before, after, calls, operation="get_object", outcome="ok") == 1
    assert moved(before, after, calls, operation="get_object", outcome="client_error") == 1
    assert moved(before, after, "athenaq_athena_call_duration_seconds_sum") > 0
    for source, data in csv.items():
        # A CSV download is the stored rows.csv, byte for byte.
        assert moved(before, after, "athenaq_ingest_bytes_total", source=source) == len(data)
        ingests = moved(before, after, "athenaq_ingest_duration_seconds_count", source=source)
        assert ingests == 1, source
    assert moved(before, after, "athenaq_poll_tick_duration_seconds_count") >= 1

    requests = "athenaq_http_request_duration_seconds_count"
    assert moved(before, after, requests, method="POST", route="/query", status="202") == 3
    assert moved(before, after, requests, method="GET", route=STATUS_ROUTE, status="200") >= 3
    assert moved(before, after, requests, method="GET", route=RESULTS_ROUTE, status="200") == 4
    assert moved(before, after, requests, method="GET", route="unmatched", status="404") == 1
    # The scrape before this one is counted once it is answered.
    assert moved(before, after, requests, method="GET", route="/metrics", status="200") == 1
    labels = after.label_values()
    assert not any(query_id in label for query_id in ids.values() for label in labels)
    assert not any(label.startswith("/nowhere") for label in labels)


async def test_the_queries_by_state_are_the_stores_and_read_at_most_every_few_seconds(
    config: Config,
    double: AthenaDouble,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    # One Athena slot: a query held RUNNING takes it, and the next waits for it.
    config = replace(config, athena=replace(config.athena, max_running=1))
    service = await start_service(config)
    client = Client(service.url)
    await succeeded(client, "SELECT 1")
    await succeeded(client, "SELECT 2")
    failed = await client.submit(scripted(fail="no such table"))
    await client.wait_state(failed, "FAILED")
    held = await client.submit(scripted(hold=True))
    await client.wait_state(held, "RUNNING")
    waiting = await client.submit("SELECT 3")
    status = await client.status(waiting)
    assert status["state_reason"] == "waiting for an Athena slot: 0 ahead", status

    async def holding_two() -> Scrape | None:
        # The held query and the waiting one, once the poller's claim has them.
        found = await scrape(client)
        return found if found.value("athenaq_leases_held") == 2 else None

    first: Scrape = await wait_for(holding_two, what="the poller to hold two queries")
    expected = {"QUEUED": 1, "RUNNING": 1, "SUCCEEDED": 2, "FAILED": 1, "CANCELLED": 0}
    assert {s: first.value("athenaq_queries", state=s) for s in STATES} == expected
    assert first.value("athenaq_admission_waiting") == 1
    assert 0 <= first.value("athenaq_poll_lag_seconds") < 5

    # Read once per few seconds: a scrape at once serves the same figures, older.
    second = await client.submit("SELECT 4")
    again = await scrape(client)
    assert {s: again.value("athenaq_queries", state=s) for s in STATES} == expected
    age = "athenaq_store_figures_age_seconds"
    assert again.value(age) > first.value(age)

    assert service._ctx is not None
    service._ctx.exposition.seconds = 0  # each scrape reads the store from here on
    now = await scrape(client)
    assert now.value("athenaq_queries", state="QUEUED") == 2
    assert now.value("athenaq_admission_waiting") == 2
    assert now.value(age) < again.value(age)

    double.release((await client.status(held))["athena_query_execution_id"])
    for query_id in (held, waiting, second):
        await client.wait_state(query_id, "SUCCEEDED")

    async def all_succeeded() -> Mapping[str, float] | None:
        found = await scrape(client)
        counts = {s: found.value("athenaq_queries", state=s) for s in STATES}
        return counts if counts["SUCCEEDED"] == 5 else None

    counts = await wait_for(all_succeeded, what="five queries SUCCEEDED")
    assert counts == {"QUEUED": 0, "RUNNING": 0, "SUCCEEDED": 5, "FAILED": 1, "CANCELLED": 0}


async def test_metrics_need_the_scope_when_keys_are_on(
    config: Config,
    keys_store: Store,
    start_service: Callable[[Config], Awaitable[Service]],
) -> None:
    service = await start_service(with_keys(config))
    reader = await make_key(keys_store, "reader")
    prometheus = await make_key(keys_store, "prometheus", frozenset({METRICS}))

    anyone = await Client(service.url).request("GET", "/metrics")
    assert anyone.code == 401, anyone.body
    assert anyone.headers["WWW-Authenticate"].startswith("Bearer")
    assert body(anyone)["error"]["code"] == "unauthorized"
    refused = await Client(service.url, key=reader).request("GET", "/metrics")
    assert refused.code == 403, refused.body
    assert body(refused)["error"] == {
        "code": "forbidden",
        "message": "this key lacks the scope metrics",
    }
    scraped = await scrape(Client(service.url, key=prometheus))
    assert scraped.types.items() >= FAMILIES.items()
    # The scope opens /metrics alone.
    submit = await Client(service.url, key=prometheus).request("POST", "/query", {"query": "1"})
    assert submit.code == 403, submit.body
