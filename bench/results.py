"""Benchmark of athenaq's result path: ingest, memory, pages, downloads, end to end.

    python bench/results.py --rows 1000000 --rows 5000000

Starts the local engine (`athenaq-local`) and an athenaq server as two separate processes
(the server alone is measured for memory), then for each N builds a result of N rows x 10
columns of mixed types with one SQL over `range(N)` and prints one Markdown table of the
figures and goals of issue 4. Without `--rows` it runs one small N, so CI can keep it
working in seconds. Exits non-zero on any failure (a wrong row count included); a goal
missed is a figure, not a failure.

Needs `pip install -e . --group bench` (DuckDB for the engine, PyAthena, psutil).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
from aiobotocore.session import get_session

BUCKET = "athenaq-local"
OUTPUT_LOCATION = f"s3://{BUCKET}/results/"
REGION = "us-east-1"
# Dummy credentials: the local engine does not check signatures, and nothing may reach
# a real account or read the user's AWS files.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
DEFAULT_ROWS = 20_000
PAGE_ROWS = 1000
PAGE_REPEATS = 5
DOWNLOAD_REPEATS = 3
# The same read size on both sides of the download comparisons, and the size athenaq's
# own ingest asks of S3, so neither client is favoured by its buffer.
READ_BYTES = 1024 * 1024
CLIENT_POLL_SECONDS = 0.1
HEALTH_PROBE_SECONDS = 0.05
RSS_SAMPLE_SECONDS = 0.02
START_TIMEOUT_SECONDS = 30.0
MB = 1024 * 1024

# Goals of issue 4.
INGEST_RATIO_MAX = 1.5
RSS_OVER_IDLE_MAX_MB = 150.0
# "About the same at both sizes": the largest N's peak within this of the smallest N's.
RSS_SPREAD_MAX_MB = 25.0
PAGE_RATIO_MAX = 1.5
DOWNLOAD_RATIO_MIN = 0.5
E2E_SPEEDUP_MIN = 5.0
E2E_GOAL_ROWS = 1_000_000


def query_sql(rows: int) -> str:
    """N rows x 10 columns: integer, bigint, double, decimal, two varchars (varying length,
    NULLs, "", quotes and commas), boolean, date, timestamp, and a nullable bigint. No
    value holds a newline, which lets the end-to-end client cut the stream at line ends."""
    return f"""SELECT
    CAST(i AS INTEGER) AS int_col,
    i * 2654435761 AS bigint_col,
    CAST(i AS DOUBLE) / 7 AS double_col,
    CAST(i % 100000 AS DECIMAL(12, 2)) / 100 AS decimal_col,
    CASE WHEN i % 10 = 0 THEN NULL WHEN i % 10 = 1 THEN ''
         ELSE repeat('x', CAST(i % 37 AS INTEGER)) || CAST(i AS VARCHAR) END AS text_col,
    CASE WHEN i % 7 = 0 THEN NULL ELSE 'say "hi", row ' || CAST(i AS VARCHAR) END AS quoted_col,
    i % 3 = 0 AS bool_col,
    DATE '2020-01-01' + CAST(i % 3650 AS INTEGER) AS date_col,
    TIMESTAMP '2020-01-01 00:00:00' + to_milliseconds(i * 1237) AS ts_col,
    CASE WHEN i % 5 = 0 THEN NULL ELSE i % 1000 END AS nullable_col
FROM range({rows}) AS t(i)"""


# --- processes -------------------------------------------------------------------------


class Processes:
    """Every child process started, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        # Output to a file, not a pipe: a pipe nobody drains would block a chatty child.
        with log.open("wb") as out:
            child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        self.children.clear()


