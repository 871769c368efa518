"""Webhook deliveries: one per finished run of a query with a callback URL.

A new table, empty after the upgrade: the runs that finished before it were never to be
delivered (no release before it sent webhooks).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _text(mysql_type: sa.types.TypeEngine) -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return mysql_type.with_variant(sa.Text(), "sqlite")


def _timestamp() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return _text(mysql.DATETIME(fsp=6))


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("query_id", _text(sa.CHAR(36)), primary_key=True),
        sa.Column("run", sa.Integer(), primary_key=True),
        sa.Column("state", _text(sa.String(16)), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("body", _text(mysql.MEDIUMTEXT()), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("due_at", _timestamp()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("sender", _text(sa.String(128))),
        sa.Column("delivered_at", _timestamp()),
        sa.Column("last_error", sa.Text()),
        sa.Column("given_up_at", _timestamp()),
        sa.Index("webhook_deliveries_due", "due_at"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
