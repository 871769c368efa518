"""Bad input as an attacker sends it, against the real server: every answer a JSON 4xx
(or a closed connection where no answer can be read), never a 500, a hang or memory
spent on a body that is refused. Raw sockets where a client library would not send it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import HTTPResponse

from athenaq.app import Service
from athenaq.config import Config
from tests.conftest import Client, body, wait_for, with_keys

SELECT = 'SELECT 1\n-- double: {"columns": [["n","integer"]], "rows": [["1"]]}'  # a quick SUCCEEDED
JSON = {"Content-Type": "application/json"}
SECURITY = {
    "Server": "athenaq",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
MIB = 1024 * 1024
UNKNOWN_ID = "5f0c2a4e-0000-4000-8000-000000000000"


class Answer:
    """One HTTP answer read off a raw connection."""

    def __init__(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.status = status
        self.headers = headers
        self.content = content

    def error(self) -> dict[str, Any]:
        assert self.headers["content-type"].startswith("application/json"), self.headers
        document: dict[str, Any] = json.loads(self.content)
        return document["error"]  # type: ignore[no-any-return]


class Raw:
    """A TCP connection to the service that writes whatever bytes the test gives it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, service: Service) -> Raw:
        url = urlsplit(service.url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode("latin1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        content = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return Answer(int(status_line.split()[1]), headers, content)

    async def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the connection, with nothing more sent."""

        async def eof() -> bool:
            try:
                return await asyncio.wait_for(self.reader.read(1), 0.05) == b""
            except TimeoutError:
                return False
            except ConnectionError:
                return True

        return bool(await wait_for(eof, timeout, "the server to close the connection"))

    async def rest(self) -> bytes:
        """All the server sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), 10)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[Service], Awaitable[Raw]]]:
    """Raw connections to a service, each closed after the test."""
    opened: list[Raw] = []

    async def open_raw(service: Service) -> Raw:
        connection = await Raw.open(service)
        opened.append(connection)
        return connection

    yield open_raw
    for connection in opened:
        connection.close()


@pytest.fixture
def raw(
    service: Service, connect: Callable[[Service], Awaitable[Raw]]
) -> Callable[[], Awaitable[Raw]]:
    """Raw connections to the test's own service."""
    return lambda: connect(service)


def request_head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: athenaq", *headers, "", ""]).encode()


def assert_error(response: HTTPResponse, status: int, code: str) -> dict[str, Any]:
    assert response.code == status, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = body(response)["error"]
    assert error["code"] == code, error
    return error


# 1. Lone surrogates: text that is not Unicode never reaches the query's .encode().


async def test_an_escaped_lone_surrogate_is_a_validation_error(client: Client) -> None:
    raw_body = b'{"query": "SELECT \'\\ud800\'"}'
    response = await client.request("POST", "/query", raw=raw_body, headers=JSON)
    error = assert_error(response, 400, "validation_error")
    assert error["message"].startswith("query: ")


async def test_a_lone_surrogate_in_a_nested_field_name_is_a_validation_error(
    client: Client,
) -> None:
    raw_body = b'{"query": "SELECT 1", "x": [{"\\udfff": 1}]}'
    response = await client.request("POST", "/query", raw=raw_body, headers=JSON)
    assert_error(response, 400, "validation_error")


async def test_a_surrogate_as_raw_bytes_is_invalid_json(client: Client) -> None:
    raw_body = b'{"query": "SELECT \'\xed\xa0\x80\'"}'
    response = await client.request("POST", "/query", raw=raw_body, headers=JSON)
    error = assert_error(response, 400, "invalid_json")
    assert "UTF-8" in error["message"]


async def test_an_escaped_surrogate_pair_is_text(client: Client) -> None:
    raw_body = b'{"query": "SELECT \'\\ud83d\\ude00\' -- \\\\ud800 is no escape here"}'
    response = await client.request("POST", "/query", raw=raw_body, headers=JSON)
    assert response.code == 202, response.body
    status = await client.status(body(response)["id"])
    assert status["query"] == "SELECT '\U0001f600' -- \\ud800 is no escape here"