def wait_for_line(
    name: str, child: subprocess.Popen[bytes], log: Path, find: Callable[[str], str | None]
) -> str:
    """The first value `find` takes from a line of the child's log, once it appears."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if (found := find(line)) is not None:
                return found
        if child.poll() is not None:
            raise RuntimeError(f"{name} exited with {child.returncode}; see {log}")
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start in {START_TIMEOUT_SECONDS} s; see {log}")


def engine_url(line: str) -> str | None:
    return line.removeprefix("listening on ").strip() if line.startswith("listening on ") else None


def server_url(line: str) -> str | None:
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict) and record.get("message") == "listening":
            return str(record["url"])
    return None


def athenaq_config(
    work: Path, db_url: str, endpoint: str, interval: float, **athena: Any
) -> dict[str, Any]:
    """The config of an athenaq server under benchmark: a free port, the store at
    `db_url`, Athena and S3 at `endpoint`, results under `work`, the poller ticking every
    `interval` seconds; `athena` adds keys of its section (max_running)."""
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "database": {"url": db_url},
        "athena": {
            "region": REGION,
            "database": "default",
            "workgroup": "primary",
            "output_location": OUTPUT_LOCATION,
            "endpoint_url": endpoint,
            **athena,
        },
        "s3": {"endpoint_url": endpoint},
        "results": {"dir": str(work / "results")},
        "poller": {"interval_seconds": interval},
    }


def server_config(work: Path, endpoint: str) -> dict[str, Any]:
    return athenaq_config(work, f"sqlite:///{work / 'athenaq.db'}", endpoint, 0.2)


def guarded(work: Path, processes: Processes, keep: bool, bench: Callable[[], int]) -> int:
    """Run `bench`; stop the processes it started, whatever happens, and remove `work`
    unless `keep` or the run failed (its logs are there then)."""
    try:
        return bench()
    except Exception as exc:
        print(f"bench failed: {type(exc).__name__}: {exc} (logs in {work})", file=sys.stderr)
        keep = True
        return 1
    finally:
        processes.stop_all()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


# --- memory ----------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time (user + system) so far: tells how much of a wall time is that process's."""
    times = process.cpu_times()
    return float(times.user + times.system)


