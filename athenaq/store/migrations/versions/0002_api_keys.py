"""API keys, the owner of each query, who caused each transition, scanned bytes per day.

Every query already stored belongs to "anonymous", the caller of the releases before
keys: with keys on, only an admin key sees them. Their transitions' `caused_by` stays
null: nobody recorded it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _text(mysql_type: sa.types.TypeEngine) -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return mysql_type.with_variant(sa.Text(), "sqlite")


def _bigint() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _datetime() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return _text(mysql.DATETIME(fsp=6))


def upgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.add_column(
            sa.Column(
                "owner",
                _text(sa.String(64)),
                nullable=False,
                server_default=sa.text("'anonymous'"),
            )
        )
        batch.create_index("queries_owner_state", ["owner", "state"])
    with op.batch_alter_table("query_transitions") as batch:
        batch.add_column(sa.Column("caused_by", _text(sa.String(64))))
    op.create_table(
        "api_keys",
        sa.Column("name", _text(sa.String(64)), primary_key=True),
        sa.Column("key_hash", _text(sa.CHAR(64)), nullable=False, unique=True),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("databases", sa.Text()),
        sa.Column("workgroups", sa.Text()),
        sa.Column("statements", sa.Text()),
        sa.Column("max_running", sa.Integer()),
        sa.Column("daily_scan_bytes", _bigint()),
        sa.Column("created_at", _datetime(), nullable=False),
        sa.Column("revoked_at", _datetime()),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_table(
        "daily_usage",
        sa.Column("owner", _text(sa.String(64)), primary_key=True),
        sa.Column("day", _text(sa.String(10)), primary_key=True),
        sa.Column("data_scanned_bytes", _bigint(), nullable=False),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("daily_usage")
    op.drop_table("api_keys")
    with op.batch_alter_table("query_transitions") as batch:
        batch.drop_column("caused_by")
    with op.batch_alter_table("queries") as batch:
        batch.drop_index("queries_owner_state")
        batch.drop_column("owner")
