"""Handing work over between processes: a start cut by kill -9 is sent again with the
same ClientRequestToken and runs once; SIGTERM stops taking work, hands the queries over
at once, lets downloads in flight finish for `server.drain_seconds`, and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from athenaq.app import Service
from athenaq.config import Config
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import Client, make_config, wait_for
from tests.served import Served, served, served_config

StartService = Callable[..., Awaitable[Service]]
INTERVAL = 0.05
# The heir's tick in the SIGTERM tests: long enough that "within one tick" means something.
HEIR_INTERVAL = 0.5
# PeriodicCallback's jitter (Poller.start), plus the test's own poll of the store.
TICK_SLACK = 0.1 * HEIR_INTERVAL + 0.25


def leased(config: Config, lease_seconds: float, interval: float = INTERVAL) -> Config:
    return dataclasses.replace(
        config,
        poller=dataclasses.replace(
            config.poller, lease_seconds=lease_seconds, interval_seconds=interval
        ),
    )


def serving(
    tmp_path: Path, db_url: str, double: AthenaDouble, *, server: Any = None, **poller: Any
) -> contextlib.AbstractContextManager[Served]:
    """`athenaq serve` as its own process (this checkout's code), with these `server` and
    `poller` keys."""
    document = served_config(db_url, double.url, **poller)
    document["server"].update(server or {})
    return served(tmp_path, document)


async def test_a_start_cut_by_kill_9_is_sent_again_with_its_token_and_runs_once(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    lease_seconds = 1.0
    # The answer of the start that makes the execution is held: the process dies before
    # it learns the execution id, let alone records it.
    sql = 'SELECT 1 -- double: {"start_stall_ms": 2000, "run_ms": 100}'
    store = await Store.connect(db_url, maxsize=1)
    try:
        with serving(tmp_path, db_url, double, lease_seconds=lease_seconds) as doomed:
            await doomed.serving()
            query_id = await doomed.client.submit(sql)
            made = await wait_for(double.executions, what="the start to reach the engine")
            doomed.kill()
        (first,) = made
        assert made[first] == f"athenaq-{query_id}-1"
        record = await store.get(query_id)
        assert record is not None and record.athena_execution_id is None
    finally:
        await store.close()

    heir = await start_service(
        leased(make_config(db_url, double.url, tmp_path / "results"), lease_seconds)
    )
    client = Client(heir.url)
    done = await client.wait_state(query_id, "SUCCEEDED")
    # Sent again, with the same token: Athena's answer is the first execution.
    assert done["athena_query_execution_id"] == first
    assert double.calls()["StartQueryExecution"] == 2
    assert double.executions() == {first: f"athenaq-{query_id}-1"}

    # A refresh is run 2: a new token, so a second execution, one per run.
    response = await client.request("POST", f"/query/{query_id}/refresh")
    assert response.code == 202, response.body

    async def second_run() -> dict[str, Any] | None:
        status = await client.status(query_id)
        finished = status["state"] == "SUCCEEDED" and status["athena_query_execution_id"] != first
        return status if finished else None

    again = await wait_for(second_run, what="run 2 to succeed")
    assert double.executions() == {
        first: f"athenaq-{query_id}-1",
        again["athena_query_execution_id"]: f"athenaq-{query_id}-2",
    }


async def test_sigterm_lets_a_short_ingest_finish_before_exit(
    db_url: str, double: AthenaDouble, tmp_path: Path
) -> None:
    store = await Store.connect(db_url, maxsize=1)
    try:
        with serving(tmp_path, db_url, double, lease_seconds=3600) as stopping:
            await stopping.serving()
            query_id = await stopping.client.submit(
                'SELECT 1 -- double: {"generate": 5000, "s3_stall_after": 1000}'
            )

            async def ingesting() -> str | None:
                record = await store.get(query_id)
                execution_id = record.athena_execution_id if record else None
                return execution_id if execution_id and double.s3_held(execution_id) else None

            execution_id = await wait_for(ingesting, what="the ingest to be held")
            stopping.process.send_signal(signal.SIGTERM)
            await wait_for(
                lambda: "leases released" in stopping.messages(), what="the stop to begin"
            )
            double.release_s3(execution_id)  # the rest of the result arrives during the drain
            assert await stopping.exited(timeout=15) == 0
        record = await store.get(query_id)
    finally:
        await store.close()
    assert record is not None and record.state.value == "SUCCEEDED"
    assert record.row_count == 5000 and record.lease_holder is None
    assert double.calls()["GetObject"] == 1
    assert "downloads cut by the shutdown" not in stopping.messages()


def slow_download(port: int, path: str) -> socket.socket:
    """A client that asks for a download, then reads nothing: the server's writes fill
    the small buffers and wait."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/csv\r\n\r\n".encode())
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """What the socket gives until the server closes it (or resets it, if it closed with
    unread data)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_sigterm_drains_then_cuts_and_another_process_takes_over_within_a_tick(
    db_url: str, double: AthenaDouble, tmp_path: Path, start_service: StartService
) -> None:
    drain = 1.0
    # Leases far longer than the test: only the releases hand the queries over.
    heir_config = leased(make_config(db_url, double.url, tmp_path / "heir"), 3600, HEIR_INTERVAL)
    # The stalled ingest the heir takes over never ends: its stop cuts it at once.
    heir = await start_service(
        dataclasses.replace(
            heir_config, server=dataclasses.replace(heir_config.server, drain_seconds=0)
        )
    )
    store = await Store.connect(db_url, maxsize=1)
    try:
        with serving(
            tmp_path, db_url, double, lease_seconds=3600, server={"drain_seconds": drain}
        ) as stopping:
            await stopping.serving()
            client = stopping.client
            big = await client.submit('SELECT 1 -- double: {"generate": 300000}')
            await client.wait_state(big, "SUCCEEDED", timeout=60)
            running = [
                await client.submit(f'SELECT {n} -- double: {{"hold": true}}') for n in (1, 2)
            ]
            queued = await client.submit('SELECT 3 -- double: {"queue_ms": 600000, "hold": true}')
            stalled = await client.submit(
                'SELECT 4 -- double: {"generate": 5000, "s3_stall_after": 1000}'
            )
            for query_id in running:
                await client.wait_state(query_id, "RUNNING")
            held = {*running, queued, stalled}

            async def sent_and_ingesting() -> bool:
                records = {i: await store.get(i) for i in held}
                ids = {i: r.athena_execution_id for i, r in records.items() if r is not None}
                return (
                    all(ids.values())
                    and len(ids) == len(held)
                    and bool(double.s3_held(str(ids[stalled])))
                )

            await wait_for(sent_and_ingesting, what="the starts and the held ingest")
            download = await asyncio.to_thread(
                slow_download, stopping.port, f"/query/{big}/results"
            )
            taken: dict[str, float] = {}

            async def all_taken() -> bool:
                for query_id in held - taken.keys():
                    record = await store.get(query_id)
                    if record is not None and record.lease_holder == heir.lease.holder:
                        taken[query_id] = time.monotonic()
                return taken.keys() == held

            signalled = time.monotonic()
            stopping.process.send_signal(signal.SIGTERM)
            watching = asyncio.ensure_future(
                wait_for(all_taken, timeout=drain + 15, what="the heir to take every query over")
            )
            assert await stopping.exited(timeout=drain + 15) == 0
            exited = time.monotonic()
            await watching
            # What the client gets now: what was in the buffers when the server cut it.
            received = await asyncio.to_thread(read_to_end, download)
            download.close()
        messages = stopping.messages()
        states = {i: (await store.get(i)).state.value for i in held}  # type: ignore[union-attr]
    finally:
        await store.close()
    at_once = max(taken[i] for i in held - {stalled}) - signalled
    after_drain = taken[stalled] - signalled
    print(f"exit {exited - signalled:.2f} s after SIGTERM; taken over {at_once:.2f} s after it,")
    print(f"the query whose ingest was cut {after_drain:.2f} s after it")
    assert exited - signalled <= drain + 5
    # The queries not being stored are handed over at once: the heir's next tick takes them.
    assert at_once <= HEIR_INTERVAL + TICK_SLACK
    # The one being stored is kept through the drain, then handed over in one tick.
    assert drain <= after_drain <= drain + HEIR_INTERVAL + TICK_SLACK
    # The client's download was cut, and said so; the poller's ingest too.
    assert not received.endswith(b"\r\n0\r\n\r\n")  # no last chunk: the body never ended
    assert "download cut by the shutdown" in messages
    assert "download abandoned by the client" not in messages
    assert "downloads cut by the shutdown" in messages
    # Nothing moved: the heir goes on from where the stopped process was.
    assert states == {**dict.fromkeys(running, "RUNNING"), queued: "QUEUED", stalled: "RUNNING"}
