"""timeout_seconds over HTTP, against the scripted Athena endpoint: a query past its
deadline is stopped in Athena and ends FAILED, `timed out after N s`, by `timeout`; one
waiting for a slot times out without reaching Athena; a refresh counts the deadline
afresh; a stop Athena throttles is sent again until it lands; results Athena has win."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from athenaq.app import Service
from athenaq.clock import utcnow
from athenaq.config import Config
from athenaq.identity import TIMEOUT
from athenaq.states import QueryState, Transition
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, wait_for
from tests.histories import assert_legal_path

Q = QueryState
StartService = Callable[..., Awaitable[Service]]
HELD = 'SELECT {n} -- double: {{"hold": true}}'
TIMED_OUT = "timed out after 1 s"
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")


async def submit(client: Client, sql: str, **fields: Any) -> str:
    response = await client.request("POST", "/query", {"query": sql, **fields})
    assert response.code == 202, response.body
    query_id: str = body(response)["id"]
    return query_id


async def history(store: Store, query_id: str) -> list[Transition]:
    """The query's transitions, checked to be a legal path."""
    moves = await store.history(query_id)
    assert_legal_path(query_id, [(m.from_state, m.to_state) for m in moves])
    return moves


async def execution_id(client: Client, query_id: str) -> str:
    found: str = (await client.wait_state(query_id, "RUNNING"))["athena_query_execution_id"]
    return found


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.removesuffix("Z"))


async def test_a_running_query_past_its_timeout_is_stopped_in_athena_and_fails(
    double: AthenaDouble, client: Client, store: Store
) -> None:
    query_id = await submit(client, HELD.format(n=1), timeout_seconds=1)
    untimed = await client.submit(HELD.format(n=2))
    stopped = await execution_id(client, query_id)
    status = await client.wait_state(query_id, *FINISHED)
    assert (status["state"], status["state_reason"]) == ("FAILED", TIMED_OUT)
    assert status["timeout_seconds"] == 1
    assert at(status["timeout_at"]) == at(status["submitted_at"]) + timedelta(seconds=1)
    # Stopped in Athena, not merely given up on.
    assert double.execution(stopped)["state"] == "CANCELLED"
    assert double.execution(stopped)["stop_calls"] >= 1
    *_, last = await history(store, query_id)
    assert (last.from_state, last.to_state, last.reason, last.by) == (
        Q.RUNNING,
        Q.FAILED,
        TIMED_OUT,
        TIMEOUT,
    )
    # Not before its deadline.
    assert last.at >= at(status["timeout_at"])
    # The history a client reads says the same.
    response = await client.request("GET", f"/query/{query_id}/history")
    assert response.code == 200, response.body
    *_, move = body(response)["transitions"]
    assert {k: move[k] for k in ("run", "from", "to", "event", "reason", "by")} == {
        "run": 1,
        "from": "RUNNING",
        "to": "FAILED",
        "event": "fail",
        "reason": TIMED_OUT,
        "by": "timeout",
    }
    results = await client.request("GET", f"/query/{query_id}/results")
    assert results.code == 409, results.body
    assert body(results)["error"]["code"] == "query_failed"
    assert TIMED_OUT in body(results)["error"]["message"]
    # A query without a timeout has no deadline, and runs on.
    other = await client.status(untimed)
    assert (other["state"], other["timeout_seconds"], other["timeout_at"]) == (
        "RUNNING",
        None,
        None,
    )
    assert double.execution(other["athena_query_execution_id"])["stop_calls"] == 0


async def test_a_refresh_counts_the_timeout_from_the_refresh(
    double: AthenaDouble, client: Client, store: Store
) -> None:
    query_id = await submit(client, HELD.format(n=1), timeout_seconds=1)
    first = await client.wait_state(query_id, *FINISHED)
    assert (first["state"], first["state_reason"]) == ("FAILED", TIMED_OUT)
    response = await client.request("POST", f"/query/{query_id}/refresh")
    assert response.code == 202, response.body
    refreshed = await store.get(query_id)
    assert refreshed is not None
    refresh = (await history(store, query_id))[-1]
    assert (refresh.to_state, refresh.reason) == (Q.QUEUED, "refresh")
    # The new run's deadline is a second after the refresh, not after the submit (long
    # past: the new run would time out at once).
    assert refreshed.timeout_at is not None
    assert refreshed.timeout_at > at(first["timeout_at"]) + timedelta(seconds=1)
    assert timedelta(0) <= refresh.at + timedelta(seconds=1) - refreshed.timeout_at
    assert refresh.at + timedelta(seconds=1) - refreshed.timeout_at < timedelta(seconds=0.5)

    async def second_run_over() -> dict[str, Any] | None:
        status = await client.status(query_id)
        again = status["athena_query_execution_id"] not in (
            None,
            first["athena_query_execution_id"],
        )
        return status if again and status["state"] in FINISHED else None

    second = await wait_for(second_run_over, what="the second run to end")
    assert (second["state"], second["state_reason"]) == ("FAILED", TIMED_OUT)
    *_, last = await history(store, query_id)
    assert (last.to_state, last.reason, last.by) == (Q.FAILED, TIMED_OUT, TIMEOUT)
    assert last.at >= refreshed.timeout_at
    runs = [first["athena_query_execution_id"], second["athena_query_execution_id"]]
    assert list(double.executions()) == runs
    assert [double.execution(run)["state"] for run in runs] == ["CANCELLED", "CANCELLED"]


