"""The cache index ends with the time of the results: a lookup reads only young ones.

A cache lookup (max_age_seconds) wants the owner's SUCCEEDED queries with the key whose
results are younger than the age asked for. Each submit stores its key, so a query asked
for again and again has more SUCCEEDED runs with the key every day (a new one each time
its results are older than the age); with the results' time in the index the lookup reads
only the young ones, not all of them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("queries_cache", table_name="queries")
    op.create_index("queries_cache", "queries", ["owner", "cache_key", "state", "results_at"])


def downgrade() -> None:
    op.drop_index("queries_cache", table_name="queries")
    op.create_index("queries_cache", "queries", ["owner", "cache_key", "state"])
