"""The client commands of the `athenaq` program, run as a user runs them (a process of
their own) against a running service: the README's one command from SQL to a CSV
file, the exit statuses, and a key that is never printed. tools/exercise_client.sh walks
every command, refresh, history, list and usage among them (tests/quickstart runs it)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from athenaq.app import Service
from athenaq.config import Config
from athenaq.store import Store
from tests.conftest import free_port, make_key, with_keys
from tests.test_client import FAILING, FAST, FAST_CSV, HELD

ANSWER = 'SELECT 42 AS answer\n-- double: {"columns": [["answer","integer"]], "rows": [["42"]]}'


@dataclass
class Done:
    status: int
    out: str
    err: str


async def athenaq(*args: str, url: str, cwd: Path | None = None, **env: str) -> Done:
    """`athenaq ARGS...` with ATHENAQ_URL=url (and the `env` given), to its end."""
    variables = {k: v for k, v in os.environ.items() if not k.startswith("ATHENAQ_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "athenaq", *args,
        cwd=cwd, env={**variables, "ATHENAQ_URL": url, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


async def test_one_command_from_sql_to_a_csv_file(service: Service, tmp_path: Path) -> None:
    # The README's: `athenaq query "SELECT 42 AS answer" -o answer.csv`.
    done = await athenaq("query", ANSWER, "-o", "answer.csv", url=service.url, cwd=tmp_path)

    assert done.status == 0, done.err
    assert (tmp_path / "answer.csv").read_text() == '"answer"\n"42"\n'
    assert done.out == ""
    # The progress lines, written as lines when stderr is not a terminal.
    assert "SUCCEEDED" in done.err and "scanned" in done.err
    assert "answer.csv: 14 bytes in " in done.err and "1 row written to answer.csv" in done.err
    # Without -o, off a terminal: CSV on stdout; JSON lines or a table when asked.
    plain, lines, table = await asyncio.gather(
        athenaq("query", "-q", FAST, url=service.url),
        athenaq("query", "-q", FAST, "--format", "jsonl", url=service.url),
        athenaq("query", "-q", FAST, "--format", "table", url=service.url),
    )
    assert plain.out == FAST_CSV
    assert [json.loads(line) for line in lines.out.splitlines()][1:] == [["1", None], ["2", ""]]
    assert table.status == 0 and "NULL" in table.out and all(c in table.out for c in "ns12")


async def test_exit_statuses(service: Service, tmp_path: Path) -> None:
    failed, submitted = await asyncio.gather(
        athenaq("query", FAILING, "-o", "failed.csv", url=service.url, cwd=tmp_path),
        athenaq("query", "--no-wait", "-q", HELD, url=service.url),
    )
    assert failed.status == 1 and "FAILED: " in failed.err and "no_such_table" in failed.err
    assert not (tmp_path / "failed.csv").exists()
    assert submitted.status == 0 and submitted.err == ""
    held = submitted.out.strip()
    running = await athenaq("refresh", held, url=service.url)
    assert running.status == 1 and "query_running" in running.err
    assert (await athenaq("cancel", held, url=service.url)).status == 0
    cancelled = await athenaq("status", held, "--wait", url=service.url)
    assert cancelled.status == 1 and json.loads(cancelled.out)["state"] == "CANCELLED"
    assert f"query {held} CANCELLED" in cancelled.err

    # Usage: bad arguments, and a request the service finds invalid (400).
    *usage, refused, unreachable = await asyncio.gather(
        athenaq("query", url=service.url),
        athenaq("query", FAST, "--format", "table", "-o", "out.csv", url=service.url),
        athenaq("query", FAST, "--label", "no-equals-sign", url=service.url),
        athenaq("list", "--state", "DONE", url=service.url),
        athenaq("query", FAST, "--timeout", "0", url=service.url),
        athenaq("status", held, url=f"http://127.0.0.1:{free_port()}"),
    )
    assert [done.status for done in usage] == [2, 2, 2, 2], [done.err for done in usage]
    assert refused.status == 2 and "validation_error: timeout_seconds" in refused.err
    assert unreachable.status == 3 and "no answer from http://127.0.0.1:" in unreachable.err


async def test_the_key_is_sent_and_never_printed(
    config: Config,
    keys_store: Store,
    start_service: Callable[[Config], Awaitable[Service]],
    tmp_path: Path,
) -> None:
    service = await start_service(with_keys(config))
    key = await make_key(keys_store, "cli")
    outputs = []
    by_option = await athenaq(
        "query", ANSWER, "--key", key, "-o", "a.csv", url=service.url, cwd=tmp_path
    )
    assert by_option.status == 0, by_option.err
    outputs.append(by_option)
    listed = await athenaq("list", url=service.url, ATHENAQ_KEY=key)
    assert listed.status == 0 and json.loads(listed.out)["owner"] == "cli"
    outputs.append(listed)
    *wrong, unreachable, usage = await asyncio.gather(
        athenaq("list", url=service.url),
        athenaq("list", url=service.url, ATHENAQ_KEY=key[:-1] + "x"),
        athenaq("list", "--key", key, url=f"http://127.0.0.1:{free_port()}"),
        athenaq("query", "--key", key, "--bad-option", url=service.url),
    )
    for refused in wrong:
        assert refused.status == 1 and "unauthorized" in refused.err
    assert (unreachable.status, usage.status) == (3, 2)
    outputs += [*wrong, unreachable, usage]
    for done in outputs:
        assert key not in done.out and key not in done.err


async def test_client_commands_load_nothing_of_the_service(service: Service) -> None:
    # What a client command imports, inside its own process: none of the service's stack.
    program = (
        "import sys; from athenaq.main import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'tornado', "
        "'aiobotocore', 'botocore', 'sqlalchemy', 'marshmallow', 'loguru', 'sqlglot', "
        "'numpy'} or m in {'athenaq.config', 'athenaq.app', 'athenaq.logs'}), code)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, "list", "--url", service.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert out.decode().splitlines()[-1] == "[] 0", err.decode()
    # One program: `athenaq --help` names the service's commands and the client's.
    helped = await athenaq("--help", url=service.url)
    for command in ("serve", "migrate", "keys", "query", "status", "cancel", "refresh"):
        assert command in helped.out
    for command in ("history", "list", "usage"):
        assert command in helped.out