class RssSampler:
    """Samples one process's RSS every 20 ms on a thread; `window()` yields the peak seen
    while it is open (a one-item list filled on exit)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.lock = threading.Lock()
        self.peak = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()

    def current(self) -> int:
        return int(self.process.memory_info().rss)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process)

    def _run(self) -> None:
        while not self.stopping.wait(RSS_SAMPLE_SECONDS):
            with contextlib.suppress(psutil.NoSuchProcess):
                rss = self.current()
                with self.lock:
                    self.peak = max(self.peak, rss)

    @contextlib.contextmanager
    def window(self) -> Iterator[list[int]]:
        with self.lock:
            self.peak = self.current()
        result: list[int] = []
        yield result
        with self.lock:
            result.append(max(self.peak, self.current()))


# --- measurements ----------------------------------------------------------------------


@dataclass
class Figures:
    rows: int
    object_bytes: int = 0
    raw_seconds: float = 0.0
    ingest_seconds: float = 0.0
    stored_after_seconds: float = 0.0
    slowest_health_seconds: float = 0.0
    idle_rss: int = 0
    ingest_rss: int = 0
    download_rss: int = 0
    engine_seconds: float = 0.0
    ingest_cpu_seconds: float = 0.0
    csv_cpu_seconds: float = 0.0
    raw_cpu_seconds: float = 0.0
    first_page_seconds: float = 0.0
    last_page_seconds: float = 0.0
    csv_bytes: int = 0
    csv_seconds: float = 0.0
    athenaq_e2e_seconds: float = 0.0
    pyathena_e2e_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def timed(action: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    """Seconds taken by `action` and the byte count it returns."""
    started = time.perf_counter()
    size = await action()
    return time.perf_counter() - started, size


def csv_rows(text: str) -> int:
    return sum(1 for _ in csv.reader(io.StringIO(text, newline="")))


class Bench:
    """The measures of one N against a running server, engine and S3 endpoint."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        s3: Any,
        base: str,
        rss: RssSampler,
        endpoint: str,
        engine_pid: int,
        server_log: Path,
    ) -> None:
        self.http = http
        self.server_log = server_log
        self.s3 = s3
        self.base = base
        self.rss = rss
        self.endpoint = endpoint
        # Idle is the server's RSS before its first query: measured against each run's own
        # start instead, a larger N would hide what the previous run left allocated.
        self.idle_rss = rss.current()
        self.engine = psutil.Process(engine_pid)

    async def submit(self, sql: str) -> str:
        async with self.http.post(f"{self.base}/query", json={"query": sql}) as response:
            if response.status != 202:
                raise RuntimeError(f"POST /query answered {response.status}")
            return str((await response.json())["id"])

    async def wait_succeeded(self, query_id: str) -> dict[str, Any]:
        while True:
            async with self.http.get(f"{self.base}/query/{query_id}/status") as response:
                status: dict[str, Any] = await response.json()
            if status["state"] == "SUCCEEDED":
                return status
            if status["state"] in ("FAILED", "CANCELLED"):
                raise RuntimeError(f"query {query_id}: {status['state']}: {status['state_reason']}")
            await asyncio.sleep(CLIENT_POLL_SECONDS)

    async def slowest_health(self, done: asyncio.Event) -> float:
        """The longest answer to GET /health, asked every 50 ms until `done`: how long the
        server's event loop was held at worst."""
        slowest = 0.0
        while not done.is_set():
            started = time.perf_counter()
            async with self.http.get(f"{self.base}/health") as response:
                await response.read()
            slowest = max(slowest, time.perf_counter() - started)
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
        return slowest

    async def download_rows(self, query_id: str) -> int:
        """The full CSV download parsed into rows in the client (the header included)."""
        rows = 0
        rest = b""
        async with self._csv(query_id) as response:
            async for chunk in response.content.iter_chunked(READ_BYTES):
                # Cut at the last line end: no value of this benchmark holds a newline.
                cut = chunk.rfind(b"\n") + 1
                if cut:
                    rows += await asyncio.to_thread(csv_rows, (rest + chunk[:cut]).decode())
                    rest = chunk[cut:]
                else:
                    rest += chunk
        return rows + (csv_rows(rest.decode()) if rest else 0)

    async def download_bytes(self, query_id: str) -> int:
        size = 0
        async with self._csv(query_id) as response:
            async for chunk in response.content.iter_chunked(READ_BYTES):
                size += len(chunk)
        return size

    def _csv(self, query_id: str) -> Any:
        # aiohttp asks for gzip by default; the comparison is of plain bytes.
        return self.http.get(
            f"{self.base}/query/{query_id}/results",
            params={"format": "csv"},
            headers={"Accept-Encoding": "identity"},
        )

    async def page(self, query_id: str, offset: int) -> None:
        url = f"{self.base}/query/{query_id}/results"
        params = {"offset": str(offset), "limit": str(PAGE_ROWS)}
        async with self.http.get(url, params=params) as response:
            body = await response.json()
        if response.status != 200 or len(body["rows"]) != PAGE_ROWS:
            raise RuntimeError(f"page at {offset}: {response.status}, {len(body['rows'])} rows")

    async def page_median(self, query_id: str, offset: int) -> float:
        await self.page(query_id, offset)  # warm: the first read opens the result's files
        times = []
        for _ in range(PAGE_REPEATS):
            started = time.perf_counter()
            await self.page(query_id, offset)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def ingest_seconds(self, query_id: str) -> float:
        """The server's own measure of the ingest, from its log: from the first call for
        the results (the column types) to the result file renamed into place. The line of
        the query's move to SUCCEEDED gives it (`store_duration_ms`); an athenaq from
        before that (--source) logs a `results stored` line of its own (`duration_ms`)."""
        for line in self.server_log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("query_id") != query_id:
                    continue
                if record.get("message") == "state changed" and "store_duration_ms" in record:
                    return float(record["store_duration_ms"]) / 1000
                if record.get("message") == "results stored":
                    return float(record["duration_ms"]) / 1000
        raise RuntimeError(f"no line of the stored result {query_id} in {self.server_log}")

    async def raw_object(self, key: str) -> int:
        response = await self.s3.get_object(Bucket=BUCKET, Key=key)
        size = 0
        async with response["Body"] as body:
            while chunk := await body.read(READ_BYTES):
                size += len(chunk)
        return size

    async def run(self, rows: int, pyathena_max_rows: int) -> Figures:
        figures = Figures(rows=rows)
        sql = query_sql(rows)
        figures.idle_rss = self.idle_rss

        # End to end and ingest in one go: submit, poll, then the whole download parsed.
        started = time.perf_counter()
        cpu = self.rss.cpu_seconds()
        with self.rss.window() as ingest_peak:
            done = asyncio.Event()
            probe = asyncio.create_task(self.slowest_health(done))
            query_id = await self.submit(sql)
            status = await self.wait_succeeded(query_id)
            done.set()
            figures.slowest_health_seconds = await probe
        figures.ingest_cpu_seconds = self.rss.cpu_seconds() - cpu
        with self.rss.window() as first_download_peak:
            downloaded = await self.download_rows(query_id)
        figures.athenaq_e2e_seconds = time.perf_counter() - started
        figures.ingest_rss = ingest_peak[0]
        if status["row_count"] != rows or downloaded != rows + 1:
            raise RuntimeError(f"{rows} rows asked, {status['row_count']} stored, {downloaded}")
        if status["results_source"] != "s3":
            raise RuntimeError(f"results came from {status['results_source']}, not S3")
        figures.ingest_seconds = self.ingest_seconds(query_id)
        # What a client waits after Athena's completion: the ingest, plus up to one
        # poller interval (0.2 s) before the server sees the SUCCEEDED.
        figures.stored_after_seconds = (
            utc(status["results_at"]) - utc(status["completed_at"])
        ).total_seconds()
        figures.engine_seconds = status["statistics"]["total_execution_ms"] / 1000

        key = f"{OUTPUT_LOCATION.removeprefix(f's3://{BUCKET}/')}"
        key += f"{status['athena_query_execution_id']}.csv"
        cpu = cpu_seconds(self.engine)
        raw = [await timed(lambda: self.raw_object(key)) for _ in range(DOWNLOAD_REPEATS)]
        figures.raw_cpu_seconds = (cpu_seconds(self.engine) - cpu) / DOWNLOAD_REPEATS
        figures.raw_seconds = statistics.median(seconds for seconds, _ in raw)
        figures.object_bytes = raw[0][1]

        for offset, attr in ((0, "first_page_seconds"), (rows - PAGE_ROWS, "last_page_seconds")):
            setattr(figures, attr, await self.page_median(query_id, offset))

        cpu = self.rss.cpu_seconds()
        with self.rss.window() as download_peak:
            downloads = [
                await timed(lambda: self.download_bytes(query_id)) for _ in range(DOWNLOAD_REPEATS)
            ]
        figures.csv_cpu_seconds = (self.rss.cpu_seconds() - cpu) / DOWNLOAD_REPEATS
        figures.download_rss = max(download_peak[0], first_download_peak[0])
        figures.csv_seconds = statistics.median(seconds for seconds, _ in downloads)
        figures.csv_bytes = downloads[0][1]

        if rows <= pyathena_max_rows:
            seconds, fetched = await asyncio.to_thread(pyathena_fetch, self.endpoint, sql)
            if fetched != rows:
                raise RuntimeError(f"PyAthena fetched {fetched} rows of {rows}")
            figures.pyathena_e2e_seconds = seconds
        return figures


