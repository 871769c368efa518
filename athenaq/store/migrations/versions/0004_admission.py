"""Admission control: when each query's run took an Athena slot, and each owner's latest turn.

Every admission locks the one row of `admission`. The queries already sent to Athena
(unfinished, with an execution id) hold slots from the upgrade on; the others wait for
one. The state index becomes the admission index, which begins with the state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.add_column(
            sa.Column("admitted_at", mysql.DATETIME(fsp=6).with_variant(sa.Text(), "sqlite"))
        )
        batch.drop_index("queries_state")
        batch.create_index("queries_admission", ["state", "admitted_at", "owner", "submitted_at"])
    op.execute(
        "UPDATE queries SET admitted_at = submitted_at"
        " WHERE state IN ('QUEUED', 'RUNNING') AND athena_execution_id IS NOT NULL"
    )
    admission = op.create_table(
        "admission",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column(
            "turns",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            server_default=sa.text("0"),
        ),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.bulk_insert(admission, [{"id": 1, "turns": 0}])
    op.create_table(
        "admission_turns",
        sa.Column("owner", sa.String(64).with_variant(sa.Text(), "sqlite"), primary_key=True),
        sa.Column("turn", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("admission_turns")
    op.drop_table("admission")
    with op.batch_alter_table("queries") as batch:
        batch.drop_index("queries_admission")
        batch.create_index("queries_state", ["state"])
        batch.drop_column("admitted_at")