# 2. Nesting deeper than the parser follows.


@pytest.mark.parametrize(
    "raw_body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"query": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
    ],
    ids=["arrays", "objects"],
)
async def test_a_body_nested_100000_deep_is_a_400(client: Client, raw_body: bytes) -> None:
    response = await client.request("POST", "/query", raw=raw_body, headers=JSON)
    error = assert_error(response, 400, "invalid_json")
    assert "nested too deeply" in error["message"]


# 3. Bodies over the limit, announced or chunked: a JSON 413 while the server can answer.


async def test_an_announced_200_mib_body_is_refused_before_it_is_sent(
    raw: Callable[[], Awaitable[Raw]],
) -> None:
    connection = await raw()
    await connection.send(
        request_head(
            "POST", "/query", "Content-Type: application/json", f"Content-Length: {200 * MIB}"
        )
    )
    answer = await connection.answer()
    assert answer.status == 413
    assert answer.error() == {
        "code": "payload_too_large",
        "message": f"the body is over {MIB} bytes",
    }
    # Tornado would otherwise read (and drop) 200 MiB; it closes the connection instead.
    assert await connection.closed_by_server()


async def test_a_chunked_body_over_the_limit_is_refused_once_it_passes_it(
    raw: Callable[[], Awaitable[Raw]],
) -> None:
    connection = await raw()
    await connection.send(
        request_head(
            "POST", "/query", "Content-Type: application/json", "Transfer-Encoding: chunked"
        )
    )
    chunk = b"x" * (64 * 1024)
    for _ in range(MIB // len(chunk) + 1):
        await connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    answer = await connection.answer()
    assert answer.status == 413
    assert answer.error()["code"] == "payload_too_large"
    assert await connection.closed_by_server()


async def test_a_chunked_body_under_the_limit_is_read(raw: Callable[[], Awaitable[Raw]]) -> None:
    connection = await raw()
    document = json.dumps({"query": SELECT}).encode()
    await connection.send(
        request_head(
            "POST", "/query", "Content-Type: application/json", "Transfer-Encoding: chunked"
        )
    )
    half = len(document) // 2
    for part in (document[:half], document[half:], b""):
        await connection.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    answer = await connection.answer()
    assert answer.status == 202, answer.content


# 4. Routes that take no body refuse one before reading it; the cap holds on every route.

NO_BODY_ROUTES = [
    ("POST", f"/query/{UNKNOWN_ID}/cancel"),
    ("POST", f"/query/{UNKNOWN_ID}/refresh"),
    ("GET", f"/query/{UNKNOWN_ID}/status"),
    ("GET", f"/query/{UNKNOWN_ID}/results"),
    ("GET", "/health"),
    ("GET", "/query"),
]


@pytest.mark.parametrize(("method", "path"), NO_BODY_ROUTES)
async def test_a_route_without_a_body_refuses_one_before_reading_it(
    raw: Callable[[], Awaitable[Raw]], method: str, path: str
) -> None:
    # Four 64 MiB bodies to cancel once took the server from 107 to 600 MB. Each is
    # answered here before a byte of it is sent: nothing of it can have been read.
    for _ in range(4):
        connection = await raw()
        await connection.send(
            request_head(
                method, path, "Content-Type: application/json", f"Content-Length: {64 * MIB}"
            )
        )
        answer = await connection.answer()
        assert answer.status == 413
        assert answer.error() == {
            "code": "payload_too_large",
            "message": f"{method} {path} takes no body",
        }
        assert await connection.closed_by_server()


async def test_a_64_mib_body_to_cancel_is_never_read(raw: Callable[[], Awaitable[Raw]]) -> None:
    connection = await raw()
    await connection.send(
        request_head("POST", f"/query/{UNKNOWN_ID}/cancel", f"Content-Length: {64 * MIB}")
    )
    assert (await connection.answer()).status == 413
    # The server has closed its end: the body cannot be delivered, only the few MiB the
    # kernels' buffers hold are taken before the write fails.
    piece = b"x" * MIB
    with pytest.raises(ConnectionError):
        for _ in range(64):
            await connection.send(piece)


@pytest.mark.parametrize(("method", "path"), NO_BODY_ROUTES[:2])
async def test_a_route_without_a_body_refuses_a_chunked_one(
    raw: Callable[[], Awaitable[Raw]], method: str, path: str
) -> None:
    connection = await raw()
    await connection.send(request_head(method, path, "Transfer-Encoding: chunked"))
    answer = await connection.answer()
    assert answer.status == 413
    assert answer.error()["code"] == "payload_too_large"


async def test_a_small_body_to_cancel_is_refused_too(client: Client) -> None:
    query_id = await client.submit(SELECT)
    response = await client.request("POST", f"/query/{query_id}/cancel", {"force": True})
    assert_error(response, 413, "payload_too_large")
    assert (await client.request("POST", f"/query/{query_id}/cancel")).code in (200, 202, 409)


@pytest.mark.parametrize(
    "framing",
    [
        ("Content-Length: lots",),
        ("Content-Length: -1",),
        ("Content-Length: 5, 6",),
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: gzip, chunked",),
    ],
)
@pytest.mark.parametrize("path", ["/query", f"/query/{UNKNOWN_ID}/cancel"])
async def test_a_body_with_broken_framing_is_one_json_400(
    raw: Callable[[], Awaitable[Raw]], framing: tuple[str, ...], path: str
) -> None:
    connection = await raw()
    await connection.send(
        request_head("POST", path, "Content-Type: application/json", *framing) + b"hello"
    )
    answer = await connection.answer()
    assert answer.status == 400
    assert answer.error()["code"] == "bad_request"
    # Nothing after it (Tornado's own bare 400 once followed), and no next request read.
    assert await connection.rest() == b""


# 5. Query strings and path segments Tornado cannot take as they come.


async def test_ten_thousand_query_parameters_are_a_json_400(
    raw: Callable[[], Awaitable[Raw]],
) -> None:
    connection = await raw()
    query = "&".join(["a=1"] * 10_000)
    await connection.send(request_head("GET", f"/query/{UNKNOWN_ID}/results?{query}"))
    answer = await connection.answer()
    assert answer.status == 400
    assert answer.error()["code"] == "bad_request"
    for name, value in SECURITY.items():
        assert answer.headers[name.lower()] == value


@pytest.mark.parametrize("segment", ["%ff%fe", "%c0%ae", "%ed%a0%80"])
@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", "status"), ("GET", "results"), ("POST", "cancel")]
)
async def test_an_id_that_is_not_utf8_is_not_found(
    client: Client, segment: str, method: str, suffix: str
) -> None:
    response = await client.request(method, f"/query/{segment}/{suffix}")
    assert_error(response, 404, "not_found")


