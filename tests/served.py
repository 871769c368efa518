"""athenaq as its own process, as an operator runs it: `python -m athenaq serve` in a
folder of the test's, its config file written there. Its log is read from a pipe into
memory as it comes (a pipe nobody reads could fill and block the process; a file would
count against a file size limit the test sets on the process)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import V1_CONFIG, Client, free_port, wait_for


def served_config(db_url: str, endpoint_url: str, **poller: Any) -> dict[str, Any]:
    """A config document for a served process on a free port: the store at `db_url`, the
    Athena and S3 endpoint at `endpoint_url`, results in `results` beside the config, and
    a poller ticking every 50 ms (with the other `poller` keys given)."""
    document: dict[str, Any] = json.loads(json.dumps(V1_CONFIG))
    document["server"]["port"] = free_port()
    document["database"]["url"] = db_url
    document["athena"]["endpoint_url"] = endpoint_url
    document["s3"]["endpoint_url"] = endpoint_url
    document["poller"].update({"interval_seconds": 0.05, **poller})
    return document


class Served:
    """`python <command>` in `folder`, `document` written there as `<name>.json`; the
    command is `-m athenaq serve --config <name>.json` unless given."""

    def __init__(
        self,
        folder: Path,
        document: dict[str, Any],
        *,
        name: str = "serve",
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = folder / f"{name}.json"
        self.config_path.write_text(json.dumps(document))
        self.port = int(document["server"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = Client(self.url)
        args = command or ["-m", "athenaq", "serve", "--config", self.config_path.name]
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
        )
        self._log: list[bytes] = []
        stderr = self.process.stderr
        assert stderr is not None
        self._reader = threading.Thread(target=lambda: self._log.extend(stderr), daemon=True)
        self._reader.start()

    async def serving(self, timeout: float = 60) -> None:
        """Wait until `/health` answers; fail at once, with the log, if the process ended."""

        async def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the served process exited early:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                return (await self.client.request("GET", "/health")).code == 200
            return False

        await wait_for(answers, timeout, "the served process to answer")

    def text(self) -> str:
        """The log so far."""
        return b"".join(self._log).decode(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """The log so far, one JSON object per line (lines that are not JSON left out)."""
        return [json.loads(line) for line in self.text().splitlines() if line.startswith("{")]

    def messages(self) -> list[str]:
        return [line["message"] for line in self.lines()]

    def log_tail(self, lines: int = 30) -> str:
        return b"".join(self._log[-lines:]).decode(errors="replace")

    async def exited(self, timeout: float) -> int:
        """Wait for the process to end and its log to be read; its exit status."""
        await wait_for(lambda: self.process.poll() is not None, timeout, "the process to exit")
        self._reader.join(10)
        return self.process.returncode

    async def stop(self, stop_signal: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `stop_signal` and wait for the exit; its status."""
        self.process.send_signal(stop_signal)
        return await self.exited(timeout)

    def kill(self) -> None:
        """kill -9, if it still runs, and wait for it to be gone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        self._reader.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()


@contextlib.contextmanager
def served(folder: Path, document: dict[str, Any], **options: Any) -> Iterator[Served]:
    """A Served process, killed (if a failed test left it running) when the block ends."""
    process = Served(folder, document, **options)
    try:
        yield process
    finally:
        process.close()
