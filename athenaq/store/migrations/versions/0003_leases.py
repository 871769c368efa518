"""Leases: the process that polls each unfinished query and stores its results.

Every query starts with no holder: the first process to poll after the upgrade claims
the unfinished ones.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.add_column(
            sa.Column("lease_holder", sa.String(128).with_variant(sa.Text(), "sqlite"))
        )
        batch.add_column(
            sa.Column("lease_expires_at", mysql.DATETIME(fsp=6).with_variant(sa.Text(), "sqlite"))
        )
        batch.create_index("queries_lease_holder", ["lease_holder"])


def downgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.drop_index("queries_lease_holder")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_holder")
