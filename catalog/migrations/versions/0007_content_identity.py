"""content identity: sha256 of an instance's content (not of its file), and of earlier versions

Revision ID: 0007_content
Revises: 0004
Create Date: 2026-12-05

Instances stored before this revision keep an empty ``content_sha256``; ingest computes it
from their blob when one of them arrives again (the migration cannot read the blob store).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_content"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("earlier_content_sha256", sa.Text(), nullable=True))
    with op.batch_alter_table("deid_quarantine", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deid_quarantine", schema=None) as batch_op:
        batch_op.drop_column("content_sha256")
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("earlier_content_sha256")
        batch_op.drop_column("content_sha256")
