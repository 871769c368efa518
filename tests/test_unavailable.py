"""When a part athenaq depends on does not answer: a 503 with Retry-After, nothing lost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from athenaq.app import Service
from athenaq.config import Config
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body


async def test_a_cancel_athena_does_not_take_answers_503_with_retry_after(
    config: Config, double: AthenaDouble, start_service: Callable[[Config], Awaitable[Service]]
) -> None:
    # The stop's retries end within the call's deadline: a short one keeps the test short.
    service = await start_service(
        replace(config, athena=replace(config.athena, call_timeout_seconds=1.0))
    )
    client = Client(service.url)
    query_id = await client.submit('SELECT 1\n-- double: {"hold": true}')
    await client.wait_state(query_id, "RUNNING")
    double.stop()  # Athena out of reach: the stop cannot be sent
    response = await client.request("POST", f"/query/{query_id}/cancel")
    assert response.code == 503
    assert response.headers["Retry-After"] == "1"
    assert body(response)["error"] == {
        "code": "unavailable",
        "message": "Athena did not take the stop; try again",
    }
    # Nothing changed but the mark that a cancel was asked for.
    status = await client.status(query_id)
    assert (status["state"], status["cancel_requested"]) == ("RUNNING", True)
