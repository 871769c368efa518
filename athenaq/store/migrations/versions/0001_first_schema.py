"""The schema of the releases made before schema revisions; adopts their databases.

A database those releases made has these tables and no revision: this revision keeps
what it finds and adds what is missing (the first release's `queries` lacks
`results_source`), then alembic stamps it. The types are frozen here as those releases
wrote them, whatever athenaq/store/tables.py says later.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _text(mysql_type: sa.types.TypeEngine) -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return mysql_type.with_variant(sa.Text(), "sqlite")


def _bigint() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _datetime() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return _text(mysql.DATETIME(fsp=6))


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names())
    if "queries" not in present:
        op.create_table(
            "queries",
            sa.Column("id", _text(sa.CHAR(36)), primary_key=True),
            sa.Column("query_text", _text(mysql.MEDIUMTEXT()), nullable=False),
            sa.Column("database_name", _text(sa.String(255)), nullable=False),
            sa.Column("workgroup", _text(sa.String(128)), nullable=False),
            sa.Column("state", _text(sa.String(16)), nullable=False),
            sa.Column("state_reason", sa.Text()),
            sa.Column("athena_execution_id", _text(sa.String(128))),
            sa.Column("run", sa.Integer(), nullable=False, server_default=sa.text("1")),
            sa.Column("cancel_requested_at", _datetime()),
            sa.Column("submitted_at", _datetime(), nullable=False),
            sa.Column("started_at", _datetime()),
            sa.Column("completed_at", _datetime()),
            sa.Column("results_at", _datetime()),
            sa.Column("row_count", _bigint()),
            sa.Column("results_source", _text(sa.String(8))),
            sa.Column("data_scanned_bytes", _bigint()),
            sa.Column("engine_execution_ms", _bigint()),
            sa.Column("queue_ms", _bigint()),
            sa.Column("total_execution_ms", _bigint()),
            sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("0")),
            sa.Column("updated_at", _datetime(), nullable=False),
            mysql_charset="utf8mb4",
            mysql_collate="utf8mb4_bin",
        )
        op.create_index("queries_state", "queries", ["state"])
    elif "results_source" not in {column["name"] for column in inspector.get_columns("queries")}:
        if op.get_context().dialect.name == "mysql":
            # Where the second release put it, so both releases' tables read the same.
            op.execute(
                "ALTER TABLE queries ADD COLUMN results_source VARCHAR(8) NULL AFTER row_count"
            )
        else:
            op.add_column("queries", sa.Column("results_source", sa.Text()))
    if "query_transitions" not in present:
        op.create_table(
            "query_transitions",
            sa.Column("seq", _bigint(), primary_key=True, autoincrement=True),
            sa.Column("query_id", _text(sa.CHAR(36)), nullable=False),
            sa.Column("from_state", _text(sa.String(16))),
            sa.Column("to_state", _text(sa.String(16)), nullable=False),
            sa.Column("reason", sa.Text()),
            sa.Column("at", _datetime(), nullable=False),
            mysql_charset="utf8mb4",
            mysql_collate="utf8mb4_bin",
        )
        op.create_index("query_transitions_query", "query_transitions", ["query_id", "seq"])


def downgrade() -> None:
    op.drop_table("query_transitions")
    op.drop_table("queries")
