"""`athenaq serve --config PATH`: load the config, serve until SIGTERM or SIGINT, exit 0.
`athenaq migrate --config PATH`: bring the database's schema to this release's revision.
`athenaq keys create | list | revoke --config PATH`: make, list and revoke API keys.
`athenaq --config PATH` is the first releases' form of `serve`.
`athenaq query | status | cancel | refresh | history | list | usage`: a running
service's client (athenaq.cli), which loads nothing of the service."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import TYPE_CHECKING

from athenaq import cli

# Imported where they are used, so that the client commands never load the service's
# stack (the config pulls in marshmallow and sqlglot, the service Tornado and aiobotocore).
if TYPE_CHECKING:
    from athenaq.app import Service
    from athenaq.config import Config


async def serve(config: Config, started: Callable[[Service], object] | None = None) -> None:
    """Run the service until a stop signal, then shut it down in order; `started` is
    called with the service once it serves."""
    # Imported only once the config is good: the service pulls in aiobotocore and numpy,
    # seconds of imports a bad config need not wait for.
    from loguru import logger

    from athenaq.app import Service

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    service = Service(config)
    await service.start()
    # What the start made (modules, botocore's service models, the app) lives as long as
    # the process: kept out of the collector's way, a full collection no longer walks it,
    # which held the event loop for 100 ms and more with thousands of queries in flight.
    gc.freeze()
    if started is not None:
        started(service)
    await stopping.wait()
    logger.info("stop signal received; shutting down")
    await service.stop()


async def migrate(config: Config) -> int:
    """Apply the schema revisions the database lacks, saying what was done."""
    # Imported here: a command needs only its own modules.
    from athenaq.store import Store

    store = await Store.connect(config.database.url, maxsize=1)
    try:
        change = await store.create_schema()
    finally:
        await store.close()
    for step in change.steps:
        print(f"athenaq migrate: {step}")
    if not change.steps:
        print(f"athenaq migrate: the database is at revision {change.after}; nothing to do")
    return 0


async def keys(args: argparse.Namespace, config: Config) -> int:
    """Make, list or revoke API keys; one line of error and exit 1 when it cannot."""
    from athenaq.keys import KeyCommandError, run

    try:
        print(await run(args, config))
    except KeyCommandError as exc:
        print(f"athenaq keys: {exc}", file=sys.stderr)
        return 1
    if args.action == "create":
        print(
            f"athenaq keys: made the key {args.name}; it is shown this once, keep it",
            file=sys.stderr,
        )
    return 0


COMMANDS = {
    "serve": "serve the HTTP API and poll Athena (the default)",
    "migrate": "apply the schema revisions the database lacks, then exit",
    "keys": "make, list or revoke API keys",
}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="athenaq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"athenaq {version('athenaq')}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, summary in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=summary)
        if name != "keys":
            command.add_argument("--config", required=True, help="path of the JSON config file")
    if argv[:1] == ["keys"]:
        # Only for `keys`: athenaq.keys loads the config's modules.
        from athenaq.keys import add_arguments

        add_arguments(commands.choices["keys"])
    cli.add_commands(commands)
    commands.choices["serve"].add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="the least severe log lines written (default INFO; DEBUG adds the engine's)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*COMMANDS, *cli.COMMANDS, "-h", "--help", "--version"):
        argv = ["serve", *argv]
    args = _parse(argv)
    if args.command in cli.COMMANDS:
        return cli.run(args)
    from loguru import logger

    from athenaq.config import ConfigError, load_config
    from athenaq.logs import setup_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"athenaq: bad config: {exc}", file=sys.stderr)
        return 2
    if args.command in ("migrate", "keys"):
        try:
            if args.command == "keys":
                return asyncio.run(keys(args, config))
            return asyncio.run(migrate(config))
        except Exception as exc:
            # One line, never a traceback with connection strings in it.
            print(f"athenaq {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    setup_logging(level=args.log_level)
    try:
        asyncio.run(serve(config))
    except Exception as exc:
        # One line, never a traceback with connection strings in it.
        logger.error("could not start", error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def run() -> None:
    sys.exit(main())
