"""The `athenaq-local` command: serve the local engine until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal

from athenaq.local.server import LocalEngine
from athenaq.logs import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="athenaq-local",
        description="An Athena-compatible endpoint (Athena JSON 1.1 and S3 GetObject) "
        "that runs real SQL with DuckDB",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument(
        "--data-dir", required=True, help="folder of the S3 objects: <data-dir>/<bucket>/<key>"
    )
    parser.add_argument(
        "--max-running",
        type=int,
        default=20,
        help="queued + running queries above which StartQueryExecution is throttled",
    )
    parser.add_argument("--workers", type=int, default=4, help="queries that run at once")
    parser.add_argument("--log-level", default="INFO", help="DEBUG logs every request")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    engine = LocalEngine(args.data_dir, max_running=args.max_running, workers=args.workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await engine.start(args.host, args.port)
    try:
        print(f"listening on {url}", flush=True)
        await stop.wait()
    finally:
        await engine.stop()


def run(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(level=args.log_level)
    asyncio.run(serve(args))


if __name__ == "__main__":
    run()