async def test_a_query_waiting_for_a_slot_times_out_without_reaching_athena(
    double: AthenaDouble, config: Config, start_service: StartService, keys_store: Store
) -> None:
    athena = dataclasses.replace(config.athena, max_running=1)
    client = Client((await start_service(dataclasses.replace(config, athena=athena))).url)
    holder = await client.submit(HELD.format(n=1))
    holding = await execution_id(client, holder)
    waiting = await submit(client, HELD.format(n=2), timeout_seconds=1)
    status = await client.status(waiting)
    assert status["state"] == "QUEUED"
    assert status["state_reason"] == "waiting for an Athena slot: 0 ahead"
    status = await client.wait_state(waiting, *FINISHED)
    assert (status["state"], status["state_reason"]) == ("FAILED", TIMED_OUT)
    assert status["athena_query_execution_id"] is None
    assert status["completed_at"] is not None and status["started_at"] is None
    submitted, last = await history(keys_store, waiting)
    assert (last.from_state, last.to_state, last.reason, last.by) == (
        Q.QUEUED,
        Q.FAILED,
        TIMED_OUT,
        TIMEOUT,
    )
    assert last.at >= submitted.at + timedelta(seconds=1)
    # It never reached Athena: one start, the holder's; nothing to stop.
    assert list(double.executions()) == [holding]
    assert "StopQueryExecution" not in double.calls()
    # The holder runs on, and its slot goes to the next query once it is done.
    assert (await client.status(holder))["state"] == "RUNNING"
    double.release(holding)
    assert (await client.wait_state(holder, *FINISHED))["state"] == "SUCCEEDED"
    after = await client.submit("SELECT 3")
    assert (await client.wait_state(after, *FINISHED))["state"] == "SUCCEEDED"


async def test_a_stop_athena_throttles_is_sent_again_until_it_lands(
    double: AthenaDouble, client: Client, store: Store
) -> None:
    query_id = await submit(
        client, 'SELECT 1 -- double: {"hold": true, "stop_throttle": 3}', timeout_seconds=1
    )
    stopped = await execution_id(client, query_id)
    status = await client.wait_state(query_id, *FINISHED)
    assert (status["state"], status["state_reason"]) == ("FAILED", TIMED_OUT)
    # Three stops throttled (a passing failure), sent again at later ticks; the fourth
    # landed.
    execution = double.execution(stopped)
    assert execution["state"] == "CANCELLED"
    assert execution["stop_calls"] >= 4
    *_, last = await history(store, query_id)
    assert (last.to_state, last.by) == (Q.FAILED, TIMEOUT)


async def test_results_athena_has_before_the_stop_lands_win(
    double: AthenaDouble, client: Client, store: Store
) -> None:
    """Athena takes the stop but has not carried it out (stop_ms) when the execution
    succeeds: its results are stored, and the query SUCCEEDS after its deadline."""
    query_id = await submit(
        client, 'SELECT 1 -- double: {"hold": true, "stop_ms": 60000}', timeout_seconds=1
    )
    running = await execution_id(client, query_id)

    def stopping() -> bool:
        # Sent, and sent again while Athena still reports it RUNNING.
        return int(double.execution(running)["stop_calls"]) >= 2

    await wait_for(stopping, what="the stop to be sent twice")
    assert (await client.status(query_id))["state"] == "RUNNING"
    assert double.release(running) == "SUCCEEDED"
    status = await client.wait_state(query_id, *FINISHED)
    assert (status["state"], status["state_reason"]) == ("SUCCEEDED", None)
    assert at(status["results_at"]) > at(status["timeout_at"])
    results = await client.request("GET", f"/query/{query_id}/results")
    assert results.code == 200, results.body
    assert body(results)["rows"] == [["1"]]
    moves = await history(store, query_id)
    assert [m.to_state for m in moves] == [Q.QUEUED, Q.RUNNING, Q.SUCCEEDED]
    assert TIMEOUT not in {m.by for m in moves}


async def test_a_query_whose_results_are_being_stored_is_not_timed_out(
    double: AthenaDouble, client: Client, service: Service, store: Store
) -> None:
    """Its execution SUCCEEDED in Athena: there is nothing to stop, and its results,
    stored past the deadline, are whole."""
    sql = 'SELECT * FROM t -- double: {"generate": 5000, "s3_stall_after": 20000}'
    query_id = await submit(client, sql, timeout_seconds=1)
    storing = await execution_id(client, query_id)
    await wait_for(lambda: double.s3_held(storing) >= 1, what="the download to be held")
    record = await store.get(query_id)
    assert record is not None and record.timeout_at is not None
    deadline = record.timeout_at
    poller = service.poller
    assert poller is not None
    await wait_for(lambda: utcnow() > deadline, what="the deadline to pass")
    ticks = poller.ticks
    await wait_for(lambda: poller.ticks >= ticks + 3, what="three ticks past the deadline")
    status = await client.status(query_id)
    assert (status["state"], status["state_reason"]) == ("RUNNING", None)
    assert double.execution(storing)["stop_calls"] == 0
    double.release_s3(storing)
    status = await client.wait_state(query_id, *FINISHED)
    assert (status["state"], status["row_count"]) == ("SUCCEEDED", 5000)
    assert TIMEOUT not in {m.by for m in await history(store, query_id)}