def pyathena_fetch(endpoint: str, sql: str) -> tuple[float, int]:
    """PyAthena's default cursor, execute to fetchall(): StartQueryExecution, a
    GetQueryExecution every second (its default poll interval), then GetQueryResults
    pages of 1,000 rows converted to Python values. `endpoint_url` goes to its Athena
    client (not to its S3 client, which the default cursor does not use)."""
    import pyathena  # imported late: only this measure needs it

    connection = pyathena.connect(
        s3_staging_dir=OUTPUT_LOCATION,
        region_name=REGION,
        endpoint_url=endpoint,
        schema_name="default",
        work_group="primary",
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    try:
        cursor = connection.cursor()
        started = time.perf_counter()
        cursor.execute(sql)
        rows = cursor.fetchall()
        return time.perf_counter() - started, len(rows)
    finally:
        connection.close()


# --- report ----------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    memory = psutil.virtual_memory().total / 1024**3
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        # Other work on the machine slows every figure; the load says whether there was any.
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(results: list[Figures]) -> str:
    def row(label: str, cell: Callable[[Figures], str]) -> str:
        return "| " + " | ".join([label, *(cell(f) for f in results)]) + " |"

    def over(f: Figures, peak: int) -> float:
        return (peak - f.idle_rss) / MB

    lines = [
        "| figure | " + " | ".join(f"{f.rows:,} rows" for f in results) + " |",
        "|---|" + "---:|" * len(results),
        row("result object (MB)", lambda f: f"{f.object_bytes / MB:.1f}"),
        row("raw S3 GetObject, streamed (s)", lambda f: f"{f.raw_seconds:.2f}"),
        row("ingest, server's own measure (s)", lambda f: f"{f.ingest_seconds:.2f}"),
        row(
            "stored after Athena's completion, poll included (s)",
            lambda f: f"{f.stored_after_seconds:.2f}",
        ),
        row("server CPU, submit to SUCCEEDED (s)", lambda f: f"{f.ingest_cpu_seconds:.2f}"),
        row(
            "slowest GET /health, submit to SUCCEEDED (ms)",
            lambda f: f"{f.slowest_health_seconds * 1000:.1f}",
        ),
        row(
            f"ingest / raw (goal <= {INGEST_RATIO_MAX})",
            lambda f: _ratio(f.ingest_seconds / f.raw_seconds, lambda r: r <= INGEST_RATIO_MAX),
        ),
        row("server RSS idle, before the first query (MB)", lambda f: f"{f.idle_rss / MB:.0f}"),
        row(
            f"RSS peak over idle, ingest (MB, goal < {RSS_OVER_IDLE_MAX_MB:.0f})",
            lambda f: _ratio(over(f, f.ingest_rss), lambda r: r < RSS_OVER_IDLE_MAX_MB, "{:.0f}"),
        ),
        row(
            f"RSS peak over idle, CSV download (MB, goal < {RSS_OVER_IDLE_MAX_MB:.0f})",
            lambda f: _ratio(over(f, f.download_rss), lambda r: r < RSS_OVER_IDLE_MAX_MB, "{:.0f}"),
        ),
        row("1,000-row page at offset 0 (ms)", lambda f: f"{f.first_page_seconds * 1000:.1f}"),
        row(
            "1,000-row page at offset N-1,000 (ms)",
            lambda f: f"{f.last_page_seconds * 1000:.1f}",
        ),
        row(
            f"last page / first page (goal <= {PAGE_RATIO_MAX})",
            lambda f: _ratio(
                f.last_page_seconds / f.first_page_seconds, lambda r: r <= PAGE_RATIO_MAX
            ),
        ),
        row("raw object read (MB/s)", lambda f: f"{f.object_bytes / f.raw_seconds / MB:.0f}"),
        row("CSV download (MB/s)", lambda f: f"{f.csv_bytes / f.csv_seconds / MB:.0f}"),
        row(
            "engine CPU per raw read / its wall time",
            lambda f: f"{f.raw_cpu_seconds:.2f} s / {f.raw_seconds:.2f} s",
        ),
        row(
            "server CPU per CSV download / its wall time",
            lambda f: f"{f.csv_cpu_seconds:.2f} s / {f.csv_seconds:.2f} s",
        ),
        row(
            f"CSV download / raw (goal >= {DOWNLOAD_RATIO_MIN})",
            lambda f: _ratio(
                (f.csv_bytes / f.csv_seconds) / (f.object_bytes / f.raw_seconds),
                lambda r: r >= DOWNLOAD_RATIO_MIN,
            ),
        ),
        row(
            "engine run of the query, Athena's TotalExecutionTime (s)",
            lambda f: f"{f.engine_seconds:.2f}",
        ),
        row("athenaq end to end, submit to last row (s)", lambda f: f"{f.athenaq_e2e_seconds:.2f}"),
        row(
            "PyAthena default cursor, execute to fetchall (s)",
            lambda f: (
                "skipped" if f.pyathena_e2e_seconds is None else f"{f.pyathena_e2e_seconds:.2f}"
            ),
        ),
        row(
            f"PyAthena / athenaq (goal >= {E2E_SPEEDUP_MIN} at {E2E_GOAL_ROWS:,} rows)",
            _speedup,
        ),
    ]
    if len(results) > 1:
        spread = max(
            abs(over(results[-1], peak_last) - over(results[0], peak_first))
            for peak_first, peak_last in (
                (results[0].ingest_rss, results[-1].ingest_rss),
                (results[0].download_rss, results[-1].download_rss),
            )
        )
        lines.append("")
        lines.append(
            f"RSS over idle, largest N against smallest: {spread:.0f} MB apart "
            f"(goal: within {RSS_SPREAD_MAX_MB:.0f} MB): {verdict(spread <= RSS_SPREAD_MAX_MB)}"
        )
    lines += ["", f"Machine: {machine()}"]
    return "\n".join(lines)


def _ratio(value: float, ok: Callable[[float], bool], form: str = "{:.2f}") -> str:
    return f"{form.format(value)} {verdict(ok(value))}"


def _speedup(f: Figures) -> str:
    if f.pyathena_e2e_seconds is None:
        return "-"
    value = f.pyathena_e2e_seconds / f.athenaq_e2e_seconds
    if f.rows != E2E_GOAL_ROWS:
        return f"{value:.1f} (goal is at {E2E_GOAL_ROWS:,})"
    return _ratio(value, lambda r: r >= E2E_SPEEDUP_MIN, "{:.1f}")


# --- main ------------------------------------------------------------------------------


async def measure(
    endpoint: str,
    engine_pid: int,
    base: str,
    server_log: Path,
    rss: RssSampler,
    args: argparse.Namespace,
) -> str:
    results = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        get_session().create_client(
            "s3",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        ) as s3,
    ):
        bench = Bench(http, s3, base, rss, endpoint, engine_pid, server_log)
        for rows in args.rows:
            started = time.perf_counter()
            results.append(await bench.run(rows, args.pyathena_max_rows))
            print(f"{rows:,} rows measured in {time.perf_counter() - started:.0f} s", flush=True)
    return report(results)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        action="append",
        help=f"rows of the result (repeat for several; default {DEFAULT_ROWS:,})",
    )
    parser.add_argument(
        "--pyathena-max-rows",
        type=int,
        default=E2E_GOAL_ROWS,
        # At 1,000 rows per call PyAthena takes minutes per million rows, and its goal is
        # at 1 M rows only.
        help=f"skip the PyAthena run above this many rows (default {E2E_GOAL_ROWS:,})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = parser.parse_args(argv)
    args.rows = sorted(args.rows or [DEFAULT_ROWS])
    if min(args.rows) < 2 * PAGE_ROWS:
        parser.error(f"--rows must be at least {2 * PAGE_ROWS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="athenaq-bench-"))
    env = {**os.environ, **AWS_ENV}
    os.environ.update(AWS_ENV)
    processes = Processes()

    def bench() -> int:
        bin_dir = Path(sys.executable).parent
        engine_log = work / "engine.log"
        engine = processes.start(
            [
                str(bin_dir / "athenaq-local"),
                "--port",
                "0",
                "--data-dir",
                str(work / "engine"),
                "--log-level",
                "WARNING",
            ],
            engine_log,
            env,
        )
        endpoint = wait_for_line("athenaq-local", engine, engine_log, engine_url)
        config = work / "config.json"
        config.write_text(json.dumps(server_config(work, endpoint)))
        server_log = work / "server.log"
        server = processes.start(
            [sys.executable, "-m", "athenaq", "--config", str(config)], server_log, env
        )
        base = wait_for_line("athenaq", server, server_log, server_url)
        with RssSampler(server.pid) as rss:
            table = asyncio.run(measure(endpoint, engine.pid, base, server_log, rss, args))
        print(table)
        return 0

    return guarded(work, processes, args.keep, bench)


if __name__ == "__main__":
    sys.exit(main())
