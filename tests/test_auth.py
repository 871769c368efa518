"""The authorizer is asked on every request and can refuse with 401 or 403."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tornado.httputil import HTTPServerRequest

from athenaq.app import Service
from athenaq.config import Config
from athenaq.errors import Forbidden, Unauthorized
from athenaq.identity import DEFAULT_SCOPES, Caller
from tests.conftest import Client, body


class KeyAuthorizer:
    """Admits `X-Api-Key: good`, refuses other keys, and counts what it was asked."""

    def __init__(self) -> None:
        self.asked = 0

    async def authorize(self, request: HTTPServerRequest) -> Caller:
        self.asked += 1
        key = request.headers.get("X-Api-Key")
        if key is None:
            raise Unauthorized("an X-Api-Key header is required")
        if key != "good":
            raise Forbidden("this key may not use athenaq")
        return Caller("team-a", DEFAULT_SCOPES)


async def test_every_endpoint_asks_the_authorizer(
    config: Config, start_service: Callable[..., Awaitable[Service]]
) -> None:
    authorizer = KeyAuthorizer()
    service = await start_service(config, authorizer=authorizer)
    client = Client(service.url)
    response = await client.request("POST", "/query", {"query": "SELECT 1"})
    assert response.code == 401
    assert body(response)["error"]["code"] == "unauthorized"
    response = await client.request(
        "POST", "/query", {"query": "SELECT 1"}, headers={"X-Api-Key": "bad"}
    )
    assert response.code == 403
    assert body(response)["error"]["code"] == "forbidden"
    response = await client.request(
        "POST", "/query", {"query": "SELECT 1"}, headers={"X-Api-Key": "good"}
    )
    assert response.code == 202
    query_id = body(response)["id"]
    for method, action in [("GET", "status"), ("GET", "results"), ("POST", "cancel")]:
        response = await client.request(method, f"/query/{query_id}/{action}")
        assert response.code == 401, action
    assert authorizer.asked == 6
    assert (await client.request("GET", "/health")).code == 200
    assert authorizer.asked == 6
