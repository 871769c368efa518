"""`athenaq keys create | list | revoke`: API keys, made and ended on the command line.

`create` prints the new key once, alone on stdout, so a script can take it
(`KEY=$(athenaq keys create ...)`); the store keeps only its hash. `list` never shows a
key. `revoke` ends a key at once, on every process sharing the database.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from athenaq.clock import isoformat
from athenaq.config import Config, SqlConfig
from athenaq.identity import (
    DEFAULT_SCOPES,
    KEY_NAME,
    RESERVED_NAMES,
    SCOPES,
    ApiKey,
    Caller,
    key_hash,
    new_key,
)
from athenaq.statements import KNOWN_KINDS

ACTIONS = {
    "create": "make a key and print it once",
    "list": "list the keys (never the keys themselves)",
    "revoke": "revoke a key at once, on every process",
}


class KeyCommandError(Exception):
    """The command cannot be done as asked: the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `keys` command's actions and their options."""
    actions = parser.add_subparsers(dest="action", required=True)
    for name, summary in ACTIONS.items():
        action = actions.add_parser(name, help=summary, description=summary)
        action.add_argument("--config", required=True, help="path of the JSON config file")
    create = actions.choices["create"]
    create.add_argument("--name", required=True, help="the key's name, its queries' owner")
    create.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help=f"a scope (repeat for more; default: {', '.join(sorted(DEFAULT_SCOPES))})",
    )
    create.add_argument(
        "--database", action="append", help="a database it may query (repeat; default: any)"
    )
    create.add_argument(
        "--workgroup", action="append", help="a workgroup it may use (repeat; default: any)"
    )
    create.add_argument(
        "--statements",
        help="the statement kinds it may submit, comma-separated, e.g. SELECT,WITH"
        " (default: the config's sql.default_statements)",
    )
    create.add_argument("--max-running", type=int, help="its unfinished queries at most")
    create.add_argument(
        "--daily-scan-bytes", type=int, help="bytes its queries may scan per UTC day"
    )
    actions.choices["revoke"].add_argument("name", help="the key's name")


def _positive(value: int | None, option: str) -> int | None:
    if value is not None and value < 1:
        raise KeyCommandError(f"{option} must be 1 or more")
    return value


def _names(values: Sequence[str] | None, option: str) -> frozenset[str] | None:
    if values is None:
        return None
    if any(not value.strip() for value in values):
        raise KeyCommandError(f"{option} must not be empty")
    return frozenset(values)


def _statements(text: str | None, sql: SqlConfig) -> frozenset[str] | None:
    if text is None:
        return sql.default_statements
    kinds = frozenset(kind.strip().upper() for kind in text.split(",") if kind.strip())
    if not kinds:
        raise KeyCommandError("--statements names no kind")
    unknown = kinds - KNOWN_KINDS
    if unknown:
        raise KeyCommandError(
            f"--statements: not a statement kind: {', '.join(sorted(unknown))}"
            f" (the kinds: {','.join(sorted(KNOWN_KINDS))})"
        )
    return kinds


def caller_from(args: argparse.Namespace, sql: SqlConfig) -> Caller:
    """The key `keys create` was asked for; KeyCommandError names what is wrong."""
    if not KEY_NAME.match(args.name):
        raise KeyCommandError(
            "--name must be 1 to 64 of A-Z a-z 0-9 _ . @ - and start with a letter or digit"
        )
    if args.name in RESERVED_NAMES:
        raise KeyCommandError(f"--name {args.name!r} is reserved")
    return Caller(
        name=args.name,
        scopes=frozenset(args.scope) if args.scope else DEFAULT_SCOPES,
        databases=_names(args.database, "--database"),
        workgroups=_names(args.workgroup, "--workgroup"),
        statements=_statements(args.statements, sql),
        max_running=_positive(args.max_running, "--max-running"),
        daily_scan_bytes=_positive(args.daily_scan_bytes, "--daily-scan-bytes"),
    )


def _listed(values: Iterable[str] | None) -> str:
    return "any" if values is None else ",".join(sorted(values))


def table(keys: Sequence[ApiKey]) -> str:
    """The keys as an aligned table, one row each."""
    header = (
        "NAME",
        "SCOPES",
        "DATABASES",
        "WORKGROUPS",
        "STATEMENTS",
        "MAX_RUNNING",
        "DAILY_SCAN_BYTES",
        "CREATED",
        "REVOKED",
    )
    rows = [header] + [
        (
            key.name,
            _listed(key.caller.scopes),
            _listed(key.caller.databases),
            _listed(key.caller.workgroups),
            _listed(key.caller.statements),
            str(key.caller.max_running or "-"),
            str(key.caller.daily_scan_bytes or "-"),
            isoformat(key.created_at) or "-",
            isoformat(key.revoked_at) or "-",
        )
        for key in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def run(args: argparse.Namespace, config: Config) -> str:
    """Do the `keys` action; returns what to print. KeyCommandError when it cannot."""
    # Imported here: the parser needs this module, and a bad command line or config
    # should not wait for the store's imports.
    from athenaq.store import Store
    from athenaq.store.keys import KeyExists

    caller = caller_from(args, config.sql) if args.action == "create" else None
    store = await Store.connect(config.database.url, maxsize=1)
    try:
        if config.database.migrate_on_start:
            await store.create_schema()
        else:
            await store.check_schema()
        if caller is not None:
            key = new_key()
            try:
                await store.add_key(caller, key_hash(key))
            except KeyExists:
                raise KeyCommandError(
                    f"a key named {caller.name!r} exists or existed; names are never reused"
                ) from None
            return key
        if args.action == "list":
            return table(await store.list_keys())
        if not await store.revoke_key(args.name):
            raise KeyCommandError(f"no unrevoked key is named {args.name!r}")
        return f"revoked {args.name}"
    finally:
        await store.close()