# 6. A client that hangs up mid-body.


async def test_a_client_that_hangs_up_mid_body_leaves_no_request_in_flight(
    config: Config,
    start_service: Callable[[Config], Awaitable[Service]],
    connect: Callable[[Service], Awaitable[Raw]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = await start_service(
        replace(config, server=replace(config.server, drain_seconds=60.0))
    )
    in_flight = service._ctx.in_flight  # type: ignore[union-attr]
    connection = await connect(service)
    await connection.send(
        request_head("POST", "/query", "Content-Type: application/json", "Content-Length: 1000")
        + b'{"query": "SELECT 1 -- '
        + b"x" * 400
    )
    await wait_for(lambda: in_flight.count == 1, what="the request to be under way")
    connection.close()
    await wait_for(lambda: in_flight.count == 0, what="the request to leave the count")

    logged: list[dict[str, Any]] = []

    def aborted_line() -> bool:
        lines = capsys.readouterr().err.splitlines()
        logged.extend(json.loads(line) for line in lines if line.startswith("{"))
        return any(line.get("aborted") for line in logged)

    await wait_for(aborted_line, what="the aborted request's access line")
    [line] = [line for line in logged if line.get("aborted")]
    assert line["message"] == "request"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/query", 499)

    # Its drain once waited the whole drain_seconds for a request that was gone.
    started = time.monotonic()
    await service.stop()
    assert time.monotonic() - started < 10


async def test_a_finished_request_leaves_the_count_once(client: Client, service: Service) -> None:
    in_flight = service._ctx.in_flight  # type: ignore[union-attr]
    # A 413 from prepare(), then the connection closed under the unread body.
    connection = await Raw.open(service)
    await connection.send(
        request_head(
            "POST", "/query", "Content-Type: application/json", f"Content-Length: {2 * MIB}"
        )
    )
    assert (await connection.answer()).status == 413
    assert await connection.closed_by_server()
    connection.close()
    assert (await client.request("GET", "/health")).code == 200
    await wait_for(lambda: in_flight.count == 0, what="the requests to leave the count")
    assert in_flight.count == 0


# 7. Timeouts and the cap on open connections.


@pytest.fixture
async def impatient(
    config: Config, start_service: Callable[[Config], Awaitable[Service]]
) -> Service:
    server = replace(config.server, idle_connection_timeout=0.3, body_timeout=0.3)
    return await start_service(replace(config, server=server))


async def test_drip_fed_headers_are_cut_off(
    impatient: Service, connect: Callable[[Service], Awaitable[Raw]]
) -> None:
    connection = await connect(impatient)
    await connection.send(b"GET /health HTTP/1.1\r\n")
    started = time.monotonic()

    async def drip_until_closed() -> bool:
        try:
            await connection.send(b"X-Drip: 1\r\n")
        except ConnectionError:
            return True
        return connection.reader.at_eof()

    await wait_for(drip_until_closed, 10, "the server to cut the drip-fed connection")
    assert time.monotonic() - started < 5


async def test_a_body_shorter_than_its_content_length_is_cut_off(
    impatient: Service, connect: Callable[[Service], Awaitable[Raw]]
) -> None:
    connection = await connect(impatient)
    await connection.send(
        request_head("POST", "/query", "Content-Type: application/json", "Content-Length: 100")
        + b'{"query": '
    )
    started = time.monotonic()
    assert await connection.closed_by_server()
    assert time.monotonic() - started < 5


async def test_an_idle_connection_is_closed(
    impatient: Service, connect: Callable[[Service], Awaitable[Raw]]
) -> None:
    connection = await connect(impatient)
    await connection.send(request_head("GET", "/health"))
    assert (await connection.answer()).status == 200
    assert await connection.closed_by_server()


async def test_open_connections_are_capped(
    config: Config,
    start_service: Callable[[Config], Awaitable[Service]],
    connect: Callable[[Service], Awaitable[Raw]],
) -> None:
    service = await start_service(replace(config, server=replace(config.server, max_connections=3)))
    held = [await connect(service) for _ in range(3)]
    for connection in held:
        # Answered on a kept-alive connection: the server has counted it.
        await connection.send(request_head("GET", "/health"))
        assert (await connection.answer()).status == 200

    refused = await connect(service)
    answer = await refused.answer()
    assert answer.status == 503
    assert answer.error()["code"] == "overloaded"
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["server"] == "athenaq"
    assert await refused.closed_by_server()
    refused.close()

    held.pop().close()

    async def served_again() -> bool:
        connection = await Raw.open(service)
        try:
            await connection.send(request_head("GET", "/health", "Connection: close"))
            return (await connection.answer()).status == 200
        finally:
            connection.close()

    await wait_for(served_again, what="a connection slot to be free again")
    for connection in held:
        connection.close()


# 8. Headers on every answer.


async def test_every_answer_carries_the_security_headers(client: Client) -> None:
    query_id = await client.submit(SELECT)
    await client.wait_state(query_id, "SUCCEEDED")
    responses = {
        "health": await client.request("GET", "/health"),
        "status": await client.request("GET", f"/query/{query_id}/status"),
        "page": await client.request("GET", f"/query/{query_id}/results"),
        "download": await client.request("GET", f"/query/{query_id}/results?format=csv"),
        "unknown route": await client.request("GET", "/nope"),
        "wrong method": await client.request("PUT", "/query", raw=b""),
        "bad json": await client.request("POST", "/query", raw=b"{", headers=JSON),
        "not found": await client.request("GET", f"/query/{UNKNOWN_ID}/status"),
        "too large": await client.request("POST", "/health", raw=b"x"),
        "submit": await client.request("POST", "/query", {"query": SELECT}),
    }
    for name, response in responses.items():
        for header, value in SECURITY.items():
            assert response.headers.get(header) == value, (name, header)
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    assert responses["download"].code == 200
    assert responses["unknown route"].code == 404
    assert responses["wrong method"].code == 405


# 9. Forged cross-site POSTs, and CORS only for the origins the config names.


@pytest.mark.parametrize(
    ("media_type", "raw_body"),
    [
        ("text/plain", b'{"query": "SELECT 1"}'),
        ("application/x-www-form-urlencoded", b"query=SELECT+1"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="q"\r\n'),
    ],
)
async def test_a_form_or_text_post_from_a_browser_is_415(
    client: Client, media_type: str, raw_body: bytes
) -> None:
    # What a page on another site can send without a preflight.
    headers = {"Content-Type": media_type, "Origin": "https://evil.example"}
    response = await client.request("POST", "/query", raw=raw_body, headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_no_cors_headers_without_an_allow_list(client: Client) -> None:
    headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    preflight = await client.request("OPTIONS", "/query", headers=headers)
    assert_error(preflight, 405, "method_not_allowed")
    response = await client.request("GET", "/health", headers={"Origin": "https://app.example"})
    for answer in (preflight, response):
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


@pytest.fixture
async def cors_client(
    config: Config, start_service: Callable[[Config], Awaitable[Service]]
) -> Client:
    server = replace(config.server, cors_origins=("https://app.example",))
    return Client((await start_service(replace(config, server=server))).url)


def vary(response: HTTPResponse) -> set[str]:
    return {
        name.strip() for value in response.headers.get_list("Vary") for name in value.split(",")
    }


async def test_an_allowed_origin_gets_cors_headers(cors_client: Client) -> None:
    response = await cors_client.request(
        "GET", "/health", headers={"Origin": "https://app.example"}
    )
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in vary(response)
    assert "Location" in response.headers["Access-Control-Expose-Headers"]

    other = await cors_client.request("GET", "/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in vary(other)


async def test_a_preflight_from_an_allowed_origin_is_204(cors_client: Client) -> None:
    headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    response = await cors_client.request("OPTIONS", "/query", headers=headers)
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "content-type"} <= allowed
    assert response.headers["Content-Security-Policy"] == SECURITY["Content-Security-Policy"]

    cancel = await cors_client.request("OPTIONS", f"/query/{UNKNOWN_ID}/cancel", headers=headers)
    assert cancel.code == 204
    assert cancel.headers["Access-Control-Allow-Methods"] == "POST"

    headers["Origin"] = "https://evil.example"
    refused = await cors_client.request("OPTIONS", "/query", headers=headers)
    assert_error(refused, 405, "method_not_allowed")
    assert "Access-Control-Allow-Origin" not in refused.headers


async def test_with_api_keys_a_preflight_needs_no_key_and_a_refusal_says_so(
    config: Config, start_service: Callable[[Config], Awaitable[Service]]
) -> None:
    server = replace(config.server, cors_origins=("https://app.example",))
    service = await start_service(with_keys(replace(config, server=server)))
    client = Client(service.url)
    origin = {"Origin": "https://app.example"}

    # A browser sends the preflight without the Authorization header it asks about.
    preflight = await client.request(
        "OPTIONS",
        "/query",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.code == 204
    # The 401 is readable by the page's script, and says what it is.
    response = await client.request("GET", f"/query/{UNKNOWN_ID}/status", headers=origin)
    assert_error(response, 401, "unauthorized")
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
    for header, value in SECURITY.items():
        assert response.headers[header] == value
    # A body is refused on its headers, before the key would be looked up.
    too_large = await client.request("POST", f"/query/{UNKNOWN_ID}/cancel", raw=b"{}")
    assert_error(too_large, 413, "payload_too_large")
