"""`athenaq --config PATH`: load the config, serve until SIGTERM or SIGINT, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from loguru import logger

from athenaq.config import Config, ConfigError, load_config
from athenaq.logs import setup_logging


async def serve(config: Config) -> None:
    """Run the service until a stop signal, then shut it down in order."""
    # Imported only once the config is good: the service pulls in aiobotocore and numpy,
    # seconds of imports a bad config need not wait for.
    from athenaq.app import Service

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    service = Service(config)
    await service.start()
    await stopping.wait()
    logger.info("stop signal received; shutting down")
    await service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="athenaq", description=__doc__)
    parser.add_argument("--config", required=True, help="path of the JSON config file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"athenaq: bad config: {exc}", file=sys.stderr)
        return 2
    setup_logging()
    try:
        asyncio.run(serve(config))
    except Exception as exc:
        # One line, never a traceback with connection strings in it.
        logger.error("could not start", error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def run() -> None:
    sys.exit(main())
