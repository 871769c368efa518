"""The store's tables, defined once for both databases.

Each column's type is what the database had before schema revisions existed, so a
database made by an earlier release and one made now are the same: MySQL/MariaDB types
as written, and on SQLite the plain TEXT and INTEGER of the first releases. A revision
that adds a column or a table adds it here too, with the same types.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CHAR,
    BigInteger,
    Column,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeEngine


def sqlite_text(mysql_type: TypeEngine[Any]) -> TypeEngine[Any]:
    """`mysql_type` on MySQL/MariaDB, TEXT on SQLite."""
    return mysql_type.with_variant(Text(), "sqlite")


def sqlite_integer(mysql_type: TypeEngine[int]) -> TypeEngine[int]:
    """`mysql_type` on MySQL/MariaDB, INTEGER on SQLite (where INTEGER PRIMARY KEY is the rowid)."""
    return mysql_type.with_variant(Integer(), "sqlite")


class Timestamp(TypeDecorator[datetime]):
    """A naive UTC datetime with microseconds: DATETIME(6) on MySQL/MariaDB; on SQLite, ISO
    8601 text of one width (always with microseconds), so text order is time order."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(mysql.DATETIME(fsp=6))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is not None and dialect.name == "sqlite":
            return value.isoformat(sep=" ", timespec="microseconds")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return datetime.fromisoformat(value)
        return value  # type: ignore[no-any-return]


metadata = MetaData()

