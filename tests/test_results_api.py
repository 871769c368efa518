"""GET /query/<id>/results: pages, and whole-result downloads as CSV and JSON lines."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import HTTPResponse

from athenaq.csvformat import format_row
from athenaq.schemas import DEFAULT_PAGE_ROWS, MAX_PAGE_ROWS
from tests.athena_double import AthenaDouble
from tests.conftest import Client, body, wait_for

GENERATED_COLUMNS = [["n", "integer"], ["label", "varchar"], ["maybe", "varchar"]]
TRICKY_COLUMNS = [["id", "integer"], ["text", "varchar"]]
TRICKY_ROWS: list[list[str | None]] = [
    ["1", None],
    ["2", ""],
    ["3", 'she said "hi"'],
    ["4", "a,b,c"],
    ["5", "line one\nline two\r\nthree"],
    ["6", "héllo wörld ☃ 日本 🎉"],
    [None, '""'],
]


def generated(count: int) -> str:
    return f'SELECT 1\n-- double: {{"generate": {count}}}'


def scripted(columns: list[list[str]], rows: list[list[str | None]]) -> str:
    return "SELECT 1\n-- double: " + json.dumps({"columns": columns, "rows": rows})


def generated_row(i: int) -> list[str | None]:
    return [str(i), f"row {i}", None if i % 3 == 0 else ("" if i % 3 == 1 else "x")]


def expected_csv(columns: list[list[str]], rows: list[list[str | None]]) -> bytes:
    return "".join(
        [format_row([name for name, _ in columns])] + [format_row(r) for r in rows]
    ).encode()


def expected_jsonl(columns: list[list[str]], rows: list[list[str | None]]) -> bytes:
    header = {"columns": [{"name": name, "type": kind} for name, kind in columns]}
    lines = [header, *rows]
    return b"".join(
        json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for line in lines
    )


async def raw_get(client: Client, path: str, headers: dict[str, str] | None = None) -> HTTPResponse:
    """A GET whose body stays as sent (no Accept-Encoding added, nothing decompressed)."""
    return await client.http.fetch(
        client.base_url + path,
        headers=headers,
        raise_error=False,
        request_timeout=30,
        decompress_response=False,
    )


async def succeeded(client: Client, sql: str) -> str:
    query_id = await client.submit(sql)
    await client.wait_state(query_id, "SUCCEEDED")
    return query_id


def assert_validation_error(response: HTTPResponse, parameter: str) -> None:
    assert response.code == 400, (response.code, response.body)
    error = body(response)["error"]
    assert error["code"] == "validation_error"
    assert parameter in error["message"]


# -- pages ------------------------------------------------------------------------------


async def test_default_page_and_next_links_chain_through_the_result(
    client: Client, double: AthenaDouble
) -> None:
    query_id = await succeeded(client, generated(2500))
    first = body(await client.request("GET", f"/query/{query_id}/results"))
    assert first["row_count"] == 2500
    assert first["offset"] == 0 and first["limit"] == DEFAULT_PAGE_ROWS
    assert len(first["rows"]) == DEFAULT_PAGE_ROWS
    assert first["columns"][1] == {"name": "label", "type": "varchar"}
    assert first["next"] == f"/query/{query_id}/results?offset=1000&limit=1000"
    assert {"id", "state", "results_at"} <= first.keys()

    rows, link, pages = list(first["rows"]), first["next"], 1
    for _ in range(10):
        if link is None:
            break
        page = body(await client.request("GET", link))
        assert page["row_count"] == 2500
        rows += page["rows"]
        link, pages = page["next"], pages + 1
    assert link is None and pages == 3
    assert page["offset"] == 2000 and len(page["rows"]) == 500  # the last page is partial
    assert rows == [generated_row(i) for i in range(2500)]


async def test_page_boundaries(client: Client, double: AthenaDouble) -> None:
    query_id = await succeeded(client, generated(2500))
    path = f"/query/{query_id}/results"

    page = body(await client.request("GET", f"{path}?offset=2000&limit=500"))
    assert page["rows"] == [generated_row(i) for i in range(2000, 2500)]
    assert page["next"] is None  # ends exactly at the last row

    page = body(await client.request("GET", f"{path}?offset=1999&limit=500"))
    assert page["rows"][0] == generated_row(1999) and len(page["rows"]) == 500
    assert page["next"] == f"{path}?offset=2499&limit=500"

    page = body(await client.request("GET", f"{path}?limit=3&offset=2499"))
    assert page["rows"] == [generated_row(2499)] and page["next"] is None

    for offset in (2500, 2501, 10**15):
        response = await client.request("GET", f"{path}?offset={offset}")
        assert response.code == 200
        page = body(response)
        assert page["rows"] == [] and page["next"] is None and page["row_count"] == 2500
        assert page["offset"] == offset

    page = body(await client.request("GET", f"{path}?limit={MAX_PAGE_ROWS}&format=json"))
    assert len(page["rows"]) == 2500 and page["next"] is None


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        (f"limit={MAX_PAGE_ROWS + 1}", "limit"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("limit=", "limit"),
        ("offset=-1", "offset"),
        ("offset=1e3", "offset"),
        ("cursor=abc", "cursor"),
        ("limit=10&limit=20", "limit"),
        ("offset=0&offset=0", "offset"),
        ("format=xml", "format"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    client: Client, double: AthenaDouble, query: str, parameter: str
) -> None:
    query_id = await succeeded(client, generated(5))
    response = await client.request("GET", f"/query/{query_id}/results?{query}")
    assert_validation_error(response, parameter)


# -- downloads --------------------------------------------------------------------------


async def test_csv_download_is_athenas_csv_streamed(client: Client, double: AthenaDouble) -> None:
    query_id = await succeeded(client, scripted(TRICKY_COLUMNS, TRICKY_ROWS))
    response = await raw_get(client, f"/query/{query_id}/results?format=csv")
    assert response.code == 200
    assert response.body == expected_csv(TRICKY_COLUMNS, TRICKY_ROWS)
    assert response.body.splitlines()[2] == b'"2",""'
    assert response.body.splitlines()[1] == b'"1",'
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Content-Disposition"] == f'attachment; filename="{query_id}.csv"'
    assert "Content-Length" not in response.headers
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Encoding" not in response.headers
    assert "Accept-Encoding" in response.headers["Vary"]
    assert response.headers["Etag"]


async def test_jsonl_download(client: Client, double: AthenaDouble) -> None:
    query_id = await succeeded(client, scripted(TRICKY_COLUMNS, TRICKY_ROWS))
    response = await raw_get(client, f"/query/{query_id}/results?format=jsonl")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert response.headers["Content-Disposition"] == f'attachment; filename="{query_id}.jsonl"'
    assert "Content-Length" not in response.headers
    lines = [json.loads(line) for line in response.body.decode().split("\n")[:-1]]
    assert lines[0] == {
        "columns": [{"name": "id", "type": "integer"}, {"name": "text", "type": "varchar"}]
    }
    assert lines[1:] == TRICKY_ROWS
    assert response.body == expected_jsonl(TRICKY_COLUMNS, TRICKY_ROWS)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_gzip_download_decompresses_to_the_same_bytes(
    client: Client, double: AthenaDouble, fmt: str
) -> None:
    query_id = await succeeded(client, generated(30_000))
    path = f"/query/{query_id}/results?format={fmt}"
    plain = await raw_get(client, path)
    zipped = await raw_get(client, path, {"Accept-Encoding": "gzip, deflate"})
    assert zipped.code == 200
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert "Content-Length" not in zipped.headers
    # Compressed once: one decompression gives the plain bytes.
    assert gzip.decompress(zipped.body) == plain.body
    assert len(zipped.body) < len(plain.body)
    assert zipped.headers["Etag"] != plain.headers["Etag"]
    if fmt == "csv":
        assert plain.body == expected_csv(
            GENERATED_COLUMNS, [generated_row(i) for i in range(30_000)]
        )


async def test_etag_and_if_none_match(client: Client, double: AthenaDouble) -> None:
    query_id = await succeeded(client, scripted(TRICKY_COLUMNS, TRICKY_ROWS))
    path = f"/query/{query_id}/results?format=csv"
    first = await raw_get(client, path)
    etag = first.headers["Etag"]
    assert (await raw_get(client, path)).headers["Etag"] == etag

    cached = await raw_get(client, path, {"If-None-Match": etag})
    assert cached.code == 304 and cached.body == b""
    assert (await raw_get(client, path, {"If-None-Match": f'"other", {etag}'})).code == 304
    assert (await raw_get(client, path, {"If-None-Match": '"other"'})).code == 200
    jsonl = await raw_get(client, f"/query/{query_id}/results?format=jsonl")
    assert jsonl.headers["Etag"] != etag

    assert (await client.request("POST", f"/query/{query_id}/refresh")).code == 202
    await client.wait_state(query_id, "SUCCEEDED")
    again = await raw_get(client, path, {"If-None-Match": etag})
    assert again.code == 200
    assert again.headers["Etag"] != etag
    assert again.body == first.body


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "json"),
        ("application/json", "json"),
        ("*/*", "json"),
        ("text/html", "json"),
        ("text/csv", "csv"),
        ("application/x-ndjson", "jsonl"),
        ("text/csv;q=0.5, application/x-ndjson", "jsonl"),
        ("text/csv, application/json;q=0.9", "csv"),
    ],
)
async def test_accept_chooses_the_format(
    client: Client, double: AthenaDouble, accept: str | None, expected: str
) -> None:
    query_id = await succeeded(client, scripted(TRICKY_COLUMNS, TRICKY_ROWS))
    headers = {"Accept": accept} if accept else None
    response = await raw_get(client, f"/query/{query_id}/results", headers)
    assert response.code == 200
    kind = {"json": "application/json", "csv": "text/csv", "jsonl": "application/x-ndjson"}
    assert response.headers["Content-Type"].startswith(kind[expected])
    # `format` wins over Accept.
    response = await raw_get(client, f"/query/{query_id}/results?format=json", headers)
    assert response.headers["Content-Type"].startswith("application/json")


async def test_zero_rows_in_every_format(client: Client, double: AthenaDouble) -> None:
    columns = [["a", "varchar"], ["b", "bigint"]]
    query_id = await succeeded(client, scripted(columns, []))
    path = f"/query/{query_id}/results"
    page = body(await client.request("GET", path))
    assert page["rows"] == [] and page["row_count"] == 0 and page["next"] is None
    assert page["columns"] == [{"name": "a", "type": "varchar"}, {"name": "b", "type": "bigint"}]
    csv = await raw_get(client, f"{path}?format=csv")
    assert csv.code == 200 and csv.body == b'"a","b"\n'
    jsonl = await raw_get(client, f"{path}?format=jsonl")
    assert jsonl.code == 200 and [json.loads(x) for x in jsonl.body.splitlines()] == [
        {"columns": page["columns"]}
    ]
    zipped = await raw_get(client, f"{path}?format=csv", {"Accept-Encoding": "gzip"})
    assert gzip.decompress(zipped.body) == b'"a","b"\n'


async def test_downloads_answer_state_errors_like_pages(
    client: Client, double: AthenaDouble
) -> None:
    held = await client.submit('SELECT 1\n-- double: {"hold": true}')
    await client.wait_state(held, "RUNNING")
    response = await raw_get(client, f"/query/{held}/results?format=csv")
    assert response.code == 409 and body(response)["error"]["code"] == "query_running"
    assert response.headers["Retry-After"]
    failing = await client.submit('SELECT 1\n-- double: {"fail": "SYNTAX_ERROR: nope"}')
    await client.wait_state(failing, "FAILED")
    response = await raw_get(client, f"/query/{failing}/results?format=jsonl")
    assert response.code == 409 and body(response)["error"]["code"] == "query_failed"
    response = await raw_get(
        client, "/query/00000000-0000-4000-8000-000000000000/results?format=csv"
    )
    assert response.code == 404 and body(response)["error"]["code"] == "not_found"
    await client.cancel(held)


# -- a slow reader ----------------------------------------------------------------------


def dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response (headers removed)."""
    out, pos = bytearray(), 0
    while True:
        line_end = raw.index(b"\r\n", pos)
        size = int(raw[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += raw[line_end + 2 : line_end + 2 + size]
        pos = line_end + 2 + size + 2


async def test_a_slow_reader_gets_everything_and_holds_up_nobody(
    client: Client, double: AthenaDouble
) -> None:
    rows = 50_000
    query_id = await succeeded(client, generated(rows))
    url = urlsplit(client.base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /query/{query_id}/results?format=csv HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    received = bytearray()
    answered: list[float] = []
    try:
        for reads in range(10_000):
            data = await reader.read(4096)
            if not data:
                break
            received += data
            await asyncio.sleep(0.01)  # a slow client: a pause between small reads
            if reads in (10, 50):
                # Meanwhile the server answers everyone else at once.
                for _ in range(3):
                    started = time.monotonic()
                    assert (await client.request("GET", "/health")).code == 200
                    assert (await client.request("GET", f"/query/{query_id}/status")).code == 200
                    page = await client.request("GET", f"/query/{query_id}/results?offset=49000")
                    assert len(body(page)["rows"]) == 1000
                    answered.append(time.monotonic() - started)
        else:
            raise AssertionError("the download did not end")
    finally:
        writer.close()
    # Held up, they would wait for the download's seconds still to come (a few hundred
    # reads of 10 ms); the bound leaves a loaded machine slack below that.
    assert len(answered) == 6 and max(answered) < 2.0, answered
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert dechunk(rest) == expected_csv(GENERATED_COLUMNS, [generated_row(i) for i in range(rows)])


async def test_a_client_that_leaves_mid_download_is_let_go(
    client: Client, double: AthenaDouble, service: Any
) -> None:
    query_id = await succeeded(client, generated(50_000))
    url = urlsplit(client.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(f"GET /query/{query_id}/results?format=csv HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    assert await reader.read(1024)
    writer.close()
    await wait_for(lambda: service._ctx.in_flight.count == 0, what="the download to end")
    assert (await client.request("GET", "/health")).code == 200
