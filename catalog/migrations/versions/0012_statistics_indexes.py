"""statistics: the first instance of a series is an index lookup (the source of a study)

Revision ID: 0012_statistics_indexes
Revises: 0011_audit_trail
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0012_statistics_indexes"
down_revision = "0011_audit_trail"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_instance_series_first", "instance", ["series_pk", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_instance_series_first", table_name="instance")
