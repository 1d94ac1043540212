"""study source: where a study's first instance came from, kept on the study

Revision ID: 0012_study_source
Revises: 0011_audit_trail
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_study_source"
down_revision = "0011_audit_trail"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=96), nullable=True))
        batch_op.create_index(batch_op.f("ix_study_source"), ["source"], unique=False)
    # the studies stored before: the door (and calling AE title) of their first instance
    op.execute(
        "UPDATE study SET source = ("
        " SELECT instance.source_door || COALESCE(':' || instance.source_aet, '')"
        " FROM instance WHERE instance.id = ("
        "  SELECT MIN(first.id) FROM instance AS first"
        "  JOIN series ON first.series_pk = series.id WHERE series.study_pk = study.id))"
    )


def downgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_source"))
        batch_op.drop_column("source")
