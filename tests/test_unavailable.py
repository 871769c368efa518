"""When a part athenaq depends on does not answer: a 503 with Retry-After, nothing lost."""

from __future__ import annotations

from tests.athena_double import AthenaDouble
from tests.conftest import Client, body


async def test_a_cancel_athena_does_not_take_answers_503_with_retry_after(
    client: Client, double: AthenaDouble
) -> None:
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
