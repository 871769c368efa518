"""The README's quick start, as a newcomer runs it: a fresh virtualenv, `pip install` of
the checkout, `athenaq --config etc/local.json` in an empty directory with no AWS
credentials and no database server; then the README's `athenaq query ... -o
answer.csv`, tools/exercise.sh against it, and tools/exercise_client.sh, the walk of
exercise.sh with the installed `athenaq` command line. Then the same with the
production example's `auth` and `sql` (API keys, read-only statements): a key made with
`athenaq keys create`, and all three with it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
# pip resolving and installing the whole dependency tree takes minutes on a busy machine
# (CI runs this beside the rest of the matrix): more than the suite's 120 s per test.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the checkout installed as the README says (once for both
    runs: the install is the slow part)."""
    venv = tmp_path_factory.mktemp("quickstart") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{ROOT}[local]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


async def test_the_readme_quick_start_runs_on_nothing_but_python(
    venv: Path, tmp_path: Path
) -> None:
    await serve_and_exercise(venv, tmp_path / "newcomer", keys=False)


async def test_the_quick_start_with_the_production_examples_api_keys(
    venv: Path, tmp_path: Path
) -> None:
    await serve_and_exercise(venv, tmp_path / "keyed", keys=True)


async def serve_and_exercise(venv: Path, newcomer: Path, *, keys: bool) -> None:
    """etc/local.json (with etc/config.json's `auth` and `sql` when `keys`) served from
    an empty directory, and tools/exercise.sh against it."""
    (newcomer / "etc").mkdir(parents=True)
    config = json.loads((ROOT / "etc" / "local.json").read_text())
    port = free_port()
    config["server"]["port"] = port  # the README's 8080 may be taken on a shared machine
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ATHENAQ_"))}
    if keys:
        production = json.loads((ROOT / "etc" / "config.json").read_text())
        assert production["auth"]["mode"] == "api_keys"
        config.update(auth=production["auth"], sql=production["sql"])
    (newcomer / "etc" / "local.json").write_text(json.dumps(config))
    if keys:
        made = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "athenaq"), "keys", "create", "--config", "etc/local.json",
            "--name", "exercise",
            cwd=newcomer, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        key, said = await asyncio.wait_for(made.communicate(), timeout=120)
        assert made.returncode == 0, said.decode()
        env["ATHENAQ_KEY"] = key.decode().strip()
    # The log goes to a file: a pipe read only at the end fills up (64 KiB) under both
    # walks' requests, and a server blocked on writing its log answers nothing.
    log = newcomer / "server.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [str(venv / "bin" / "athenaq"), "--config", "etc/local.json"],
            cwd=newcomer,
            env=env,
            stderr=log_file,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        http = AsyncHTTPClient()

        async def healthy() -> bool:
            try:
                return (await http.fetch(url + "/health", raise_error=False)).code == 200
            except OSError:
                return False

        await wait_for(healthy, timeout=60, what="the quick-start server to answer")
        # The README's next command, as it reads: SQL to a CSV file in one command.
        query = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "athenaq"), "query", "SELECT 42 AS answer", "-o", "answer.csv",
            cwd=newcomer, env={**env, "ATHENAQ_URL": url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, said = await asyncio.wait_for(query.communicate(), timeout=120)
        assert query.returncode == 0, said.decode()
        assert (newcomer / "answer.csv").read_text() == '"answer"\n"42"\n'
        # The API's walk with curl, then the same with the installed command line.
        for script in ("exercise.sh", "exercise_client.sh"):
            walk = await asyncio.create_subprocess_exec(
                shutil.which("bash") or "bash",
                str(ROOT / "tools" / script),
                url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**env, "ATHENAQ": str(venv / "bin" / "athenaq")},
            )
            output, _ = await asyncio.wait_for(walk.communicate(), timeout=300)
            text = output.decode()
            assert walk.returncode == 0, f"{script}: {text[-4000:]}"
            assert "checks passed" in text.splitlines()[-1]
            if keys:
                assert "owner=exercise" in text and "unauthorized (wrong key)" in text
                assert env["ATHENAQ_KEY"] not in text
        assert (newcomer / "athenaq.db").is_file()
        assert (newcomer / "results").is_dir()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        assert server.returncode == 0, log.read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
