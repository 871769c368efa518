"""The program as an operator runs it: config errors, JSON logs, and shutdown on a signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from athenaq.main import main
from tests.athena_double import AthenaDouble
from tests.conftest import DELETE, config_with
from tests.served import served, served_config


def test_version_and_a_bad_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"athenaq {version('athenaq')}\n"
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--config", "config.json", "--log-level", "chatty"])
    assert exited.value.code == 2
    assert "--log-level: invalid choice: 'CHATTY'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("document", "named"),
    [
        (config_with("athena.region", DELETE), "athena.region"),
        (config_with("server.port", "eighty"), "server.port"),
        (config_with("server.port", 70000), "server.port"),
        (config_with("poller.interval_seconds", -1), "poller.interval_seconds"),
        (config_with("database.url", "postgres://x"), "database.url"),
        (config_with("athena.output_location", "bucket/prefix"), "athena.output_location"),
        (config_with("athena.workgroup", "no spaces allowed"), "athena.workgroup"),
        (config_with("s3", DELETE), "s3"),
        (config_with("results.colour", "blue"), "results.colour"),
        ([1, 2], "config"),
    ],
)
def test_a_bad_config_stops_the_start_with_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], document: Any, named: str
) -> None:
    # In-process through the program's entry point; the command line itself is the
    # subprocess test below.
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    assert main(["--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]


def test_an_unreadable_or_non_json_config_stops_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["--config", str(broken)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_command_exits_2_on_a_bad_config_with_one_line_and_no_traceback(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_with("server.port", "eighty")))
    done = subprocess.run(
        [sys.executable, "-m", "athenaq", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "server.port" in lines[0]


def test_the_example_config_is_valid() -> None:
    from athenaq.config import load_config

    config = load_config(Path(__file__).parent.parent / "etc" / "config.json")
    assert config.results.dir == "results"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_serves_logs_json_and_exits_zero_on_a_stop_signal(
    db_url: str, double: AthenaDouble, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    # The first releases' form of the command, and `serve` with the most verbose logs.
    command = (
        ["--config", "serve.json"]
        if stop_signal == signal.SIGTERM
        else ["serve", "--config", "serve.json", "--log-level", "debug"]
    )
    credentials = {"AWS_ACCESS_KEY_ID": "secret-key-id", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    with served(
        tmp_path,
        served_config(db_url, double.url),
        command=["-m", "athenaq", *command],
        env=credentials,
    ) as process:
        await process.serving(timeout=30)
        query_id = await process.client.submit("SELECT 1")
        await process.client.wait_state(query_id, "SUCCEEDED")
        assert (tmp_path / "results").is_dir()  # relative to where the server started
        assert await process.stop(stop_signal) == 0
        stderr = process.text()
    lines = [json.loads(line) for line in stderr.splitlines()]
    for line in lines:
        assert {"timestamp", "level", "file", "line", "message"} <= set(line), line
        assert line["timestamp"].endswith("Z")
    requests = [line for line in lines if line["message"] == "request"]
    assert any(
        r["method"] == "POST"
        and r["path"] == "/query"
        and r["status"] == 202
        and "duration_ms" in r
        for r in requests
    )
    changes = [line for line in lines if line["message"] == "state changed"]
    assert {c["state"] for c in changes if c["query_id"] == query_id} >= {"QUEUED", "SUCCEEDED"}
    assert any(c.get("athena_query_execution_id") for c in changes)
    assert lines[-1]["message"] == "stopped"
    debug = any(line["level"] == "DEBUG" for line in lines)
    assert debug == (stop_signal == signal.SIGINT)
    assert "s3cr3t" not in stderr and "secret-key-id" not in stderr
