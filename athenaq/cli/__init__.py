"""The client's command line: `athenaq query | status | cancel | refresh | history | list |
usage`, the commands of the `athenaq` program that talk to a running service through
athenaq.client (`serve`, `migrate` and `keys` are the service's own, athenaq.main).

This module only describes the arguments, with the standard library, so that
`athenaq --help` lists every command without loading the client; athenaq.cli.commands
carries them out.
"""

from __future__ import annotations

import argparse
from typing import Any

# Exit statuses of the client commands.
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1  # the query FAILED or was CANCELLED, or the service refused the request
EXIT_USAGE = 2  # bad arguments, or a request the service found invalid (400)
EXIT_UNREACHABLE = 3  # no answer from the service

COMMANDS = {
    "query": "submit SQL, wait for it and write its results (stdout, or -o FILE)",
    "status": "show a query's status (--wait: once it is finished)",
    "cancel": "cancel a query",
    "refresh": "run a finished query again",
    "history": "show every state a query went through",
    "list": "list your queries, newest first",
    "usage": "count your queries, the bytes they scanned and their cost",
}
FORMATS = ("csv", "jsonl", "table")


def label(text: str) -> tuple[str, str]:
    """A `KEY=VALUE` argument."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        help="the service's URL (default: $ATHENAQ_URL, else http://127.0.0.1:8080)",
    )
    group.add_argument(
        "--key",
        help="an API key (default: $ATHENAQ_KEY; prefer the variable, which no process "
        "list shows); never printed",
    )


def _quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress or notes on stderr, only errors"
    )


def _query(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sql", help="the SQL to run; - reads it from stdin")
    parser.add_argument("--database", help="the Athena database (default: the service's)")
    parser.add_argument("--workgroup", help="the Athena workgroup (default: the service's)")
    parser.add_argument("--catalog", help="the data catalog (default: the service's)")
    parser.add_argument(
        "--param",
        dest="parameters",
        action="append",
        metavar="VALUE",
        help="the value of the next `?` of the SQL, as an SQL literal ('EMEA', 42, "
        "DATE '2026-11-01'); repeat for each",
    )
    parser.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=label,
        metavar="KEY=VALUE",
        help="a label to find the query by later; repeatable",
    )
    parser.add_argument(
        "--max-age",
        type=int,
        metavar="SECONDS",
        help="answer from athenaq's cache: a result of the same query at most this old",
    )
    parser.add_argument(
        "--result-reuse",
        type=int,
        metavar="MINUTES",
        help="let Athena reuse a result of the same query at most this old",
    )
    parser.add_argument(
        "--timeout", type=int, metavar="SECONDS", help="stop the query after this long"
    )
    parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the submit's Idempotency-Key (default: a new one): the same key within 24 "
        "hours gets the same query back",
    )
    parser.add_argument("--callback-url", metavar="URL", help="a webhook for its end")
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the query and write its results (the default); --no-wait prints "
        "its id and returns at once",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="the results' form: csv, jsonl, or table (default: a table for a small "
        "result on a terminal, else csv; with -o, jsonl for a .jsonl file)",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the results to FILE (csv or jsonl)"
    )


def _status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the query's id")
    parser.add_argument("--wait", action="store_true", help="answer once the query is finished")


def _refresh(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the query's id")
    parser.add_argument("--wait", action="store_true", help="wait for the new run to finish")


def _id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the query's id")


def _times(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="TIME", help="submitted at or after (ISO 8601)")
    parser.add_argument("--until", metavar="TIME", help="submitted before (ISO 8601)")


def _list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state", choices=("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
    )
    parser.add_argument("--label", type=label, metavar="KEY=VALUE", help="with this label")
    _times(parser)
    parser.add_argument("--owner", help="this owner's queries (an admin key)")
    parser.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N queries (default 50)"
    )


def _usage(parser: argparse.ArgumentParser) -> None:
    _times(parser)
    parser.add_argument("--group-by", choices=("owner", "day", "workgroup"), default="owner")


_ARGUMENTS = {
    "query": _query,
    "status": _status,
    "cancel": _id,
    "refresh": _refresh,
    "history": _id,
    "list": _list,
    "usage": _usage,
}


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add the client commands to the `athenaq` program's subcommands."""
    for name, summary in COMMANDS.items():
        parser = commands.add_parser(name, help=summary, description=summary)
        _ARGUMENTS[name](parser)
        if name in ("query", "status", "refresh"):
            _quiet(parser)
        _connection(parser)


def run(args: argparse.Namespace) -> int:
    """Carry out the client command `args` names; its exit status."""
    # Imported only for a client command: httpx and rich are not the service's.
    from athenaq.cli.commands import run as carry_out

    return carry_out(args)
