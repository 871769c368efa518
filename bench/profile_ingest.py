"""Where an ingest's time goes: the stages of athenaq's S3 ingest, timed one by one.

    python bench/profile_ingest.py --rows 1000000

Runs the benchmark's SQL (bench/results.py) on an in-process local engine, then times, on
the same result object: the raw streamed GetObject; `Athena.first_page` (the one-row
GetQueryResults for the column types); `Athena.object_chunks` (the read as the server
runs it, the next chunk read while one is handled); the whole `ResultFiles.copy_csv`
(what the server does with the chunks: scan, write, sync, rename); and, on one thread
without I/O, `RowScanner.feed` over the object and the fsync of a copy of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from aiobotocore.session import get_session

from athenaq.athena import S3_CHUNK_BYTES, Athena, Execution
from athenaq.config import AthenaConfig, S3Config
from athenaq.csvformat import RowScanner
from athenaq.local import LocalEngine
from athenaq.logs import setup_logging
from athenaq.results import ResultFiles

# The benchmark's own SQL and settings: the script's folder is first on sys.path.
sys.path.insert(0, str(Path(__file__).parent))
from results import AWS_ENV, BUCKET, OUTPUT_LOCATION, REGION, query_sql

CREDENTIALS = {
    "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
    "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
}


async def run_query(endpoint: str, sql: str) -> str:
    async with get_session().create_client(
        "athena", region_name=REGION, endpoint_url=endpoint, **CREDENTIALS
    ) as client:
        started = await client.start_query_execution(
            QueryString=sql, ResultConfiguration={"OutputLocation": OUTPUT_LOCATION}
        )
        execution_id: str = started["QueryExecutionId"]
        while True:
            response = await client.get_query_execution(QueryExecutionId=execution_id)
            state = response["QueryExecution"]["Status"]["State"]
            if state == "SUCCEEDED":
                return execution_id
            if state in ("FAILED", "CANCELLED"):
                raise RuntimeError(f"{execution_id}: {state}")
            await asyncio.sleep(0.1)


async def profile(rows: int, work: Path) -> None:
    engine = LocalEngine(work / "engine")
    endpoint = await engine.start("127.0.0.1", 0)
    try:
        execution_id = await run_query(endpoint, query_sql(rows))
        config = AthenaConfig(REGION, "default", "primary", OUTPUT_LOCATION, endpoint)
        async with Athena.open(config, S3Config(endpoint), CREDENTIALS) as athena:
            execution: Execution = await athena.get(execution_id)
            key = (execution.output_location or "").removeprefix(f"s3://{BUCKET}/")
            path = work / "engine" / BUCKET / key
            size = path.stat().st_size
            print(f"{rows:,} rows, result object {size / 2**20:.1f} MB")

            started = time.perf_counter()
            body = (await athena._s3.get_object(Bucket=BUCKET, Key=key))["Body"]
            async with body:
                while await body.read(S3_CHUNK_BYTES):
                    pass
            report("raw GetObject, streamed", started)

            started = time.perf_counter()
            first = await athena.first_page(execution_id, 1)
            columns, labels = first.columns, first.labels
            report("first_page: GetQueryResults, MaxResults=1", started)

            started = time.perf_counter()
            read = 0
            async for chunk in athena.object_chunks(execution):
                read += len(chunk)
            report(f"object_chunks: the read alone ({read / 2**20:.1f} MB)", started)

            started = time.perf_counter()
            files = ResultFiles(work / "results")
            files.prepare()
            stored = await files.copy_csv(
                "q", execution_id, columns, labels, athena.object_chunks(execution)
            )
            report(f"ResultFiles.copy_csv: read, scan, write, sync ({stored.rows:,} rows)", started)

        data = path.read_bytes()
        scanner = RowScanner()
        started = time.perf_counter()
        ends = sum(
            len(scanner.feed(data[at : at + S3_CHUNK_BYTES]))
            for at in range(0, len(data), S3_CHUNK_BYTES)
        )
        scanner.close()
        report(f"RowScanner.feed alone, one thread ({ends:,} row ends)", started)

        copy = work / "copy.csv"
        with copy.open("wb") as out:
            out.write(data)
            started = time.perf_counter()
            out.flush()
            os.fsync(out.fileno())
        report("fsync of a copy of the object", started)
    finally:
        await engine.stop()


def report(label: str, started: float) -> None:
    print(f"  {label}: {time.perf_counter() - started:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.update(AWS_ENV)
    setup_logging(level="WARNING")  # the engine logs every request at DEBUG otherwise
    with tempfile.TemporaryDirectory(prefix="athenaq-profile-") as work:
        asyncio.run(profile(args.rows, Path(work)))


if __name__ == "__main__":
    main()
