"""The query API: Athena context, options, labels, idempotency keys, listing, cache, retention.

Each query's Athena catalog and options, its labels, the athenaq cache key, idempotency
keys, indexes to list queries and to find cached ones, and when retention removed results.

Queries of earlier releases ran in Athena's default catalog, with no parameters, labels
or options: the new columns start empty, the catalog `AwsDataCatalog`. The owner and
state index gains the submit time, so an owner's queries of one state are listed from it
newest first, as the owner's unfinished ones are still counted from its first columns.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _text(mysql_type: sa.types.TypeEngine) -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return mysql_type.with_variant(sa.Text(), "sqlite")


def _integer(mysql_type: sa.types.TypeEngine) -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return mysql_type.with_variant(sa.Integer(), "sqlite")


def _timestamp() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return _text(mysql.DATETIME(fsp=6))


def upgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.add_column(
            sa.Column(
                "catalog",
                _text(sa.String(256)),
                nullable=False,
                server_default=sa.text("'AwsDataCatalog'"),
            )
        )
        batch.add_column(sa.Column("parameters", sa.Text()))
        batch.add_column(sa.Column("labels", sa.Text()))
        batch.add_column(sa.Column("cache_key", _text(sa.CHAR(64))))
        batch.add_column(sa.Column("result_reuse_minutes", sa.Integer()))
        batch.add_column(sa.Column("reused_previous_result", sa.Integer()))
        batch.add_column(sa.Column("timeout_seconds", sa.Integer()))
        batch.add_column(sa.Column("timeout_at", _timestamp()))
        batch.add_column(sa.Column("callback_url", sa.Text()))
        batch.add_column(sa.Column("results_expired_at", _timestamp()))
        batch.drop_index("queries_owner_state")
        batch.create_index(
            "queries_owner_state_submitted", ["owner", "state", "submitted_at", "id"]
        )
        batch.create_index("queries_owner_submitted", ["owner", "submitted_at", "id"])
        batch.create_index("queries_submitted", ["submitted_at", "id"])
        batch.create_index("queries_cache", ["owner", "cache_key", "state"])
        batch.create_index("queries_results_expiry", ["results_expired_at", "results_at"])
    op.create_table(
        "query_labels",
        sa.Column("query_id", _text(sa.CHAR(36)), primary_key=True),
        sa.Column("label_key", _text(sa.String(63)), primary_key=True),
        sa.Column("label_value", _text(sa.String(256)), nullable=False),
        sa.Column("owner", _text(sa.String(64)), nullable=False),
        sa.Column("submitted_at", _timestamp(), nullable=False),
        sa.Index(
            "query_labels_owner", "owner", "label_key", "label_value", "submitted_at", "query_id"
        ),
        sa.Index("query_labels_label", "label_key", "label_value", "submitted_at", "query_id"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("owner", _text(sa.String(64)), primary_key=True),
        sa.Column("idempotency_key", _text(sa.String(255)), primary_key=True),
        sa.Column("request_hash", _text(sa.CHAR(64)), nullable=False),
        sa.Column("query_id", _text(sa.CHAR(36)), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Index("idempotency_keys_created", "created_at"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("query_labels")
    with op.batch_alter_table("queries") as batch:
        batch.drop_index("queries_results_expiry")
        batch.drop_index("queries_cache")
        batch.drop_index("queries_submitted")
        batch.drop_index("queries_owner_submitted")
        batch.drop_index("queries_owner_state_submitted")
        batch.create_index("queries_owner_state", ["owner", "state"])
        for column in (
            "results_expired_at",
            "callback_url",
            "timeout_at",
            "timeout_seconds",
            "reused_previous_result",
            "result_reuse_minutes",
            "cache_key",
            "labels",
            "parameters",
            "catalog",
        ):
            batch.drop_column(column)