queries = Table(
    "queries",
    metadata,
    Column("id", sqlite_text(CHAR(36)), primary_key=True),
    Column("query_text", sqlite_text(mysql.MEDIUMTEXT()), nullable=False),
    Column("database_name", sqlite_text(String(255)), nullable=False),
    Column("workgroup", sqlite_text(String(128)), nullable=False),
    Column("state", sqlite_text(String(16)), nullable=False),
    Column("state_reason", Text()),
    Column("athena_execution_id", sqlite_text(String(128))),
    Column("run", Integer(), nullable=False, server_default=text("1")),
    Column("cancel_requested_at", Timestamp()),
    Column("submitted_at", Timestamp(), nullable=False),
    Column("started_at", Timestamp()),
    Column("completed_at", Timestamp()),
    Column("results_at", Timestamp()),
    Column("row_count", sqlite_integer(BigInteger())),
    Column("results_source", sqlite_text(String(8))),
    Column("data_scanned_bytes", sqlite_integer(BigInteger())),
    Column("engine_execution_ms", sqlite_integer(BigInteger())),
    Column("queue_ms", sqlite_integer(BigInteger())),
    Column("total_execution_ms", sqlite_integer(BigInteger())),
    Column("version", Integer(), nullable=False, server_default=text("0")),
    Column("updated_at", Timestamp(), nullable=False),
    # The key's name that submitted it; "anonymous" when keys are off (and for every query
    # of the releases before keys).
    Column("owner", sqlite_text(String(64)), nullable=False, server_default=text("'anonymous'")),
    # The process that polls it and stores its results, until the lease expires
    # (poller.lease_seconds after its last renewal); null: nobody, any process may claim it.
    Column("lease_holder", sqlite_text(String(128))),
    Column("lease_expires_at", Timestamp()),
    # When the current run took an Athena slot (athena.max_running); null while it waits
    # for one, and for the releases before admission control (revision 0004).
    Column("admitted_at", Timestamp()),
    # The Athena catalog it runs in (revision 0005: `AwsDataCatalog` for the queries
    # before it).
    Column(
        "catalog",
        sqlite_text(String(256)),
        nullable=False,
        server_default=text("'AwsDataCatalog'"),
    ),
    # JSON: the list of Athena ExecutionParameters, and the object of labels; null: none.
    Column("parameters", Text()),
    Column("labels", Text()),
    # SHA-256 in hex of what makes two queries the same for athenaq's cache (the
    # normalised SQL text, parameters, database, workgroup and catalog).
    Column("cache_key", sqlite_text(CHAR(64))),
    Column("result_reuse_minutes", Integer()),
    # Athena's ReusedPreviousResult for the current run (0 or 1); null: not known.
    Column("reused_previous_result", Integer()),
    Column("timeout_seconds", Integer()),
    # When the current run times out (timeout_seconds after it was submitted).
    Column("timeout_at", Timestamp()),
    Column("callback_url", Text()),
    # When retention removed the current run's result files.
    Column("results_expired_at", Timestamp()),
    # The unfinished queries by state (the poller's claim); within them the admitted ones
    # (counted at each admission) and the waiting ones, by owner, oldest first (the fair
    # order of admission, and a waiting query's place in it).
    Index("queries_admission", "state", "admitted_at", "owner", "submitted_at"),
    # An owner's unfinished queries are counted at each submit (max_running); an owner's
    # queries of one state are listed newest first (GET /queries?state=).
    Index("queries_owner_state_submitted", "owner", "state", "submitted_at", "id"),
    # An owner's queries, and everyone's, newest first (GET /queries, GET /usage).
    Index("queries_owner_submitted", "owner", "submitted_at", "id"),
    Index("queries_submitted", "submitted_at", "id"),
    # The athenaq cache: an owner's queries with the same cache key, by state, then by
    # when their results were stored (revision 0006): a lookup reads the young ones only.
    Index("queries_cache", "owner", "cache_key", "state", "results_at"),
    # Retention: the results not yet removed, oldest first.
    Index("queries_results_expiry", "results_expired_at", "results_at"),
    # A stopping process finds the queries it holds.
    Index("queries_lease_holder", "lease_holder"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

query_transitions = Table(
    "query_transitions",
    metadata,
    Column("seq", sqlite_integer(BigInteger()), primary_key=True, autoincrement=True),
    Column("query_id", sqlite_text(CHAR(36)), nullable=False),
    Column("from_state", sqlite_text(String(16))),
    Column("to_state", sqlite_text(String(16)), nullable=False),
    Column("reason", Text()),
    Column("at", Timestamp(), nullable=False),
    # Who caused it: a key's name, "poller" or "timeout"; None in the releases before keys.
    Column("caused_by", sqlite_text(String(64))),
    Index("query_transitions_query", "query_id", "seq"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("name", sqlite_text(String(64)), primary_key=True),
    # The key's SHA-256 in hex; the key itself is never stored.
    Column("key_hash", sqlite_text(CHAR(64)), nullable=False, unique=True),
    # JSON lists; null in databases, workgroups and statements means any.
    Column("scopes", Text(), nullable=False),
    Column("databases", Text()),
    Column("workgroups", Text()),
    Column("statements", Text()),
    Column("max_running", Integer()),
    Column("daily_scan_bytes", sqlite_integer(BigInteger())),
    Column("created_at", Timestamp(), nullable=False),
    Column("revoked_at", Timestamp()),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# Bytes Athena scanned for an owner's queries per UTC day, added to as each run finishes:
# what daily_scan_bytes is checked against (a refresh clears a query's own figures).
daily_usage = Table(
    "daily_usage",
    metadata,
    Column("owner", sqlite_text(String(64)), primary_key=True),
    Column("day", sqlite_text(String(10)), primary_key=True),  # YYYY-MM-DD
    Column("data_scanned_bytes", sqlite_integer(BigInteger()), nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# One row (id 1), locked by every admission (SELECT ... FOR UPDATE; on SQLite the write
# transaction is the lock), so processes sharing the database admit in turn and never
# give out more than athena.max_running slots together. `turns` numbers the slots given
# out so far.
admission = Table(
    "admission",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=False),
    Column("turns", sqlite_integer(BigInteger()), nullable=False, server_default=text("0")),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# The turn of each owner's latest slot: owners level with each other take slots in turn
# (athenaq/admission.py). One row per owner that ever had one.
admission_turns = Table(
    "admission_turns",
    metadata,
    Column("owner", sqlite_text(String(64)), primary_key=True),
    Column("turn", sqlite_integer(BigInteger()), nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# A query's labels, one row each, with its owner and submit time: an owner's queries with
# a label, and everyone's (an admin's listing), newest first from an index.
query_labels = Table(
    "query_labels",
    metadata,
    Column("query_id", sqlite_text(CHAR(36)), primary_key=True),
    Column("label_key", sqlite_text(String(63)), primary_key=True),
    Column("label_value", sqlite_text(String(256)), nullable=False),
    Column("owner", sqlite_text(String(64)), nullable=False),
    Column("submitted_at", Timestamp(), nullable=False),
    Index("query_labels_owner", "owner", "label_key", "label_value", "submitted_at", "query_id"),
    Index("query_labels_label", "label_key", "label_value", "submitted_at", "query_id"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# An owner's Idempotency-Key and the answer its first request got: the query and the
# status code, with a hash of the request to tell a reuse with another body.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("owner", sqlite_text(String(64)), primary_key=True),
    Column("idempotency_key", sqlite_text(String(255)), primary_key=True),
    Column("request_hash", sqlite_text(CHAR(64)), nullable=False),
    Column("query_id", sqlite_text(CHAR(36)), nullable=False),
    Column("status_code", Integer(), nullable=False),
    Column("created_at", Timestamp(), nullable=False),
    Index("idempotency_keys_created", "created_at"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# A webhook delivery: one per finished run of a query with a callback_url (the primary key
# is the query and its run, as a run finishes once), written in the transaction of the
# move to the finished state. `body` is the status object as it was then, the same bytes
# at every attempt. `due_at` is when it is sent next: a process sending it sets it to the
# end of its lease (so a process that dies mid-delivery leaves it due again), and a
# delivered or given-up one has none.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("query_id", sqlite_text(CHAR(36)), primary_key=True),
    Column("run", Integer(), primary_key=True),
    Column("state", sqlite_text(String(16)), nullable=False),
    Column("url", Text(), nullable=False),
    Column("body", sqlite_text(mysql.MEDIUMTEXT()), nullable=False),
    # The move's time: webhooks.retry_hours counts from it.
    Column("created_at", Timestamp(), nullable=False),
    Column("due_at", Timestamp()),
    # Attempts begun (counted as each begins, so a process killed mid-attempt counts too).
    Column("attempts", Integer(), nullable=False, server_default=text("0")),
    # The process of the latest attempt.
    Column("sender", sqlite_text(String(128))),
    Column("delivered_at", Timestamp()),
    Column("last_error", Text()),
    Column("given_up_at", Timestamp()),
    # The deliveries due, soonest first (the dispatchers' claim); done ones have no due_at.
    Index("webhook_deliveries_due", "due_at"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)
