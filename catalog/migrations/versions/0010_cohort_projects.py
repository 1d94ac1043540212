"""cohort projects: the projects a cohort's studies are chosen from

Revision ID: 0010_cohort_projects
Revises: 0009_access
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_cohort_projects"
down_revision = "0009_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Cohorts defined before projects existed stay over every project (NULL): only callers
    # who see every project see them.
    with op.batch_alter_table("cohort", schema=None) as batch_op:
        batch_op.add_column(sa.Column("projects", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cohort", schema=None) as batch_op:
        batch_op.drop_column("projects")
