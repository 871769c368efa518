"""The client commands carried out (their arguments are athenaq.cli's)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from athenaq.cli import EXIT_FAILED, EXIT_SUCCEEDED, EXIT_UNREACHABLE, EXIT_USAGE
from athenaq.cli.display import Display
from athenaq.client import APIError, Client, Status, Unreachable
from athenaq.client.types import ResultFormat, SubmitFields

# The most rows shown as a table; a result of no more is a table by default on a terminal.
TABLE_ROWS = 1000
LIST_FIELDS = ("id", "state", "submitted_at", "owner", "query")
HISTORY_FIELDS = ("run", "from", "to", "event", "by", "at", "reason")
USAGE_FIELDS = ("key", "queries", "succeeded", "failed", "cancelled", "data_scanned_bytes",
                "cost_usd")  # fmt: skip


class UsageError(Exception):
    """Arguments that do not go together."""


def run(args: argparse.Namespace) -> int:
    """Carry out the command; its exit status, with one line on stderr for an error.
    Neither the key nor a URL's password is ever printed."""
    display = Display(quiet=getattr(args, "quiet", False))
    try:
        with Client(args.url, args.key) as client:
            return _COMMANDS[args.command](client, args, display)
    except UsageError as exc:
        display.error(str(exc))
        return EXIT_USAGE
    except Unreachable as exc:
        display.error(f"{exc} (is the service running? --url or ATHENAQ_URL names it)")
        return EXIT_UNREACHABLE
    except APIError as exc:
        display.error(f"{exc.code}: {exc.message}")
        return EXIT_USAGE if exc.status == 400 else EXIT_FAILED
    except KeyboardInterrupt:
        display.error("interrupted; a query already submitted goes on (athenaq status ID)")
        return 130


def _query(client: Client, args: argparse.Namespace, display: Display) -> int:
    result_format = _result_format(args)
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    fields: SubmitFields = {
        "database": args.database,
        "workgroup": args.workgroup,
        "catalog": args.catalog,
        "parameters": args.parameters,
        "labels": dict(args.labels) if args.labels else None,
        "max_age_seconds": args.max_age,
        "result_reuse_minutes": args.result_reuse,
        "timeout_seconds": args.timeout,
        "callback_url": args.callback_url,
        "idempotency_key": args.idempotency_key,
    }
    submission = client.submit(sql, **fields)
    query_id = submission["id"]
    how = "from athenaq's cache" if submission.get("cached") else submission["state"]
    display.note(f"query {query_id} {'joined, ' if submission.get('joined') else ''}{how}")
    if not args.wait:
        print(query_id)
        return EXIT_SUCCEEDED
    status = _wait(client, query_id, display, submission["state"])
    if status["state"] != "SUCCEEDED":
        return _unsuccessful(status, display)
    row_count = status.get("row_count") or 0
    if result_format is None:
        small = display.out.is_terminal and row_count <= TABLE_ROWS
        result_format = "table" if small else "csv"
    if result_format == "table":
        _table(client, query_id, row_count, display)
        return EXIT_SUCCEEDED
    target = args.output
    with display.downloading(target or "results") as progress:
        download_format = cast(ResultFormat, result_format)
        client.download(
            query_id, target or sys.stdout.buffer, format=download_format, progress=progress
        )
    if target:
        display.note(f"{row_count} row{'' if row_count == 1 else 's'} written to {target}")
    return EXIT_SUCCEEDED


def _result_format(args: argparse.Namespace) -> str | None:
    """The format asked for (by --format, or by -o's suffix), checked before a submit."""
    chosen: str | None = args.format
    if args.output is None or chosen is not None:
        if chosen == "table" and args.output is not None:
            raise UsageError("-o writes csv or jsonl; a table is for the terminal")
        return chosen
    return "jsonl" if Path(args.output).suffix in (".jsonl", ".ndjson") else "csv"


def _table(client: Client, query_id: str, row_count: int, display: Display) -> None:
    page = next(client.results(query_id, page_size=TABLE_ROWS))
    display.table(page["columns"], page["rows"])
    if row_count > len(page["rows"]):
        display.note(
            f"the first {len(page['rows'])} of {row_count} rows; --format csv for all of them"
        )


def _wait(client: Client, query_id: str, display: Display, state: str | None = None) -> Status:
    with display.waiting(query_id, state) as progress:
        # Short long-polls: the line shows the state at most five seconds late.
        return client.wait(query_id, poll=5, on_status=progress)


def _unsuccessful(status: Status, display: Display) -> int:
    reason = status.get("state_reason")
    display.error(f"query {status['id']} {status['state']}{f': {reason}' if reason else ''}")
    return EXIT_FAILED


def _finished(client: Client, query_id: str, wait: bool, display: Display) -> int:
    """The query's status on stdout, once finished when `wait`; 1 if it FAILED or was
    CANCELLED."""
    status = _wait(client, query_id, display) if wait else client.status(query_id)
    display.document(status)
    if status["state"] in ("FAILED", "CANCELLED"):
        return _unsuccessful(status, display)
    return EXIT_SUCCEEDED


def _status(client: Client, args: argparse.Namespace, display: Display) -> int:
    return _finished(client, args.id, args.wait, display)


def _cancel(client: Client, args: argparse.Namespace, display: Display) -> int:
    answer = client.cancel(args.id)
    display.document(answer)
    if answer.get("cancel_requested"):
        display.note(f"query {args.id}: cancel requested; Athena has not confirmed it yet")
    return EXIT_SUCCEEDED


def _refresh(client: Client, args: argparse.Namespace, display: Display) -> int:
    answer = client.refresh(args.id)
    if args.wait:
        return _finished(client, args.id, True, display)
    display.document(answer)
    return EXIT_SUCCEEDED


def _history(client: Client, args: argparse.Namespace, display: Display) -> int:
    history = client.history(args.id)
    if display.out.is_terminal:
        display.records([dict(move) for move in history["transitions"]], HISTORY_FIELDS)
    else:
        display.document(history)
    return EXIT_SUCCEEDED


def _list(client: Client, args: argparse.Namespace, display: Display) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be 1 or more")
    queries: list[dict[str, Any]] = []
    listing = client.list(
        state=args.state,
        label=args.label,
        since=args.since,
        until=args.until,
        owner=args.owner,
        page_size=min(args.limit, 500),
    )
    for status in listing:
        queries.append(dict(status))
        if len(queries) == args.limit:
            break
    display.records(queries, LIST_FIELDS)
    return EXIT_SUCCEEDED


def _usage(client: Client, args: argparse.Namespace, display: Display) -> int:
    usage = client.usage(since=args.since, until=args.until, group_by=args.group_by)
    if display.out.is_terminal:
        display.records([dict(group) for group in usage["groups"]], USAGE_FIELDS)
    else:
        display.document(usage)
    return EXIT_SUCCEEDED


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Display], int]] = {
    "query": _query,
    "status": _status,
    "cancel": _cancel,
    "refresh": _refresh,
    "history": _history,
    "list": _list,
    "usage": _usage,
}
