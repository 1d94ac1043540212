"""access: projects of studies, API tokens, users and login sessions

Revision ID: 0009_access
Revises: 0008_patients
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_access"
down_revision = "0008_patients"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_project",
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["study_pk"], ["study.id"]),
        sa.PrimaryKeyConstraint("study_pk", "project"),
    )
    with op.batch_alter_table("study_project", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_project_project"), ["project"], unique=False)
    # Studies stored before projects existed are in the default project.
    op.execute("INSERT INTO study_project (study_pk, project) SELECT id, 'default' FROM study")
    with op.batch_alter_table("deid_quarantine", schema=None) as batch_op:
        batch_op.add_column(sa.Column("projects", sa.Text(), nullable=True))
    op.create_table(
        "access_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("projects", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "app_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("projects", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "login_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    with op.batch_alter_table("login_session", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_session_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("login_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_session_expires_at"))
    op.drop_table("login_session")
    op.drop_table("app_user")
    op.drop_table("access_token")
    with op.batch_alter_table("deid_quarantine", schema=None) as batch_op:
        batch_op.drop_column("projects")
    with op.batch_alter_table("study_project", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_project_project"))
    op.drop_table("study_project")
