"""Schema revisions: Alembic, with the revisions shipped in this package (migrations/).

A database is in one of three conditions when a process opens it:

- empty: the tables are made from athenaq/store/tables.py at once and stamped with the
  newest revision (quicker than running every revision, and what each test's fresh
  database takes);
- made by a release before revisions existed (tables, no `alembic_version`): the first
  revision adopts it, keeping every row, and the later ones follow;
- at some revision: the revisions after it run.

One process at a time does this: MySQL/MariaDB's GET_LOCK (named after the database)
or SQLite's write lock is held from the look at the schema to the last change, so
processes starting together find the work done by the first one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from athenaq.store.database import transaction
from athenaq.store.tables import metadata

MIGRATIONS = Path(__file__).parent / "migrations"
# Alembic says at INFO which dialect it found each time it looks at a database, which
# is at every start; what was changed is in the SchemaChange, which the caller reports.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
# How long a starting process waits for another one's migration before giving up.
SCHEMA_LOCK_TIMEOUT_SECONDS = 300


class SchemaError(Exception):
    """The database's schema is not one this release can serve: the message says why and
    what to do."""


@dataclass(frozen=True)
class SchemaChange:
    """What bringing a database's schema to this release's revision did."""

    before: str | None  # the revision found; None for an empty or unversioned database
    after: str
    steps: tuple[str, ...]  # one line per thing done, none when it was already current


@functools.cache
def _scripts() -> ScriptDirectory:
    # Reading the revision files once per process is enough: they do not change under it.
    return ScriptDirectory(str(MIGRATIONS))


def head() -> str:
    """The revision this release's code reads and writes."""
    revision = _scripts().get_current_head()
    assert revision is not None, "the package ships no revision"
    return revision


def _current(sync: Connection) -> str | None:
    return MigrationContext.configure(sync).get_current_revision()


def _known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except ResolutionError:
        return False


def _upgrade(sync: Connection) -> SchemaChange:
    scripts = _scripts()
    before = _current(sync)
    target = head()
    if before == target:
        return SchemaChange(before, target, ())
    if before is None and not inspect(sync).get_table_names():
        metadata.create_all(sync)
        MigrationContext.configure(sync).stamp(scripts, target)
        return SchemaChange(before, target, (f"created the schema at revision {target}",))
    if before is not None and not _known(scripts, before):
        raise SchemaError(
            f"the database is at schema revision {before}, which this release does not know"
            " (a newer release made it): run a release that knows it"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = sync
    command.upgrade(config, target)
    applied = reversed(list(scripts.iterate_revisions(target, before)))
    steps = [] if before else ["adopted a database made before schema revisions"]
    steps += [f"applied revision {script.revision}: {script.doc}" for script in applied]
    return SchemaChange(before, target, tuple(steps))


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "sqlite":
        # SQLite's DDL is transactional: the whole change commits at once, or not at all.
        with transaction(engine) as conn:
            yield conn
        return
    # MySQL/MariaDB commit each DDL statement on its own; a named lock keeps a second
    # process from changing the schema meanwhile. It is the server's, not the database's,
    # hence the database in its name (cut to MySQL's 64 characters: a clash only makes
    # two databases take turns).
    with engine.connect() as conn:
        name = f"athenaq.schema.{engine.url.database}"[:64]
        got = conn.scalar(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": name, "timeout": SCHEMA_LOCK_TIMEOUT_SECONDS},
        )
        if got != 1:
            raise SchemaError(
                f"another process held the schema lock for {SCHEMA_LOCK_TIMEOUT_SECONDS} s"
            )
        try:
            yield conn
        finally:
            # A connection that broke has lost the lock with it.
            with contextlib.suppress(Exception):
                conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})


def _locked_upgrade(engine: Engine) -> SchemaChange:
    with _schema_lock(engine) as conn:
        return _upgrade(conn)


async def upgrade(engine: AsyncEngine) -> SchemaChange:
    """Bring the database to this release's revision; safe to run by several processes."""
    return await greenlet_spawn(_locked_upgrade, engine.sync_engine)


async def check(engine: AsyncEngine) -> None:
    """Raise SchemaError unless the database is at this release's revision."""
    async with engine.connect() as conn:
        current = await conn.run_sync(_current)
    if current != head():
        found = f"at schema revision {current}" if current else "at no schema revision"
        raise SchemaError(
            f"the database is {found}, this release needs {head()}: run `athenaq migrate`"
            " (database.migrate_on_start is false)"
        )
